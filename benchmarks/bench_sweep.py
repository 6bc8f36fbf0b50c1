"""HSFM sweeps that share one pass (docs/ARCHITECTURE.md §HSFM), measured on the demo workspace.

    python -m benchmarks.bench_sweep --demo DEMO_WORKSPACE [--configs 4 12 36] [--repeats 2] [--threads 1] [--cli]
                                     [--cli-threads N] [--selection]

1. In one warm process (default): configurations that differ only in α and η (an α × η grid on the
   `waterbirds` preset, seeds 0–2) trained by `Method.fit_many` in one pass, against the same
   configurations one `fit` after another (each with its seeds batched: what a sweep worker does
   today), interleaved, medians of `--repeats`; the speedup at each `--configs` count. `--threads`
   (default 1, what each of a sweep's two workers gets on 2 cores).
2. `--cli`: from the command line, each in a fresh interpreter and a fresh copy of the store: one
   single-seed `python -m hsfm_core train` (waterbirds preset); the demo's 12-configuration × 3-seed
   sweep (α ∈ {5e-5, 2e-4, 5e-4} × η ∈ {0.1, 1} × K_hard ∈ {16, 64}) through `python -m hsfm_core sweep`
   as it is; and the same sweep as the CLI would run it with `fit_many` (`--one-process-sweep`, below:
   one interpreter on one thread, one `fit_many` call — two passes, one per K_hard — then every run
   written as `train` writes it and the results table read back). Ratios against the single-seed train.
   `--cli-threads N` sets OMP_NUM_THREADS for all three (default: unset, torch's own choice).
3. `--selection`: the sweep through `sweeps.run`, what it selects on validation, its test WGA beside
   DFR's and the paper preset's on the same seeds, and the edit diagnostics.

Wall and CPU time (user + sys, the process and its workers) are both reported: on a machine shared
with other sessions CPU time is the steadier of the two. `--one-process-sweep WS` is the projected
CLI sweep itself (the change to `train`/`sweeps.run` this
benchmark argues for, `train_many` below): the process that `--cli` times.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def in_process(demo: Path, counts: list[int], repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from hsfm_core import methods
    from hsfm_core.features import FeatureStore

    store = FeatureStore.open(demo)
    hsfm = methods.get("hsfm")
    base = hsfm.settings("waterbirds", [])
    hsfm.fit(store, dataclasses.replace(base, epochs=1), [0])  # warm-up: lazy imports, allocator
    out = {"torch_threads": torch.get_num_threads()}
    for n in counts:
        settings = [dataclasses.replace(base, inner_lr=a, outer_lr=e) for a, e in scalar_grid(n)]
        times = {"separate": [], "together": []}
        cpu = {"separate": [], "together": []}
        for repeat in range(repeats):
            for key in (("separate", "together") if repeat % 2 == 0 else ("together", "separate")):
                t0, c0 = time.perf_counter(), time.process_time()
                if key == "separate":
                    [hsfm.fit(store, s, list(SEEDS)) for s in settings]
                else:
                    hsfm.fit_many(store, settings, list(SEEDS))
                times[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
                print(f"  {n} configurations × {len(SEEDS)} seeds, repeat {repeat + 1}: {key} {times[key][-1]:.2f} s "
                      f"(CPU {cpu[key][-1]:.2f} s)", flush=True)
        median = {k: statistics.median(v) for k, v in times.items()}
        median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        out[n] = {"times_s": times, "cpu_s": cpu, "median_s": median, "median_cpu_s": median_cpu,
                  "speedup": median["separate"] / median["together"],
                  "speedup_cpu": median_cpu["separate"] / median_cpu["together"]}
        print(f"{n} configurations × {len(SEEDS)} seeds: separate {median['separate']:.2f} s, together "
              f"{median['together']:.2f} s, speedup {out[n]['speedup']:.2f}× (CPU time: "
              f"{out[n]['speedup_cpu']:.2f}×)", flush=True)
    return out


def train_many(workspace, specs, run_ids):
    """`train` for several requests of one method on the same seeds, one `Method.fit_many` call: the
    change proposed for hsfm_core/train.py (the runs and their files are exactly `train`'s)."""
    import torch

    from hsfm_core import methods
    from hsfm_core.features.encoders import resolve_device
    from hsfm_core.heads import evaluate_head
    from hsfm_core.runs import RunWriter, code_version
    from hsfm_core.train import _jsonable, free_run_ids, open_store_for

    method = methods.get(specs[0].method)
    seeds = list(specs[0].seeds)
    ids = [free_run_ids(workspace, run_id, seeds) for run_id in run_ids]
    store = open_store_for(workspace, method.name)
    resolved = [spec.resolve(store) for spec in specs]
    device = resolve_device(specs[0].device) if method.uses_device else torch.device("cpu")
    writers = []
    for spec, (settings, preset, why), rids in zip(specs, resolved, ids):
        common = {"method": spec.method, "preset": preset, "preset_reason": why,
                  "hyperparameters": _jsonable(dataclasses.asdict(settings)), "request": spec.to_dict(),
                  "seeds_in_call": seeds, "device": str(device), "workspace": str(Path(workspace).resolve()),
                  "store_hash": store.content_hash, "code_version": code_version(), **spec.tags}
        writers += [RunWriter(workspace, rid, {**common, "seed": seed}) for rid, seed in zip(rids, seeds)]

    def on_epoch(epoch, epochs, entries):
        for writer, entry in zip(writers, entries):
            if entry is not None:
                writer.append_history(entry)

    fitted = method.fit_many(store, [r[0] for r in resolved], seeds, device=device, progress=on_epoch)
    for writer, head in zip(writers, [h for heads in fitted for h in heads]):
        metrics = evaluate_head(store, head.weight, head.bias)
        writer.update_config(fitted=_jsonable(head.selected), init_head=head.init_source)
        writer.finish(head.head_tensors(), metrics, head.support)
    return writers


def one_process_sweep(workspace: Path) -> None:
    """The demo sweep as the CLI would run it with fit_many: every configuration in one call, on one
    thread — what each of the proposed `sweeps.run`'s workers gets on 2 cores (it would run the two
    passes, one per K_hard, in two such workers at once; here they run one after the other)."""
    import torch

    from hsfm_core import sweeps

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", GRID), seeds=SEEDS,
                                  preset="waterbirds", device="cpu")
    configurations = request.configurations()
    specs = [request.spec(c, list(SEEDS), k) for k, c in enumerate(configurations)]
    train_many(workspace, specs, [f"{request.sweep_id}-c{k:02d}" for k in range(len(specs))])
    table = sweeps.results(workspace, request)
    assert int(table["seeds_done"].sum()) == len(configurations) * len(SEEDS), table
    print(table[["config", "val_wga_mean", "selected"]].to_string(index=False))


