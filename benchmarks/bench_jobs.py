"""The job system's costs on CPU: launch → the worker's first line, → its runs, and a whole HSFM run
through a local submitit job vs the same `train()` call in this process; with --sweep-queue, the processes
and memory of a queued `--submit local` sweep instead.

    python -m benchmarks.bench_jobs [--latency-repeats 5] [--repeats 1]
    python -m benchmarks.bench_jobs --sweep-queue [--configurations 50] [--max-parallel 2] [--seconds 120]

--sweep-queue (issue 26): `sweeps.submit` of a sweep of `--configurations` tiny HSFM configurations (one seed
each) with `max_parallel` 2 on a small generated store; every 0.25 s it counts the processes whose command line
names the workspace (the sweep's queue, the jobs' submitters, submitit controllers and workers) and sums their
RSS, for `--seconds` (configurations finish and the next ones start meanwhile), then cancels the sweep and times
until no process is left. Target: at most the limit × 2 (controller + worker) + a constant (the queue, a
submitter while it launches), whatever the sweep's size.

Workspace: generated features of Waterbirds size (d = 2048, the exact train/val/test group counts;
the generator of bench_hsfm). (1) Latency: `launch()` an HSFM job (it returns once submitit's controller
is started, through a detached submitter), time until its worker has logged its first line and until
its run directories exist (`train` has started: status `running`), then cancel it; the first launch in
a process also pays importing torch for the input checks (unless already imported) and is reported
apart (`cold`). (2) Wall time of the `waterbirds` preset HSFM run, seed 0, on CPU: `launch()` → `wait()`
returns `done`, vs the same run from the command line (`python -m hsfm_core train`, a fresh interpreter
in the foreground), vs `train()` called directly here (torch already imported). All include the ERM
probe for θ₀ and the evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_hsfm import GROUP_COUNTS, problem
from hsfm_core import jobs
from hsfm_core.features import write_store
from hsfm_core.runs import read_process
from hsfm_core.spec import TrainSpec

HSFM = TrainSpec.create("hsfm", preset="waterbirds", device="cpu")

MANIFEST = {"dataset": {"format": "synthetic", "source": "bench", "options": {}}, "image_root": None,
            "class_names": ["landbird", "waterbird"], "attribute_names": ["land", "water"],
            "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": "bench-2048"},
            "clip_space": False, "text_encoder": None, "shard": None}


def waterbirds_workspace(path: Path) -> Path:
    parts = [(split, *problem(GROUP_COUNTS["waterbirds"][split], seed))
             for seed, split in enumerate(("train", "val", "test"))]
    x = np.concatenate([p[1] for p in parts])
    y = np.concatenate([p[2] for p in parts])
    a = np.concatenate([p[3] for p in parts])
    split = np.concatenate([[p[0]] * len(p[1]) for p in parts])
    meta = pd.DataFrame({"row_id": np.arange(len(x)), "sample_id": [str(i) for i in range(len(x))], "split": split,
                         "y": y, "a": a, "g": 2 * y + a, "image_path": ""})
    write_store(path, x, meta, MANIFEST)
    return path


def first_line_latency(ws: Path) -> tuple[float, float, float]:
    """(seconds until launch() returned, until the worker's first log line, until its runs exist)."""
    t0 = time.perf_counter()
    record = jobs.launch(ws, HSFM)
    returned = time.perf_counter() - t0
    while "[job]" not in jobs.log_tail(ws, record["job_id"], 5)["stdout"]:
        time.sleep(0.005)
    first = time.perf_counter() - t0
    while jobs.get_job(ws, record["job_id"])["status"] == "queued":
        time.sleep(0.005)
    running = time.perf_counter() - t0
    jobs.cancel(ws, record["job_id"])
    jobs.wait(ws, record["job_id"], timeout_s=60, poll_s=0.05)
    return returned, first, running


def sweep_queue(configurations: int, max_parallel: int, seconds: float) -> dict:
    """Peak processes and RSS of a queued local sweep (see the module docstring)."""
    from hsfm_core import sweeps
    from tests.gaussian import gaussian_workspace
    from tests.test_reliability2 import kill_processes, processes_mentioning, rss_mb

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        gaussian_workspace(ws, d=16, sizes=(600, 300, 300))
        alphas = ",".join(f"{a:.6g}" for a in np.geomspace(1e-4, 1e-2, configurations))
        request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", [f"alpha={alphas}"]), seeds=(0,),
                                      overrides=("E=20", "K_H=1", "T=2", "n=4", "K_hard=8"), device="cpu",
                                      max_parallel=max_parallel)
        try:
            t0 = time.perf_counter()
            queued = sweeps.submit(ws, request)
            submit_s = time.perf_counter() - t0
            peak, peak_rss, samples, by_kind = 0, 0.0, [], {}
            queue_pid = json.loads((sweeps.sweep_dir(ws, request.sweep_id) / "process.json").read_text())["pid"]
            while time.perf_counter() - t0 < seconds:
                mine = processes_mentioning(str(ws))
                peak, peak_rss = max(peak, len(mine)), max(peak_rss, rss_mb(mine))
                samples.append(len(mine))
                for process in mine:  # the largest RSS seen of each kind of process
                    kind = _kind(process, queue_pid)
                    by_kind[kind] = max(by_kind.get(kind, 0), round(rss_mb([process])))
                time.sleep(0.25)
            finished = sweeps.progress(ws, request.sweep_id)["finished"]
            launched = len(json.loads((sweeps.sweep_dir(ws, request.sweep_id) / "jobs.json").read_text()))
            t1 = time.perf_counter()
            sweeps.cancel(ws, request.sweep_id)
            while processes_mentioning(str(ws)) and time.perf_counter() - t1 < 120:
                time.sleep(0.25)
            return {"configurations": configurations, "max_parallel": max_parallel, "submit_returned_s": round(submit_s, 2),
                    "queued": len(queued), "window_s": seconds, "peak_processes": peak, "peak_rss_mb": round(peak_rss),
                    "median_processes": statistics.median(samples), "peak_rss_mb_by_kind": by_kind,
                    "launched_in_window": launched,
                    "finished_in_window": finished, "cancel_to_no_process_s": round(time.perf_counter() - t1, 2),
                    "left_after_cancel": len(processes_mentioning(str(ws))),
                    "status_after_cancel": sweeps.status(ws, request.sweep_id)}
        finally:
            kill_processes(processes_mentioning(str(ws)))


