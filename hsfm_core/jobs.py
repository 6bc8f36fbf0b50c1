"""Background training jobs (DESIGN §6 Retrain): one `train(...)` call run outside the caller
through submitit, on this machine (`LocalExecutor`) or on a Slurm cluster (`SlurmExecutor`).

    <workspace>/jobs/<job_id>/job.json        the registry entry (JSON, written atomically under a lock)
    <workspace>/jobs/<job_id>/progress.jsonl  one JSON line per stage / epoch, appended by the worker
    <workspace>/jobs/<job_id>/error.txt       the traceback of a crashed job
    <workspace>/jobs/<job_id>/submitit/       submitit's own folder: its pickles and the worker's logs
    <workspace>/jobs/slots/slot-<i>.lock      local concurrency slots (`fcntl.flock`, freed when a process dies)

A job is launched with `launch(...)`, which checks the request synchronously (`InputError`
with the one-line reason), writes `job.json` with the run ids the job will write, submits, and
returns at once. The worker is a fresh interpreter (`python -m submitit.core._submit`, started
by submitit's controller process; never a fork of the caller). It reports `started` at once,
waits for a slot (status `queued`), then runs `train(...)` (status `running`), appending epoch
lines to the progress file, and ends the job `done`, `failed` (with the error) or `cancelled`.

`list_jobs` / `get_job` re-read everything from disk and check that the processes of unfinished
jobs are still alive (pid + start time for local jobs, `sacct` through submitit for Slurm): a job
whose process vanished is marked `failed` ("the job's process ended without finishing
(killed?)"), and so are its unfinished runs. Nothing is kept in memory, so jobs are found again
after the app restarts.

Pickles: submitit pickles the call (`_worker_main(workspace, job_id)`, two strings) and the
worker's return value into `submitit/`. Those files are written by this module for this module;
nothing here ever loads them, and the registry itself is JSON only.

Local jobs outlive the process that launched them: the submitit controller is started in its
own session (`start_new_session`), so neither the app server exiting nor a Ctrl-C in its
terminal stops them. `cancel` is the way to stop one.

Stopping a worker: `cancel` first sets `cancel_requested` in job.json (under the job's lock), then
signals the worker if it has registered its pid (registration and the request are serialized by
that lock, so a worker that registers later sees the request itself). The worker therefore learns of
one cancel twice: from the signal and from the flag it reads at every epoch and while queued.
Whichever comes first raises the one `KeyboardInterrupt` (`_stop_once`); a signal arriving after it
does nothing, so it can never interrupt the cleanup that marks the runs and the job `cancelled`
(a job `cancelled` with a run left `running`). The same holds for the time-limit signal, and the
worker finally ends any of its runs that are still unfinished with the job's own status.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

from hsfm_core.errors import InputError
from hsfm_core.fsutil import write_json_atomic, write_text_atomic
from hsfm_core.spec import SlurmOptions

JOBS_DIR = "jobs"
STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
EXECUTORS = ("local", "slurm")
DEFAULT_MAX_PARALLEL = 2
LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes: far too short for training
KILLED = "the job's process ended without finishing (killed?)"
NEVER_STARTED_S = 120  # a job.json without any process after this long was never submitted
SLOT_POLL_S = 0.25
_JOB_ID = re.compile(r"^job-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$")
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # what the worker needs on PYTHONPATH
_controllers: dict[int, subprocess.Popen] = {}  # local controllers started here, reaped by list_jobs


# -- records ------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _new_job_id() -> str:
    return f"job-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def jobs_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / JOBS_DIR


def job_dir(workspace: str | os.PathLike, job_id: str) -> Path:
    if not _JOB_ID.match(job_id):
        raise InputError(f"job id {job_id!r}: expected job-YYYYMMDD-HHMMSS-xxxx")
    return jobs_dir(workspace) / job_id


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive lock on one job's registry entry (launcher, worker and listers all write it)."""
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(directory: Path) -> dict:
    return json.loads((directory / "job.json").read_text())


