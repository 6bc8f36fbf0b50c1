"""UMAP on a demo workspace: what the fast layout costs in map quality and saves in time, cold / warm /
cache-hit times, and how honestly each placement option draws the edited points (the measurements
behind hsfm_core/analysis/projection.py's choices).

    python -m benchmarks.bench_projection --workspace DEMO_WORKSPACE [--quality-only] [--trust-all]

Quality (`--quality-only` measures only this): the default map's points (the newest edited run's
originals + edits) laid out by the full fit (umap on every point, seed 0: the map before the fast
layout), by the fast layout (seed 0), and by the full fit with seed 1 (the null: what a different
seed alone changes). Against the full fit: sklearn's trustworthiness at k = 15 (the full fit's 2-D
points as the "high" space) on a 3,000-point sample (`--trust-all`: every point; sklearn's exact
computation holds three n × n matrices, 3.3 GB at 11.8k points), and the share of each point's 15
nearest map neighbours kept. Against the features: the share of each point's 15 nearest neighbours in
feature space (cosine) that are among its 15 nearest on the map, and the same at k = 10 for the edited
points. Time: wall and CPU seconds of each layout in one process (numba warm), machine load printed.

Placement honesty: for each edited support point, the share of its 10 nearest neighbours in feature
space (cosine, among originals + edits) that are also among its 10 nearest in 2-D. Options: fitting
originals + edits together (what `project` does) vs `fit(originals)` then `transform(edits)`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

TRUST_SAMPLE = 3000  # the test's sample (tests/test_demo.py): sklearn's trustworthiness is n² in memory


def map_quality(features: np.ndarray, n_originals: int, reference: np.ndarray, other: np.ndarray,
                trust_points: int | None = TRUST_SAMPLE, seed: int = 0) -> dict:
    """`other` (a 2-D map of `features`) against `reference` (the full fit's map) and the features."""
    from sklearn.manifold import trustworthiness

    from hsfm_core.analysis.projection import neighbour_agreement

    n = len(features)
    every = np.arange(n)
    sample = every if not trust_points or trust_points >= n else \
        np.sort(np.random.default_rng(seed).choice(n, size=trust_points, replace=False))
    return {"trustworthiness_vs_full": float(trustworthiness(reference[sample], other[sample], n_neighbors=15)),
            "trust_points": len(sample),
            "kept_15nn_of_full": neighbour_agreement(reference, other, every, k=15, metric="euclidean"),
            "feature_15nn_on_map": neighbour_agreement(features, other, every, k=15),
            "edits_10nn_on_map": neighbour_agreement(features, other, np.arange(n_originals, n), k=10)}


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    out = function()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def quality(workspace: str, trust_all: bool) -> dict:
    from hsfm_core.analysis.projection import (FAST_LANDMARKS, FAST_REFINE_EPOCHS, FAST_REFINE_RATE,
                                               ProjectionParams, _map_inputs, default_map_run, embed_jointly)
    from hsfm_core.features import FeatureStore

    store = FeatureStore.open(workspace)
    run = default_map_run(workspace)
    _, rows, support, _ = _map_inputs(store, run, None, ProjectionParams())
    originals = np.asarray(store.features[rows], dtype=np.float32)
    edits = support["after"].numpy()
    features = np.concatenate([originals, edits])
    strata = store.meta["g"].to_numpy()[rows]
    keep = np.flatnonzero(np.isin(rows, support["indices"].numpy()))

    def layout(kind: str, seed: int):
        return embed_jointly(originals, edits, ProjectionParams(layout=kind, random_state=seed), strata=strata,
                             keep=keep)

    layout("fast", 0)  # numba's kernels loaded, FAISS and BLAS warm: the timings below are the layouts
    out = {"points": len(features), "run": run["run_id"], "load_before": os.getloadavg()[0],
           "fast_recipe": {"landmarks": FAST_LANDMARKS, "refine_epochs": FAST_REFINE_EPOCHS,
                           "refine_learning_rate": FAST_REFINE_RATE}}
    full, out["full_wall_s"], out["full_cpu_s"] = timed(lambda: layout("full", 0))
    fast, out["fast_wall_s"], out["fast_cpu_s"] = timed(lambda: layout("fast", 0))
    null, _, _ = timed(lambda: layout("full", 1))
    points = None if trust_all else TRUST_SAMPLE
    out["fast"] = map_quality(features, len(originals), full, fast, points)
    out["null: full fit, seed 1"] = map_quality(features, len(originals), full, null, points)
    out["full: feature_15nn_on_map"] = map_quality(features, len(originals), full, full, 100)["feature_15nn_on_map"]
    out["full: edits_10nn_on_map"] = map_quality(features, len(originals), full, full, 100)["edits_10nn_on_map"]
    out["load_after"] = os.getloadavg()[0]
    return out


def placement(workspace: str) -> dict:
    from hsfm_core.analysis.projection import ProjectionParams, embed_jointly, neighbour_agreement, project
    from hsfm_core.features import FeatureStore
    from hsfm_core.runs import list_runs, load_support

    store = FeatureStore.open(workspace)
    run = next(r for r in list_runs(workspace) if r["method"] == "hsfm")
    cache = store.path / "cache"
    for old in cache.glob("umap-*.parquet"):
        old.unlink()

    t0 = time.perf_counter()
    project(store, run)  # the first UMAP in this process: numba loads (or compiles) its kernels
    cold = time.perf_counter() - t0
    for old in cache.glob("umap-*.parquet"):
        old.unlink()
    t1 = time.perf_counter()
    project(store, run)
    warm = time.perf_counter() - t1
    t2 = time.perf_counter()
    path = project(store, run)
    hit = time.perf_counter() - t2
    print(f"UMAP of {store.manifest['n_rows']} points + edits (fast layout): cold {cold:.1f} s, warm {warm:.1f} s, "
          f"cache hit {1000 * hit:.1f} ms ({path.name})")

    import umap

    support = load_support(run)
    originals = np.asarray(store.features, dtype=np.float32)
    edits = support["after"].numpy()
    high = np.concatenate([originals, edits])
    queries = np.arange(len(originals), len(high))
    params = ProjectionParams(layout="full")
    joint = embed_jointly(originals, edits, params)
    reducer = umap.UMAP(n_neighbors=params.n_neighbors, min_dist=params.min_dist, metric=params.metric,
                        random_state=params.random_state).fit(originals)
    transformed = np.concatenate([reducer.embedding_, reducer.transform(edits)])
    result = {"cold_s": cold, "warm_s": warm, "cache_hit_s": hit,
              "agreement_joint": neighbour_agreement(high, joint, queries),
              "agreement_transform": neighbour_agreement(high, transformed, queries)}
    print(f"edited points' 10-NN agreement (feature space vs 2-D): joint fit {result['agreement_joint']:.3f}, "
          f"fit + transform {result['agreement_transform']:.3f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--quality-only", action="store_true", help="only the fast layout against the full fit")
    parser.add_argument("--trust-all", action="store_true", help="trustworthiness over every point (3.3 GB at 12k)")
    args = parser.parse_args()
    result = {"quality": quality(args.workspace, args.trust_all)}
    print(json.dumps(result, indent=2), flush=True)
    if not args.quality_only:
        result["placement"] = placement(args.workspace)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
