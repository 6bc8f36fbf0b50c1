"""HSFM's wall time against the reference loop, side by side in one process (d = 2048, 2 CPU cores).

    python -m benchmarks.bench_hsfm [--sizes waterbirds celeba] [--seeds 5] [--repeats 3] [--before REV]
                                    [--epochs E] [--threads N]

Features: the Gaussian spurious-correlation problem of the tests (weak core direction, strong
spurious one) with the exact group counts of each benchmark's train and val splits. θ₀ is the ERM
probe fitted on a 20k-row train subsample (not part of any time). For each size, every repeat times,
in a rotating order so that load drifts hit each alike:
- `reference`: tests/reference_hsfm.py, the loop in the authors' idiom (fast weights through
  `autograd.grad(create_graph=True)`, `nn.Linear`, `clip_grad_norm_`, two Adams), one seed;
- `before`: `fit_hsfm` and its unroll as they were at git revision REV (loaded from `git show`), one seed
  and S seeds — only with --before;
- `plain`: today's `fit_hsfm(fused=False)` (autograd and torch.optim), one seed;
- `fused`: today's `fit_hsfm`, one seed, and S seeds batched.
Medians over the repeats and their ratios (of wall and of CPU time, the steadier of the two on a
shared machine) are printed, then one JSON line. Each time is the whole
call (validation evaluation included) after a warm-up call of each that pays PyTorch's lazy imports.
The machine is shared: compare only figures from the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hsfm_core.groups import binary
from hsfm_core.methods.dfr import DFR
from hsfm_core.methods.erm import ERMProbe
from hsfm_core.methods.hsfm import PRESETS, HSFMSettings, fit_hsfm
from tests.reference_hsfm import reference_hsfm

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


def timed_cpu(fn):
    """(wall s, CPU s of this process): CPU time is the steadier of the two on a shared machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def hsfm_modules_at(revision: str):
    """(hsfm_unroll, hsfm) of `hsfm_core/methods/` at a git revision, imported beside today's (that revision's
    hsfm.py importing that revision's unroll)."""
    root = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp())

    def load(name: str, repo_path: str, replace: tuple[str, str] | None = None):
        source = subprocess.run(["git", "show", f"{revision}:{repo_path}"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
        if replace:
            source = source.replace(*replace)
        path = folder / f"{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    unroll = load("hsfm_unroll_before", "hsfm_core/methods/hsfm_unroll.py")
    return unroll, load("hsfm_before", "hsfm_core/methods/hsfm.py",
                        ("from hsfm_core.methods.hsfm_unroll import", "from hsfm_unroll_before import"))


def fit_hsfm_at(revision: str):
    """`fit_hsfm` from `hsfm_core/methods/hsfm.py` at a git revision, imported beside today's, with the
    unroll (`hsfm_unroll.py`) of that revision too."""
    _, module = hsfm_modules_at(revision)
    settings_class = getattr(module, "HSFMSettings", None) or module.HSFMConfig

    def fit(*data, config, **kwargs):  # today's settings as that revision's class (it may check isinstance)
        return module.fit_hsfm(*data, settings_class(**dataclasses.asdict(config)), **kwargs)

    return fit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=list(GROUP_COUNTS), choices=list(GROUP_COUNTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", help="git revision whose fit_hsfm is timed beside today's")
    parser.add_argument("--epochs", type=int, help="override the presets' E (shorter runs, same per-epoch work)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["reference", "plain", "seeds", "dfr"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}", flush=True)
    before = fit_hsfm_at(args.before) if args.before else None

    (xt, yt, _), (xv, yv, av) = problem((500, 20, 20, 500), 0), problem((100, 100, 100, 100), 1)
    warm = HSFMSettings(n_support=4, inner_steps=2, outer_steps=1, hard_per_class=8, epochs=1)
    probe = ERMProbe().fit(xt[:, :64], yt).head_
    small = (xt[:, :64], yt, xv[:, :64], yv, 2 * yv + av, probe.weight, probe.bias)
    cold, _ = timed(lambda: fit_hsfm(*small, warm))
    fit_hsfm(*small, warm, fused=False)
    reference_hsfm(*small, n=4, T=2, alpha=warm.inner_lr, eta=warm.outer_lr, K_H=1, K_hard=8, E=1)
    if before:
        before(*small, config=warm)
    results = {"torch_threads": torch.get_num_threads(), "cold_extra_s": cold, "before": args.before}

    for name in args.sizes:
        counts = GROUP_COUNTS[name]
        (xt, yt, _), (xv, yv, av) = problem(counts["train"], 0), problem(counts["val"], 1)
        gv = 2 * yv + av
        sub = np.random.default_rng(0).permutation(len(xt))[:20_000]
        init = ERMProbe(max_iter=200).fit(xt[sub], yt[sub]).head_
        config = PRESETS[name] if args.epochs is None else dataclasses.replace(PRESETS[name], epochs=args.epochs)
        data = (xt, yt, xv, yv, gv, init.weight, init.bias)
        seeds = list(range(args.seeds))
        runs = {"fused": lambda: fit_hsfm(*data, config, seeds=[0])}
        if "reference" not in args.skip:
            runs["reference"] = lambda: reference_hsfm(
                *data, n=config.n_support, T=config.inner_steps, alpha=config.inner_lr, eta=config.outer_lr,
                K_H=config.outer_steps, K_hard=config.hard_per_class, E=config.epochs, clip=config.clip_norm, seed=0)
        if before:
            runs["before"] = lambda: before(*data, config=config, seeds=[0])
        if "plain" not in args.skip:
            runs["plain"] = lambda: fit_hsfm(*data, config, seeds=[0], fused=False)
        if "seeds" not in args.skip:
            runs[f"fused_{len(seeds)}_seeds"] = lambda: fit_hsfm(*data, config, seeds=seeds)
            if before:
                runs[f"before_{len(seeds)}_seeds"] = lambda: before(*data, config=config, seeds=seeds)
        times = {key: [] for key in runs}
        cpu = {key: [] for key in runs}
        order = list(runs)
        for repeat in range(args.repeats):
            for key in order[repeat % len(order):] + order[: repeat % len(order)]:
                elapsed, cpu_s = timed_cpu(runs[key])
                times[key].append(elapsed)
                cpu[key].append(cpu_s)
                print(f"  {name} repeat {repeat + 1}: {key} {elapsed:.2f} s (CPU {cpu_s:.2f} s)", flush=True)
        median = {key: statistics.median(values) for key, values in times.items()}
        median_cpu = {key: statistics.median(values) for key, values in cpu.items()}
        ratios = {}
        for suffix, table in (("", median), ("_cpu", median_cpu)):
            ratios |= {f"{key}_over_reference{suffix}": table[key] / table["reference"]
                       for key in table if key != "reference" and "reference" in table and "seeds" not in key}
            ratios |= {f"{key}_over_one_seed{suffix}": table[key] / table[key.split("_")[0]]
                       for key in table if "seeds" in key}
        results[name] = {"preset": dataclasses.asdict(config), "times_s": times, "cpu_s": cpu, "median_s": median,
                         "median_cpu_s": median_cpu, **ratios}
        if "dfr" not in args.skip:
            results[name]["dfr_s"], _ = timed(lambda: DFR(binary(), seed=0).fit(xv, yv, gv))
        print(f"{name}: medians " + ", ".join(f"{k} {v:.2f} s (CPU {median_cpu[k]:.2f} s)" for k, v in median.items()),
              flush=True)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()), flush=True)
    print(f"first call in a process pays {cold:.2f} s of lazy imports (not included above)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
