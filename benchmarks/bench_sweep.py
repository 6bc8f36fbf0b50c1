"""HSFM sweeps that share one pass (docs/ARCHITECTURE.md §Sweeps), measured on the demo workspace.

    python -m benchmarks.bench_sweep --demo DEMO_WORKSPACE [--configs 4 12 36] [--repeats 2] [--threads 1]
                                     [--no-cli] [--cli-threads N] [--before REV] [--selection]

One command prints every number (the demo is never written to: each measurement trains in a fresh copy of
its store, in a temporary folder):

1. The sweep's speedup against separate runs, in one warm process on `--threads` threads (default 1: what
   each of a sweep's two workers gets on 2 cores): n configurations that differ only in α and η (an α × η
   grid on the `waterbirds` preset, seeds 0–2), trained as the sweep trains them — its units
   (`sweeps.passes`, one worker: passes of at most `sweeps.MAX_PASS_ROWS` rows), each one `train_many`
   call — against one `train` per configuration (its seeds batched: what a sweep did before passes),
   every run written to disk either way. Interleaved, medians of `--repeats`, at each `--configs` count.
2. From the command line (skip with `--no-cli`), each command in a fresh interpreter and a fresh copy of the
   store: one single-seed `python -m hsfm_core train` (waterbirds preset) against the demo's
   12-configuration × 3-seed sweep `python -m hsfm_core sweep` (α ∈ {5e-5, 2e-4, 5e-4} × η ∈ {0.1, 1} ×
   K_hard ∈ {16, 64}: two passes, one per K_hard, on the workspace's two workers), alternated, medians of
   `--repeats`. `--cli-threads N` sets OMP_NUM_THREADS for all (default: unset, torch's own choice).
   `--before REV` also times the same sweep as the code at git revision REV ran it (d68270c~1: one
   configuration per worker task, before passes), from a `git archive` of REV.
3. `--selection`: the sweep through `sweeps.run`, what it selects on validation, its test WGA beside
   DFR's and the paper preset's on the same seeds, and the edit diagnostics.

Wall and CPU time (user + sys, of the process and its workers) are both reported, with the load average:
on a machine shared with other sessions CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRID = ["alpha=5e-5,2e-4,5e-4", "eta=0.1,1", "K_hard=16,64"]
SEEDS = (0, 1, 2)
STORE_FILES = ("manifest.json", "features.npy", "meta.parquet")


def fresh_copy(demo: Path, out: Path) -> Path:
    """The demo store alone (features, no images, no runs) in a new workspace, so that nothing is resumed."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in STORE_FILES:
        shutil.copy(demo / name, out / name)
    return out


