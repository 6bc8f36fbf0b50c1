"""The one check to run when a GPU machine is lent: every GPU path of the project against the CPU.

    python -m benchmarks.gpu_check [--out DIR] [--quick] [--only SECTION ...] [--as-gpu cpu] [--demo DEMO]

Sections (each runs on the CPU, and on the GPU when the launch check passes; a section that fails is
recorded with its error and the next one runs):

  facts    the launch check (hsfm_core.device): torch, its CUDA and cuDNN builds, the architectures it was
           built for, the driver, every GPU, the test kernel; what `auto` picks and why; what a run's config
           records (device.training_device) for a small and a large HSFM step under `auto`.
  extract  SynthBirds images (the demo's; --quick: 1/50 of them) encoded by the bundled CLIP: CPU fp32,
           GPU fp32 twice, GPU bf16 and fp16 autocast, decoding workers picked from the cores
           (device.extraction_workers). Time and images/s; max |Δ| and min cosine against the CPU; whether
           the two GPU runs are bit-identical; the manifest's `extraction` record of each.
  hsfm     HSFM at the waterbirds and celeba presets on generated features of each benchmark's size
           (d = 2048, the exact train/val group counts; benchmarks/bench_hsfm.py's problem; --quick: 1/20 of
           the rows, d = 256, 2 epochs), 1 seed: CPU and GPU wall time (after a warm-up on each device),
           the GPU run twice (head, edited support and history bit-identical?), GPU against CPU (max |Δ|
           of the head, val WGA), and what `auto` chooses for it here (device.training_device with the
           method's step_work: the launch check, then the size rule) beside the faster.
  demo     the demo build (hsfm_core.demo.build) on the CPU (--demo: an existing build, copied) and on the
           GPU: the build's own timings, each role's test WGA on both, and on each device the default
           HSFM run trained again (bit-identical?) and what its config records (device, device_reason,
           environment).
  sweep    the demo's α × η × K_hard grid (benchmarks/bench_sweep.py, 12 configurations × 3 seeds) on the
           demo's store, on the CPU and twice on the GPU: wall time, tables identical between GPU runs,
           the configuration selected on validation on each.

Without a usable GPU every section runs its CPU side and the facts say why there is no GPU side;
`--as-gpu cpu` runs the GPU side on the CPU too, to check the script itself on a machine without a GPU.
Writes DIR/gpu_check.json (DIR: --out, else $OUT when set, else a temporary folder) and prints it.
On the lent machines (python3 with torch, numpy, pandas, scikit-learn, pyarrow, safetensors), carry what
the `missing` list of the facts names as wheels (/work/.library/device/README.md), e.g. open_clip_torch
and ftfy for extraction and the demo, platformdirs, filelock, submitit for the sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

SECTIONS = ("facts", "extract", "hsfm", "demo", "sweep")
NEEDS = {"extract": ("open_clip", "PIL"), "demo": ("open_clip", "platformdirs", "sklearn"),
         "sweep": ("sklearn",), "hsfm": ("sklearn",)}
SWEEP_GRID = ["alpha=5e-5,2e-4,5e-4", "eta=0.1,1", "K_hard=16,64"]  # benchmarks/bench_sweep.py's grid
GROUP_COUNTS = {  # exact train/val group counts (g = 2y + a) of the real benchmarks, as bench_hsfm
    "waterbirds": {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133)},
    "celeba": {"train": (71_629, 66_874, 22_880, 1_387), "val": (8_535, 8_276, 2_874, 182)},
}


def timed(function, sync: bool = False):
    """(result, wall seconds); `sync` waits for the GPU's queued work before reading the clock."""
    import torch

    start = time.perf_counter()
    out = function()
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def facts_section(state: dict) -> dict:
    import torch

    from hsfm_core import device

    facts = device.device_facts(0)
    auto = device.choose("auto", facts)
    state["gpu"] = auto.device if auto.device.startswith("cuda") else None
    missing = sorted({m for needs in NEEDS.values() for m in needs if importlib.util.find_spec(m) is None})
    from hsfm_core.methods.hsfm import METHOD, PRESETS

    training = {}
    for name in GROUP_COUNTS:  # what a run's config records under `auto` (its step at d = 2,048, C = 2)
        where, record = device.training_device("auto", True, METHOD.work_per_step(2, 2048, PRESETS[name]),
                                               method="HSFM")
        training[name] = {**record, "torch_device": str(where)}
    return {"facts": {**dataclasses.asdict(facts), "probes": {str(k): v for k, v in facts.probes.items()}},
            "auto": dataclasses.asdict(auto), "environment": device.environment(auto.device, facts, device.tf32_switches()),
            "auto_training": training, "may_probe": device.may_probe(), "gpu_min_step_work": device.GPU_MIN_STEP_WORK,
            "threads": torch.get_num_threads(), "cpus": device.usable_cpus(), "missing": missing}