def _kind(process, queue_pid: int) -> str:
    """queue (the sweep's), submitter, controller (submitit's) or worker, from the pid and command line."""
    import psutil

    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if process.pid == queue_pid:
        return "queue"
    return "controller" if "submitit.local._local" in line else "submitter" if "_submit_here" in line else "worker"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="waterbirds runs through each path")
    parser.add_argument("--sweep-queue", action="store_true", help="measure a queued --submit local sweep instead")
    parser.add_argument("--configurations", type=int, default=50)
    parser.add_argument("--max-parallel", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    if args.sweep_queue:
        print(json.dumps(sweep_queue(args.configurations, args.max_parallel, args.seconds)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        ws = waterbirds_workspace(Path(tmp) / "ws")
        cold_return, cold_first, cold_running = first_line_latency(ws)
        warm = [first_line_latency(ws) for _ in range(args.latency_repeats)]
        returned, first, running = (statistics.median(w[i] for w in warm) for i in range(3))
        print(f"launch → the worker's first log line: median {first:.2f} s over {len(warm)} (launch() itself returns "
              f"after {returned:.2f} s); → its runs exist (running) {running:.2f} s; first launch in this process "
              f"{cold_first:.2f} s ({cold_return:.2f} s in launch(), runs at {cold_running:.2f} s)")

        from hsfm_core.train import train

        job_times, direct_times, cli_times, stages = [], [], [], {}
        load_before = os.getloadavg()[0]
        for i in range(args.repeats):  # alternate the order: other load on the machine hits both paths alike
            if i % 2:
                t0 = time.perf_counter()
                train(ws, HSFM)
                direct_times.append(time.perf_counter() - t0)
            t0, t0_wall = time.perf_counter(), time.time()
            record = jobs.launch(ws, HSFM)
            final = jobs.wait(ws, record["job_id"], timeout_s=3600, poll_s=0.05)
            job_times.append(time.perf_counter() - t0)
            assert final["status"] == "done", final
            run_created = read_process(ws / "runs" / record["run_ids"][0])["at"]  # when train() created the run
            stages = {"launch_to_run_created_s": run_created - t0_wall,
                      "run_created_to_done_s": final["ended"]["t"] - run_created}
            if not i % 2:
                t0 = time.perf_counter()
                train(ws, HSFM)
                direct_times.append(time.perf_counter() - t0)
            # the same run from the command line: a fresh interpreter, as a job has, but in the foreground
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hsfm_core", "train", "--workspace", str(ws), "--method", "hsfm",
                            "--preset", "waterbirds", "--device", "cpu"], check=True, capture_output=True)
            cli_times.append(time.perf_counter() - t0)
        job_s, direct_s = statistics.median(job_times), statistics.median(direct_times)
        print(f"best of {args.repeats} (least disturbed by other load): job {min(job_times):.2f} s, direct "
              f"{min(direct_times):.2f} s → {min(job_times) - min(direct_times):+.2f} s")
        print(f"waterbirds preset HSFM, 1 seed, CPU: through a local job {job_s:.2f} s, direct train() {direct_s:.2f} s "
              f"→ job-system overhead {job_s - direct_s:+.2f} s ({100 * (job_s / direct_s - 1):+.1f}%)")
        print(f"the same run from the CLI (python -m hsfm_core train, foreground): median "
              f"{statistics.median(cli_times):.2f} s, best {min(cli_times):.2f} s → the job system adds "
              f"{job_s - statistics.median(cli_times):+.2f} s (median) over the CLI")
        print(f"samples: job {[round(t, 2) for t in job_times]}, direct {[round(t, 2) for t in direct_times]}; "
              f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores)")
        print(f"inside the job: {', '.join(f'{k} {v:.2f}' for k, v in stages.items())} (the worker imports torch "
              f"and opens the store before train() creates the run)")
        print(json.dumps({"first_line_median_s": first, "launch_return_median_s": returned, "runs_exist_median_s": running,
                          "first_line_cold_s": cold_first, "launch_return_cold_s": cold_return,
                          "latency_samples": warm, "waterbirds_job_s": job_times, "waterbirds_direct_s": direct_times, "waterbirds_cli_s": cli_times,
                          "overhead_s": job_s - direct_s, "job_stages": stages,
                          "load_average_before_after": [load_before, os.getloadavg()[0]]}))


if __name__ == "__main__":
    main()
