"""UMAP on a demo workspace: cold / warm / cache-hit times, and how honestly each placement option
draws the edited points (the measurement behind hsfm_core/projection.py's choice).

    python -m benchmarks.bench_projection --workspace DEMO_WORKSPACE

Placement honesty: for each edited support point, the share of its 10 nearest neighbours in
feature space (cosine, among originals + edits) that are also among its 10 nearest in 2-D.
Options: fitting originals + edits together (what `project` does) vs `fit(originals)` then
`transform(edits)`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args()
    from hsfm_core.features import FeatureStore
    from hsfm_core.analysis.projection import ProjectionParams, embed_jointly, neighbour_agreement, project
    from hsfm_core.runs import list_runs, load_support

    store = FeatureStore.open(args.workspace)
    run = next(r for r in list_runs(args.workspace) if r["method"] == "hsfm")
    cache = store.path / "cache"
    for old in cache.glob("umap-*.parquet"):
        old.unlink()

    t0 = time.perf_counter()
    project(store, run)  # the first UMAP in this process: numba compiles
    cold = time.perf_counter() - t0
    for old in cache.glob("umap-*.parquet"):
        old.unlink()
    t1 = time.perf_counter()
    project(store, run)
    warm = time.perf_counter() - t1
    t2 = time.perf_counter()
    path = project(store, run)
    hit = time.perf_counter() - t2
    print(f"UMAP of {store.manifest['n_rows']} points + edits: cold {cold:.1f} s, warm {warm:.1f} s, "
          f"cache hit {1000 * hit:.1f} ms ({path.name})")

    import umap

    support = load_support(run)
    originals = np.asarray(store.features, dtype=np.float32)
    edits = support["after"].numpy()
    high = np.concatenate([originals, edits])
    queries = np.arange(len(originals), len(high))
    joint = embed_jointly(originals, edits, ProjectionParams())
    params = ProjectionParams()
    reducer = umap.UMAP(n_neighbors=params.n_neighbors, min_dist=params.min_dist, metric=params.metric,
                        random_state=params.random_state).fit(originals)
    transformed = np.concatenate([reducer.embedding_, reducer.transform(edits)])
    result = {"cold_s": cold, "warm_s": warm, "cache_hit_s": hit,
              "agreement_joint": neighbour_agreement(high, joint, queries),
              "agreement_transform": neighbour_agreement(high, transformed, queries)}
    print(f"edited points' 10-NN agreement (feature space vs 2-D): joint fit {result['agreement_joint']:.3f}, "
          f"fit + transform {result['agreement_transform']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