def _update(directory: Path, **fields) -> dict:
    with _locked(directory):
        record = {**_read(directory), **fields}
        write_json_atomic(directory / "job.json", record)
    return record


def _append_progress(directory: Path, stage: str, **fields) -> None:
    with open(directory / "progress.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": time.time(), "stage": stage, **fields}) + "\n")
        fh.flush()


# -- processes ----------------------------------------------------------------------------
def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 says whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie has finished; it only waits to be reaped
        return False
    return start is None or int(fields[19]) == start


def _reap() -> None:
    for pid, proc in list(_controllers.items()):
        if proc.poll() is not None:
            del _controllers[pid]


# -- executors ----------------------------------------------------------------------------
def slurm_parameters(options: SlurmOptions, job_id: str) -> dict:
    """`SlurmExecutor.update_parameters` keywords (sbatch vocabulary) for a job."""
    options.check()
    pythonpath = shlex.quote(str(_PROJECT_ROOT))
    params = {"job_name": f"hsfm-{job_id}", "partition": options.partition, "time": int(options.time_min),
              "nodes": 1, "ntasks_per_node": 1, "signal_delay_s": 90,
              "setup": [*options.setup, f"export PYTHONPATH={pythonpath}${{PYTHONPATH:+:$PYTHONPATH}}"]}
    if int(options.gpus) > 0:
        params["gpus_per_node"] = int(options.gpus)
    if options.cpus is not None:
        params["cpus_per_task"] = int(options.cpus)
    if options.mem_gb is not None:
        mem = float(options.mem_gb)
        params["mem"] = f"{int(mem)}GB" if mem.is_integer() else f"{int(mem * 1024)}MB"
    if options.extra:
        params["additional_parameters"] = {str(k): v for k, v in options.extra.items()}
    return params


