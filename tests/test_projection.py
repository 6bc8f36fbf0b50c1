import json
import os

import numpy as np
import pandas as pd
import pytest

from hsfm_core.cli import main
from hsfm_core.errors import InputError
from hsfm_core.analysis.projection import ProjectionParams, neighbour_agreement, project
from hsfm_core.runs import find_run
from hsfm_core.train import train
from tests.gaussian import TINY_HSFM, gaussian_workspace

pytestmark = pytest.mark.slow  # the first UMAP in a process compiles numba kernels


def test_map_holds_originals_edits_and_correctness_and_is_cached(tmp_path, capsys):
    ws = tmp_path / "ws"
    store = gaussian_workspace(ws, d=16, sizes=(300, 150, 150))
    (trained,) = train(ws, "hsfm", overrides=TINY_HSFM)
    run = find_run(ws, trained.run_id)
    path = project(store, run)
    frame = pd.read_parquet(path)
    assert len(frame) == 600 + 8
    assert frame["kind"].value_counts().to_dict() == {"original": 592, "support": 8, "edited": 8}
    edited = frame[frame["kind"] == "edited"]
    assert edited["support"].tolist() == list(range(8)) and edited["y_class"].tolist() == [0] * 4 + [1] * 4
    support_rows = frame.loc[frame["kind"] == "support", "row"].tolist()
    assert sorted(support_rows) == sorted(edited["row"].tolist())
    assert frame["correct"].dtype == bool and np.isfinite(frame[["x", "y"]].to_numpy()).all()
    originals = frame[frame["kind"] != "edited"]
    assert (originals["group"].to_numpy() == store.meta["g"].to_numpy()[originals["row"].to_numpy()]).all()

    stamp = path.stat().st_mtime_ns
    assert project(store, run) == path and path.stat().st_mtime_ns == stamp  # a cache hit: no recompute
    other = project(store, run, params=ProjectionParams(n_neighbors=10))
    assert other != path
    (erm,) = train(ws, "erm")
    (dfr,) = train(ws, "dfr", overrides=["n_refits=2"])
    plain = project(store)
    by_erm, by_dfr = project(store, find_run(ws, erm.run_id)), project(store, find_run(ws, dfr.run_id))
    assert len({plain, by_erm, by_dfr}) == 3  # `correct` depends on the head: never a shared file
    assert "correct" not in pd.read_parquet(plain) and "correct" in pd.read_parquet(by_dfr)

    capsys.readouterr()
    assert main(["project", "--workspace", str(ws), "--split", "val"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 150 and out["coordinates"].endswith(".parquet")


def test_neighbour_agreement():
    rng = np.random.default_rng(0)
    high = rng.normal(size=(200, 5))
    assert neighbour_agreement(high, high, np.arange(10), metric="euclidean") == 1.0
    assert neighbour_agreement(high, rng.normal(size=(200, 2)), np.arange(50), metric="euclidean") < 0.3


def test_knn_graph_matches_exact_cosine_neighbours():
    from sklearn.neighbors import NearestNeighbors

    from hsfm_core.analysis.projection import knn_graph

    x = np.random.default_rng(0).normal(size=(400, 12)).astype(np.float32)
    indices, distances = knn_graph(x, 10)
    exact_d, exact_i = NearestNeighbors(n_neighbors=10, metric="cosine").fit(x).kneighbors(x)
    assert (indices[:, 0] == np.arange(400)).all()  # each point is its own first neighbour, as umap expects
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, exact_i)]) > 0.99
    np.testing.assert_allclose(np.sort(distances, axis=1), np.sort(exact_d, axis=1), atol=1e-5)


