"""AFR wall time (3 seeds, default settings: 40 (γ, λ) heads × 500 full-batch steps) on generated features.

    python -m benchmarks.bench_afr [--sizes small waterbirds] [--seeds 3] [--threads 2]

Sizes: `small` is the target of issue 17 (5,000 train × 64-d, 1,000 val); `waterbirds` has the exact
group counts of Waterbirds' train and val and d = 2048 (a ResNet-50's features). Features: the
Gaussian spurious-correlation problem of the tests (weak core direction, strong spurious one).
Each time is the wall time of `METHOD.fit` on a store (the per-seed ERM probe θ₀ on the other 80 %
of train included), after one small warm-up fit that pays PyTorch's lazy imports. The test WGA is
printed as a sanity check only: `waterbirds` is a timing fixture whose reweighting set holds ~11
rows of the smallest group against 2048 isotropic noise dimensions, so AFR overfits it.
On a machine shared with other work, pass `--threads 1` (OpenMP threads that wait on busy cores
slow every small tensor operation by an order of magnitude).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hsfm_core import methods
from hsfm_core.features import write_store
from hsfm_core.heads import evaluate_head

MANIFEST = {"dataset": {"format": "synthetic", "source": "bench-afr", "options": {}}, "image_root": None,
            "class_names": ["landbird", "waterbird"], "attribute_names": ["land", "water"],
            "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": "gaussian"},
            "clip_space": False, "text_encoder": None, "shard": None}
SIZES = {  # group counts (g = 2y + a) per split, and the feature dimension
    "small": ({"train": (2375, 125, 125, 2375), "val": (250, 250, 250, 250), "test": (500, 500, 500, 500)}, 64),
    "waterbirds": ({"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133), "test": (2255, 2255, 642, 642)},
                   2048),
}


def store_with(path: Path, counts: dict, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, metas = [], []
    for split, per_group in counts.items():
        g = rng.permutation(np.repeat(np.arange(4), per_group))
        y, a = g // 2, g % 2
        x = rng.standard_normal((len(g), d), dtype=np.float32)
        x[:, 0] += 2 * y - 1
        x[:, 1] += 3.0 * (2 * a - 1)
        xs.append(x)
        metas.append(pd.DataFrame({"split": split, "y": y, "a": a, "g": g}))
    meta = pd.concat(metas, ignore_index=True)
    meta.insert(0, "row_id", np.arange(len(meta)))
    meta.insert(1, "sample_id", meta["row_id"].astype(str))
    meta["image_path"] = ""
    return write_store(path, np.concatenate(xs), meta, MANIFEST)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    afr = methods.get("afr")
    results = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        warm = store_with(Path(tmp) / "warm", SIZES["small"][0], 8)
        t0 = time.perf_counter()
        afr.fit(warm, afr.settings(None, ["steps=2"]), [0])
        results["cold_s"] = time.perf_counter() - t0
        for name in args.sizes:
            counts, d = SIZES[name]
            store = store_with(Path(tmp) / name, counts, d)
            settings = afr.settings()
            seeds = list(range(args.seeds))
            t0 = time.perf_counter()
            heads = afr.fit(store, settings, seeds)
            elapsed = time.perf_counter() - t0
            wga = [evaluate_head(store, h.weight, h.bias)["test"]["wga"] for h in heads]
            results[name] = {"d": d, "train": sum(counts["train"]), "heads": len(settings.grid),
                             "steps": settings.steps, "seeds": len(seeds), "fit_s": elapsed, "per_seed_s": elapsed / len(seeds),
                             "test_wga": wga, "selected": [(h.selected["gamma"], h.selected["lambda"]) for h in heads]}
            print(f"{name} ({sum(counts['train'])} train × {d}-d): AFR {len(seeds)} seeds {elapsed:.2f} s "
                  f"({elapsed / len(seeds):.2f} s a seed); test WGA {np.mean(wga):.3f}")
    print(f"first call in a process pays {results['cold_s']:.2f} s of lazy imports (not included above)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
