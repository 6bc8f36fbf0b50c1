"""The pieces of one HSFM outer step at a revision against today's, side by side in one process.

    python -m benchmarks.bench_hsfm_unroll [--before REV] [--support 2048 512 64] [--rows 1] [--threads 1]
                                           [--repeats 5]

For each support size m (two classes, d = 2048 features, D = 2064 augmented columns, the CelebA
preset's T = 10 and K_hard = 256, or T = 15 below m = 128 as in the small presets), times
`fused_outer_loss_and_grad` (the loss and ∇H̃ of one outer step, written into a preallocated
gradient as `_FusedSteps` does) and `_Adam` on the support features, from `hsfm_core/methods/` at git
revision REV (default HEAD, loaded with `git show`) and from the working tree, alternating, and
prints the best of `--repeats` in CPU time (wall beside) per call. `--rows` > 1 times that many
rows together (seeds or configurations batched). Then, as yardsticks, one pass over H̃ three ways:
a 1-row product (H̃·aᵀ), a 2-row product (θ·H̃ᵀ) and a sum (the cached read's floor); and one head
step's logits and gradient (`head_logits_and_grad`) with C rows and with C − 1 (large supports). The
machine is shared: compare only figures from the same run. docs/ARCHITECTURE.md §HSFM.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hsfm_core.methods import hsfm as today_hsfm
from hsfm_core.methods import hsfm_unroll as today_unroll

D, d = 2064, 2048


def modules_at(revision: str):
    """(hsfm_unroll, hsfm) from git revision REV, imported beside today's."""
    from benchmarks.bench_hsfm import hsfm_modules_at

    return hsfm_modules_at(revision)


def timed(fn, calls: int, results: dict, key: str) -> None:
    """Adds (CPU ms, wall ms) per call of this repeat to results[key]."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    results.setdefault(key, []).append(((time.process_time() - c0) / calls * 1e3,
                                        (time.perf_counter() - w0) / calls * 1e3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="HEAD", help="git revision timed beside the working tree")
    parser.add_argument("--support", type=int, nargs="+", default=[2048, 512, 64])
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before_unroll, before_hsfm = modules_at(args.before)
    sides = {"before": (before_unroll, before_hsfm), "today": (today_unroll, today_hsfm)}
    generator = torch.Generator().manual_seed(0)
    report = {"before": args.before, "threads": torch.get_num_threads(), "rows": args.rows, "sizes": []}
    for m in args.support:
        steps, q, r = (10 if m >= 128 else 15), (512 if m >= 128 else 128), args.rows
        H1 = torch.zeros(r, m, D)
        H1[..., :d] = torch.randn(r, m, d, generator=generator)
        H1[..., d] = 1
        onehot = torch.nn.functional.one_hot(torch.arange(2).repeat_interleave(m // 2), 2).float().T.contiguous()
        theta = torch.zeros(r, 2, D)
        theta[..., : d + 1] = 0.02 * torch.randn(r, 2, d + 1, generator=generator)
        hard_x1 = torch.zeros(r, q, D)
        hard_x1[..., :d] = torch.randn(r, q, d, generator=generator)
        hard_x1[..., d] = 1
        hard_y = torch.randint(0, 2, (r, q), generator=generator)
        hard_onehot = torch.nn.functional.one_hot(hard_y, 2).float().transpose(1, 2)
        neg_scale = torch.full((r, 1, 1), -5e-5 / m)
        grad = torch.empty_like(H1)
        calls = max(3, int(2e5 // (m * 40)))
        results: dict[str, list] = {}
        for name, (unroll, hsfm) in sides.items():
            adam = hsfm._Adam(H1.clone(), torch.ones(r, dtype=torch.float64), 10 * calls * args.repeats + 10)
            pieces = {
                f"outer_step_{name}": lambda unroll=unroll: unroll.fused_outer_loss_and_grad(
                    H1, onehot, theta, hard_x1, hard_y, hard_onehot, steps, neg_scale, out=grad),
                f"adam_{name}": lambda adam=adam: adam(grad),
            }
            for key, fn in pieces.items():
                fn()  # warm: allocator, lazy paths
                results[key] = []
            sides[name] = pieces
        for repeat in range(args.repeats):
            for name in (("before", "today") if repeat % 2 == 0 else ("today", "before")):
                for key, fn in sides[name].items():
                    timed(fn, calls, results, key)
        best = {key: min(values) for key, values in results.items()}
        for piece in ("outer_step", "adam"):
            b, t = best[f"{piece}_before"], best[f"{piece}_today"]
            print(f"m = {m:5d}, T = {steps}, rows {r}: {piece:10s} before {b[0]:7.2f} ms (wall {b[1]:7.2f}) · "
                  f"today {t[0]:7.2f} ms (wall {t[1]:7.2f}) · today/before {t[0] / b[0]:.2f} (CPU)", flush=True)
        one_row, two_rows, buffer = theta[:, :1].clone(), theta.clone(), H1.new_zeros(r, 2, m)
        passes = {"1-row product H̃·aᵀ": lambda: torch.bmm(H1, one_row.transpose(1, 2)),
                  "2-row product θ·H̃ᵀ": lambda: torch.bmm(two_rows, H1.transpose(1, 2)),
                  "sum of H̃": lambda: H1.sum(),
                  "head step, C rows": lambda: today_unroll.head_logits_and_grad(theta, H1, onehot),
                  "head step, C − 1 rows": lambda: today_unroll.head_logits_and_grad(theta, H1, onehot, buffer)}
        for key, fn in passes.items():
            fn()
            for _ in range(args.repeats):
                timed(fn, 10 * calls, results, key)
            best[key] = min(results[key])
        print(f"m = {m:5d}, rows {r}: one pass over H̃ ({H1.nbytes / 2**20:.1f} MB) and a head step: " + " · ".join(
            f"{key} {best[key][0]:.3f} ms" for key in passes) + " (CPU)", flush=True)
        report["sizes"].append({"support_rows": m, "inner_steps": steps,
                                "best_cpu_ms": {k: v[0] for k, v in best.items()},
                                "best_wall_ms": {k: v[1] for k, v in best.items()}})
        sides = {"before": (before_unroll, before_hsfm), "today": (today_unroll, today_hsfm)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
