"""2-D UMAP maps of a workspace's features with a run's support set before and after editing.

Placement. An edited feature must be drawn where it really is. umap-learn's `transform()` places
new points by their neighbours among the *fitted* points, so edits that leave the data manifold
get pulled back onto an existing cluster (umap issues #566, #673, #1224). We therefore fit UMAP on
the originals and the edited points together: every edited point takes part in the neighbour
graph and is placed by its own neighbourhood. Measured on the demo workspace (11,788 originals +
32 edits, `benchmarks/bench_projection.py`): the share of each edited point's 10 nearest
neighbours in feature space (cosine) that are also among its 10 nearest in the 2-D map is 0.50
when fitting jointly against 0.15 with `fit` + `transform`.
AlignedUMAP was not used: it aligns two separate embeddings, which places the edits relative to
their own slice rather than among the real data they are compared with.

Caching. A map is a parquet file in `<workspace>/cache/`, keyed by the store's content hash, the
run's support tensors, the selected rows and the UMAP parameters: a second request is a file read.
`random_state` makes maps reproducible (and makes umap use one thread); `warm_up()` pays numba's
JIT on a tiny input, off the request path.

2-D distances have no exact meaning: the map shows neighbourhoods, not metric distances.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hsfm_core.errors import InputError

@dataclass(frozen=True)
class ProjectionParams:
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    random_state: int = 0


def warm_up() -> None:
    """Compile umap's numba kernels on a tiny input (about 10–30 s once per process)."""
    import umap

    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    umap.UMAP(n_neighbors=10, metric="cosine", random_state=0, n_epochs=10).fit_transform(x)


def _key(store, support: dict | None, head: dict | None, rows: np.ndarray, params: ProjectionParams) -> str:
    """Everything the file depends on: the store, rows, parameters, the edits and the head that
    decides `correct`."""
    import umap

    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([store.content_hash, asdict(params), umap.__version__]).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    for name, tensors in (("support", support), ("head", head)):
        h.update(name.encode() + (b"" if tensors is None else b"+"))
        for key in sorted(tensors or {}):
            h.update(key.encode() + np.ascontiguousarray(tensors[key].numpy()).tobytes())
    return h.hexdigest()


def embed_jointly(originals: np.ndarray, edits: np.ndarray, params: ProjectionParams) -> np.ndarray:
    """2-D coordinates for originals and edits fitted together: (n_originals + n_edits) × 2."""
    import umap

    data = np.concatenate([np.asarray(originals, dtype=np.float32), np.asarray(edits, dtype=np.float32)])
    reducer = umap.UMAP(n_neighbors=params.n_neighbors, min_dist=params.min_dist, metric=params.metric,
                        random_state=params.random_state)
    return reducer.fit_transform(data).astype(np.float32)


def _map_inputs(store, run: dict | None, rows: np.ndarray | None, params: ProjectionParams):
    """(cache file, rows, support tensors, head) of a map request, after checking it."""
    from hsfm_core.runs import check_run_fits_store, load_head, load_support

    if run is not None:
        check_run_fits_store(run, store)
    rows = np.arange(store.manifest["n_rows"]) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    if len(rows) < params.n_neighbors + 1:
        raise InputError(f"a map needs more than n_neighbors = {params.n_neighbors} points, got {len(rows)}")
    support = load_support(run, store) if run is not None and (run["path"] / "support.safetensors").is_file() else None
    head = load_head(run, store) if run is not None else None  # checked against the store before any UMAP fit
    path = Path(store.path) / "cache" / f"umap-{_key(store, support, head, rows, params)}.parquet"
    return path, rows, support, head


def is_cached(store, run: dict | None = None, rows: np.ndarray | None = None,
              params: ProjectionParams = ProjectionParams()) -> bool:
    """Whether `project` with these arguments would be a file read (no UMAP fit)."""
    return _map_inputs(store, run, rows, params)[0].is_file()