def extract_section(state: dict, work: Path, quick: bool) -> dict:
    import torch

    from hsfm_core.data import read_dataset
    from hsfm_core.demo import synthbirds
    from hsfm_core.demo.build import DEMO_CLIP
    from hsfm_core.device import usable_cpus
    from hsfm_core.features.encoders import load_encoder
    from hsfm_core.features.extract import extract

    counts = synthbirds.WATERBIRDS_COUNTS
    if quick:
        counts = {split: tuple(max(2, c // 50) for c in row) for split, row in counts.items()}
    data, started = work / "synthbirds", time.perf_counter()
    synthbirds.write_dataset(data, seed=0, counts=counts, workers=max(1, min(8, usable_cpus())))
    out = {"images": int(sum(map(sum, counts.values()))), "draw_images_s": time.perf_counter() - started, "runs": []}
    table = read_dataset("waterbirds", data)
    gpu_precisions = ["fp32", "fp32", "bf16"] + (["fp16"] if str(state["gpu"]).startswith("cuda") else [])
    variants = [("cpu", "fp32")] + ([(state["gpu"], p) for p in gpu_precisions] if state["gpu"] else [])
    features = []
    for k, (where, precision) in enumerate(variants):
        dev = torch.device(where)
        encoder = load_encoder(f"local-dir:{DEMO_CLIP}", None, dev)
        store, seconds = timed(lambda: extract(table, encoder, work / f"store-{k}", device=dev, progress=False,
                                               precision=precision, overwrite=True), sync=dev.type == "cuda")
        x = np.asarray(store.features, dtype=np.float64)
        features.append(x)
        cpu = features[0]
        cosine = (x * cpu).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(cpu, axis=1)
        out["runs"].append({"device": where, "precision": precision, "seconds": seconds,
                            "images_per_s": out["images"] / seconds, "workers": store.manifest["extraction"]["num_workers"],
                            "max_abs_diff_vs_cpu": float(np.abs(x - cpu).max()), "min_cosine_vs_cpu": float(cosine.min()),
                            "extraction": store.manifest["extraction"]})
    if state["gpu"]:
        out["gpu_fp32_rerun_bit_identical"] = bool(np.array_equal(features[1], features[2]))
    return out


def untimed(history: list[dict]) -> list[dict]:
    """A history without its clock readings (elapsed_s): what two identical runs share."""
    return [{k: v for k, v in entry.items() if not k.endswith("_s")} for entry in history]


def hsfm_problem(counts: dict, d: int, scale: int, seed: int):
    """bench_hsfm's features: a weak core direction (y), a strong spurious one (a), these group counts."""
    rng = np.random.default_rng(seed)
    g = rng.permutation(np.repeat(np.arange(4), [max(4, c // scale) for c in counts]))
    y, a = g // 2, g % 2
    x = rng.standard_normal((len(g), d), dtype=np.float32)
    x[:, 0] += 2 * y - 1
    x[:, 1] += 3.0 * (2 * a - 1)
    return x, y, g


def hsfm_section(state: dict, quick: bool) -> dict:
    import torch

    from hsfm_core import device
    from hsfm_core.methods.erm import ERMProbe
    from hsfm_core.methods.hsfm import METHOD, PRESETS, fit_hsfm

    d, scale = (256, 20) if quick else (2048, 1)
    out = {"d": d, "row_scale": f"1/{scale}"}
    devices = ["cpu"] + ([state["gpu"]] if state["gpu"] else [])
    warm = dataclasses.replace(PRESETS["waterbirds"], n_support=4, inner_steps=2, outer_steps=1, hard_per_class=8,
                               epochs=1)
    (xt, yt, _), (xv, yv, gv) = hsfm_problem((200, 20, 20, 200), 64, 1, 0), hsfm_problem((50, 50, 50, 50), 64, 1, 1)
    probe = ERMProbe().fit(xt, yt).head_
    for where in devices:  # lazy imports, CUDA context, cuBLAS handles: paid here, not below
        _, out[f"warm_up_{where}_s"] = timed(lambda: fit_hsfm(xt, yt, xv, yv, gv, probe.weight, probe.bias, warm,
                                                              device=where), sync=where != "cpu")
    for name, counts in GROUP_COUNTS.items():
        settings = PRESETS[name]
        if quick:
            settings = dataclasses.replace(settings, epochs=2, n_support=min(settings.n_support, 16),
                                           hard_per_class=min(settings.hard_per_class, 16))
        (xt, yt, _), (xv, yv, gv) = hsfm_problem(counts["train"], d, scale, 0), hsfm_problem(counts["val"], d, scale, 1)
        sub = np.random.default_rng(0).permutation(len(xt))[:20_000]
        init = ERMProbe(max_iter=200).fit(xt[sub], yt[sub]).head_
        work = METHOD.work_per_step(2, d, settings)  # what train() hands to device.training_device
        entry = {"settings": dataclasses.asdict(settings), "step_work": work}
        results = {}
        for where, label in [("cpu", "cpu")] + ([(state["gpu"], "gpu"), (state["gpu"], "gpu_again")] if state["gpu"] else []):
            (result,), seconds = timed(lambda: fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, settings, seeds=[0],
                                                        device=where), sync=where != "cpu")
            results[label] = result
            entry[f"{label}_s"] = seconds
            entry[f"{label}_val_wga_best"] = result.history[result.best_epoch - 1]["val_wga"]
        if state["gpu"]:
            a, b, c = results["gpu"], results["gpu_again"], results["cpu"]
            entry["gpu_rerun_bit_identical"] = bool(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
                                                    and torch.equal(a.H_after, b.H_after)
                                                    and untimed(a.history) == untimed(b.history))
            entry["gpu_vs_cpu_max_abs_head_diff"] = float((a.weight.cpu() - c.weight).abs().max())
            entry["gpu_over_cpu_time"] = entry["gpu_s"] / entry["cpu_s"]
            where, record = device.training_device("auto", True, work, method="HSFM")
            entry["auto_chooses"], entry["auto_reason"] = str(where), record["device_reason"]
            entry["faster"] = "gpu" if entry["gpu_s"] < entry["cpu_s"] else "cpu"
        out[name] = entry
    return out


def demo_section(state: dict, work: Path, reuse: Path | None) -> dict:
    """The demo built on each device (`reuse`: a built demo workspace, copied, stands for the CPU's
    build), and its default HSFM run trained again on the same device: the same run, bit for bit?"""
    import torch

    from hsfm_core.demo.build import build_demo, demo_requests
    from hsfm_core.runs import find_run, load_head, load_support
    from hsfm_core.train import train

    out = {}
    for k, where in enumerate(["cpu"] + ([state["gpu"]] if state["gpu"] else [])):
        folder = work / f"demo-{k}-{where.replace(':', '')}"
        if k == 0 and reuse is not None:
            shutil.copytree(reuse, folder, ignore=shutil.ignore_patterns("cache", "jobs", "sweeps", "synthbirds"))
            built, seconds = folder, None
        else:
            built, seconds = timed(lambda: build_demo(folder, default_map="none", device=where, force=True))
        record = json.loads((built / "demo.json").read_text())
        label = "cpu" if k == 0 else "gpu"
        out[label] = {"device": where, "build_s": seconds, "reused": seconds is None, "timings": record["timings"],
                      "test_wga": {role: r["test_wga"] for role, r in record["runs"].items()}}
        state.setdefault("demo_cpu", built)
        role, spec = next((r, s) for r, s in demo_requests(where) if s.method == "hsfm")
        first = find_run(built, record["runs"][role]["run_ids"][0])
        again = find_run(built, train(built, spec)[0].run_id)
        out[label]["hsfm_config"] = {k: again["config"].get(k) for k in ("device", "device_reason", "environment")}
        heads, supports = (load_head(first), load_head(again)), (load_support(first), load_support(again))
        out[label]["hsfm_rerun_bit_identical"] = bool(
            all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
            and all(torch.equal(supports[0][k], supports[1][k]) for k in supports[0]))
    return out


def sweep_section(state: dict, work: Path, quick: bool) -> dict:
    from hsfm_core import sweeps
    from hsfm_core.features import FeatureStore

    source = state.get("demo_cpu")
    if source is None:
        raise RuntimeError("the sweep runs on the demo's store: the demo section did not build it")
    grid = SWEEP_GRID[:1] if quick else SWEEP_GRID
    out = {"grid": grid, "seeds": [0, 1, 2]}
    tables = {}
    for where, label in [("cpu", "cpu")] + ([(state["gpu"], "gpu"), (state["gpu"], "gpu_again")] if state["gpu"] else []):
        folder = work / f"sweep-{label}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in ("manifest.json", "features.npy", "meta.parquet"):
            shutil.copy(source / name, folder / name)
        FeatureStore.open(folder)
        request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", grid), seeds=(0, 1, 2),
                                      preset="waterbirds", device=where, max_parallel=1)
        table, seconds = timed(lambda: sweeps.run(folder, request, yes=True))
        tables[label] = table
        out[f"{label}_s"] = seconds
        out[f"{label}_selected"] = int(table[table["selected"]]["config"].iloc[0])
    if state["gpu"]:
        columns = [c for c in tables["gpu"].columns if c.startswith(("val_", "test_"))]
        out["gpu_rerun_tables_identical"] = bool(tables["gpu"][columns].equals(tables["gpu_again"][columns]))
        out["gpu_vs_cpu_max_abs_wga_diff"] = float((tables["gpu"][columns] - tables["cpu"][columns]).abs().max().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that every path runs")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--demo", type=Path, help="a built demo workspace standing for the CPU's build (copied; "
                        "built by this code, or its re-run differs)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (images, stores, demos)")
    parser.add_argument("--as-gpu", metavar="DEVICE", help="run the GPU side on this device (cpu: checks the "
                        "script's comparisons on a machine without a GPU)")
    args = parser.parse_args()
    out_dir = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="hsfm-gpu-check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hsfm-gpu-check-work-"))
    os.environ.setdefault("HSFM_CACHE_DIR", str(work / "cache"))
    state: dict = {"gpu": None}
    report: dict = {"quick": args.quick, "work": str(work)}
    runners = {"facts": lambda: facts_section(state), "extract": lambda: extract_section(state, work, args.quick),
               "hsfm": lambda: hsfm_section(state, args.quick), "demo": lambda: demo_section(state, work, args.demo),
               "sweep": lambda: sweep_section(state, work, args.quick)}
    for name in SECTIONS:
        if name != "facts" and name not in args.only:
            continue
        started = time.perf_counter()
        try:
            report[name] = runners[name]()
            if name == "facts" and args.as_gpu:
                state["gpu"] = report["facts"]["as_gpu"] = args.as_gpu
        except Exception as exc:  # one broken section must not hide the others' numbers
            report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        report[name]["section_s"] = round(time.perf_counter() - started, 2)
        print(f"[gpu_check] {name}: {report[name]['section_s']} s"
              + (f" — {report[name]['error']}" if "error" in report[name] else ""), flush=True)
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
