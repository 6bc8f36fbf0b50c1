"""2-D UMAP maps of a workspace's features with a run's support set before and after editing.

Placement. An edited feature must be drawn where it really is. umap-learn's `transform()` places
new points by their neighbours among the *fitted* points, so edits that leave the data manifold
get pulled back onto an existing cluster (umap issues #566, #673, #1224). We therefore fit UMAP on
the originals and the edited points together: every edited point takes part in the neighbour
graph and is placed by its own neighbourhood. Measured on the demo workspace (11,788 originals +
32 edits, `benchmarks/bench_projection.py`): the share of each edited point's 10 nearest
neighbours in feature space (cosine) that are also among its 10 nearest in the 2-D map is 0.50
when fitting jointly against 0.15 with `fit` + `transform` (measured on the first demo; on demo v2's
first HSFM run, whose `auto` edits stay near the data, both placements score 0.42).
AlignedUMAP was not used: it aligns two separate embeddings, which places the edits relative to
their own slice rather than among the real data they are compared with.

Neighbours. The k-NN graph UMAP starts from is computed by FAISS (`retrieval.FeatureIndex`,
cosine on normalised features: exact up to `EXACT_KNN_MAX_ROWS`, an IVF index above) and handed to
umap as `precomputed_knn`. pynndescent's `nn_descent` cannot be cached by numba ("uses dynamic
globals"), so it recompiled in every process: 45–50 s of the first map per server process on 2 cores
(measured, `benchmarks/bench_first_run.py --numba`). FAISS also makes the 200k-row graph a minute.

Compilation. umap-learn 0.5 declares most of its numba kernels without `cache=True`; `_import_umap`
imports it with numba's on-disk cache switched on for the kernels it declares, so they compile once
per installation (cache files beside the sources, or in NUMBA_CACHE_DIR) and load in a later process.
Maps are computed in a separate process (`start_map`, `python -m hsfm_core.analysis.projection`):
a Streamlit server never blocks on a fit and never holds umap's memory.

Caching. A map is a parquet file in `<workspace>/cache/`, keyed by the store's content hash, the
run's support tensors, the selected rows and the UMAP parameters: a second request is a file read.
`random_state` makes maps reproducible (and makes umap's layout use one thread).

2-D distances have no exact meaning: the map shows neighbourhoods, not metric distances.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hsfm_core.errors import InputError

EXACT_KNN_MAX_ROWS = 50_000  # above: the k-NN graph through an IVF index (recall measured in bench_scale)
KNN_IVF_NPROBE = 16  # lists searched per point when building the graph (UMAP tolerates an approximate graph)
KNN_PCA_DIM = 64  # above EXACT_KNN_MAX_ROWS the graph is searched on the features' top principal components
UMAP_SMALL_DATA = 4096  # umap computes all pairwise distances itself below this many points
FOREGROUND_MAX_POINTS = 4096  # smaller maps take a few seconds: the page computes them in the request


@dataclass(frozen=True)
class ProjectionParams:
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    random_state: int = 0


@contextmanager
def _numba_cache_by_default():
    """While umap is imported, `numba.njit` / `numba.jit` default to `cache=True`: the kernels umap
    declares are compiled once and then loaded from disk. Kernels that numba cannot cache only warn."""
    import numba

    njit, jit = numba.njit, numba.jit

    def cached(decorator):
        def wrapper(*args, **kwargs):
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)
        return wrapper

    numba.njit, numba.jit = cached(njit), cached(jit)
    try:
        yield
    finally:
        numba.njit, numba.jit = njit, jit


def _import_umap():
    """umap, imported with numba's cache on for its kernels (see the module docstring)."""
    if "umap" not in sys.modules:
        with _numba_cache_by_default(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Cannot cache compiled function.*")
            import umap  # noqa: F401
    return sys.modules["umap"]


def _umap_version() -> str:
    from importlib.metadata import version

    return version("umap-learn")  # without importing umap (numba) into the server


def _key(store, support: dict | None, head: dict | None, rows: np.ndarray, params: ProjectionParams) -> str:
    """Everything the file depends on: the store, rows, parameters, the edits and the head that
    decides `correct`."""
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([store.content_hash, asdict(params), _umap_version()]).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    for name, tensors in (("support", support), ("head", head)):
        h.update(name.encode() + (b"" if tensors is None else b"+"))
        for key in sorted(tensors or {}):
            h.update(key.encode() + np.ascontiguousarray(tensors[key].numpy()).tobytes())
    return h.hexdigest()


def knn_graph(data: np.ndarray, k: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each n × k, of every point's k nearest points (itself included, first
    when exact), by FAISS: exact up to EXACT_KNN_MAX_ROWS rows, IVF above. Cosine distance = 1 − cos."""
    from hsfm_core.analysis.retrieval import FeatureIndex

    if metric != "cosine":
        raise InputError(f"maps are computed with the cosine metric, got {metric!r}")
    n = len(data)
    kind = "exact" if n <= EXACT_KNN_MAX_ROWS else "ivf"
    if kind == "exact":
        index = FeatureIndex.build(data, kind=kind)
    else:  # every point is a query: on the top principal components of the normalised features (as
        # umap's docs advise for large inputs), with 4√n lists — 200k × 512 in about a minute on 2 cores
        data = _principal_components(data, KNN_PCA_DIM)
        index = FeatureIndex.build(data, kind=kind, nlist=int(4 * np.sqrt(n)))
        import faiss

        faiss.extract_index_ivf(index.index).nprobe = KNN_IVF_NPROBE
    indices, scores = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    for start in range(0, n, 16_384):  # chunk by chunk: no second normalised copy of every feature
        part = data[start:start + 16_384]
        found = index.search(part if len(part) > 1 else np.concatenate([part, part]), k)
        indices[start:start + len(part)], scores[start:start + len(part)] = (a[:len(part)] for a in found)
    missing = indices < 0  # an IVF search can return fewer than k: repeat the last neighbour found
    if missing.any():
        last = np.maximum.accumulate(np.where(missing, 0, np.arange(k))[None].repeat(n, 0), axis=1)
        indices = np.take_along_axis(indices, last, axis=1)
        scores = np.take_along_axis(scores, last, axis=1)
    return indices.astype(np.int64), np.clip(1.0 - scores, 0.0, 2.0).astype(np.float32)


def _principal_components(data: np.ndarray, dim: int, sample: int = 20_000, seed: int = 0) -> np.ndarray:
    """The normalised rows projected on the top `dim` principal directions of a random sample of them."""
    from hsfm_core.analysis.retrieval import normalized

    if data.shape[1] <= dim:
        return data
    rng = np.random.default_rng(seed)
    fit = normalized(data[np.sort(rng.choice(len(data), size=min(sample, len(data)), replace=False))])
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = np.ascontiguousarray(vt[:dim].T)
    out = np.empty((len(data), dim), np.float32)
    for start in range(0, len(data), 16_384):
        out[start:start + 16_384] = (normalized(data[start:start + 16_384]) - mean) @ basis
    return out


def embed_jointly(originals: np.ndarray, edits: np.ndarray, params: ProjectionParams,
                  n_epochs: int | None = None, progress=None) -> np.ndarray:
    """2-D coordinates for originals and edits fitted together: (n_originals + n_edits) × 2."""
    data = np.concatenate([np.asarray(originals, dtype=np.float32), np.asarray(edits, dtype=np.float32)])
    report = progress or (lambda stage, fraction: None)
    knn = (None, None, None)
    if len(data) >= UMAP_SMALL_DATA:  # below, umap takes all pairwise distances itself
        report(f"Finding each point's {params.n_neighbors} nearest neighbours (FAISS)", 0.05)
        knn = (*knn_graph(data, params.n_neighbors, params.metric), None)
    report("Loading UMAP", 0.25)
    umap = _import_umap()
    report("Laying out the map (UMAP)", 0.3)
    with warnings.catch_warnings():  # precomputed_knn without a search index: no transform(), as intended
        warnings.filterwarnings("ignore", message=".*precomputed_knn.*|.*n_jobs value.*|.*search index.*")
        # Above EXACT_KNN_MAX_ROWS the layout starts from PCA, not umap's spectral embedding: the
        # spectral init lays out each connected component of the graph separately, and a large
        # store's graph (tight clusters: identities, near-duplicates) can have thousands of them.
        reducer = umap.UMAP(n_neighbors=params.n_neighbors, min_dist=params.min_dist, metric=params.metric,
                            random_state=params.random_state, n_epochs=n_epochs, precomputed_knn=knn,
                            init="pca" if len(data) > EXACT_KNN_MAX_ROWS else "spectral")
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
            params: ProjectionParams = ProjectionParams(), progress=None) -> Path:
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
    coords = embed_jointly(store.features[rows], edits, params, progress=progress)
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


# -- maps computed in the background ------------------------------------------------------------------

@dataclass(frozen=True)
class MapStatus:
    state: str  # "ready" | "running" | "failed" | "absent"
    path: Path  # the map's parquet file
    stage: str = ""  # what the worker is doing (running), or the error (failed)
    elapsed_s: float = 0.0
    estimate_s: float = 0.0

    @property
    def fraction(self) -> float:
        """Elapsed time over the estimate, capped below 1 (an estimate, not a measurement of work)."""
        return min(0.95, self.elapsed_s / self.estimate_s) if self.estimate_s else 0.0


_spawned: dict[str, tuple[subprocess.Popen, float]] = {}  # map path → worker started by this process


def estimate_seconds(n_points: int) -> float:
    """A map's expected time on 2 CPU cores, numba's cache warm: FAISS graph plus UMAP's layout
    (fitted to benchmarks/bench_first_run.py and bench_scale.py: about 15 s at 12k points, 2 min at 200k)."""
    return 8.0 + n_points / 1_800


def _job_file(path: Path) -> Path:
    return path.with_suffix(".job.json")


def _lock_file(path: Path) -> Path:
    return path.with_suffix(".lock")


def _worker_holds_lock(path: Path) -> bool:
    lock = _lock_file(path)
    if not lock.exists():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def map_status(store, run: dict | None = None, rows: np.ndarray | None = None,
               params: ProjectionParams = ProjectionParams()) -> MapStatus:
    """Whether the map is on disk, being computed by a worker process, failed, or not started."""
    path, rows, support, _ = _map_inputs(store, run, rows, params)
    if path.is_file():
        return MapStatus("ready", path)
    job = {}
    try:
        job = json.loads(_job_file(path).read_text())
    except (OSError, json.JSONDecodeError):
        pass
    n_points = len(rows) + (0 if support is None else len(support["after"]))
    estimate = float(job.get("estimate_s") or estimate_seconds(n_points))
    started = float(job.get("started") or _spawned.get(str(path), (None, time.time()))[1])
    ours = _spawned.get(str(path))
    if _worker_holds_lock(path) or (ours is not None and ours[0].poll() is None):
        return MapStatus("running", path, job.get("stage", "Starting the map's worker process"),
                         time.time() - started, estimate)
    if job.get("error"):
        return MapStatus("failed", path, job["error"])
    return MapStatus("absent", path, estimate_s=estimate)


def start_map(store, run: dict | None = None, rows: np.ndarray | None = None,
              params: ProjectionParams = ProjectionParams(), env: dict | None = None) -> MapStatus:
    """Compute the map in a separate process unless it is on disk or already being computed; returns
    its status. The worker writes its stage to `<map>.job.json` and holds `<map>.lock` while it works;
    a second start while it runs (another session, another server) does nothing."""
    status = map_status(store, run, rows, params)
    if status.state in ("ready", "running"):
        return status
    path = status.path
    path.parent.mkdir(parents=True, exist_ok=True)
    _job_file(path).unlink(missing_ok=True)  # a failed attempt is retried from scratch
    command = [sys.executable, "-m", "hsfm_core.analysis.projection", str(store.path),
               "--n-neighbors", str(params.n_neighbors), "--min-dist", str(params.min_dist),
               "--random-state", str(params.random_state)]
    if run is not None:
        command += ["--run-id", run["run_id"]]
    if rows is not None:
        rows_file = path.with_suffix(".rows.npy")
        np.save(rows_file, np.unique(np.asarray(rows, dtype=np.int64)))
        command += ["--rows", str(rows_file)]
    log = open(path.with_suffix(".log"), "ab")
    try:  # its own session: the map finishes even if the server that asked for it stops
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env={**os.environ, **(env or {})})
    finally:
        log.close()
    _spawned[str(path)] = (worker, time.time())
    return map_status(store, run, rows, params)


def default_map_run(workspace) -> dict | None:
    """The run the Projection page opens on: the newest done run with edited features (run ids sort by
    method, then start time) — the same rule as the sidebar's default (`studio.ui.run_pickers`)."""
    from hsfm_core.runs import list_runs

    edited = [r for r in list_runs(workspace, unreadable=[])
              if r["status"] == "done" and r["metrics"] and (r["path"] / "support.safetensors").is_file()]
    return edited[-1] if edited else None


def wait_for_map(store, run: dict | None = None, rows: np.ndarray | None = None,
                 params: ProjectionParams = ProjectionParams(), timeout: float = 600, poll: float = 0.5) -> Path:
    """Block until a started map is on disk (tests, benchmarks); InputError when its worker failed."""
    deadline = time.monotonic() + timeout
    while True:
        status = map_status(store, run, rows, params)
        if status.state == "ready":
            return status.path
        if status.state == "failed":
            raise InputError(f"the map could not be computed: {status.stage}")
        if status.state == "absent":
            raise InputError("the map is not being computed (start_map first)")
        if time.monotonic() > deadline:
            raise InputError(f"the map was not ready within {timeout:.0f} s (stage: {status.stage})")
        time.sleep(poll)


def _run_worker(argv: list[str] | None = None) -> int:
    """`python -m hsfm_core.analysis.projection WORKSPACE [--run-id ID] …`: compute one map, with its
    stage in `<map>.job.json`, under `<map>.lock`."""
    from hsfm_core.features import FeatureStore
    from hsfm_core.fsutil import atomic_path
    from hsfm_core.runs import find_run

    argv = sys.argv[1:] if argv is None else argv
    with contextlib.suppress(OSError):  # background work: the server's pages and any training come first
        os.nice(10)
    parser = argparse.ArgumentParser(prog="python -m hsfm_core.analysis.projection")
    parser.add_argument("workspace")
    parser.add_argument("--run-id")
    parser.add_argument("--rows", help="a .npy file of store rows (default: every row)")
    parser.add_argument("--n-neighbors", type=int, default=ProjectionParams.n_neighbors)
    parser.add_argument("--min-dist", type=float, default=ProjectionParams.min_dist)
    parser.add_argument("--random-state", type=int, default=ProjectionParams.random_state)
    args = parser.parse_args(argv)
    store = FeatureStore.open(args.workspace)
    run = find_run(args.workspace, args.run_id) if args.run_id else None
    rows = np.load(args.rows, allow_pickle=False) if args.rows else None
    params = ProjectionParams(n_neighbors=args.n_neighbors, min_dist=args.min_dist, random_state=args.random_state)
    path, rows_, support, _ = _map_inputs(store, run, rows, params)
    n_points = len(rows_) + (0 if support is None else len(support["after"]))
    started, estimate = time.time(), estimate_seconds(n_points)

    def write(**fields) -> None:
        with atomic_path(_job_file(path)) as tmp:
            Path(tmp).write_text(json.dumps({"pid": os.getpid(), "started": started, "estimate_s": estimate,
                                             "points": n_points, **fields}))

    with open(_lock_file(path), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another worker computes this map
        if path.is_file():
            return 0
        write(stage="Starting")
        try:
            project(store, run, rows, params, progress=lambda stage, fraction: write(stage=stage))
        except Exception as exc:  # recorded for the page, which offers to try again
            write(stage="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        write(stage="done", seconds=time.time() - started)
    return 0


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
    when the map has a run, the run's accuracy on the selected originals (counted with bincount:
    a lasso over 100k points stays milliseconds)."""
    positions = np.asarray(positions, dtype=np.int64)
    n = len(group_labels)
    group = frame["group"].to_numpy()[positions]
    edited = frame["kind"].to_numpy()[positions] == "edited"
    known = (group >= 0) & (group < n)
    points = np.bincount(group[~edited & known], minlength=n)
    table = pd.DataFrame({"group": list(group_labels), "points": points,
                          "edited": np.bincount(group[edited & known], minlength=n)})
    if "correct" in frame:
        correct = frame["correct"].to_numpy()[positions][~edited & known].astype(float)
        right = np.bincount(group[~edited & known], weights=correct, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            table["accuracy"] = np.where(points > 0, right / np.maximum(points, 1), np.nan)
    return table.set_index("group")


if __name__ == "__main__":
    sys.exit(_run_worker())