def project(store, run: dict | None = None, rows: np.ndarray | None = None,
            params: ProjectionParams = ProjectionParams()) -> Path:
    """The map's parquet file (computed once, then read from the cache).

    Columns: x, y, kind ("original" / "edited" / "support"), row (store row), support (index in the
    support set, −1 otherwise), split, y_class, attribute, group — and, with a run, `correct`
    under that run's head (edited points: the head's prediction on the edited feature).
    """
    from hsfm_core.fsutil import atomic_path

    path, rows, support, head = _map_inputs(store, run, rows, params)
    if path.is_file():
        return path

    edits = support["after"].numpy() if support is not None else np.empty((0, store.dim), np.float32)
    coords = embed_jointly(store.features[rows], edits, params)
    meta = store.meta.iloc[rows]
    frame = pd.DataFrame({"x": coords[: len(rows), 0], "y": coords[: len(rows), 1], "kind": "original",
                          "row": rows, "support": -1, "split": meta["split"].to_numpy(),
                          "y_class": meta["y"].to_numpy(), "attribute": meta["a"].to_numpy(),
                          "group": meta["g"].to_numpy()})
    if support is not None:
        support_rows = support["indices"].numpy()
        position = {int(r): i for i, r in enumerate(rows)}
        in_map = [(i, position[int(r)]) for i, r in enumerate(support_rows) if int(r) in position]
        if in_map:  # the originals of the support examples, where the map includes their rows
            which, where = (list(t) for t in zip(*in_map))
            frame.loc[where, "kind"] = "support"
            frame.loc[where, "support"] = which
        known = support_rows >= 0  # an imported reference run's support rows are not in the store
        attrs = np.full(len(support_rows), -1)
        attrs[known] = store.meta["a"].to_numpy()[support_rows[known]]
        labels = support["labels"].numpy()
        edited = pd.DataFrame({"x": coords[len(rows):, 0], "y": coords[len(rows):, 1], "kind": "edited",
                               "row": support_rows, "support": np.arange(len(support_rows)), "split": "train",
                               "y_class": labels, "attribute": attrs,
                               "group": np.where(known, store.groups.group_of(labels, attrs), -1)})
        frame = pd.concat([frame, edited], ignore_index=True)
    if head is not None:
        from hsfm_core.heads import predict

        predicted = predict(store.features[rows], head["weight"], head["bias"])
        if support is not None:
            predicted = np.concatenate([predicted, predict(edits, head["weight"], head["bias"])])
        frame["correct"] = predicted == frame["y_class"].to_numpy()
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def neighbour_agreement(high: np.ndarray, low: np.ndarray, queries: np.ndarray, k: int = 10,
                        metric: str = "cosine") -> float:
    """Mean share of each query point's k nearest neighbours in `high` (feature space) that are also
    among its k nearest in `low` (the 2-D map). Points are indices into both arrays."""
    from sklearn.neighbors import NearestNeighbors

    hi = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(high).kneighbors(high[queries], return_distance=False)
    lo = NearestNeighbors(n_neighbors=k + 1).fit(low).kneighbors(low[queries], return_distance=False)
    shares = [len((set(h) - {q}) & (set(l_) - {q})) / k for q, h, l_ in zip(queries, hi, lo)]
    return float(np.mean(shares))


# -- selections on a map ------------------------------------------------------------------------

BACKDROP_MAX_POINTS = 50_000  # plotly WebGL stays responsive up to about this many points


def inside_polygon(x: np.ndarray, y: np.ndarray, px, py) -> np.ndarray:
    """Even-odd rule: which points (x, y) lie inside the closed polygon (px, py)."""
    px, py = np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)
    inside = np.zeros(len(x), dtype=bool)
    for x0, y0, x1, y1 in zip(px, py, np.roll(px, -1), np.roll(py, -1)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


def points_in_region(frame: pd.DataFrame, boxes=(), lassos=()) -> np.ndarray:
    """Positions of the map's points inside any box ({"x": [x0, x1], "y": [y0, y1]}) or lasso
    ({"x": [...], "y": [...]}) — Streamlit's plotly selection event. Every point counts, also those
    not drawn when the backdrop is sampled."""
    x, y = frame["x"].to_numpy(np.float64), frame["y"].to_numpy(np.float64)
    mask = np.zeros(len(frame), dtype=bool)
    for box in boxes:
        (x0, x1), (y0, y1) = sorted(box["x"][:2]), sorted(box["y"][:2])
        mask |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    for lasso in lassos:
        if len(lasso["x"]) >= 3:
            mask |= inside_polygon(x, y, lasso["x"], lasso["y"])
    return np.flatnonzero(mask)


def backdrop_sample(frame: pd.DataFrame, max_points: int = BACKDROP_MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Positions of the original points to draw: all of them up to `max_points`, else a sample
    stratified by group (each group keeps its share, at least one point)."""
    originals = np.flatnonzero(frame["kind"].to_numpy() != "edited")
    if len(originals) <= max_points:
        return originals
    rng = np.random.default_rng(seed)
    groups = frame["group"].to_numpy()[originals]
    keep = []
    for g in np.unique(groups):
        members = originals[groups == g]
        take = max(1, round(max_points * len(members) / len(originals)))
        keep.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def selection_summary(frame: pd.DataFrame, positions: np.ndarray, group_labels: list[str]) -> pd.DataFrame:
    """Per group among the selected map points: how many originals, how many edited points and,
    when the map has a run, the run's accuracy on the selected originals."""
    chosen = frame.iloc[np.asarray(positions, dtype=np.int64)]
    originals = chosen[chosen["kind"] != "edited"]
    rows = []
    for g, name in enumerate(group_labels):
        members = originals[originals["group"] == g]
        row = {"group": name, "points": len(members), "edited": int(((chosen["kind"] == "edited")
                                                                       & (chosen["group"] == g)).sum())}
        if "correct" in frame:
            row["accuracy"] = float(members["correct"].mean()) if len(members) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")
