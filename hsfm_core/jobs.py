"""Background training jobs (docs/ARCHITECTURE.md §Jobs): one `train(workspace, spec)` call run outside
the caller through submitit, on this machine (`LocalExecutor`) or on a Slurm cluster (`SlurmExecutor`).

The runs are the registry: each run directory holds its status, its history (one line per epoch,
written once, by `train`) and who writes it (`process.json`: pid, start time, host, Slurm job id).
A job keeps only what no run can hold:

    jobs/<job_id>/job.json    the request (TrainSpec.to_dict()), run ids, the scheduler's handle, a
                              cancel request, how the job ended (written once)
    jobs/<job_id>/error.txt   the traceback of a job that crashed
    jobs/<job_id>/submitit/   submitit's pickles (the call, its result: never loaded here) and logs
    jobs/slots/slot-<i>.lock  local concurrency slots (`fcntl.flock`, freed when a process dies)
    jobs/settings.json        the workspace's max_parallel and max_sweep_runs (`settings`)

Every reader checks job.json key by key (`_read`): valid JSON of the wrong types is an InputError naming the
key. Many local requests can go through a queue (`start_queue`): one small process that launches them behind
the limit (a local sweep; see the section below).

A job is `queued` until `train` has created its runs (a slot, then loading), then `running`, then
`done`, `failed` or `cancelled`. Nothing is kept in memory: readers find jobs after a restart, and end
a job whose process vanished `failed`, with its runs: here psutil (pid + start time); on Slurm the queue
(`squeue`, which also gives a pending job's reason), then `sacct` once the controller has forgotten the job;
when accounting is disabled too, a job that left the queue without writing its end has ended.
Scheduler commands run with their output captured: stdout stays for results (hsfm_core/slurm.py holds the
conversation with Slurm: sbatch parameters, checks before submitting, a job's state).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from hsfm_core import slurm
from hsfm_core.errors import InputError
from hsfm_core.fsutil import write_json_atomic, write_text_atomic
from hsfm_core.safe_io import check_fields, described, finite_number, positive_int, read_json, string_list
from hsfm_core.resources import CHECKOUT  # what the worker needs on PYTHONPATH

ACTIVE = ("queued", "running")
DEFAULT_MAX_PARALLEL = 2
DEFAULT_MAX_SWEEP_RUNS = 500  # configurations × seeds; a larger sweep needs `yes` (the CLI's --yes)
LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes: far too short for training
KILLED = "the job's process ended without finishing (killed?)"
NEVER_STARTED_S = 120  # a job.json without a scheduler handle after this long was never submitted
SLOT_POLL_S = 0.25
_JOB_ID = re.compile(r"^job-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$")



def job_dir(workspace: str | os.PathLike, job_id: str) -> Path:
    if not _JOB_ID.match(job_id):
        raise InputError(f"job id {job_id!r}: expected job-YYYYMMDD-HHMMSS-xxxx")
    return Path(workspace, "jobs") / job_id


@described("an object of strings")
def string_map(value) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


# job.json's keys with their JSON types (safe_io.check_fields): what every reader of a job relies on.
_RECORD = {"job_id": str, "spec": dict, "run_ids": string_list, "created_t": finite_number,
           "submitit_folder": str}
_RECORD_OPTIONAL = {"workspace": str, "run_id": str, "max_parallel": positive_int, "created_at": str, "env": string_map,
                    "submitit_job_id": str, "cancel_requested": bool, "controller": dict, "worker": dict,
                    "ended": dict, "status": str, "error": str, "also": list}
_SPEC = {"method": str, "seeds": list, "executor": str}
_SPEC_OPTIONAL = {"time_limit_min": finite_number, "slurm": dict, "preset": str, "overrides": string_list,
                  "device": str, "max_parallel": positive_int, "tags": dict, "device_note": str}
_WORKER_OPTIONAL = {"pid": int, "started": finite_number, "t": finite_number, "deadline": finite_number,
                    "at": finite_number, "host": str}
_ENDED_OPTIONAL = {"status": str, "error": str, "t": finite_number, "detected_t": finite_number}


def _read(directory: Path) -> dict:
    """job.json, checked key by key (valid JSON of the wrong types is an InputError naming the key, never a
    TypeError in whichever reader meets it first)."""
    from hsfm_core.runs import check_process, run_dir

    path = directory / "job.json"
    where = f"{path}: unreadable job record"
    record = check_fields(read_json(path, "job record", allow_nan=False), where, _RECORD, _RECORD_OPTIONAL)
    spec = check_fields(record["spec"], f"{where} (spec)", _SPEC, _SPEC_OPTIONAL)
    if spec["executor"] not in ("local", "slurm"):
        raise InputError(f"{where}: spec.executor must be local or slurm, found {spec['executor']!r:.40}")
    if spec["executor"] == "slurm" and record.get("submitit_job_id") is not None:
        check_fields(spec.get("slurm"), f"{where} (spec.slurm)", {"time_min": finite_number})
    for rid in record["run_ids"]:
        try:
            run_dir(directory, rid)  # a plain run id (no path)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    for entry in record.get("also") or ():  # more requests of the same train_many call (a sweep's pass)
        check_fields(entry, f"{where} (also)", {"spec": dict, "run_id": str})
        check_fields(entry["spec"], f"{where} (also: spec)", _SPEC, _SPEC_OPTIONAL)
    if record.get("controller") is not None:
        check_process(record["controller"], f"{where} (controller)")
    if record.get("worker") is not None:
        check_fields(record["worker"], f"{where} (worker)", optional=_WORKER_OPTIONAL)
    if record.get("ended") is not None:
        ended = check_fields(record["ended"], f"{where} (ended)", {"status": str}, _ENDED_OPTIONAL)
        if ended["status"] not in ("done", "failed", "cancelled"):
            raise InputError(f"{where}: ended.status must be done, failed or cancelled, found {ended['status']!r:.40}")
    if record.get("status") is not None and record["status"] not in ("done", "failed", "cancelled"):
        raise InputError(f"{where}: status must be done, failed or cancelled, found {record['status']!r:.40}")
    if record["job_id"] != directory.name:
        raise InputError(f"{where}: it describes job {record['job_id']!r:.60}, not {directory.name}")
    return record


def _update(directory: Path, **fields) -> dict:
    """Change job.json under a lock (all write it); `ended` is written once. → the record as stored."""
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _read(directory)
        if not ("ended" in fields and record.get("ended")):
            write_json_atomic(directory / "job.json", record := {**record, **fields})
        return record


def _scheduler_job(record: dict):
    """submitit's Job for the record's handle (its public constructors; no process attached)."""
    import submitit

    kind = submitit.SlurmJob if record["spec"]["executor"] == "slurm" else submitit.LocalJob
    return kind(folder=record["submitit_folder"], job_id=record["submitit_job_id"])


def _gone(workspace: Path, record: dict) -> str | None:
    """Why an unfinished job can no longer finish, or None (local: its runs' writer, else submitit's controller)."""
    from hsfm_core.runs import process_alive, read_process, run_dir

    if record.get("submitit_job_id") is None:
        old = time.time() - record["created_t"] > NEVER_STARTED_S
        return "the job was registered but never submitted" if old else None
    if record["spec"]["executor"] == "slurm":
        info = slurm.state(record["job_id"], record["submitit_job_id"])
        if info is None or info["state"] in slurm.ACTIVE_STATES:
            return None
        if info["state"] == "GONE":
            return f"{KILLED} — {info['reason']}"
        return f"{KILLED} — Slurm says {info['state']}" + (f" ({info['reason']})" if info["reason"] else "")
    writers = [p for rid in record["run_ids"] if (p := read_process(run_dir(workspace, rid)))]
    return None if any(process_alive(p) is not False for p in writers or [record.get("controller")]) else KILLED


def _last_sign_of_life(workspace: Path, record: dict) -> float | None:
    """When the job's process was last seen working, from its own records: the newest history line or run start,
    else the worker's start. A death found late is dated here, not at the moment a reader noticed it."""
    from hsfm_core.runs import read_process, run_dir

    times = [(record.get("worker") or {}).get("t")]
    for rid in record["run_ids"]:
        path = run_dir(workspace, rid)
        times.append((read_process(path) or {}).get("at"))
        with contextlib.suppress(OSError):
            times.append((path / "history.jsonl").stat().st_mtime)
    return max((t for t in times if t), default=None)