def test_a_large_map_is_computed_in_a_worker_process_then_read_from_the_cache(tmp_path):
    """Above FOREGROUND_MAX_POINTS the map is fitted by `python -m hsfm_core.analysis.projection` (FAISS
    graph, umap with numba's cache), with its stage on disk; a second start is a cache hit."""
    from hsfm_core.analysis import projection
    from hsfm_core.features import FeatureStore

    ws = tmp_path / "ws"
    gaussian_workspace(ws, d=16, sizes=(2600, 1000, 1000))  # 4,600 points: umap's approximate path
    (hsfm,) = train(ws, "hsfm", overrides=TINY_HSFM)
    store, run = FeatureStore.open(ws), find_run(ws, hsfm.run_id)
    assert projection.default_map_run(ws)["run_id"] == hsfm.run_id
    assert projection.map_status(store, run).state == "absent"
    started = projection.start_map(store, run)
    assert started.state == "running" and started.estimate_s > 0
    assert projection.start_map(store, run).state == "running"  # a second request does not start another
    path = projection.wait_for_map(store, run, timeout=300)
    frame = pd.read_parquet(path)
    support = int((frame["kind"] == "edited").sum())
    assert len(frame) == 4600 + support and support > 0 and np.isfinite(frame[["x", "y"]].to_numpy()).all()
    job = json.loads(path.with_suffix(".job.json").read_text())
    assert job["stage"] == "done" and job["points"] == 4600 + support
    assert projection.start_map(store, run).state == "ready" and path.stat().st_mtime_ns == path.stat().st_mtime_ns
    with pytest.raises(InputError, match="more than n_neighbors = 5000"):  # checked before a worker starts
        projection.start_map(store, run, params=projection.ProjectionParams(n_neighbors=5000))


def test_large_inputs_get_an_approximate_graph_on_principal_components(monkeypatch):
    """Above EXACT_KNN_MAX_ROWS: IVF on the top principal components; still mostly the exact neighbours
    on data with structure (clusters in a low-dimensional subspace, as features have)."""
    from sklearn.neighbors import NearestNeighbors

    from hsfm_core.analysis import projection

    monkeypatch.setattr(projection, "EXACT_KNN_MAX_ROWS", 500)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 16)) @ rng.normal(size=(16, 128))
    x = (centres[rng.integers(0, 60, 3000)] + 0.3 * rng.normal(size=(3000, 128))).astype(np.float32)
    indices, distances = projection.knn_graph(x, 10)
    assert indices.shape == distances.shape == (3000, 10) and (indices >= 0).all()
    exact = NearestNeighbors(n_neighbors=10, metric="cosine").fit(x).kneighbors(x[:300], return_distance=False)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices[:300], exact)]) > 0.6


def test_landmarks_hold_every_edit_and_kept_row_and_each_groups_share():
    from hsfm_core.analysis.projection import landmarks

    strata = np.repeat([0, 1, 2, 3], [7000, 2000, 900, 100])
    marks = landmarks(10_000, 40, 1000, strata=strata, keep=np.array([5, 9_999]), seed=0)
    assert np.all(np.diff(marks) > 0) and abs(len(marks) - 1000) <= 4  # rounding per group
    assert set(range(10_000, 10_040)) <= set(marks) and {5, 9_999} <= set(marks)
    originals = marks[marks < 10_000]
    shares = np.bincount(strata[originals], minlength=4) / len(originals)
    np.testing.assert_allclose(shares, [0.7, 0.2, 0.09, 0.01], atol=0.01)
    assert np.array_equal(marks, landmarks(10_000, 40, 1000, strata=strata, keep=np.array([5, 9_999]), seed=0))
    tiny = np.repeat([0, 1], [5000, 3])  # a small group keeps at least one landmark
    assert (tiny[landmarks(5003, 0, 100, strata=tiny)] == 1).sum() >= 1


