"""HSFM and DFR wall time on generated features of Waterbirds and CelebA size (d = 2048), 2 CPU cores.

    python -m benchmarks.bench_hsfm [--sizes waterbirds celeba] [--seeds 5]

Features: the Gaussian spurious-correlation problem of the tests (weak core direction, strong
spurious one, 95% correlated in train, balanced in val/test). θ₀ is the ERM probe fitted on a
20k-row train subsample (fitting it is not part of the HSFM time). Every time is the wall time
of the `fit_hsfm` / `DFR.fit` call, validation evaluation included, after one small warm-up call
that pays PyTorch's lazy imports (reported separately as `cold_extra_s`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from hsfm_core.baselines import DFR, ERMProbe
from hsfm_core.config import HSFMConfig, preset
from hsfm_core.hsfm import fit_hsfm

SIZES = {"waterbirds": (4795, 1199, 5794), "celeba": (162_770, 19_867, 19_962)}
D = 2048


def problem(n: int, correlation: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < correlation, y, 1 - y)
    x = rng.standard_normal((n, D), dtype=np.float32)
    x[:, 0] += 2 * y - 1
    x[:, 1] += 3.0 * (2 * a - 1)
    return x, y, a


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")

    (xt, yt, _), (xv, yv, av) = problem(2000, 0.95, 0), problem(500, 0.5, 1)
    warm = HSFMConfig(n_support=4, inner_steps=2, outer_steps=1, hard_per_class=8, epochs=1)
    probe = ERMProbe().fit(xt[:, :64], yt).head_
    cold, _ = timed(lambda: fit_hsfm(xt[:, :64], yt, xv[:, :64], yv, 2 * yv + av, probe.weight, probe.bias, warm))
    results = {"cold_extra_s": cold}

    for name in args.sizes:
        n_train, n_val, _ = SIZES[name]
        (xt, yt, _), (xv, yv, av) = problem(n_train, 0.95, 0), problem(n_val, 0.5, 1)
        gv = 2 * yv + av
        sub = np.random.default_rng(0).permutation(n_train)[:20_000]
        init = ERMProbe(max_iter=200).fit(xt[sub], yt[sub]).head_
        config = preset(name)
        t1, (r1,) = timed(lambda: fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0]))
        seeds = list(range(args.seeds))
        tn, rn = timed(lambda: fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=seeds))
        t_dfr, dfr = timed(lambda: DFR(seed=0).fit(xv, yv, gv))
        results[name] = {"preset": config.to_dict(), "hsfm_one_seed_s": t1, f"hsfm_{len(seeds)}_seeds_s": tn,
                         "ratio": tn / t1, "sequential_estimate_s": t1 * len(seeds), "dfr_s": t_dfr,
                         "dfr_selected_C": dfr.best_C_, "hsfm_val_wga_best": r1.history[r1.best_epoch - 1]["val_wga"]}
        print(f"{name}: HSFM 1 seed {t1:.2f} s; {len(seeds)} seeds batched {tn:.2f} s "
              f"({tn / t1:.2f}× one seed; sequential would be ≈ {t1 * len(seeds):.1f} s); DFR {t_dfr:.2f} s")
    print(f"first call in a process pays {cold:.2f} s of lazy imports (not included above)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