def get_job(workspace: str | os.PathLike, job_id: str) -> dict:
    """One job's record (job.json) with its `status`, `error` and `traceback` (a crash's); InputError if unknown.
    A job whose process is gone is ended here with its unfinished runs (a worker's own verdict stands)."""
    from hsfm_core.runs import end_unfinished_run, run_dir

    workspace, directory = Path(workspace), job_dir(workspace, job_id)
    if not (directory / "job.json").is_file():
        raise InputError(f"no job {job_id!r} in {workspace / 'jobs'}")
    record = _read(directory)
    if record.get("status") in ("done", "failed", "cancelled"):  # a job.json of the earlier layout
        record.setdefault("ended", {"status": record["status"], "error": record.get("error"), "t": None})
    if not record.get("ended") and (reason := _gone(workspace, record)) is not None:
        seen = slurm.last_state(job_id) if record["spec"]["executor"] == "slurm" else None
        if record.get("cancel_requested"):
            status, error = "cancelled", None
        elif seen and seen["state"] == "CANCELLED":  # scancel from outside the project, before the worker could say so
            status, error = "cancelled", "cancelled outside the project (Slurm says CANCELLED)"
        else:
            status, error = "failed", reason
        for rid in record["run_ids"]:
            end_unfinished_run(workspace, rid, status, error)
        now = time.time()
        record = _update(directory, ended={"status": status, "error": error, "detected_t": now,
                                           "t": min(now, _last_sign_of_life(workspace, record) or now)})
    ended, trace = record.get("ended") or {}, directory / "error.txt"
    started = any(run_dir(workspace, rid).exists() for rid in record["run_ids"])  # then the runs say how it goes
    status = ended.get("status") or ("running" if started else "queued")
    pending = None
    if status == "queued" and record["spec"]["executor"] == "slurm" and record.get("submitit_job_id"):
        seen = slurm.last_state(job_id)
        if seen and seen["state"] == "PENDING" and seen["reason"]:
            pending = {"reason": seen["reason"], "never_starts": slurm.NEVER_STARTS.get(seen["reason"])}
    return {**record, "executor": record["spec"]["executor"], "error": ended.get("error"),
            "traceback": trace.read_text() if trace.is_file() else None, "status": status, "pending": pending}