def slurm_script(workspace: str | os.PathLike, options: SlurmOptions | dict, job_id: str = "job-00000000-000000-0000",
                 python: str | None = None) -> str:
    """The sbatch script submitit would submit for a job with these options (a preview; needs no cluster)."""
    from submitit.slurm.slurm import _make_sbatch_string

    options = SlurmOptions.from_value(options)
    folder = (job_dir(Path(workspace).resolve(), job_id) / "submitit").resolve()
    command = " ".join([python or shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(options, job_id))


def _local_executor():
    import submitit
    from submitit.local.local import LocalJob

    class DetachedLocalExecutor(submitit.LocalExecutor):
        """submitit's LocalExecutor with one change: its controller starts in a new session, with
        the caller's CUDA_VISIBLE_DEVICES (submitit's own start empties it when no GPUs are
        requested) and hsfm_core on PYTHONPATH. The controller then survives the app server's
        exit and a Ctrl-C in its terminal. Same environment contract as
        `submitit.local.local.start_controller` (submitit 1.5.4, pinned)."""

        def _submit_command(self, command: str):
            env = dict(os.environ)
            env.update(SUBMITIT_LOCAL_NTASKS="1", SUBMITIT_LOCAL_COMMAND=command,
                       SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", LOCAL_TIME_LIMIT_MIN))),
                       SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
                       SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_STDERR_TO_STDOUT="",
                       SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_WITH_SHELL="",
                       PYTHONPATH=os.pathsep.join(p for p in (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p))
            log = open(Path(self.folder) / "controller.log", "ab")
            try:
                process = subprocess.Popen([sys.executable, "-m", "submitit.local._local", str(self.folder)],
                                           env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           start_new_session=True)
            finally:
                log.close()
            _controllers[process.pid] = process
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=[0])

    return DetachedLocalExecutor


# -- launching ----------------------------------------------------------------------------
def job_limit(workspace: str | os.PathLike) -> int:
    """How many local jobs of this workspace train at once (`set_max_parallel`; default 2)."""
    path = jobs_dir(workspace) / "settings.json"
    if not path.is_file():
        return DEFAULT_MAX_PARALLEL
    try:
        return int(json.loads(path.read_text()).get("max_parallel", DEFAULT_MAX_PARALLEL))
    except (ValueError, TypeError, AttributeError):
        raise InputError(f"{path}: expected {{\"max_parallel\": N}}; fix or delete the file") from None


def set_max_parallel(workspace: str | os.PathLike, n: int) -> None:
    """How many local jobs of this workspace train at once (the rest wait `queued`); for later launches."""
    if int(n) < 1:
        raise InputError(f"the job limit must be ≥ 1, got {n}")
    write_json_atomic(jobs_dir(workspace) / "settings.json", {"max_parallel": int(n)})


def _check_device(device: str, executor: str) -> None:
    import torch

    if executor == "local":
        from hsfm_core.features.encoders import resolve_device

        resolve_device(device)
    elif device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise InputError(f"unknown device {device!r}; expected auto, cpu or cuda[:N]") from None


def launch(workspace: str | os.PathLike, spec) -> dict:
    """Check the request (a `TrainSpec`), register the job, submit it, and return its record at once.

    Raises `InputError` (nothing registered, nothing submitted) for a bad store or device; a
    submission refused by Slurm also raises `InputError` (the job stays registered as `failed`).
    """
    from hsfm_core.runs import new_run_id
    from hsfm_core.train import open_store_for, run_ids_for

    spec = spec.check()
    method, executor, device = spec.method, spec.executor, spec.device
    max_parallel, time_limit_min, options = spec.max_parallel, spec.time_limit_min, spec.slurm
    workspace = Path(workspace).resolve()
    open_store_for(workspace, method)
    _check_device(device, executor)
    limit = int(max_parallel) if max_parallel is not None else job_limit(workspace)
    if limit < 1:
        raise InputError(f"the job limit must be ≥ 1, got {limit}")

    job_id = _new_job_id()
    run_id = new_run_id(method)
    directory = job_dir(workspace, job_id)
    directory.mkdir(parents=True)
    folder = directory / "submitit"
    record = {
        "job_id": job_id, "workspace": str(workspace), "status": "queued", "executor": executor,
        "spec": spec.to_dict(),
        "run_id": run_id, "run_ids": run_ids_for(run_id, spec.seeds),
        "max_parallel": limit if executor == "local" else None,
        "slurm": asdict(options) if options else None,
        "time_limit_min": time_limit_min,
        "submitit_folder": str(folder), "submitit_job_id": None,
        "host": socket.gethostname(), "pid": None, "pid_start": None, "worker_pid": None, "worker_start": None,
        "worker_host": None, "created_at": _now(), "created_t": time.time(), "started_at": None, "finished_at": None,
        "error": None, "cancel_requested": False,
    }
    write_json_atomic(directory / "job.json", record)
    (directory / "progress.jsonl").touch()
    try:
        if executor == "local":
            ex = _local_executor()(folder)
            ex.update_parameters(timeout_min=float(time_limit_min or LOCAL_TIME_LIMIT_MIN))
        else:
            import submitit

            ex = submitit.SlurmExecutor(folder=folder)
            params = slurm_parameters(options, job_id)
            if time_limit_min:
                params["time"] = int(time_limit_min)
            ex.update_parameters(**params)
        job = ex.submit(_worker_main, str(workspace), job_id)
    except Exception as exc:
        message = f"submission failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        _update(directory, status="failed", error=message, finished_at=_now())
        _append_progress(directory, "failed", error=message)
        raise InputError(message) from exc
    fields = {"submitit_job_id": str(job.job_id)}
    if executor == "local":
        pid = int(job.job_id)
        fields |= {"pid": pid, "pid_start": _proc_start(pid)}
    _update(directory, **fields)
    return get_job(workspace, job_id)


# -- the worker (runs in the submitit job process) -----------------------------------------
class _TimeLimit(BaseException):
    """Raised in the worker by the time-limit warning; a BaseException so that no `except Exception`
    between the signal and `_worker_main` can swallow it."""


_stop_armed = False  # the worker's one asynchronous stop (cancel or time limit) is still to come


def _stop_once() -> bool:
    """Disarm the stop signals; → whether they were armed (i.e. the caller owns the job's one stop).
    Called by the signal handlers, by the cancel checks before they raise, and when the job ends."""
    global _stop_armed
    armed, _stop_armed = _stop_armed, False
    return armed


def _on_interrupt(signum, frame):
    if _stop_once():  # a second signal, or one after the cancel flag was seen, must not hit the cleanup
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _on_time_limit(signum, frame):
    if _stop_once():
        raise _TimeLimit()


def _earlier_job_waiting(workspace: Path, me: dict) -> bool:
    """Whether a local job launched before `me` still waits for a slot (slots go first come, first served)."""
    mine = (me["created_t"], me["job_id"])
    for d in jobs_dir(workspace).glob("job-*"):
        if d.name == me["job_id"]:
            continue
        try:
            other = _read(d)
        except (OSError, ValueError):
            continue
        if (other.get("executor") == "local" and other.get("status") == "queued" and not other.get("cancel_requested")
                and (other.get("created_t", 0.0), other["job_id"]) < mine and _process_gone(other) is None):
            return True
    return False


def _acquire_slot(workspace: Path, record: dict, directory: Path):
    """Hold one of the job's `max_parallel` slot locks for the life of this process, after every local job
    launched before it got one; report `queued` while waiting. → (open lock file, slot index)."""
    limit = int(record["max_parallel"] or 1)
    slots = jobs_dir(workspace) / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for i in range(0 if _earlier_job_waiting(workspace, record) else limit):
            fh = open(slots / f"slot-{i}.lock", "a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            return fh, i
        _check_cancel(directory)
        if not waiting:
            waiting = True
            _append_progress(directory, "queued", message=f"waiting for a free slot ({limit} job(s) at a time)")
            print(f"[job] waiting for one of {limit} slots", flush=True)
        time.sleep(SLOT_POLL_S)


def _check_cancel(directory: Path) -> None:
    """A cancel that could not signal this process (another host, no scancel) is seen here."""
    if _read(directory).get("cancel_requested"):
        _stop_once()  # the SIGINT that follows the flag must not interrupt the cleanup of this one
        raise KeyboardInterrupt("cancel requested")


def _mean(entries: list[dict], key: str):
    values = [e[key] for e in entries if e.get(key) is not None]
    return sum(values) / len(values) if values else None


def _worker_main(workspace: str, job_id: str) -> str:
    """One job, inside its submitit process: slot → train(...) → final status. Returns the status."""
    global _stop_armed
    _stop_armed = True
    signal.signal(signal.SIGINT, _on_interrupt)  # jobs.cancel sends SIGINT to a local worker
    signal.signal(signal.SIGTERM, _on_interrupt)  # scancel sends SIGTERM (submitit's own handler ignores it)
    signal.signal(signal.SIGUSR2, _on_time_limit)  # submitit's (and Slurm's) warning before the time limit
    workspace = Path(workspace)
    directory = job_dir(workspace, job_id)
    pid = os.getpid()
    record, slot = {}, None
    status, error = "failed", None
    try:
        _append_progress(directory, "started", pid=pid, host=socket.gethostname())
        print(f"[job] {job_id} started (pid {pid} on {socket.gethostname()})", flush=True)
        # under the job's lock: a cancel before this line is seen here, one after it signals this pid
        record = _update(directory, worker_pid=pid, worker_start=_proc_start(pid), worker_host=socket.gethostname())
        spec = record["spec"]
        if record.get("cancel_requested"):
            _stop_once()
            raise KeyboardInterrupt("cancelled before it started")
        if record["executor"] == "local":
            slot, index = _acquire_slot(workspace, record, directory)
            print(f"[job] holding slot {index}", flush=True)
        _update(directory, status="running", started_at=_now())
        _append_progress(directory, "loading store")
        from hsfm_core.spec import TrainSpec
        from hsfm_core.train import train

        def progress(epoch: int, epochs: int, entries: list[dict]) -> None:
            _check_cancel(directory)
            if epoch == 0:
                _append_progress(directory, "training", epoch=0, epochs=epochs)
                print(f"[job] training {epochs} epochs", flush=True)
                return
            keys = ("outer_loss", "head_loss", "val_avg", "val_wga")
            _append_progress(directory, "epoch", epoch=epoch, epochs=epochs, **{k: _mean(entries, k) for k in keys},
                             per_seed=[{"seed": s, **{k: e.get(k) for k in (*keys, "val_group_acc")}}
                                       for s, e in zip(spec["seeds"], entries)])
            print(f"[job] epoch {epoch}/{epochs} val WGA {_mean(entries, 'val_wga'):.4f} "
                  f"outer loss {_mean(entries, 'outer_loss'):.4f}", flush=True)

        runs = train(workspace, TrainSpec.from_dict(spec), progress=progress, run_id=record["run_id"])
        _stop_once()  # finished: too late to cancel
        summary = {r.run_id: {split: {k: m[k] for k in ("wga", "avg_adjusted", "avg_plain")}
                              for split, m in r.metrics.items()} for r in runs}
        status = "done"
        _append_progress(directory, "done", runs=[r.run_id for r in runs], metrics=summary)
    except KeyboardInterrupt:
        status = "cancelled"
    except InputError as exc:
        error = str(exc)
    except _TimeLimit:
        error = f"the job reached its time limit ({record.get('time_limit_min') or (record.get('slurm') or {}).get('time_min')} min)"
    except BaseException as exc:  # noqa: BLE001 — recorded, then the job ends
        error = f"{type(exc).__name__}: {exc}"
        write_text_atomic(directory / "error.txt", traceback.format_exc())
    finally:
        _stop_once()  # nothing may interrupt the job's own ending (a signal now is a no-op)
        if status != "done":
            _end_runs(workspace, record, status, error)  # runs train() could not end itself (normally none)
            _append_progress(directory, status, **({"error": error} if error else {}))
            print(f"[job] {status}" + (f": {error}" if error else ""), file=sys.stderr if error else sys.stdout,
                  flush=True)
        _update(directory, status=status, error=error, finished_at=_now())
        if slot is not None:
            slot.close()
    return status


def _end_runs(workspace: Path, record: dict, status: str, message: str | None) -> list[str]:
    from hsfm_core.runs import end_unfinished_run

    return [rid for rid in record.get("run_ids") or []
            if end_unfinished_run(workspace, rid, status, message)]


# -- reading ------------------------------------------------------------------------------
SLURM_STATE_TTL_S = 20.0  # the app polls every second: ask sacct at most this often per job
_slurm_states: dict[str, tuple[float, str | None]] = {}


def _slurm_state(record: dict) -> str | None:
    """Slurm's state of the job (COMPLETED, FAILED, CANCELLED, …), or None when sacct cannot say.
    Cached for SLURM_STATE_TTL_S per job, so polling pages do not hammer the cluster's accounting."""
    cached = _slurm_states.get(record["job_id"])
    if cached and time.monotonic() - cached[0] < SLURM_STATE_TTL_S:
        return cached[1]
    state = _ask_sacct(record)
    _slurm_states[record["job_id"]] = (time.monotonic(), state)
    return state


def _ask_sacct(record: dict) -> str | None:
    try:
        import submitit

        job = submitit.SlurmJob(folder=record["submitit_folder"], job_id=record["submitit_job_id"])
        state = job.watcher.get_state(job.job_id, mode="force")
    except Exception:  # noqa: BLE001 — no sacct here, or it failed: nothing can be concluded
        return None
    return None if state in ("UNKNOWN", "", None) else state.split()[0]


_SLURM_ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                 "PREEMPTED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "READY")


def _process_gone(record: dict) -> str | None:
    """Why an unfinished job cannot finish any more (its process is gone), or None while it may."""
    if record["executor"] == "slurm":
        if not record.get("submitit_job_id"):
            return _never_submitted(record)
        state = _slurm_state(record)
        if state is None or state in _SLURM_ACTIVE:
            return None
        return f"{KILLED} — Slurm says {state}"
    if record.get("host") not in (None, socket.gethostname()):
        return None  # launched on another machine: its processes cannot be seen from here
    if record.get("worker_pid"):
        alive = _pid_alive(record["worker_pid"], record.get("worker_start"))
    elif record.get("pid"):
        alive = _pid_alive(record["pid"], record.get("pid_start"))
    else:
        return _never_submitted(record)
    return None if alive else KILLED


def _never_submitted(record: dict) -> str | None:
    created = datetime.fromisoformat(record["created_at"]).timestamp()
    return "the job was registered but never submitted" if time.time() - created > NEVER_STARTED_S else None


def _refresh(workspace: Path, directory: Path) -> dict:
    record = _read(directory)
    if record["status"] not in ACTIVE:
        return record
    reason = _process_gone(record)
    if reason is None:
        return record
    with _locked(directory):  # re-read: the worker may have finished between the two reads
        record = _read(directory)
        if record["status"] not in ACTIVE or (reason := _process_gone(record)) is None:
            return record
        status = "cancelled" if record.get("cancel_requested") else "failed"
        error = None if status == "cancelled" else reason
        _end_runs(workspace, record, status, error)
        record = {**record, "status": status, "error": error, "finished_at": _now()}
        write_json_atomic(directory / "job.json", record)
        _append_progress(directory, status, **({"error": error} if error else {}))
    return record


def get_job(workspace: str | os.PathLike, job_id: str) -> dict:
    """One job's record (job.json), its status refreshed from process liveness. InputError if unknown."""
    directory = job_dir(workspace, job_id)
    if not (directory / "job.json").is_file():
        raise InputError(f"no job {job_id!r} in {jobs_dir(workspace)}")
    return _refresh(Path(workspace), directory)


def list_jobs(workspace: str | os.PathLike) -> list[dict]:
    """Every job of the workspace, oldest launch first, statuses refreshed."""
    _reap()
    root = jobs_dir(workspace)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if _JOB_ID.match(d.name) and (d / "job.json").is_file():
            try:
                out.append(_refresh(Path(workspace), d))
            except (OSError, ValueError, KeyError, TypeError):  # half-created or damaged: skip it this time
                continue
    return sorted(out, key=lambda r: (r.get("created_t", 0.0), r["job_id"]))  # ids of one second are random


def read_progress(workspace: str | os.PathLike, job_id: str) -> list[dict]:
    """The job's progress lines, parsed (a line still being written is left out)."""
    path = job_dir(workspace, job_id) / "progress.jsonl"
    entries = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


def job_progress(workspace: str | os.PathLike, job_id: str) -> dict:
    """Where a job stands: {job_id, status, stage, epoch, epochs, entries, elapsed_s, eta_s, error, run_ids}.

    `elapsed_s` runs from the worker's first line (`started`) to now, or to the last line once the job
    ended; `eta_s` = mean seconds per epoch so far × epochs left (None before the first epoch ends)."""
    record = get_job(workspace, job_id)
    entries = read_progress(workspace, job_id)
    epochs_seen = [e for e in entries if e.get("stage") == "epoch"]
    training = next((e for e in reversed(entries) if e.get("stage") == "training"), None)
    started = next((e for e in entries if e.get("stage") == "started"), None)
    end = entries[-1]["t"] if entries and record["status"] not in ACTIVE else time.time()
    epoch = epochs_seen[-1]["epoch"] if epochs_seen else 0
    epochs = (epochs_seen[-1] if epochs_seen else training or {}).get("epochs")
    eta = None
    if record["status"] in ACTIVE and epochs_seen and training and epochs:
        per_epoch = (epochs_seen[-1]["t"] - training["t"]) / epoch
        eta = max(0.0, per_epoch * (epochs - epoch) - (time.time() - epochs_seen[-1]["t"]))
    elif record["status"] == "done":
        eta = 0.0
    return {"job_id": job_id, "status": record["status"], "stage": entries[-1]["stage"] if entries else None,
            "epoch": epoch, "epochs": epochs, "entries": entries,
            "elapsed_s": (end - started["t"]) if started else None, "eta_s": eta, "error": record.get("error"),
            "run_ids": record["run_ids"]}


def _tail(path: Path, n_lines: int, max_bytes: int = 256_000) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-n_lines:]) if n_lines > 0 else ""


