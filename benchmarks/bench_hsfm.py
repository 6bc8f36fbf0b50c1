"""HSFM and DFR wall time on generated features of Waterbirds and CelebA size (d = 2048), 2 CPU cores.

    python -m benchmarks.bench_hsfm [--sizes waterbirds celeba] [--seeds 5]

Features: the Gaussian spurious-correlation problem of the tests (weak core direction, strong
spurious one) with the exact group counts of each benchmark's train and val splits. θ₀ is the ERM probe fitted on a
20k-row train subsample (fitting it is not part of the HSFM time). Every time is the wall time
of the `fit_hsfm` / `DFR.fit` call, validation evaluation included, after one small warm-up call
that pays PyTorch's lazy imports (reported separately as `cold_extra_s`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from hsfm_core.groups import binary
from hsfm_core.methods.dfr import DFR
from hsfm_core.methods.erm import ERMProbe
from hsfm_core.methods.hsfm import PRESETS, HSFMSettings
from hsfm_core.methods.hsfm import fit_hsfm

# Exact group counts (g = 2y + a) per split of the real benchmarks.
GROUP_COUNTS = {
    "waterbirds": {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133), "test": (2255, 2255, 642, 642)},
    "celeba": {"train": (71_629, 66_874, 22_880, 1_387), "val": (8_535, 8_276, 2_874, 182),
               "test": (9_767, 7_535, 2_480, 180)},
}
D = 2048


def problem(counts, seed: int):
    """Features with these group counts: a weak core direction (y) and a strong spurious one (a)."""
    rng = np.random.default_rng(seed)
    g = rng.permutation(np.repeat(np.arange(4), counts))
    y, a = g // 2, g % 2
    x = rng.standard_normal((len(g), D), dtype=np.float32)
    x[:, 0] += 2 * y - 1
    x[:, 1] += 3.0 * (2 * a - 1)
    return x, y, a


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=list(GROUP_COUNTS), choices=list(GROUP_COUNTS))
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")

    (xt, yt, _), (xv, yv, av) = problem((500, 20, 20, 500), 0), problem((100, 100, 100, 100), 1)
    warm = HSFMSettings(n_support=4, inner_steps=2, outer_steps=1, hard_per_class=8, epochs=1)
    probe = ERMProbe().fit(xt[:, :64], yt).head_
    cold, _ = timed(lambda: fit_hsfm(xt[:, :64], yt, xv[:, :64], yv, 2 * yv + av, probe.weight, probe.bias, warm))
    results = {"cold_extra_s": cold}

    for name in args.sizes:
        counts = GROUP_COUNTS[name]
        (xt, yt, _), (xv, yv, av) = problem(counts["train"], 0), problem(counts["val"], 1)
        gv = 2 * yv + av
        sub = np.random.default_rng(0).permutation(len(xt))[:20_000]
        init = ERMProbe(max_iter=200).fit(xt[sub], yt[sub]).head_
        config = PRESETS[name]
        t1, (r1,) = timed(lambda: fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0]))
        seeds = list(range(args.seeds))
        tn, rn = timed(lambda: fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=seeds))
        t_dfr, dfr = timed(lambda: DFR(binary(), seed=0).fit(xv, yv, gv))
        results[name] = {"preset": dataclasses.asdict(config), "hsfm_one_seed_s": t1, f"hsfm_{len(seeds)}_seeds_s": tn,
                         "ratio": tn / t1, "sequential_estimate_s": t1 * len(seeds), "dfr_s": t_dfr,
                         "dfr_selected_C": dfr.best_C_, "hsfm_val_wga_best": r1.history[r1.best_epoch - 1]["val_wga"]}
        print(f"{name}: HSFM 1 seed {t1:.2f} s; {len(seeds)} seeds batched {tn:.2f} s "
              f"({tn / t1:.2f}× one seed; sequential would be ≈ {t1 * len(seeds):.1f} s); DFR {t_dfr:.2f} s")
    print(f"first call in a process pays {cold:.2f} s of lazy imports (not included above)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