def cli(demo: Path, repeats: int, threads: int | None) -> dict:
    root = Path(__file__).resolve().parents[1]
    python = sys.executable
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    scratch = Path(tempfile.mkdtemp(prefix="hsfm-bench-sweep-"))
    commands = {
        "train_1_seed": lambda ws: [python, "-m", "hsfm_core", "train", "--workspace", ws, "--method", "hsfm",
                                    "--preset", "waterbirds", "--seeds", "0", "--device", "cpu", "--quiet"],
        "sweep_cli_today": lambda ws: [python, "-m", "hsfm_core", "sweep", "--workspace", ws, "--method", "hsfm",
                                       "--preset", "waterbirds", "--grid", *GRID, "--seeds", *map(str, SEEDS),
                                       "--device", "cpu", "--quiet"],
        "sweep_one_pass": lambda ws: [python, "-m", "benchmarks.bench_sweep", "--one-process-sweep", ws],
    }
    times = {key: [] for key in commands}
    cpu = {key: [] for key in commands}  # user + sys of the command and its workers: steadier under load
    try:
        for repeat in range(repeats):
            for key, command in commands.items():
                ws = fresh_copy(demo, scratch / key)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                done = subprocess.run(command(str(ws)), cwd=root, env=env, capture_output=True, text=True)
                times[key].append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[key].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                if done.returncode != 0:
                    raise SystemExit(f"{key} failed:\n{done.stdout}\n{done.stderr}")
                print(f"  repeat {repeat + 1}: {key} {times[key][-1]:.1f} s (CPU {cpu[key][-1]:.1f} s)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratios = {f"{k}_over_train": median[k] / median["train_1_seed"] for k in median if k != "train_1_seed"}
    ratios_cpu = {f"{k}_over_train_cpu": median_cpu[k] / median_cpu["train_1_seed"] for k in median if k != "train_1_seed"}
    print("CLI medians: " + ", ".join(f"{k} {v:.1f} s (CPU {median_cpu[k]:.1f} s)" for k, v in median.items()))
    print("CLI ratios against one single-seed train: " + ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items())
          + " (CPU time: " + ", ".join(f"{k} {v:.2f}×" for k, v in ratios_cpu.items()) + ")")
    return {"omp_num_threads": threads, "times_s": times, "cpu_s": cpu, "median_s": median, "median_cpu_s": median_cpu,
            **ratios, **ratios_cpu}


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
    parser.add_argument("--demo", type=Path)
    parser.add_argument("--configs", type=int, nargs="*", default=[4, 12, 36])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cli", action="store_true")
    parser.add_argument("--cli-threads", type=int)
    parser.add_argument("--selection", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("/tmp/hsfm-bench-sweep"))
    parser.add_argument("--max-parallel", type=int, default=2)
    parser.add_argument("--one-process-sweep", type=Path, metavar="WS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_process_sweep:
        return one_process_sweep(args.one_process_sweep)
    if args.demo is None:
        parser.error("--demo DEMO_WORKSPACE is required")
    results = {}
    if args.configs:
        results["in_process"] = in_process(args.demo, args.configs, args.repeats, args.threads)
    if args.cli:
        results["cli"] = cli(args.demo, args.repeats, args.cli_threads)
    if args.selection:
        results["selection"] = selection(args.demo, args.out, args.max_parallel)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
