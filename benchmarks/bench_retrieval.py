"""FAISS retrieval: build time, single-query latency (k = 16) and IVF recall, at 12k and 1M × 512.

    python -m benchmarks.bench_retrieval [--sizes 12000 1000000]

Features are generated (clustered Gaussians, float32). Latency is per single query, as the app
asks (one support example at a time), p50 / p99 over 200 queries. At 1M rows both the exact
and the IVF index are measured, and the IVF recall@16 is taken against the exact result.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hsfm_core.analysis.retrieval import FeatureIndex


def data(n: int, d: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start : start + m] = centres[rng.integers(0, 1000, m)] + rng.standard_normal((m, d), dtype=np.float32)
    return out


def latency(index: FeatureIndex, queries: np.ndarray) -> tuple[np.ndarray, dict]:
    times, ids = [], []
    for q in queries:
        t0 = time.perf_counter()
        i, _ = index.search(q, 16)
        times.append(time.perf_counter() - t0)
        ids.append(i[0])
    t = np.array(times) * 1000
    return np.array(ids), {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[12_000, 1_000_000])
    args = parser.parse_args()
    results = {}
    for n in args.sizes:
        x = data(n)
        queries = x[np.random.default_rng(1).choice(n, 200, replace=False)] + 0.1
        kinds = ["exact"] if n <= 200_000 else ["exact", "ivf"]
        found = {}
        for kind in kinds:
            t0 = time.perf_counter()
            index = FeatureIndex.build(x, kind=kind)
            build = time.perf_counter() - t0
            found[kind], lat = latency(index, queries)
            results[f"{n}/{kind}"] = {"build_s": build, **lat}
            print(f"{n:>9} × 512 {kind:5s}: build {build:6.2f} s, query p50 {lat['p50_ms']:.2f} ms, "
                  f"p99 {lat['p99_ms']:.2f} ms", flush=True)
            del index
        if "ivf" in found:
            recall = float(np.mean([len(set(a) & set(e)) / 16 for a, e in zip(found["ivf"], found["exact"])]))
            results[f"{n}/ivf"]["recall@16"] = recall
            print(f"{n:>9} × 512 ivf recall@16 against exact: {recall:.3f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