def log_tail(workspace: str | os.PathLike, job_id: str, n_lines: int = 40) -> dict:
    """The last `n_lines` of the worker's stdout and stderr (submitit's log files): {stdout, stderr}."""
    from submitit.core.utils import JobPaths

    record = get_job(workspace, job_id)
    if not record.get("submitit_job_id"):
        return {"stdout": "", "stderr": ""}
    paths = JobPaths(record["submitit_folder"], job_id=record["submitit_job_id"], task_id=0)
    return {"stdout": _tail(paths.stdout, n_lines), "stderr": _tail(paths.stderr, n_lines)}


def job_error(workspace: str | os.PathLike, job_id: str) -> str | None:
    """Why a job failed: its one-line error, then the traceback (error.txt) or its runs' error.txt."""
    record = get_job(workspace, job_id)
    if record["status"] != "failed":
        return None
    parts = [record.get("error") or "failed"]
    directory = job_dir(workspace, job_id)
    if (directory / "error.txt").is_file():
        parts.append((directory / "error.txt").read_text())
    return "\n\n".join(parts)


# -- cancelling ---------------------------------------------------------------------------
def cancel(workspace: str | os.PathLike, job_id: str) -> dict:
    """Ask a queued or running job to stop; returns its record without waiting (`wait` does).

    Local: `cancel_requested` in job.json, then SIGINT to the worker if it has registered (one that
    has not sees the request when it registers, under the same lock); the worker marks its runs
    `cancelled` with their partial history and the job `cancelled`. Slurm: the same request, then
    `scancel` (SIGTERM, which the worker turns into the same clean cancel). A finished job is left as
    it is. submitit's controller is never signalled: its SIGINT would kill the worker after 1 s,
    possibly in the middle of that cleanup."""
    workspace = Path(workspace)
    directory = job_dir(workspace, job_id)
    record = get_job(workspace, job_id)
    if record["status"] not in ACTIVE:
        return record
    record = _update(directory, cancel_requested=True, cancel_requested_at=_now())
    if record["executor"] == "slurm":
        if record.get("submitit_job_id"):
            import submitit

            submitit.SlurmJob(folder=record["submitit_folder"], job_id=record["submitit_job_id"]).cancel(check=False)
    elif record.get("host") in (None, socket.gethostname()) and _pid_alive(record.get("worker_pid"),
                                                                        record.get("worker_start")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["worker_pid"], signal.SIGINT)
    return get_job(workspace, job_id)


def wait(workspace: str | os.PathLike, job_id: str, timeout_s: float = 600, poll_s: float = 0.2) -> dict:
    """Block until the job has ended (done, failed or cancelled); → its record. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = get_job(workspace, job_id)
        if record["status"] not in ACTIVE:
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {record['status']} after {timeout_s} s")
        time.sleep(poll_s)
