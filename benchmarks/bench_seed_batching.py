"""Batched seeds vs one seed after another in `fit_hsfm`, by support size (d = 2048, 2 CPU cores).

    python -m benchmarks.bench_seed_batching [--seeds 5] [--support 32 128 512 2048] [--epochs 2] [--threads N]
                                             [--repeats 1] [--one-group]

For each support size m = 2n (two classes), times one seed, then S seeds in one batched call, on
the Gaussian problem of bench_hsfm with CelebA-size validation (the hard-set and selection passes
scale with it) and the CelebA preset's T, K_H, K_hard; the two alternate over `--repeats`.
`batched / (S × one seed)` above 1 means the loop is faster: `methods/hsfm.py:
LOOP_SEEDS_FROM_SUPPORT_ROWS` is set from this table. The fused loop takes large supports through
an epoch's steps a row group at a time (`SUPPORT_BYTES_PER_PASS`), so a batch shares the validation
passes only. `--one-group` also times the batch with every row in one group (the constant set to
infinity), beside the default. Wall and CPU time are both reported (CPU time is the steadier on a
shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from benchmarks.bench_hsfm import GROUP_COUNTS, problem
from hsfm_core.methods.erm import ERMProbe
import hsfm_core.methods.hsfm as hsfm_module
from hsfm_core.methods.hsfm import PRESETS, fit_hsfm


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def one_group(run):
    """`run` with every row of the batch in one row group."""
    saved = hsfm_module.SUPPORT_BYTES_PER_PASS
    hsfm_module.SUPPORT_BYTES_PER_PASS = 2**62
    try:
        return run()
    finally:
        hsfm_module.SUPPORT_BYTES_PER_PASS = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--support", type=int, nargs="+", default=[32, 128, 512, 2048])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--one-group", action="store_true", help="also time the batch with all rows in one group")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = GROUP_COUNTS["celeba"]
    (xt, yt, _), (xv, yv, av) = problem((20_000, 20_000, 5_000, 1_000), 0), problem(counts["val"], 1)
    init = ERMProbe(max_iter=200).fit(xt[:20_000], yt[:20_000]).head_
    seeds = list(range(args.seeds))
    rows = []
    fit_hsfm(xt, yt, xv, yv, 2 * yv + av, init.weight, init.bias,  # warm-up: lazy imports, allocator
             dataclasses.replace(PRESETS["celeba"], n_support=4, epochs=1), seeds=[0])
    for m in args.support:
        config = dataclasses.replace(PRESETS["celeba"], n_support=m // 2, epochs=args.epochs)
        runs = {"one": lambda: fit_hsfm(xt, yt, xv, yv, 2 * yv + av, init.weight, init.bias, config, seeds=[0]),
                "batched": lambda: fit_hsfm(xt, yt, xv, yv, 2 * yv + av, init.weight, init.bias, config, seeds=seeds)}
        if args.one_group:
            runs["batched_one_group"] = lambda: one_group(runs["batched"])
        wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
        for repeat in range(args.repeats):
            for key in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
                w, c = timed(runs[key])
                wall[key].append(w)
                cpu[key].append(c)
        one, batched = statistics.median(wall["one"]), statistics.median(wall["batched"])
        one_cpu, batched_cpu = statistics.median(cpu["one"]), statistics.median(cpu["batched"])
        if args.one_group:
            group_cpu = statistics.median(cpu["batched_one_group"])
            print(f"m = {m:5d}: {len(seeds)} batched, row groups of SUPPORT_BYTES_PER_PASS: CPU {batched_cpu:.2f} s · "
                  f"one group: CPU {group_cpu:.2f} s (wall {statistics.median(wall['batched_one_group']):.2f} s)",
                  flush=True)
        rows.append({"support_rows": m, "one_seed_s": one, "batched_s": batched, "loop_estimate_s": one * len(seeds),
                     "batched_over_loop": batched / (one * len(seeds)), "batched_over_one": batched / one,
                     "one_seed_cpu_s": one_cpu, "batched_cpu_s": batched_cpu,
                     "batched_over_one_cpu": batched_cpu / one_cpu,
                     "batched_over_loop_cpu": batched_cpu / (one_cpu * len(seeds)),
                     **({"one_group_cpu_s": statistics.median(cpu["batched_one_group"])} if args.one_group else {})})
        print(f"m = {m:5d}: one seed {one:6.2f} s · {len(seeds)} batched {batched:6.2f} s ({batched / one:.2f}×; "
              f"CPU {one_cpu:.2f} / {batched_cpu:.2f} s = {batched_cpu / one_cpu:.2f}×) · batched/loop "
              f"{batched / (one * len(seeds)):.2f} (CPU {batched_cpu / (one_cpu * len(seeds)):.2f})", flush=True)
    print(json.dumps({"torch_threads": torch.get_num_threads(), "epochs": args.epochs, "seeds": len(seeds), "rows": rows}))


if __name__ == "__main__":
    main()
