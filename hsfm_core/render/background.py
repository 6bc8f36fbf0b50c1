"""The render views of runs, computed outside the app's server (docs/ARCHITECTURE.md §Render, §App).

A view that renders and re-encodes (a flip rate: seconds per run) must not hold a page, and Streamlit
does not support `st.*` calls from other threads; so, as for the UMAP maps (`analysis.projection`),
the work runs in its own process — `python -m hsfm_core.render.background WORKSPACE --run-id ID …`,
at `nice` 10, in its own session (it finishes if the server that asked for it stops) — which fills
the workspace's render cache, and the page polls the cache with `st.fragment(run_every=…)`, showing a
placeholder until it is filled. The same conventions as a map's worker: the job's stage in
`<workspace>/cache/render/jobs/<key>.job.json`, an exclusive lock on `<key>.lock` while it works (a
second start, from any session or server, does nothing), its output in `<key>.log`, and a failure
recorded in the job file for the page, which then computes in the foreground as before.

What a worker computes: first each run's flip rate (renderings, attributes read back: `flip.flip_rates`,
cached on disk), which is what the views wait for; then (`warm_views`) each run's class means and the
one-example strips along z + t·Δ (`STRIP_STEPS`) that the Lesson and Neighbors open on: each class's
first support example and its first example whose rendering flips. A run is computed under `run-<id>.lock`, so two jobs that share
a run (the Lesson's run group and Decode's one run) never compute it twice at once.

The demo build starts one for the Lesson's run group once its first map is on disk (`--after`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hsfm_core.detached import Progress, lock_held, spawn, take_lock

STRIP_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # the strip along z + t·Δ that the views draw
JOBS = Path("cache") / "render" / "jobs"  # inside the workspace, beside the render cache
AFTER_TIMEOUT_S = 120.0  # `--after FILE`: start anyway when FILE has not appeared by then


@dataclass(frozen=True)
class JobStatus(Progress):
    state: str  # "running" | "done" | "failed" | "absent"
    stage: str = ""  # what the worker is doing (running), or the error (failed)
    elapsed_s: float = 0.0
    estimate_s: float = 0.0


_spawned: dict[str, tuple[subprocess.Popen, float]] = {}  # job file → worker started by this process
_start_lock = threading.Lock()  # a Streamlit server runs its sessions in threads


def estimate_seconds(n_runs: int) -> float:
    """A job's expected time on 2 CPU cores: a fresh process's imports and model loads, then per run
    the renderings and their re-encoding (benchmarks/bench_lesson_render.py: about 3 s per demo run)."""
    return 8.0 + 3.5 * n_runs


def job_file(workspace: str | os.PathLike, content_hash: str, run_ids) -> Path:
    """`<workspace>/cache/render/jobs/<key>.job.json`, the key naming the store and the set of runs."""
    key = hashlib.blake2b(json.dumps([content_hash, sorted(run_ids)]).encode(), digest_size=12).hexdigest()
    return Path(workspace) / JOBS / f"{key}.job.json"


def _lock_of(job: Path) -> Path:
    return job.with_name(job.name.replace(".job.json", ".lock"))


def _log_of(job: Path) -> Path:
    return job.with_name(job.name.replace(".job.json", ".log"))


def _read_job(job: Path) -> dict:
    from hsfm_core.errors import InputError
    from hsfm_core.safe_io import read_json

    try:
        return read_json(job, "render job file") if job.is_file() else {}
    except InputError:
        return {}  # half-written by a worker that died, or damaged: as if absent


def job_status(store, run_ids) -> JobStatus:
    """Whether a worker computes the views of these runs now, finished, failed, or was never started
    (or was stopped before it finished)."""
    job = job_file(store.path, store.content_hash, run_ids)
    record = _read_job(job)
    ours = _spawned.get(str(job))
    estimate = float(record.get("estimate_s") or estimate_seconds(len(set(run_ids))))
    started = record.get("started") if isinstance(record.get("started"), (int, float)) else None
    if started is None:
        started = ours[1] if ours else time.time()
    if lock_held(_lock_of(job)) or (ours is not None and ours[0].poll() is None):
        return JobStatus("running", str(record.get("stage") or "Starting the rendering worker"),
                         time.time() - started, estimate)
    if record.get("error"):
        return JobStatus("failed", str(record["error"]))
    if ours is not None and ours[0].poll() not in (None, 0) and record.get("stage") != "done":  # it died before its record
        return JobStatus("failed", f"the rendering worker exited with code {ours[0].poll()} (its output: "
                                   f"{_log_of(job)})")
    if record.get("stage") == "done":
        return JobStatus("done", "done", float(record.get("seconds") or 0.0), estimate)
    if record.get("pid"):  # a record but no lock: its worker (of any server) was killed before it finished —
        return JobStatus("failed", f"the rendering worker (pid {record['pid']}) stopped before it finished (its "
                                   f"output: {_log_of(job)})")  # failed, so pages compute it rather than respawn
    return JobStatus("absent", estimate_s=estimate)


def start(store, run_ids, *, after: str | os.PathLike | None = None, env: dict | None = None) -> JobStatus:
    """Compute the views of these runs in a worker process unless one does now; → its status. `after`:
    the worker waits (at most AFTER_TIMEOUT_S) until that file exists before it computes (the demo
    build: the first map first). A worker that cannot be started (a read-only workspace) is "failed"."""
    run_ids = sorted(set(run_ids))
    job = job_file(store.path, store.content_hash, run_ids)
    with _start_lock:
        status = job_status(store, run_ids)
        if status.state == "running":
            return status
        command = [sys.executable, "-m", "hsfm_core.render.background", str(store.path), "--job", str(job)]
        for run_id in run_ids:
            command += ["--run-id", run_id]
        if after is not None:
            command += ["--after", str(after)]
        try:
            job.parent.mkdir(parents=True, exist_ok=True)
            job.unlink(missing_ok=True)  # a failed or finished attempt is retried from scratch
            worker = spawn(command, _log_of(job), env)
        except OSError as exc:
            return JobStatus("failed", f"cannot start the rendering worker ({exc.strerror or exc})")
        _spawned[str(job)] = (worker, time.time())
    return job_status(store, run_ids)


def wait(store, run_ids, timeout: float = 600, poll: float = 0.25) -> JobStatus:
    """Block until the job is no longer running (tests, benchmarks) → its final status."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(store, run_ids)
        if status.state != "running" or time.monotonic() > deadline:
            return status
        time.sleep(poll)