def list_jobs(workspace: str | os.PathLike, unreadable: list | None = None) -> list[dict]:
    """Every job of the workspace, oldest launch first. A job whose job.json cannot be read (damaged, or not
    written yet) is left out; with `unreadable` (a list) it is named there: {job_id, path, error}."""
    out = []
    for d in sorted(Path(workspace, "jobs").glob("job-*")):
        if not d.is_dir() or not _JOB_ID.match(d.name):
            continue
        if not (d / "job.json").exists() and time.time() - d.stat().st_mtime < NEVER_STARTED_S:
            continue  # being created by launch() right now
        try:
            if not (d / "job.json").exists():
                raise InputError(f"{d / 'job.json'}: missing (the job was never registered completely)")
            out.append(get_job(workspace, d.name))
        except (InputError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if unreadable is not None:
                unreadable.append({"job_id": d.name, "path": str(d / "job.json"),
                                   "error": str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"})
    return sorted(out, key=lambda r: (r["created_t"], r["job_id"]))  # ids of one second are random


def settings(workspace: str | os.PathLike) -> dict:
    """The workspace's job settings, `jobs/settings.json`, with the defaults filled in:
    {"max_parallel": local jobs training at once (2), "max_sweep_runs": the largest sweep (configurations ×
    seeds) run without `yes` (500)}. InputError naming the file and key for anything else."""
    path = Path(workspace, "jobs") / "settings.json"
    found = read_json(path, "job settings", allow_nan=False) if path.exists() else {}
    check_fields(found, f"{path} (fix or delete the file)", optional={"max_parallel": positive_int,
                                                                     "max_sweep_runs": positive_int})
    return {"max_parallel": found.get("max_parallel") or DEFAULT_MAX_PARALLEL,
            "max_sweep_runs": found.get("max_sweep_runs") or DEFAULT_MAX_SWEEP_RUNS}


def job_limit(workspace: str | os.PathLike) -> int:
    """How many local jobs of this workspace train at once (`set_max_parallel`; default 2)."""
    return settings(workspace)["max_parallel"]


def _write_setting(workspace: str | os.PathLike, key: str, n: int, what: str) -> None:
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise InputError(f"{what} must be an integer ≥ 1, got {n}")
    path = Path(workspace, "jobs") / "settings.json"
    current = read_json(path, "job settings", allow_nan=False) if path.exists() else {}
    write_json_atomic(path, {**current, key: int(n)})  # the other settings stay


def set_max_parallel(workspace: str | os.PathLike, n: int) -> None:
    """How many local jobs of this workspace train at once (the rest wait `queued`); for later launches."""
    _write_setting(workspace, "max_parallel", n, "the job limit")


def set_max_sweep_runs(workspace: str | os.PathLike, n: int) -> None:
    """The largest sweep (configurations × seeds) this workspace runs without being told `yes`."""
    _write_setting(workspace, "max_sweep_runs", n, "the sweep size limit")


def _register(workspace: Path, spec, run_id: str | None, folder: Path | None = None,
              probe: bool | None = None) -> Path:
    """Check one request and write its job.json (not submitted yet); → the job's directory. `folder`: submitit's
    folder when several jobs share one (a job array), else the job's own. The device (docs/ARCHITECTURE.md
    §Devices): a Slurm request's device and GPU count are reconciled by `spec.check()` (the reconciled request is
    the one recorded); a local one's device passes the launch check here (`TrainSpec.check_device_here`; `probe`:
    the test kernel, by default unless this is the app's server — the worker runs it again before training)."""
    from hsfm_core.runs import new_run_id
    from hsfm_core.train import open_store_for

    spec = spec.check()
    open_store_for(workspace, spec.method)
    if spec.executor == "local":  # the device must exist here; a Slurm node's cannot be seen from here
        spec.check_device_here(probe)
    else:
        slurm.check_here(spec.slurm)
    if (limit := int(spec.max_parallel or job_limit(workspace))) < 1:
        raise InputError(f"the job limit must be ≥ 1, got {limit}")
    return _write_record(workspace, spec.to_dict(), run_id or new_run_id(spec.method),
                         limit if spec.executor == "local" else None, folder)


def _write_record(workspace: Path, spec: dict, run_id: str, max_parallel: int | None, folder: Path | None = None,
                  also: list | tuple = ()) -> Path:
    """Write the job.json of a checked request (`TrainSpec.to_dict()`); → the job's directory. `also`: more checked
    requests [{"spec", "run_id"}] that the job trains in the same `train_many` call (a sweep's pass)."""
    from hsfm_core.runs import free_run_ids

    now = datetime.now(timezone.utc)
    job_id = f"job-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    also = [{"spec": entry["spec"], "run_id": entry["run_id"]} for entry in also]
    run_ids = [rid for part in [{"spec": spec, "run_id": run_id}, *also]
               for rid in free_run_ids(workspace, part["run_id"], part["spec"]["seeds"])]
    (directory := job_dir(workspace, job_id)).joinpath("submitit").mkdir(parents=True)
    write_json_atomic(directory / "job.json", {
        "job_id": job_id, "workspace": str(workspace), "spec": spec, "run_id": run_id,
        "run_ids": run_ids, "max_parallel": max_parallel,
        "created_at": now.isoformat(timespec="seconds"), "created_t": time.time(),
        # the caller's GPUs, restored by the worker: submitit's controller cannot leave CUDA_VISIBLE_DEVICES unset
        "env": {k: v for k, v in os.environ.items() if k == "CUDA_VISIBLE_DEVICES"},
        "submitit_folder": str(folder or directory / "submitit"), "submitit_job_id": None, "cancel_requested": False,
        **({"also": also} if also else {})})
    return directory


def _slurm_executor(folder: Path, spec, job_id: str, workspace: Path):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder)
    options = replace(spec.slurm, time_min=int(spec.time_limit_min)) if spec.time_limit_min else spec.slurm
    executor.update_parameters(**slurm.sbatch_parameters(options, job_id, workspace))
    return executor


def _submission_failed(directories: list[Path], exc: Exception) -> InputError:
    message = f"submission failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
    for directory in directories:
        _update(directory, ended={"status": "failed", "error": message, "t": time.time()})
    return InputError(message)


def launch(workspace: str | os.PathLike, spec, run_id: str | None = None, probe: bool | None = None) -> dict:
    """Check the request (a `TrainSpec`), register the job, submit it; → its record, at once. `InputError` (nothing
    registered) for a bad request, store, device or taken `run_id`; a refused submission leaves the job `failed`.
    `probe`: whether the local launch check runs the test kernel here (`_register`)."""
    workspace = Path(workspace).resolve()
    spec = spec.check()  # on Slurm: the device and GPUs reconciled, as registered
    directory = _register(workspace, spec, run_id, probe=probe)
    try:
        if spec.executor == "local":
            _submit_detached(directory)
        else:
            executor = _slurm_executor(directory / "submitit", spec, directory.name, workspace)
            _update(directory, submitit_job_id=str(executor.submit(_worker_main, str(workspace), directory.name).job_id))
    except Exception as exc:
        raise _submission_failed([directory], exc) from exc
    return get_job(workspace, directory.name)


def launch_array(workspace: str | os.PathLike, requests: list[tuple]) -> list[dict]:
    """Several Slurm requests [(TrainSpec, run_id)] with the same Slurm options as ONE job array (submitit's
    `executor.batch()`: one sbatch, one task per request); each task is an ordinary job of this module (its own
    job.json, runs, status, cancel), its scheduler handle `<array id>_<task>`. → their records, in order."""
    workspace = Path(workspace).resolve()
    if not requests:
        return []
    if {spec.executor for spec, _ in requests} != {"slurm"} or len({repr(s.slurm) for s, _ in requests}) != 1:
        raise InputError("a job array needs Slurm requests with the same Slurm options")
    requests = [(spec.check(), run_id) for spec, run_id in requests]  # the device and GPUs reconciled, as registered
    directories: list[Path] = []
    for spec, run_id in requests:  # every request is checked before anything is submitted
        folder = directories[0] / "submitit" if directories else None
        directories.append(_register(workspace, spec, run_id, folder))
    try:
        executor = _slurm_executor(directories[0] / "submitit", requests[0][0], directories[0].name, workspace)
        with executor.batch():
            submitted = [executor.submit(_worker_main, str(workspace), d.name) for d in directories]
        for directory, job in zip(directories, submitted):
            _update(directory, submitit_job_id=str(job.job_id))
    except Exception as exc:
        raise _submission_failed(directories, exc) from exc
    return [get_job(workspace, d.name) for d in directories]


def _submit_detached(directory: Path) -> None:
    """Submit a local job from a short-lived submitter that leads a new session (`_submit_here`). submitit
    has no public way to detach a local job: LocalExecutor starts its controller as a child of the caller,
    in its session and process group, where the app server's Ctrl-C or its terminal closing would stop the
    job. In the submitter's session the controller and the worker carry on after it exits: jobs outlive the app."""
    pythonpath = os.pathsep.join(filter(None, (str(CHECKOUT), os.environ.get("PYTHONPATH"))))
    env, log_path = {**os.environ, "PYTHONPATH": pythonpath}, directory / "submitit" / "controller.log"
    with open(log_path, "ab") as log:
        done = subprocess.run([sys.executable, "-c", "import sys; from hsfm_core.jobs import _submit_here; "
                               "_submit_here(sys.argv[1])", str(directory)], env=env, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=log, start_new_session=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError((log_path.read_text(errors="replace").strip().splitlines() or ["no output"])[-1])


def _submit_here(directory: str) -> None:
    """The submitter: submit (public LocalExecutor API), record the handle, exit (no torch import here)."""
    import psutil
    import submitit

    record = _read(Path(directory))
    executor = submitit.LocalExecutor(folder=record["submitit_folder"])
    executor.update_parameters(timeout_min=float(record["spec"]["time_limit_min"] or LOCAL_TIME_LIMIT_MIN))
    pid = int(executor.submit(_worker_main, record["workspace"], record["job_id"]).job_id)  # the controller's
    controller = {"pid": pid, "started": psutil.Process(pid).create_time(), "host": socket.gethostname()}
    _update(Path(directory), submitit_job_id=str(pid), controller=controller)  # as runs.process_alive reads it


# -- a queue: many local requests, launched behind the limit by one small process -------------
# A sweep submitted locally is a queue (docs/ARCHITECTURE.md §Jobs): its folder holds
#     queue.json   {"limit": N, "entries": [{"key", "run_id", "spec": TrainSpec.to_dict()}]}, written (checked) by
#                  the submitter
#     jobs.json    {key: job id}, as each entry is launched (and the jobs still active from an earlier queue)
#     cancel       present when a cancel was asked for: nothing more is launched, the active jobs are cancelled
#     status       the queue's verdict when it ends: done | failed | cancelled
#     process.json the queue's process (a run's process record), so a reader can tell it died
# The queue process imports neither torch nor the methods (the requests were checked by the submitter, and
# every worker checks its request again): it is small, and a waiting request costs no process at all.

QUEUE_POLL_S = 0.5


def start_queue(workspace: str | os.PathLike, folder: Path, lock: "IO | None" = None) -> subprocess.Popen:
    """Start `serve_queue` for `folder` in a new session (it outlives the app and the terminal, as jobs do), handing
    it `lock` (an open file whose flock it then holds for its life: an inherited descriptor, so the lock is never
    without an owner), and record it in folder/process.json. The queue waits for "go" on its stdin: write it, and
    close stdin, once the caller's own records are written."""
    import psutil

    pythonpath = os.pathsep.join(filter(None, (str(CHECKOUT), os.environ.get("PYTHONPATH"))))
    fds = (lock.fileno(),) if lock is not None else ()
    with open(folder / "queue.log", "ab") as log:
        queue = subprocess.Popen(
            [sys.executable, "-c", "import sys; from hsfm_core.jobs import serve_queue; "
             "serve_queue(sys.argv[1], sys.argv[2], int(sys.argv[3]))", str(workspace), str(folder),
             str(fds[0] if fds else -1)], env={**os.environ, "PYTHONPATH": pythonpath}, stdin=subprocess.PIPE,
            stdout=log, stderr=log, pass_fds=fds, start_new_session=True)
    try:
        started = psutil.Process(queue.pid).create_time()
    except psutil.NoSuchProcess:
        started = time.time()
    write_json_atomic(folder / "process.json", {"pid": queue.pid, "started": started, "host": socket.gethostname(),
                                                "slurm_job_id": None, "at": time.time()})
    return queue


def serve_queue(workspace: str, folder: str, lock_fd: int = -1) -> str:
    """The queue process (see above): launch each entry when fewer than `limit` of its jobs are active, stop
    launching on a cancel, then write the verdict. → the verdict."""
    lock = os.fdopen(lock_fd, "a") if lock_fd >= 0 else None  # held until this process ends
    if sys.stdin.read() != "go\n":  # the submitter stopped before its records were written
        return "failed"
    workspace_path, folder_path, status = Path(workspace), Path(folder), "failed"
    try:
        status = _serve(workspace_path, folder_path)
    except Exception:  # noqa: BLE001 — the log keeps it; the verdict is failed
        traceback.print_exc()
    finally:
        write_text_atomic(folder_path / "status", status + "\n")
        print(f"[queue] {status}", flush=True)
        if lock is not None:
            lock.close()
    return status


def _serve(workspace: Path, folder: Path) -> str:
    from hsfm_core.runs import run_dir, run_ids_for

    queue = check_fields(read_json(folder / "queue.json", "job queue"), str(folder / "queue.json"),
                         {"limit": positive_int, "entries": list})
    launched = dict(read_json(folder / "jobs.json", "job list")) if (folder / "jobs.json").exists() else {}
    active = {key for key, job_id in launched.items() if job_active(workspace, job_id)}
    waiting = [e for e in queue["entries"] if e["key"] not in active]
    watched, failed = set(active), False
    print(f"[queue] {len(waiting)} request(s) to launch, at most {queue['limit']} at once", flush=True)
    while not (folder / "cancel").exists():
        active = {key for key in active if _occupying(workspace, launched[key])}
        while waiting and len({launched[key] for key in active}) < queue["limit"] and not (folder / "cancel").exists():
            entry = waiting.pop(0)
            parts = [entry, *entry.get("also", ())]  # a pass: several requests, one job
            for part in parts:
                for rid in run_ids_for(part["run_id"], part["spec"]["seeds"]):  # an unfinished earlier attempt
                    path = run_dir(workspace, rid)
                    if path.is_dir() and _run_status(path) != "done":
                        shutil.rmtree(path)
            try:
                record = launch_checked(workspace, entry["spec"], entry["run_id"], entry.get("also", ()))
            except InputError as exc:  # e.g. a run of it finished meanwhile: this entry fails, the others go on
                print(f"[queue] {entry['key']} not launched: {exc}", flush=True)
                failed = True
                continue
            launched.update({part["key"]: record["job_id"] for part in parts})
            write_json_atomic(folder / "jobs.json", launched)
            active.add(entry["key"])
            watched.add(entry["key"])
            print(f"[queue] {entry['key']}: {record['job_id']}", flush=True)
        if not waiting and not active:
            break
        time.sleep(QUEUE_POLL_S)
    if (folder / "cancel").exists():
        for key in active:  # launched after the canceller read jobs.json, or not reached yet
            cancel(workspace, launched[key])
        deadline = time.monotonic() + 60
        while any(job_active(workspace, launched[key]) for key in active) and time.monotonic() < deadline:
            time.sleep(QUEUE_POLL_S)
        return "cancelled"
    ended = [get_job(workspace, launched[key])["status"] for key in watched]
    return "done" if not failed and not waiting and all(s == "done" for s in ended) else "failed"


def _occupying(workspace: Path, job_id: str) -> bool:
    """Whether a launched job still holds one of the queue's places: until it has ended and its processes are gone
    (a finished worker and submitit's controller linger a moment after the job's end is written)."""
    from hsfm_core.runs import process_alive

    if job_active(workspace, job_id):
        return True
    return (job_dir(workspace, job_id) / "job.json").exists() and \
        process_alive(get_job(workspace, job_id).get("controller")) is True


def _run_status(path: Path) -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return (path / "status").read_text(encoding="utf-8").strip()
    return None


def launch_checked(workspace: str | os.PathLike, spec: dict, run_id: str, also: list | tuple = ()) -> dict:
    """`launch` of a local request already checked (`TrainSpec.to_dict()` of a checked spec), without importing
    torch or the methods: the queue's launch. `also`: more checked requests [{"spec", "run_id"}] trained in the
    same `train_many` call (a sweep's pass). The worker checks the requests again before training."""
    workspace = Path(workspace).resolve()
    if any(part["spec"].get("executor") != "local" for part in [{"spec": spec}, *also]):
        raise InputError("a queue launches local jobs only")
    directory = _write_record(workspace, spec, run_id, int(spec.get("max_parallel") or job_limit(workspace)),
                              also=also)
    try:
        _submit_detached(directory)
    except Exception as exc:
        raise _submission_failed([directory], exc) from exc
    return get_job(workspace, directory.name)


def job_active(workspace: str | os.PathLike, job_id: str) -> bool:
    """Whether a job is still queued or training (a job whose folder is gone has ended)."""
    if not (job_dir(workspace, job_id) / "job.json").exists():
        return False
    return get_job(workspace, job_id)["status"] in ACTIVE


# -- the worker (runs in the submitit job process) -----------------------------------------
class _TimeLimit(BaseException):
    """The time-limit warning, raised in the worker; a BaseException, so no `except Exception` swallows it."""


class _Worker:
    """One job inside its submitit process (`run`: slot → train(...) → the job's ending), and its one
    asynchronous stop: a cancel reaches it twice (the signal, and the flag in job.json read at every epoch
    and while queued), a time limit as the worker's own clock (an epoch ending within the warning margin of
    the job's end), SIGUSR2 or a SIGTERM at the limit. Whichever comes first raises once; a signal after that
    does nothing, so it cannot interrupt the cleanup that ends the runs and the job.

    Slurm sends SIGUSR2 at its first periodic check (about every 30 s) after end − margin − 30 s, so the
    warning can come up to 30 s + margin early: a 1-minute job was told at 26–40 s. The worker therefore keeps
    training until `margin` before its real end time (squeue's EndTime) and only then stops; a warning that
    comes earlier just says the limit is near."""

    def __init__(self, directory: Path, deadline: float | None = None, margin_s: float = 0.0):
        self.directory, self.armed, self.deadline, self.margin_s = directory, True, deadline, margin_s

    def disarm(self) -> bool:  # → whether the stop was still to come (the caller owns it now)
        armed, self.armed = self.armed, False
        return armed

    def near_limit(self, slack_s: float = 0.0) -> bool:
        return self.deadline is not None and time.time() >= self.deadline - self.margin_s - slack_s

    def on_signal(self, signum, frame) -> None:
        if signum == signal.SIGUSR2 and self.deadline is not None and not self.near_limit(slack_s=1.0):
            return  # Slurm's early warning: the epoch loop stops at the margin (`check`)
        if self.disarm():
            at_limit = signum == signal.SIGTERM and self.near_limit(slack_s=35.0)
            if signum == signal.SIGUSR2 or (at_limit and not _read(self.directory).get("cancel_requested")):
                raise _TimeLimit()
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def check(self) -> None:  # a cancel that could not signal this process (another host), or a job a reader ended
        if self.armed and self.near_limit():
            self.disarm()
            raise _TimeLimit()
        record = _read(self.directory)
        if record.get("cancel_requested") or record.get("ended"):
            self.disarm()
            raise KeyboardInterrupt("cancel requested")

    def acquire_slot(self, workspace: Path, me: dict):
        """Hold a slot lock for this process's life, after every earlier local job still waiting (first come,
        first served). → the lock file."""
        (slots := Path(workspace, "jobs") / "slots").mkdir(parents=True, exist_ok=True)
        for attempt in range(sys.maxsize):
            ahead = [j for j in list_jobs(workspace) if j["status"] == "queued" and j["executor"] == "local"
                     and not j["cancel_requested"] and (j["created_t"], j["job_id"]) < (me["created_t"], me["job_id"])]
            for i in range(0 if ahead else int(me["max_parallel"])):
                with contextlib.suppress(BlockingIOError):
                    fcntl.flock(fh := open(slots / f"slot-{i}.lock", "a"), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    print(f"[job] holding slot {i}", flush=True)
                    return fh
                fh.close()
            self.check()
            if attempt == 0:
                print(f"[job] waiting for one of {me['max_parallel']} slots", flush=True)
            time.sleep(SLOT_POLL_S)

    def run(self, workspace: Path) -> str:
        record, slot, status, error = _read(self.directory), None, "failed", None
        spec = record["spec"]
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):  # cancel, scancel, the time-limit warning
            signal.signal(signum, self.on_signal)
        if spec["executor"] == "local":  # the launcher's GPUs (see launch), before anything initialises CUDA
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            os.environ.update(record["env"])
        try:
            print(f"[job] {record['job_id']} started (pid {os.getpid()} on {socket.gethostname()})", flush=True)
            from hsfm_core.runs import process_record

            worker = process_record()  # when it started, where, which Slurm job
            if spec["executor"] == "slurm":
                limit_min = spec["time_limit_min"] or spec["slurm"]["time_min"]
                self.margin_s = slurm.time_limit_warning_s(limit_min)
                self.deadline = slurm.end_time(worker["slurm_job_id"]) or worker["started"] + 60 * float(limit_min)
            _update(self.directory, worker={**worker, "t": worker["at"], "deadline": self.deadline})
            self.check()
            slot = self.acquire_slot(workspace, record) if spec["executor"] == "local" else None
            from hsfm_core.spec import TrainSpec
            from hsfm_core.train import train_many

            def progress(epoch: int, epochs: int, entries: list[dict]) -> None:
                self.check()
                wga = [e["val_wga"] for e in entries if e.get("val_wga") is not None]
                print(f"[job] epoch {epoch}/{epochs}" + (f" val WGA {sum(wga) / len(wga):.4f}" if wga else "")
                      if epoch else f"[job] training {epochs} epochs", flush=True)

            also = record.get("also") or []  # a sweep's pass: its requests train in one train_many call
            requests = [TrainSpec.from_dict(part) for part in [spec, *(entry["spec"] for entry in also)]]  # checked
            self.check()  # again: the worker may run other code than launch did
            train_many(workspace, requests, progress=progress, run_ids=[record["run_id"], *(e["run_id"] for e in also)])
            self.disarm()  # finished: too late to cancel
            status = "done"
        except KeyboardInterrupt:
            status = "cancelled"
        except InputError as exc:
            error = str(exc)
        except _TimeLimit:
            limit = spec["time_limit_min"] or (spec["slurm"] or {}).get("time_min")
            error = f"the job reached its time limit ({limit} min)"
        except BaseException as exc:  # noqa: BLE001 — recorded, then the job ends
            error = f"{type(exc).__name__}: {exc}"
            write_text_atomic(self.directory / "error.txt", traceback.format_exc())
        finally:
            self.disarm()  # nothing may interrupt the job's own ending (a signal now is a no-op)
            from hsfm_core.runs import end_unfinished_run

            for rid in record["run_ids"] if status != "done" else ():  # runs train() could not end (normally none)
                end_unfinished_run(workspace, rid, status, error)
            # the log's last line before the record's end: whoever sees the job ended finds that line in its log
            print(f"[job] {status}" + (f": {error}" if error else ""), file=sys.stderr if error else sys.stdout,
                  flush=True)
            _update(self.directory, ended={"status": status, "error": error, "t": time.time()})
            if slot is not None:
                slot.close()
        return status


def _worker_main(workspace: str, job_id: str) -> str:
    """What submitit runs (two strings in its pickle): the job's worker. → the job's status."""
    return _Worker(job_dir(workspace, job_id)).run(Path(workspace))


def job_progress(workspace: str | os.PathLike, job_id: str) -> dict:
    """Where a job stands, from its runs: {job_id, status, epoch, epochs (config `epochs`, else the setting),
    history (the runs' history.jsonl lines with their seed and run id: a sweep's pass trains several requests in one
    job), elapsed_s (since the launch), eta_s, error, run_ids}."""
    from hsfm_core.runs import read_process, run_dir

    record, history, epochs, started_t, last_t = get_job(workspace, job_id), [], None, None, None
    for path in [run_dir(workspace, rid) for rid in record["run_ids"]]:
        with contextlib.suppress(OSError, ValueError):
            config = json.loads((path / "config.json").read_text())
            epochs = config.get("epochs", (config.get("hyperparameters") or {}).get("epochs"))
            started_t, last_t = (read_process(path) or {}).get("at"), (path / "history.jsonl").stat().st_mtime
            for line in (path / "history.jsonl").read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):  # a line still being written is left out
                    history.append({"seed": config.get("seed"), "run_id": path.name, **json.loads(line)})
    epoch = max((row.get("epoch", 0) for row in history), default=0)
    eta = 0.0 if record["status"] == "done" else None
    if record["status"] in ACTIVE and epoch and epochs and started_t:
        eta = max(0.0, (last_t - started_t) / epoch * (epochs - epoch) - (time.time() - last_t))
    time_left, ends_at_limit = None, False
    limit_min = record["spec"]["time_limit_min"] or (record["spec"].get("slurm") or {}).get("time_min")
    if record["status"] in ACTIVE and limit_min and (worker := record.get("worker") or {}).get("t"):
        time_left = max(0.0, (worker.get("deadline") or worker["t"] + 60 * float(limit_min)) - time.time())
        if eta is not None and eta > time_left:  # the limit comes first: the job will not finish its epochs
            eta, ends_at_limit = time_left, True
    end = (record.get("ended") or {}).get("t") or time.time()
    return {"job_id": job_id, "status": record["status"], "epoch": epoch, "epochs": epochs, "history": history,
            "elapsed_s": max(0.0, end - record["created_t"]), "eta_s": eta, "time_left_s": time_left,
            "ends_at_time_limit": ends_at_limit, "pending": record["pending"], "error": record["error"],
            "run_ids": record["run_ids"]}


def log_tail(workspace: str | os.PathLike, job_id: str, n_lines: int = 40) -> dict:
    """The last `n_lines` of the worker's stdout and stderr (submitit's log files): {stdout, stderr}."""
    record, out = get_job(workspace, job_id), {"stdout": "", "stderr": ""}
    for name in out if record.get("submitit_job_id") and n_lines > 0 else ():
        with contextlib.suppress(OSError), open(getattr(_scheduler_job(record).paths, name), "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 256_000))  # a long log: its last 256 kB only
            out[name] = "\n".join(fh.read().decode("utf-8", errors="replace").splitlines()[-n_lines:])
    return out


def cancel(workspace: str | os.PathLike, job_id: str) -> dict:
    """Ask a queued or running job to stop; → its record, at once. The flag first (the worker reads it at each
    epoch and while queued), then SIGINT to the worker, the child of submitit's controller (never the
    controller: its SIGINT kills the worker 1 s later, maybe mid-cleanup). Slurm: scancel (SIGTERM); a job
    Slurm no longer runs (or has forgotten) is ended `cancelled` here at once."""
    import psutil

    from hsfm_core.runs import process_alive

    if get_job(workspace, job_id)["status"] in ACTIVE:
        record = _update(job_dir(workspace, job_id), cancel_requested=True)
        if record["spec"]["executor"] == "slurm" and record.get("submitit_job_id"):
            slurm.command("scancel", str(record["submitit_job_id"]))  # quiet: a job already gone makes it complain
            slurm.state(job_id, record["submitit_job_id"], fresh=True)
        elif process_alive(controller := record.get("controller")):
            with contextlib.suppress(psutil.Error):
                for worker in psutil.Process(controller["pid"]).children():
                    worker.send_signal(signal.SIGINT)
    return get_job(workspace, job_id)


def wait(workspace: str | os.PathLike, job_id: str, timeout_s: float = 600, poll_s: float = 0.2) -> dict:
    """Block until the job has ended (done, failed or cancelled); → its record. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while (record := get_job(workspace, job_id))["status"] in ACTIVE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {record['status']} after {timeout_s} s")
        time.sleep(poll_s)
    return record