def scalar_grid(n: int) -> list[tuple[float, float]]:
    """n (α, η) pairs on a log grid around the demo's values: 4 = 2 × 2, 12 = 4 × 3, 36 = 6 × 6."""
    shape = {4: (2, 2), 12: (4, 3), 36: (6, 6)}.get(n) or (n, 1)
    alphas, etas = np.geomspace(5e-5, 5e-4, shape[0]), np.geomspace(0.05, 1.0, shape[1])
    return [(float(f"{a:.3g}"), float(f"{e:.3g}")) for a in alphas for e in etas]


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def in_process(demo: Path, counts: list[int], repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from hsfm_core import sweeps
    from hsfm_core.train import train, train_many

    scratch = Path(tempfile.mkdtemp(prefix="hsfm-bench-sweep-"))
    out = {"torch_threads": torch.get_num_threads(), "max_pass_rows": sweeps.MAX_PASS_ROWS}
    try:
        ws = fresh_copy(demo, scratch / "warm")
        train(ws, "hsfm", preset="waterbirds", overrides=["E=1"], seeds=[0], device="cpu")  # lazy imports, allocator
        for n in counts:
            request = sweeps.SweepRequest(method="hsfm", grid={"inner_lr": sorted({a for a, _ in scalar_grid(n)}),
                                                               "outer_lr": sorted({e for _, e in scalar_grid(n)})},
                                          seeds=SEEDS, preset="waterbirds", device="cpu")
            assert request.n_configurations == n, (n, request.grid)
            configurations = request.configurations()
            specs = [request.spec(c, list(SEEDS), k) for k, c in enumerate(configurations)]
            units = sweeps.passes(request, [(k, c, list(SEEDS)) for k, c in enumerate(configurations)])
            times, cpu = {"separate": [], "passes": []}, {"separate": [], "passes": []}
            for repeat in range(repeats):
                for key in (("separate", "passes") if repeat % 2 == 0 else ("passes", "separate")):
                    ws = fresh_copy(demo, scratch / f"{key}-{n}-{repeat}")
                    t0, c0 = time.perf_counter(), time.process_time()
                    if key == "separate":
                        for k, spec in enumerate(specs):
                            train(ws, spec, run_id=sweeps.config_run_id(request, k))
                    else:
                        for ks, seeds in units:
                            train_many(ws, [specs[k] for k in ks], run_ids=[sweeps.config_run_id(request, k) for k in ks])
                    times[key].append(time.perf_counter() - t0)
                    cpu[key].append(time.process_time() - c0)
                    assert int(sweeps.results(ws, request)["seeds_done"].sum()) == n * len(SEEDS)
                    shutil.rmtree(ws, ignore_errors=True)
                    print(f"  {n} configurations × {len(SEEDS)} seeds, repeat {repeat + 1}: {key} {times[key][-1]:.2f} s "
                          f"(CPU {cpu[key][-1]:.2f} s; {load()})", flush=True)
            median = {k: statistics.median(v) for k, v in times.items()}
            median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
            out[n] = {"passes": [len(ks) for ks, _ in units], "times_s": times, "cpu_s": cpu, "median_s": median,
                      "median_cpu_s": median_cpu, "speedup": median["separate"] / median["passes"],
                      "speedup_cpu": median_cpu["separate"] / median_cpu["passes"]}
            print(f"{n} configurations × {len(SEEDS)} seeds ({len(units)} pass(es) of {out[n]['passes']} "
                  f"configurations): separate {median['separate']:.2f} s, in passes {median['passes']:.2f} s, "
                  f"speedup {out[n]['speedup']:.2f}× wall, {out[n]['speedup_cpu']:.2f}× CPU time", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def cli(demo: Path, repeats: int, threads: int | None, before: str | None = None) -> dict:
    root = Path(__file__).resolve().parents[1]
    python = sys.executable
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    scratch = Path(tempfile.mkdtemp(prefix="hsfm-bench-sweep-"))
    sweep = ["-m", "hsfm_core", "sweep", "--method", "hsfm", "--preset", "waterbirds", "--grid", *GRID, "--seeds",
             *map(str, SEEDS), "--device", "cpu", "--quiet", "--workspace"]
    places = {}  # command → (cwd, env): the code at `before` runs from a `git archive` of it
    if before:
        code = scratch / "before-code"
        code.mkdir()
        archive = subprocess.run(["git", "archive", before], cwd=root, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        places["sweep_12x3_before"] = (code, {**env, "PYTHONPATH": str(code)})
    commands = {
        "train_1_seed": lambda ws: [python, "-m", "hsfm_core", "train", "--workspace", ws, "--method", "hsfm",
                                    "--preset", "waterbirds", "--seeds", "0", "--device", "cpu", "--quiet"],
        "sweep_12x3": lambda ws: [python, *sweep, ws],
        **({"sweep_12x3_before": lambda ws: [python, *sweep, ws]} if before else {}),
    }
    times = {key: [] for key in commands}
    cpu = {key: [] for key in commands}  # user + sys of the command and its workers: steadier under load
    try:
        for repeat in range(repeats):
            for key, command in (commands.items() if repeat % 2 == 0 else reversed(commands.items())):
                ws = fresh_copy(demo, scratch / key)
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                cwd, command_env = places.get(key, (root, env))
                done = subprocess.run(command(str(ws)), cwd=cwd, env=command_env, capture_output=True, text=True)
                times[key].append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[key].append(after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime)
                if done.returncode != 0:
                    raise SystemExit(f"{key} failed:\n{done.stdout}\n{done.stderr}")
                print(f"  repeat {repeat + 1}: {key} {times[key][-1]:.1f} s (CPU {cpu[key][-1]:.1f} s; {load()})",
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratios = {key: (median[key] / median["train_1_seed"], median_cpu[key] / median_cpu["train_1_seed"])
              for key in commands if key != "train_1_seed"}
    print("CLI medians: " + ", ".join(f"{k} {v:.1f} s (CPU {median_cpu[k]:.1f} s)" for k, v in median.items()))
    for key, (ratio, ratio_cpu) in ratios.items():
        print(f"CLI: the 12-configuration × 3-seed sweep{' at ' + before if key.endswith('before') else ''} takes "
              f"{ratio:.2f}× one single-seed train wall ({ratio_cpu:.2f}× CPU time; target ≤ 3×)", flush=True)
    return {"omp_num_threads": threads, "before": before, "times_s": times, "cpu_s": cpu, "median_s": median,
            "median_cpu_s": median_cpu, **{f"{key}_over_train": r for key, (r, _) in ratios.items()},
            **{f"{key}_over_train_cpu": r for key, (_, r) in ratios.items()}}


def selection(demo: Path, out: Path, max_parallel: int) -> dict:
    from hsfm_core import sweeps
    from hsfm_core.analysis.diagnostics import run_diagnostics
    from hsfm_core.analysis.seeds import format_mean_std, mean_std
    from hsfm_core.features import FeatureStore
    from hsfm_core.runs import find_run, load_support
    from hsfm_core.spec import TrainSpec
    from hsfm_core.train import train

    fresh_copy(demo, out)
    request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", GRID), seeds=SEEDS,
                                  preset="waterbirds", device="cpu", max_parallel=max_parallel)
    t0 = time.perf_counter()
    table = sweeps.run(out, request)
    wall = time.perf_counter() - t0
    chosen = int(table[table["selected"]]["config"].iloc[0])
    row = table.iloc[chosen]
    print(f"sweep: {len(table)} configurations × 3 seeds in {wall:.1f} s (max parallel {max_parallel})")
    print(f"selected on val: config {chosen} ({', '.join(f'{n}={row[n]}' for n in request.grid)}): val WGA "
          f"{format_mean_std(row['val_wga_mean'], row['val_wga_std'])}, test WGA "
          f"{format_mean_std(row['test_wga_mean'], row['test_wga_std'])}")
    dfr = train(out, TrainSpec.create("dfr", seeds=list(SEEDS)))
    paper = train(out, TrainSpec.create("hsfm", preset="waterbirds", seeds=list(SEEDS), device="cpu"))
    dfr_wga, paper_wga = mean_std([r.metrics["test"]["wga"] for r in dfr]), mean_std([r.metrics["test"]["wga"] for r in paper])
    print(f"DFR test WGA {format_mean_std(*dfr_wga)}; HSFM paper preset {format_mean_std(*paper_wga)}; "
          f"tuned − DFR = {100 * (row['test_wga_mean'] - dfr_wga[0]):+.1f} points")
    store = FeatureStore.open(out)
    diagnostics = {}
    for label, run_ids in (("paper", [r.run_id for r in paper]),
                           ("tuned", [sweeps.run_id_of(request, chosen, s) for s in SEEDS])):
        per_seed = [run_diagnostics(store, load_support(find_run(out, rid))) for rid in run_ids]
        diagnostics[label] = {k: mean_std([d[k] for d in per_seed])
                              for k in ("median_relative_edit_norm", "median_off_data_ratio", "off_data_share")}
        d = diagnostics[label]
        print(f"{label}: median ‖Δ‖/‖z‖ {format_mean_std(*d['median_relative_edit_norm'], percent=False, digits=2)}, "
              f"median off-data ratio {format_mean_std(*d['median_off_data_ratio'], percent=False, digits=2)} "
              f"(off the data above {per_seed[0]['off_data_threshold']:.2f}), share off the data "
              f"{format_mean_std(*d['off_data_share'])} %")
    return {"wall_s": wall, "selected": chosen, "table": json.loads(table.to_json(orient="records")),
            "dfr_test_wga": dfr_wga, "paper_test_wga": paper_wga, "diagnostics": diagnostics}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, required=True)
    parser.add_argument("--configs", type=int, nargs="*", default=[4, 12, 36])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cli", action="store_true", help="skip the command-line comparison")
    parser.add_argument("--cli-threads", type=int)
    parser.add_argument("--before", metavar="REV", help="also time the CLI sweep of git revision REV (e.g. d68270c~1, "
                        "before passes), from a `git archive` of it")
    parser.add_argument("--selection", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("/tmp/hsfm-bench-sweep"))
    parser.add_argument("--max-parallel", type=int, default=2)
    args = parser.parse_args()
    results = {"load_at_start": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"{os.cpu_count()} CPUs, {load()}", flush=True)
    if args.configs:
        results["in_process"] = in_process(args.demo, args.configs, args.repeats, args.threads)
    if not args.no_cli:
        results["cli"] = cli(args.demo, args.repeats, args.cli_threads, args.before)
    if args.selection:
        results["selection"] = selection(args.demo, args.out, args.max_parallel)
    results["load_at_end"] = os.getloadavg()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
