"""The Slurm path on a real single-node Slurm (.ci/slurm-up.sh): how long the cluster takes to come up, from
submit to the worker's first progress line, and from an outside `scancel` or `kill -9` of the worker until
`jobs` shows the end — without accounting (sacct disabled: the queue is the only source) and with slurmdbd.

    sudo .venv/bin/python -m benchmarks.bench_slurm [--repeats 2] [--modes none slurmdbd] [--time-limit] [--tests]

Needs root (it starts and stops the daemons through .ci/slurm-up.sh / slurm-down.sh, by their pids). Each mode
starts from stopped daemons (packages installed: apt's time is not counted). The job is an endless tiny HSFM
run on a small Gaussian workspace: what is timed is the scheduler and the job layer, not training. The end is
seen the way the app sees it: `get_job` polled every second with the default slurm.STATE_TTL_S (the scheduler
is asked at most that often per job), so a detection costs up to that TTL after Slurm itself knows. `--tests`
also times `pytest tests/test_slurm.py` (both modes). At the end the daemons are stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hsfm_core import jobs, slurm
from hsfm_core.runs import read_process
from hsfm_core.spec import TrainSpec
from tests.gaussian import gaussian_workspace

ROOT = Path(__file__).resolve().parent.parent
ENDLESS = ["E=100000", "K_H=1", "T=1", "n=4", "K_hard=8", "alpha=1e-3"]


def _until(condition, timeout_s: float, poll_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll_s)
    raise TimeoutError(what)


def _up(mode: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".ci" / "slurm-up.sh")], env={**os.environ, "SLURM_ACCOUNTING": mode}, check=True,
                   capture_output=True, timeout=900)
    return time.perf_counter() - t0


def _down() -> None:
    subprocess.run([str(ROOT / ".ci" / "slurm-down.sh")], check=True, capture_output=True, timeout=300)


def _one(workspace: Path, end_by: str) -> dict:
    """Launch an endless job; → seconds to running, to the first progress line, and from `end_by` to the end."""
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0].rstrip("*")
    spec = TrainSpec.create("hsfm", overrides=ENDLESS, device="cpu", executor="slurm",
                            slurm={"partition": partition, "time_min": 10})
    t0 = time.perf_counter()
    record = jobs.launch(workspace, spec)
    submit_s = time.perf_counter() - t0
    job_id = record["job_id"]
    _until(lambda: jobs.get_job(workspace, job_id)["status"] == "running", 120, 0.05, "running")
    running_s = time.perf_counter() - t0
    _until(lambda: "[job] epoch 1/" in jobs.log_tail(workspace, job_id, 20)["stdout"], 120, 0.05, "first progress")
    progress_s = time.perf_counter() - t0
    _until(lambda: jobs.job_progress(workspace, job_id)["epoch"] >= 3, 120, 0.1, "three epochs")
    jobs.get_job(workspace, job_id)  # the app has asked the scheduler just now: the worst case for the TTL cache
    t1 = time.perf_counter()
    if end_by == "scancel":
        subprocess.run(["scancel", record["submitit_job_id"]], check=True, timeout=30)
    else:
        os.kill(read_process(workspace / "runs" / record["run_ids"][0])["pid"], signal.SIGKILL)
    final = _until(lambda: (j := jobs.get_job(workspace, job_id))["status"] not in jobs.ACTIVE and j, 300, 1.0, "end")
    return {"submit_s": submit_s, "running_s": running_s, "first_progress_s": progress_s,
            "end_seen_s": time.perf_counter() - t1, "status": final["status"]}


def _time_limited(workspace: Path) -> dict:
    """An endless job with `--time 1`: how much of its minute it trained before it ended at its time limit."""
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0].rstrip("*")
    spec = TrainSpec.create("hsfm", overrides=ENDLESS, device="cpu", executor="slurm",
                            slurm={"partition": partition, "time_min": 1})
    record = jobs.launch(workspace, spec)
    final = _until(lambda: (j := jobs.get_job(workspace, record["job_id"]))["status"] not in jobs.ACTIVE and j,
                   300, 1.0, "the time limit")
    history = workspace / "runs" / record["run_ids"][0] / "history.jsonl"
    return {"status": final["status"], "error": final["error"],
            "trained_s": history.stat().st_mtime - final["worker"]["started"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["none", "slurmdbd"], choices=["none", "slurmdbd"])
    parser.add_argument("--tests", action="store_true", help="also time pytest tests/test_slurm.py")
    parser.add_argument("--time-limit", action="store_true", help="also run a --time 1 job to its limit (~1 min)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the cluster's daemons are started and stopped here")
    print(f"Slurm latency (SLURM_STATE_TTL_S = {slurm.STATE_TTL_S:.0f} s, get_job polled every 1 s; "
          f"{os.cpu_count()} CPUs; timings vary with the machine's load)")
    try:
        for mode in args.modes:
            _down()
            up_s = _up(mode)
            print(f"\n[accounting {mode}] cluster up from stopped daemons: {up_s:.1f} s "
                  f"(again, already up: {_up(mode):.1f} s)")
            rows = []
            with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
                workspace = Path(tmp) / "ws"
                gaussian_workspace(workspace)
                for _ in range(args.repeats):
                    for end_by in ("scancel", "kill -9"):
                        row = _one(workspace, end_by)
                        rows.append({**row, "end_by": end_by})
                        print(f"  {end_by:<8} submit (launch returns) {row['submit_s']:.1f} s · running "
                              f"{row['running_s']:.1f} s · first progress line {row['first_progress_s']:.1f} s · "
                              f"{end_by} → `jobs` shows {row['status']}: {row['end_seen_s']:.1f} s")
                if args.time_limit:
                    limited = _time_limited(workspace)
                    print(f"  --time 1: the worker trained {limited['trained_s']:.0f} s of its minute, then "
                          f"{limited['status']}: {limited['error']}")
            for key, label in [("first_progress_s", "submit → first progress line"), ("running_s", "submit → running")]:
                values = [r[key] for r in rows]
                print(f"  {label}: median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})")
            for end_by in ("scancel", "kill -9"):
                values = [r["end_seen_s"] for r in rows if r["end_by"] == end_by]
                print(f"  {end_by} → end shown: median {statistics.median(values):.1f} s (max {max(values):.1f}; "
                      f"target ≤ 30 s without sacct)")
        if args.tests:
            _up("none")
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_slurm.py", "-q", "-p", "no:randomly"],
                                  cwd=ROOT, env={**os.environ, "HSFM_SLURM_TESTS": "required"},
                                  capture_output=True, text=True)
            print(f"\npytest tests/test_slurm.py (both modes): {time.perf_counter() - t0:.0f} s — "
                  f"{done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]}")
    finally:
        _down()
        print("\ndaemons stopped (.ci/slurm-down.sh)")


if __name__ == "__main__":
    main()
