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
`make` compiles them when it installs (`compile_kernels`, `--compile-kernels`): 26.5 CPU-s once, where every
process that lays out a map before the cache exists would pay it (2.9 CPU-s with the cache).
Maps are computed in a separate process (`start_map`, `python -m hsfm_core.analysis.projection`):
a Streamlit server never blocks on a fit and never holds umap's memory. A fresh worker spends seconds
importing torch, pandas, FAISS and umap before its fit; `prepare_worker` starts one that imports and
then waits on its stdin, and the next `start_map` hands it its map (the demo build prepares one).

Layouts. `ProjectionParams.layout` "fast" (the default, from 2,000 to 50,000 points) fits UMAP on
1,000 landmarks — every edit, every support example's original, and a sample stratified by group —
places every other point at the membership-weighted mean of its 15 nearest landmarks (umap's own
`transform` initialisation), then refines every point for 40 epochs on the whole k-NN graph at a
quarter of umap's learning rate (as `transform` does). "full" is umap on every point (200 epochs from
the spectral layout). On the demo's default map (11,820 points; `benchmarks/bench_projection.py
--quality-only`) the fast layout took 2.4 CPU-s against 8.3 for the full fit; against the full fit its
trustworthiness (k = 15) is 0.996 and it keeps 0.61 of each point's 15 nearest map neighbours, where
the full fit with another seed keeps 0.68 (trustworthiness 0.999). The share of each point's 15
nearest feature-space neighbours shown among its 15 nearest on the map is 0.46 (full: 0.47), and for
the edited points at k = 10 0.42 (full: 0.44). The edits are landmarks: they are fitted jointly, never
placed by `transform` (below).

Caching. A map is a parquet file in `<workspace>/cache/`, keyed by the store's content hash, the
run's support tensors, the selected rows and the UMAP parameters: a second request is a file read.
`random_state` makes maps reproducible (and makes umap's layout use one thread).

2-D distances have no exact meaning: the map shows neighbourhoods, not metric distances.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hsfm_core.detached import Progress, lock_held, spawn, take_lock
from hsfm_core.errors import InputError

EXACT_KNN_MAX_ROWS = 50_000  # above: the k-NN graph through an IVF index (recall measured in bench_scale)
KNN_IVF_NPROBE = 16  # lists searched per point when building the graph (UMAP tolerates an approximate graph)
KNN_PCA_DIM = 64  # above EXACT_KNN_MAX_ROWS the graph is searched on the features' top principal components
UMAP_SMALL_DATA = 4096  # umap computes all pairwise distances itself below this many points
FOREGROUND_MAX_POINTS = 4096  # smaller maps take a few seconds: the page computes them in the request


LAYOUTS = ("fast", "full")
FAST_LANDMARKS = 1000  # points the fast layout fits UMAP on: the edits, the support rows, a stratified sample
FAST_REFINE_EPOCHS = 40  # then every point, from the landmarks' layout, for this many epochs (full: umap's 200)
FAST_REFINE_RATE = 0.25  # at umap's `transform` learning rate (1/4 of a fit's): refine the layout, not redo it
# Above, the full layout from PCA: its quality with 1,000 landmarks is unmeasured there, and at 200k points
# the k-NN graph is most of the map's time (bench_scale: about a minute of 93 s) whichever the layout
FAST_MAX_POINTS = EXACT_KNN_MAX_ROWS


@dataclass(frozen=True)
class ProjectionParams:
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    random_state: int = 0
    layout: str = "fast"  # "fast": landmarks, then every point refined (the module docstring); "full": umap on all

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise InputError(f"map layout {self.layout!r}: expected fast or full")


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
    recipe = [FAST_LANDMARKS, FAST_REFINE_EPOCHS, FAST_REFINE_RATE] if params.layout == "fast" else []
    h.update(json.dumps([store.content_hash, asdict(params), recipe, _umap_version()]).encode())
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
                  n_epochs: int | None = None, progress=None, strata: np.ndarray | None = None,
                  keep: np.ndarray | None = None) -> np.ndarray:
    """2-D coordinates for originals and edits fitted together: (n_originals + n_edits) × 2.

    `params.layout` "fast" (from 2 × FAST_LANDMARKS to FAST_MAX_POINTS points): the layout of the
    landmarks — every edit, the originals at positions `keep`, a sample of the rest stratified by
    `strata` (one label per original) — then every point, placed from its nearest landmarks and refined
    with the whole graph."""
    data = np.concatenate([np.asarray(originals, dtype=np.float32), np.asarray(edits, dtype=np.float32)])
    report = progress or (lambda stage, fraction: None)
    report(f"Finding each point's {params.n_neighbors} nearest neighbours (FAISS)", 0.05)
    # FAISS at every size: umap's own exact path below 4,096 points calls a numba distance from Python
    # once per pair (sklearn's pairwise_distances with a callable), seconds for a few thousand points
    graph = (*knn_graph(data, params.n_neighbors, params.metric), None)
    if params.layout == "fast" and n_epochs is None and 2 * FAST_LANDMARKS < len(data) <= FAST_MAX_POINTS \
            and 4 * params.n_neighbors < FAST_LANDMARKS:
        return _embed_fast(data, graph, len(originals), params, report, strata, keep)
    report("Laying out the map (UMAP)", 0.3)
    # Above EXACT_KNN_MAX_ROWS the layout starts from PCA, not umap's spectral embedding: the
    # spectral init lays out each connected component of the graph separately, and a large
    # store's graph (tight clusters: identities, near-duplicates) can have thousands of them.
    return _umap(data, params, graph, n_epochs=n_epochs, init="pca" if len(data) > EXACT_KNN_MAX_ROWS else "spectral")


def _umap(data: np.ndarray, params: ProjectionParams, knn, **options) -> np.ndarray:
    umap = _import_umap()
    with warnings.catch_warnings():  # precomputed_knn without a search index: no transform(), as intended
        warnings.filterwarnings("ignore", message=".*precomputed_knn.*|.*n_jobs value.*|.*search index.*")
        reducer = umap.UMAP(n_neighbors=params.n_neighbors, min_dist=params.min_dist, metric=params.metric,
                            random_state=params.random_state, precomputed_knn=knn, **options)
        return reducer.fit_transform(data).astype(np.float32)


def landmarks(n_originals: int, n_edits: int, count: int, strata: np.ndarray | None = None,
              keep: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Sorted positions (originals first, then edits) of the fast layout's landmarks: every edit, every
    original in `keep`, and originals drawn without replacement to make up `count`, each stratum
    (`strata`, one label per original; default one stratum) keeping its share and at least one point."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n_originals + n_edits, dtype=bool)
    chosen[n_originals:] = True
    if keep is not None and len(keep):
        chosen[np.asarray(keep, dtype=np.int64)] = True
    labels = np.zeros(n_originals, np.int64) if strata is None else np.asarray(strata)
    rest = np.flatnonzero(~chosen[:n_originals])
    room = max(0, count - int(chosen.sum()))
    if len(rest) and room:
        for label in np.unique(labels[rest]):
            members = rest[labels[rest] == label]
            take = min(len(members), max(1, round(room * len(members) / len(rest))))
            chosen[rng.choice(members, size=take, replace=False)] = True
    return np.flatnonzero(chosen)


def _embed_fast(data: np.ndarray, graph, n_originals: int, params: ProjectionParams, report, strata,
                keep) -> np.ndarray:
    """The fast layout (module docstring, "Layouts"): UMAP on the landmarks; every other point at the
    membership-weighted mean of its nearest landmarks (umap's `transform` initialisation, with umap's
    own membership strengths); then FAST_REFINE_EPOCHS of umap's optimisation of every point on the
    whole k-NN `graph`, starting there, at FAST_REFINE_RATE."""
    import scipy.sparse
    from sklearn.preprocessing import normalize

    from hsfm_core.analysis.retrieval import FeatureIndex

    k = params.n_neighbors
    marks = landmarks(n_originals, len(data) - n_originals, FAST_LANDMARKS, strata, keep, params.random_state)
    report(f"Laying out {len(marks):,} landmarks (UMAP)", 0.3)
    layout = _umap(data[marks], params, (*knn_graph(data[marks], k, params.metric), None), n_epochs=200)
    report("Placing the other points by their nearest landmarks", 0.5)
    umap_ = _import_umap().umap_
    others = np.setdiff1d(np.arange(len(data)), marks)
    neighbours, scores = FeatureIndex.build(data[marks], kind="exact").search(data[others], k)
    distances = np.clip(1.0 - scores, 0.0, 2.0).astype(np.float32)
    sigmas, rhos = umap_.smooth_knn_dist(distances, float(k), local_connectivity=0.0)
    rows, cols, vals, _ = umap_.compute_membership_strengths(neighbours.astype(np.int32), distances, sigmas, rhos,
                                                             bipartite=True)
    weights = normalize(scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(others), len(marks))), norm="l1")
    start = np.empty((len(data), 2), np.float32)
    start[marks] = layout
    start[others] = weights @ layout
    alone = np.flatnonzero(np.asarray(weights.sum(axis=1)).ravel() == 0)  # no weight on any landmark: at its nearest
    start[others[alone]] = layout[neighbours[alone, 0]]
    report("Refining every point's position (UMAP)", 0.6)
    return _umap(data, params, graph, init=start, n_epochs=FAST_REFINE_EPOCHS, learning_rate=FAST_REFINE_RATE)


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
    meta = store.meta.iloc[rows]
    # the fast layout's landmarks: every support example's original, and a sample stratified by group
    keep = np.flatnonzero(np.isin(rows, support["indices"].numpy())) if support is not None else None
    coords = embed_jointly(store.features[rows], edits, params, progress=progress,
                           strata=meta["g"].to_numpy(), keep=keep)
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
class MapStatus(Progress):
    state: str  # "ready" | "running" | "failed" | "absent"
    path: Path  # the map's parquet file
    stage: str = ""  # what the worker is doing (running), or the error (failed)
    elapsed_s: float = 0.0
    estimate_s: float = 0.0


_spawned: dict[str, tuple[subprocess.Popen, float]] = {}  # map path → worker started by this process
_prepared: dict = {}  # "worker": a prepared worker waiting for its map on stdin, "env": the variables it has
_prepared_lock = threading.Lock()  # a Streamlit server runs its sessions in threads
PREPARED = "--prepared"
COMPILE_KERNELS = "--compile-kernels"
PREPARED_IMPORTS = ("hsfm_core.runs", "hsfm_core.features", "hsfm_core.analysis.retrieval", "hsfm_core.heads", "faiss",
                    "safetensors.torch", "scipy.sparse", "sklearn.preprocessing", "pyarrow.parquet")  # torch: 1.7 s


def estimate_seconds(n_points: int, layout: str = "fast") -> float:
    """A map's expected time on 2 CPU cores in a fresh worker, numba's cache warm: imports, FAISS graph,
    UMAP's layout. Full: fitted to benchmarks/bench_first_run.py and bench_scale.py (about 15 s at 12k
    points, 2 min at 200k). Fast (up to FAST_MAX_POINTS): about 4 s of imports and 2 s at 12k
    (bench_projection.py --quality-only)."""
    return 8.0 + n_points / 1_800 if layout == "full" or n_points > FAST_MAX_POINTS else 5.0 + n_points / 3_000


def _job_file(path: Path) -> Path:
    return path.with_suffix(".job.json")


def _lock_file(path: Path) -> Path:
    return path.with_suffix(".lock")


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
    estimate = float(job.get("estimate_s") or estimate_seconds(n_points, params.layout))
    started = float(job.get("started") or _spawned.get(str(path), (None, time.time()))[1])
    ours = _spawned.get(str(path))
    if lock_held(_lock_file(path)) or (ours is not None and ours[0].poll() is None):
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
               "--random-state", str(params.random_state), "--layout", params.layout]
    if run is not None:
        command += ["--run-id", run["run_id"]]
    if rows is not None:
        rows_file = path.with_suffix(".rows.npy")
        np.save(rows_file, np.unique(np.asarray(rows, dtype=np.int64)))
        command += ["--rows", str(rows_file)]
    worker = _hand_to_prepared_worker(command[3:], path.with_suffix(".log"), env)
    if worker is None:  # its own session: the map finishes even if the server that asked for it stops
        worker = spawn(command, path.with_suffix(".log"), env)
    _spawned[str(path)] = (worker, time.time())
    return map_status(store, run, rows, params)


def prepare_worker(env: dict | None = None) -> None:
    """Start a map worker that imports what a map needs (torch, pandas, FAISS, umap: seconds of a
    fresh process) and then waits on its stdin: this process's next `start_map` hands it the map
    instead of starting a new process. The demo build prepares one while it works, so the map that
    follows it starts fitting at once (docs/ARCHITECTURE.md §Demo). Unused, it ends with this process
    (its stdin closes) or with `discard_prepared_worker`."""
    with _prepared_lock:
        worker = _prepared.get("worker")
        if worker is not None and worker.poll() is None:
            return
        _prepared["worker"] = subprocess.Popen(
            [sys.executable, "-m", "hsfm_core.analysis.projection", PREPARED], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **(env or {})})
        _prepared["env"] = dict(env or {})


def discard_prepared_worker() -> None:
    """End the prepared worker, if any, without a map (its stdin closes: it exits)."""
    with _prepared_lock:
        worker = _prepared.pop("worker", None)
    if worker is not None:
        with contextlib.suppress(OSError):
            worker.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=10)


def _hand_to_prepared_worker(argv: list[str], log: Path, env: dict | None) -> subprocess.Popen | None:
    """Give the map (its worker arguments) to the prepared worker; None when there is none alive with
    these environment variables."""
    with _prepared_lock:
        worker = _prepared.get("worker")
        if worker is None or worker.poll() is not None or _prepared.get("env") != dict(env or {}):
            return None
        del _prepared["worker"]
    try:
        worker.stdin.write((json.dumps({"argv": argv, "log": str(log)}) + "\n").encode())
        worker.stdin.close()
    except OSError:  # it died meanwhile: start a fresh one instead
        return None
    return worker


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


def compile_kernels() -> float:
    """Compile umap's numba kernels into numba's on-disk cache ("Compilation" above) by laying out two tiny
    maps of random points, one per layout, through the same calls as a real map (float32, the default
    parameters). An installation runs it once (Makefile), so that no process pays the compilation in its
    first map, and processes starting together (a test suite's workers, a class's first maps) do not each
    compile the same kernels. → CPU seconds spent."""
    cpu = time.process_time()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2 * FAST_LANDMARKS + 200, 16)).astype(np.float32)
    for layout, n in (("fast", len(data)), ("full", 300)):
        embed_jointly(data[:n - 16], data[n - 16:n] + 0.1, ProjectionParams(layout=layout))
    return time.process_time() - cpu


def _main(argv: list[str]) -> int:
    """The worker process: `WORKSPACE [--run-id ID] …` computes that map; `--prepared` imports first,
    then reads `{"argv": [...], "log": file}` from stdin (nothing: exits) and computes that map.
    `--compile-kernels`: `compile_kernels()`, at installation."""
    if argv == [COMPILE_KERNELS]:
        print(f"umap's numba kernels compiled into numba's cache in {compile_kernels():.1f} CPU-s")
        return 0
    with contextlib.suppress(OSError):  # background work: the server's pages and any training come first
        os.nice(10)
    if argv[:1] != [PREPARED]:
        return _run_worker(argv)
    import importlib

    for module in PREPARED_IMPORTS:  # what a map needs, imported before its request comes
        importlib.import_module(module)
    _import_umap()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    request = json.loads(line)
    with open(request["log"], "ab") as log:  # from here on, like a worker started for this map
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    return _run_worker([str(a) for a in request["argv"]])


def _run_worker(argv: list[str]) -> int:
    """`python -m hsfm_core.analysis.projection WORKSPACE [--run-id ID] …`: compute one map, with its
    stage in `<map>.job.json`, under `<map>.lock`."""
    from hsfm_core.features import FeatureStore
    from hsfm_core.fsutil import atomic_path
    from hsfm_core.runs import find_run

    parser = argparse.ArgumentParser(prog="python -m hsfm_core.analysis.projection")
    parser.add_argument("workspace")
    parser.add_argument("--run-id")
    parser.add_argument("--rows", help="a .npy file of store rows (default: every row)")
    parser.add_argument("--n-neighbors", type=int, default=ProjectionParams.n_neighbors)
    parser.add_argument("--min-dist", type=float, default=ProjectionParams.min_dist)
    parser.add_argument("--random-state", type=int, default=ProjectionParams.random_state)
    parser.add_argument("--layout", choices=LAYOUTS, default=ProjectionParams.layout)
    args = parser.parse_args(argv)
    store = FeatureStore.open(args.workspace)
    run = find_run(args.workspace, args.run_id) if args.run_id else None
    rows = np.load(args.rows, allow_pickle=False) if args.rows else None
    params = ProjectionParams(n_neighbors=args.n_neighbors, min_dist=args.min_dist, random_state=args.random_state,
                              layout=args.layout)
    path, rows_, support, _ = _map_inputs(store, run, rows, params)
    n_points = len(rows_) + (0 if support is None else len(support["after"]))
    started, estimate, cpu = time.time(), estimate_seconds(n_points, params.layout), time.process_time()

    def write(**fields) -> None:
        with atomic_path(_job_file(path)) as tmp:
            Path(tmp).write_text(json.dumps({"pid": os.getpid(), "started": started, "estimate_s": estimate,
                                             "points": n_points, **fields}))

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(_lock_file(path), "a") as lock:
        if not take_lock(lock):
            return 0  # another worker computes this map
        if path.is_file():
            return 0
        write(stage="Starting")
        try:
            project(store, run, rows, params, progress=lambda stage, fraction: write(stage=stage))
        except Exception as exc:  # recorded for the page, which offers to try again
            write(stage="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        write(stage="done", seconds=time.time() - started, cpu_seconds=time.process_time() - cpu)
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
    sys.exit(_main(sys.argv[1:]))