def test_fast_layout_keeps_the_neighbourhoods_of_the_full_fit(monkeypatch):
    """Above 2 × FAST_LANDMARKS points the default layout fits the landmarks, places the rest and refines:
    the map keeps what the full fit shows (trustworthiness against it, neighbours kept, edits placed)."""
    from sklearn.manifold import trustworthiness

    from hsfm_core.analysis.projection import embed_jointly

    rng = np.random.default_rng(0)
    centres = 4 * rng.normal(size=(12, 16))
    labels = rng.integers(0, 12, 3000)
    originals = (centres[labels] + rng.normal(size=(3000, 16))).astype(np.float32)
    edits = (originals[:20] + 0.5 * rng.normal(size=(20, 16))).astype(np.float32)
    features = np.concatenate([originals, edits])
    stages = []
    fast = embed_jointly(originals, edits, ProjectionParams(), strata=labels, keep=np.arange(20),
                         progress=lambda stage, fraction: stages.append(stage))
    full = embed_jointly(originals, edits, ProjectionParams(layout="full"))
    null = embed_jointly(originals, edits, ProjectionParams(layout="full", random_state=1))  # another seed alone
    assert any("landmarks" in s for s in stages) and fast.shape == full.shape == (3020, 2)
    assert np.isfinite(fast).all()
    assert trustworthiness(full, fast, n_neighbors=15) >= 0.95
    kept = {name: neighbour_agreement(full, layout, np.arange(3020), k=15, metric="euclidean")
            for name, layout in (("fast", fast), ("null", null))}
    assert kept["fast"] >= 0.7 * kept["null"], kept  # measured 0.20 against 0.24
    on_map = {name: neighbour_agreement(features, layout, np.arange(3020), k=15)
              for name, layout in (("fast", fast), ("full", full))}
    assert on_map["fast"] >= 0.8 * on_map["full"], on_map  # measured 0.18 against 0.21
    from hsfm_core.analysis import projection

    monkeypatch.setattr(projection, "FAST_MAX_POINTS", 3000)  # above it, the full layout
    stages.clear()
    above = embed_jointly(originals, edits, ProjectionParams(), progress=lambda stage, fraction: stages.append(stage))
    assert not any("landmarks" in s for s in stages) and np.array_equal(above, full)
    with pytest.raises(InputError, match="layout"):
        ProjectionParams(layout="tsne")


def test_a_prepared_worker_computes_the_next_map_and_an_unused_one_ends(tmp_path):
    """`prepare_worker` imports in advance; the next `start_map` hands it the map (its pid is the job's);
    `discard_prepared_worker` ends one that got no map."""
    from hsfm_core.analysis import projection
    from hsfm_core.features import FeatureStore

    ws = tmp_path / "ws"
    gaussian_workspace(ws, d=16, sizes=(300, 150, 150))
    (hsfm,) = train(ws, "hsfm", overrides=TINY_HSFM)
    store, run = FeatureStore.open(ws), find_run(ws, hsfm.run_id)
    projection.prepare_worker()
    prepared = projection._prepared["worker"]
    status = projection.start_map(store, run)
    assert status.state == "running" and "worker" not in projection._prepared
    path = projection.wait_for_map(store, run, timeout=300)
    assert json.loads(path.with_suffix(".job.json").read_text())["pid"] == prepared.pid
    assert prepared.wait(timeout=60) == 0 and len(pd.read_parquet(path)) == 600 + 8

    projection.prepare_worker()
    unused = projection._prepared["worker"]
    projection.discard_prepared_worker()
    assert unused.wait(timeout=60) == 0 and "worker" not in projection._prepared
    other = projection.start_map(store, run, params=ProjectionParams(n_neighbors=10))  # a fresh worker again
    assert other.state == "running"
    projection.wait_for_map(store, run, params=ProjectionParams(n_neighbors=10), timeout=300)


def test_compiled_kernels_cover_a_map_of_either_layout(tmp_path):
    """`--compile-kernels` (run by `make` at installation) leaves in numba's cache every kernel a map uses:
    a later process lays out maps of both layouts, with other sizes and dimensions, and compiles nothing."""
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "NUMBA_DEBUG_CACHE": "1"}
    done = subprocess.run([sys.executable, "-m", "hsfm_core.analysis.projection", "--compile-kernels"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[cache] data saved to" in done.stdout  # it compiled them: the cache folder started empty
    later = subprocess.run([sys.executable, "-c", (
        "import numpy as np\n"
        "from hsfm_core.analysis.projection import ProjectionParams, embed_jointly\n"
        "data = np.random.default_rng(1).standard_normal((2600, 48))\n"  # float64: embed_jointly casts
        "for layout, n in (('fast', 2600), ('full', 500)):\n"
        "    embed_jointly(data[:n - 24], data[n - 24:n], ProjectionParams(layout=layout, n_neighbors=10))\n")],
        env=env, capture_output=True, text=True, timeout=600)
    assert later.returncode == 0, later.stderr[-2000:]
    events = later.stdout.splitlines()
    assert not [e for e in events if "saved to" in e], "a map compiled kernels that --compile-kernels did not"
    assert sum("data loaded from" in e for e in events) >= 10