def strip_candidates(flips: dict) -> list[int]:
    """The support examples whose one-example strip the views open on: per class its first example and
    its first example whose rendering flips (the Lesson's rule picks one of these), and example 0
    (Neighbors' default)."""
    chosen = {0} if flips["per_example"] else set()
    for c in sorted({e["class"] for e in flips["per_example"]}):
        mine = [e for e in flips["per_example"] if e["class"] == c]
        chosen.add(mine[0]["support"])
        chosen.update([e["support"] for e in mine if e["flipped"]][:1])
    return sorted(chosen)


def warm_views(store, run: dict, renderer, flips: dict) -> None:
    """The rest of one run's render views, into the workspace's render cache: its class means and the
    strips of `strip_candidates` (a few dozen renderings; its flip rate `flips` comes first)."""
    from hsfm_core.render.base import render_class_means, render_edits

    render_class_means(renderer, store, run)
    for example in strip_candidates(flips):
        render_edits(renderer, store, run, [example], STRIP_STEPS)


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True):
    """An exclusive flock on `path` for the block (yields False when `blocking` is off and it is held)."""
    with open(path, "a") as handle:
        if blocking:
            fcntl.flock(handle, fcntl.LOCK_EX)
        elif not take_lock(handle):
            yield False
            return
        yield True


def _main(argv: list[str]) -> int:
    """The worker process: `WORKSPACE --job FILE --run-id ID … [--after FILE]`. Its lock is taken first, then
    the wait for `--after`, then the imports: a second start sees a running job from the first moment."""
    with contextlib.suppress(OSError):  # background work: the server's pages and any training come first
        os.nice(10)
    parser = argparse.ArgumentParser(prog="python -m hsfm_core.render.background")
    parser.add_argument("workspace")
    parser.add_argument("--run-id", action="append", required=True)
    parser.add_argument("--after", help="wait until this file exists (at most --after-timeout seconds)")
    parser.add_argument("--after-timeout", type=float, default=AFTER_TIMEOUT_S)
    parser.add_argument("--job", required=True, help="the job file (`job_file`): the lock and record beside it are "
                                                     "taken before any wait, so a second start sees this one")
    args = parser.parse_args(argv)
    run_ids, job = sorted(set(args.run_id)), Path(args.job)
    started, cpu = time.time(), time.process_time()

    def write(**fields) -> None:
        from hsfm_core.fsutil import atomic_path

        with atomic_path(job) as tmp:
            Path(tmp).write_text(json.dumps({"pid": os.getpid(), "started": started, "runs": run_ids,
                                             "estimate_s": estimate_seconds(len(run_ids)), **fields}))

    job.parent.mkdir(parents=True, exist_ok=True)
    with _locked(_lock_of(job), blocking=False) as mine:
        if not mine:
            return 0  # another worker computes these runs
        if args.after:  # before the heavy imports: they would compete with what we wait for
            write(stage="Waiting for the first map")
            deadline = time.monotonic() + args.after_timeout
            while not Path(args.after).exists() and time.monotonic() < deadline:
                time.sleep(0.5)
        from hsfm_core.errors import InputError
        from hsfm_core.render.flip import cached_flip_rates, flip_rates
        from hsfm_core.render.inverter import load_inverter
        from hsfm_core.workspace import as_workspace

        write(stage="Loading the renderer and the backbone")
        try:
            ws = as_workspace(args.workspace)
            store = ws.store
            if job != job_file(store.path, store.content_hash, run_ids):
                raise InputError(f"the store in {args.workspace} changed since this worker was started")
            runs = [ws.run(run_id) for run_id in run_ids]
            renderer = load_inverter(store)
            flips = []
            for k, run in enumerate(runs):  # the flip rates first: the views wait for all of them
                write(stage=f"Rendering the edits of run {k + 1} of {len(runs)} and reading them back")
                with _locked(job.parent / f"run-{run['run_id']}.lock"):  # a job sharing this run waits, then reads it
                    flips.append(flip_rates(store, run, renderer))
            write(stage="Rendering the class means and the strips")
            for run, result in zip(runs, flips):
                warm_views(store, run, renderer, result)
            unwritten = [run["run_id"] for run in runs if cached_flip_rates(store, run, renderer) is None]
            if unwritten:
                raise OSError(f"the render cache {job.parent.parent} could not be written (runs {', '.join(unwritten)})")
        except Exception as exc:  # recorded for the page, which then computes in the foreground
            write(stage="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        write(stage="done", seconds=time.time() - started, cpu_seconds=time.process_time() - cpu)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
