"""Where one HSFM fit's CPU time goes, by step of Algorithm 1, for one seed and for S seeds batched.

    python -m benchmarks.bench_hsfm_profile [--preset celeba] [--epochs 4] [--seeds 5] [--threads 1]

On the Gaussian problem of bench_hsfm (d = 2048, the preset's support and CelebA-size validation),
times each part of `fit_hsfm` by wrapping it (CPU time of this process): reading the validation and
support rows, the fused steps' buffers, the validation logits, the hard set's top-k, steps 3.2 (the
bilevel steps) and 3.3 (the head), group accuracy, and the rest (cross-entropy, gathering the hard
rows, the epoch's bookkeeping). The parts that scale with the rows (seeds) and those shared by them
say how far batching seeds can go: S seeds cost about (shared + S × per row) / (shared + per row) of one.
docs/ARCHITECTURE.md §HSFM.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time

import torch

import hsfm_core.methods.hsfm as hsfm
from benchmarks.bench_hsfm import GROUP_COUNTS, problem
from hsfm_core.methods.erm import ERMProbe

PARTS = {  # (object, attribute) → label; "shared" parts do not grow with the rows
    (hsfm, "_finite_float"): "reading validation and support rows (support per row)",
    (hsfm._FusedSteps, "__init__"): "per row: the fused steps' buffers",
    (hsfm, "_val_logits"): "shared: validation logits",
    (hsfm, "_hardest"): "shared: hard set top-k",
    (hsfm._FusedSteps, "bilevel"): "per row: 3.2 bilevel steps",
    (hsfm._FusedSteps, "head"): "per row: 3.3 head steps",
    (hsfm, "group_accuracy"): "shared: group accuracy",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="celeba", choices=list(hsfm.PRESETS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (xt, yt, _), (xv, yv, av) = problem((20_000, 20_000, 5_000, 1_000), 0), problem(GROUP_COUNTS["celeba"]["val"], 1)
    init = ERMProbe(max_iter=200).fit(xt[:20_000], yt[:20_000]).head_
    config = dataclasses.replace(hsfm.PRESETS[args.preset], epochs=args.epochs)
    data = (xt, yt, xv, yv, 2 * yv + av, init.weight, init.bias)

    spent: dict[str, float] = collections.defaultdict(float)
    for (owner, name), label in PARTS.items():
        original = getattr(owner, name)

        def timed(*a, original=original, label=label, **k):
            start = time.process_time()
            try:
                return original(*a, **k)
            finally:
                spent[label] += time.process_time() - start

        setattr(owner, name, timed)
    hsfm.fit_hsfm(*data, dataclasses.replace(config, n_support=4, epochs=1))  # warm-up: lazy imports, allocator
    report = {"preset": args.preset, "epochs": args.epochs, "threads": torch.get_num_threads(), "runs": []}
    for n_seeds in (1, args.seeds):
        spent.clear()
        start = time.process_time()
        hsfm.fit_hsfm(*data, config, seeds=list(range(n_seeds)))
        total = time.process_time() - start
        parts = dict(spent) | {"rest: cross-entropy, hard rows, bookkeeping": total - sum(spent.values())}
        print(f"{n_seeds} seed(s), {args.preset} preset, {args.epochs} epochs: {total:.3f} s CPU", flush=True)
        for label, seconds in parts.items():
            print(f"   {label:55s} {seconds:7.3f} s ({seconds / total:6.1%})", flush=True)
        report["runs"].append({"seeds": n_seeds, "cpu_s": total, "parts_cpu_s": parts})
    one, many = report["runs"][0]["cpu_s"], report["runs"][-1]["cpu_s"]
    print(f"{args.seeds} seeds / 1 seed: {many / one:.2f} (CPU)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
