"""Background training jobs (docs/ARCHITECTURE.md §Jobs): one `train(workspace, spec)` call run outside
the caller through submitit, on this machine (`LocalExecutor`) or on a Slurm cluster (`SlurmExecutor`).

The runs are the registry: each run directory holds its status, its history (one line per epoch,
written once, by `train`) and who writes it (`process.json`: pid, start time, host, Slurm job id).
A job keeps only what no run can hold:

    jobs/<job_id>/job.json    the request (TrainSpec.to_dict()), run ids, the scheduler's handle,
                              a cancel request, and how the job ended (written once)
    jobs/<job_id>/error.txt   the traceback of a job that crashed
    jobs/<job_id>/submitit/   submitit's pickles (the call, its result: never loaded here) and logs
    jobs/slots/slot-<i>.lock  local concurrency slots (`fcntl.flock`, freed when a process dies)

A job is `queued` until `train` has created its runs (it waits for a slot, then loads), then `running`,
then `done`, `failed` or `cancelled`. Nothing is kept in memory: readers find jobs after a restart, and
end a job whose process vanished (psutil: pid + start time on this host; `sacct` on Slurm) `failed`
("the job's process ended without finishing (killed?)"), with its unfinished runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

from hsfm_core.errors import InputError
from hsfm_core.fsutil import write_json_atomic, write_text_atomic

STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
DEFAULT_MAX_PARALLEL = 2
LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes: far too short for training
KILLED = "the job's process ended without finishing (killed?)"
NEVER_STARTED_S = 120  # a job.json without a scheduler handle after this long was never submitted
SLOT_POLL_S = 0.25
SLURM_STATE_TTL_S = 20.0  # the app polls every second: ask sacct at most this often per job
_SLURM_ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                 "PREEMPTED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "READY")
_JOB_ID = re.compile(r"^job-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$")
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # what the worker needs on PYTHONPATH
_slurm_states: dict[str, tuple[float, str | None]] = {}  # a cache of sacct's answers, nothing else


# -- the job record -----------------------------------------------------------------------
def jobs_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / "jobs"


def job_dir(workspace: str | os.PathLike, job_id: str) -> Path:
    if not _JOB_ID.match(job_id):
        raise InputError(f"job id {job_id!r}: expected job-YYYYMMDD-HHMMSS-xxxx")
    return jobs_dir(workspace) / job_id


def _read(directory: Path) -> dict:
    return json.loads((directory / "job.json").read_text())


def _update(directory: Path, **fields) -> dict:
    """Change the job's record under an exclusive lock (launcher, submitter, worker, cancel and readers
    all write it). `ended` is written once: the first verdict stands. → the record as stored."""
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _read(directory)
        if not ("ended" in fields and record.get("ended")):
            write_json_atomic(directory / "job.json", record := {**record, **fields})
        return record


def _ended(status: str, error: str | None) -> dict:
    return {"status": status, "error": error, "t": time.time()}


def _run_status(workspace: Path, run_id: str) -> str | None:
    """A run's status, or None while `train` has not created it."""
    from hsfm_core.runs import run_dir

    with contextlib.suppress(OSError):
        return (run_dir(workspace, run_id) / "status").read_text().strip()
    return None


# -- liveness -----------------------------------------------------------------------------
def _scheduler_job(record: dict):
    """submitit's Job for the record's handle (its public constructors; no process attached)."""
    import submitit

    kind = submitit.SlurmJob if record["spec"]["executor"] == "slurm" else submitit.LocalJob
    return kind(folder=record["submitit_folder"], job_id=record["submitit_job_id"])


def _slurm_state(record: dict) -> str | None:
    """Slurm's state of the job (COMPLETED, FAILED, …), or None when sacct cannot say; cached per job."""
    cached = _slurm_states.get(record["job_id"])
    if not cached or time.monotonic() - cached[0] >= SLURM_STATE_TTL_S:
        _slurm_states[record["job_id"]] = cached = (time.monotonic(), _ask_sacct(record))
    return cached[1]


def _ask_sacct(record: dict) -> str | None:
    with contextlib.suppress(Exception):  # no sacct here, or it failed: nothing can be concluded
        state = _scheduler_job(record).get_info(mode="force").get("State")
        return state.split()[0] if state and state != "UNKNOWN" else None
    return None


def _gone(workspace: Path, record: dict) -> str | None:
    """Why an unfinished job cannot finish any more (its process is gone), or None while it may. Local:
    the process that writes its runs (their process.json), before that submitit's controller."""
    from hsfm_core.runs import process_alive, read_process, run_dir

    if record.get("submitit_job_id") is None:
        old = time.time() - record["created_t"] > NEVER_STARTED_S
        return "the job was registered but never submitted" if old else None
    if record["spec"]["executor"] == "slurm":
        state = _slurm_state(record)
        return None if state is None or state in _SLURM_ACTIVE else f"{KILLED} — Slurm says {state}"
    writers = [p for rid in record["run_ids"] if (p := read_process(run_dir(workspace, rid)))]
    return None if any(process_alive(p) is not False for p in writers or [record.get("controller")]) else KILLED


def _refresh(workspace: Path, directory: Path) -> dict:
    """The job's record with its `status`, `error` and `finished_at`. A job whose process is gone is
    ended here, and its unfinished runs with it (`ended` is written once, so a worker that ended the job
    meanwhile keeps its own verdict; it ends its runs before it writes it)."""
    from hsfm_core.runs import end_unfinished_run

    record = _read(directory)
    if record.get("status") in ("done", "failed", "cancelled"):  # a job.json of the earlier layout
        record.setdefault("ended", _ended(record["status"], record.get("error")))
    if not record.get("ended") and (reason := _gone(workspace, record)) is not None:
        status = "cancelled" if record.get("cancel_requested") else "failed"
        for rid in record["run_ids"]:
            end_unfinished_run(workspace, rid, status, None if status == "cancelled" else reason)
        record = _update(directory, ended=_ended(status, None if status == "cancelled" else reason))
    ended = record.get("ended") or {}
    started = any(_run_status(workspace, rid) for rid in record["run_ids"])
    finished = datetime.fromtimestamp(ended["t"], timezone.utc).isoformat(timespec="seconds") if ended else None
    return {**record, "executor": record["spec"]["executor"], "error": ended.get("error"), "finished_at": finished,
            "status": ended.get("status") or ("running" if started else "queued")}


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


def slurm_parameters(options, job_id: str) -> dict:
    """`SlurmExecutor.update_parameters` keywords (sbatch vocabulary) for a job's `SlurmOptions`."""
    options.check()
    params = {"job_name": f"hsfm-{job_id}", "partition": options.partition, "time": int(options.time_min),
              "nodes": 1, "ntasks_per_node": 1, "signal_delay_s": 90,
              "setup": [*options.setup, f"export PYTHONPATH={_PROJECT_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"]}
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


def _check_device(device: str, executor: str) -> None:
    """A local job's device must exist here; a Slurm node's cannot be seen from here: only its name is checked."""
    from hsfm_core.features.encoders import resolve_device

    if executor == "local":
        resolve_device(device)
    elif not re.match(r"^(auto|cpu|cuda(:[0-9]+)?)$", device):
        raise InputError(f"unknown device {device!r}; expected auto, cpu or cuda[:N]")


def launch(workspace: str | os.PathLike, spec) -> dict:
    """Check the request (a `TrainSpec`), register the job, submit it, and return its record at once.

    `InputError` (nothing registered, nothing submitted) for a bad request, store or device; a refused
    submission also raises `InputError` (the job stays registered, `failed`)."""
    from hsfm_core.runs import new_run_id
    from hsfm_core.train import open_store_for, run_ids_for

    spec = spec.check()
    workspace = Path(workspace).resolve()
    open_store_for(workspace, spec.method)
    _check_device(spec.device, spec.executor)
    limit = int(spec.max_parallel) if spec.max_parallel is not None else job_limit(workspace)
    if limit < 1:
        raise InputError(f"the job limit must be ≥ 1, got {limit}")
    now = datetime.now(timezone.utc)
    job_id, run_id = f"job-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}", new_run_id(spec.method)
    directory = job_dir(workspace, job_id)
    (directory / "submitit").mkdir(parents=True)
    write_json_atomic(directory / "job.json", {
        "job_id": job_id, "workspace": str(workspace), "spec": spec.to_dict(), "run_id": run_id,
        "run_ids": run_ids_for(run_id, spec.seeds), "max_parallel": limit if spec.executor == "local" else None,
        "created_at": now.isoformat(timespec="seconds"), "created_t": time.time(), "host": socket.gethostname(),
        # submitit's local controller sets CUDA_VISIBLE_DEVICES from its gpus_per_node (empty for 0) and
        # cannot say "unset" (all GPUs): the worker restores the caller's value from here instead
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "submitit_folder": str(directory / "submitit"), "submitit_job_id": None, "cancel_requested": False})
    try:
        if spec.executor == "local":
            _submit_detached(directory)
        else:
            import submitit

            executor = submitit.SlurmExecutor(folder=directory / "submitit")
            executor.update_parameters(**slurm_parameters(spec.slurm, job_id),
                                       **({"time": int(spec.time_limit_min)} if spec.time_limit_min else {}))
            _update(directory, submitit_job_id=str(executor.submit(_worker_main, str(workspace), job_id).job_id))
    except Exception as exc:
        message = f"submission failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        _update(directory, ended=_ended("failed", message))
        raise InputError(message) from exc
    return get_job(workspace, job_id)


def _submit_detached(directory: Path) -> None:
    """Submit a local job from a short-lived submitter started in a new session.

    No public submitit way exists to detach a local job: LocalExecutor starts its controller as a child
    of the submitting process, in its session and process group, so the app server's Ctrl-C or its
    terminal closing would stop the job. A submitter that leads its own session leaves the controller
    and the worker there, orphaned when it exits: jobs outlive the app. It uses public API only."""
    pythonpath = os.pathsep.join(filter(None, (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH"))))
    log_path = directory / "submitit" / "controller.log"  # the controller's stdout and stderr too
    with open(log_path, "ab") as log:
        done = subprocess.run([sys.executable, "-c", "import sys; from hsfm_core.jobs import _submit_here; "
                               "_submit_here(sys.argv[1])", str(directory)], env={**os.environ, "PYTHONPATH": pythonpath},
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, timeout=120)
    if done.returncode != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"the submitter exited with status {done.returncode}")


def _submit_here(directory: str) -> None:
    """The submitter's body (`_submit_detached`): submit, record the handle, exit."""
    import psutil
    import submitit

    record = _read(Path(directory))
    executor = submitit.LocalExecutor(folder=record["submitit_folder"])
    executor.update_parameters(timeout_min=float(record["spec"]["time_limit_min"] or LOCAL_TIME_LIMIT_MIN))
    pid = int(executor.submit(_worker_main, record["workspace"], record["job_id"]).job_id)  # the controller's
    _update(Path(directory), submitit_job_id=str(pid),
            controller={"pid": pid, "started": psutil.Process(pid).create_time(), "host": socket.gethostname()})


# -- the worker (runs in the submitit job process) -----------------------------------------
class _TimeLimit(BaseException):
    """Raised in the worker by the time-limit warning; a BaseException so that no `except Exception`
    between the signal and `_worker_main` can swallow it."""


class _Stop:
    """The worker's one asynchronous stop. A cancel reaches the worker twice (the signal, and the flag in
    job.json read at every epoch and while queued), a time limit once (SIGUSR2). Whichever comes first
    raises once; a signal after that does nothing, so it cannot interrupt the cleanup."""

    def __init__(self, directory: Path):
        self.directory, self.armed = directory, True

    def disarm(self) -> bool:
        """→ whether the stop was still to come (the caller owns it now)."""
        armed, self.armed = self.armed, False
        return armed

    def on_signal(self, signum, frame) -> None:
        if self.disarm():
            if signum == signal.SIGUSR2:
                raise _TimeLimit()
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def check(self) -> None:
        """A cancel that could not signal this process (another host), or a job a reader ended, stops here."""
        record = _read(self.directory)
        if record.get("cancel_requested") or record.get("ended"):
            self.disarm()
            raise KeyboardInterrupt("cancel requested")


def _earlier_job_waiting(workspace: Path, me: dict) -> bool:
    """Whether a local job launched before `me` still waits (slots go first come, first served)."""
    for d in jobs_dir(workspace).glob("job-*"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            other = _read(d)
            if (other["spec"]["executor"] == "local" and not other.get("ended") and not other.get("cancel_requested")
                    and (other["created_t"], other["job_id"]) < (me["created_t"], me["job_id"])
                    and not any(_run_status(workspace, rid) for rid in other["run_ids"])
                    and _gone(workspace, other) is None):
                return True
    return False


def _acquire_slot(workspace: Path, record: dict, stop: _Stop):
    """Hold one of the job's `max_parallel` slot locks for the life of this process, after every local
    job launched before it got one. → the open lock file."""
    slots = jobs_dir(workspace) / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for attempt in range(sys.maxsize):
        for i in range(0 if _earlier_job_waiting(workspace, record) else int(record["max_parallel"])):
            fh = open(slots / f"slot-{i}.lock", "a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                print(f"[job] holding slot {i}", flush=True)
                return fh
            except BlockingIOError:
                fh.close()
        stop.check()
        if attempt == 0:
            print(f"[job] waiting for one of {record['max_parallel']} slots", flush=True)
        time.sleep(SLOT_POLL_S)


def _worker_main(workspace: str, job_id: str) -> str:
    """One job, inside its submitit process: slot → train(...) → the job's ending. Returns the status."""
    from hsfm_core.runs import end_unfinished_run

    workspace, directory = Path(workspace), job_dir(workspace, job_id)
    record = _read(directory)
    spec = record["spec"]
    stop, slot, status, error = _Stop(directory), None, "failed", None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):  # cancel, scancel, the time-limit warning
        signal.signal(signum, stop.on_signal)
    if spec["executor"] == "local":  # the launcher's GPUs (see launch), before anything initialises CUDA
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        if record["cuda_visible_devices"] is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = record["cuda_visible_devices"]
    try:
        print(f"[job] {job_id} started (pid {os.getpid()} on {socket.gethostname()})", flush=True)
        stop.check()
        slot = _acquire_slot(workspace, record, stop) if spec["executor"] == "local" else None
        from hsfm_core.spec import TrainSpec
        from hsfm_core.train import train

        def progress(epoch: int, epochs: int, entries: list[dict]) -> None:
            stop.check()
            wga = [e["val_wga"] for e in entries if e.get("val_wga") is not None]
            print(f"[job] epoch {epoch}/{epochs}" + (f" val WGA {sum(wga) / len(wga):.4f}" if wga else "")
                  if epoch else f"[job] training {epochs} epochs", flush=True)

        request = TrainSpec.from_dict(spec)
        stop.check()
        train(workspace, request, progress=progress, run_id=record["run_id"])
        stop.disarm()  # finished: too late to cancel
        status = "done"
    except KeyboardInterrupt:
        status = "cancelled"
    except InputError as exc:
        error = str(exc)
    except _TimeLimit:
        error = f"the job reached its time limit ({spec['time_limit_min'] or (spec['slurm'] or {}).get('time_min')} min)"
    except BaseException as exc:  # noqa: BLE001 — recorded, then the job ends
        error = f"{type(exc).__name__}: {exc}"
        write_text_atomic(directory / "error.txt", traceback.format_exc())
    finally:
        stop.disarm()  # nothing may interrupt the job's own ending (a signal now is a no-op)
        if status != "done":  # runs train() could not end itself (normally none)
            for rid in record["run_ids"]:
                end_unfinished_run(workspace, rid, status, error)
        _update(directory, ended=_ended(status, error))
        print(f"[job] {status}" + (f": {error}" if error else ""), file=sys.stderr if error else sys.stdout, flush=True)
        if slot is not None:
            slot.close()
    return status


# -- reading ------------------------------------------------------------------------------
def get_job(workspace: str | os.PathLike, job_id: str) -> dict:
    """One job's record (job.json) with its `status`, `error` and `finished_at`. InputError if unknown."""
    directory = job_dir(workspace, job_id)
    if not (directory / "job.json").is_file():
        raise InputError(f"no job {job_id!r} in {jobs_dir(workspace)}")
    return _refresh(Path(workspace), directory)


def list_jobs(workspace: str | os.PathLike) -> list[dict]:
    """Every job of the workspace, oldest launch first."""
    out = []
    for d in sorted(jobs_dir(workspace).glob("job-*")):
        if _JOB_ID.match(d.name) and (d / "job.json").is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # half-created or damaged
                out.append(_refresh(Path(workspace), d))
    return sorted(out, key=lambda r: (r.get("created_t", 0.0), r["job_id"]))  # ids of one second are random


def job_progress(workspace: str | os.PathLike, job_id: str) -> dict:
    """Where a job stands, read from its runs: {job_id, status, epoch, epochs, history, elapsed_s, eta_s,
    error, run_ids}. `history` has one row per (epoch, seed): the runs' history.jsonl lines and seed.

    `epochs`: what the runs plan (their config's `epochs`, else their setting of that name).
    `elapsed_s`: from the launch to now, or to the job's end; `eta_s`: wall seconds per epoch so far
    (from the run's start) × epochs left."""
    from hsfm_core.runs import read_process, run_dir

    record = get_job(workspace, job_id)
    history, epochs, started_t, last_t = [], None, None, None
    for rid in record["run_ids"]:
        path = run_dir(workspace, rid)
        with contextlib.suppress(OSError, ValueError):
            config = json.loads((path / "config.json").read_text())
            epochs = config.get("epochs", (config.get("hyperparameters") or {}).get("epochs"))
            started_t, last_t = (read_process(path) or {}).get("at"), (path / "history.jsonl").stat().st_mtime
            for line in (path / "history.jsonl").read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):  # a line still being written is left out
                    history.append({"seed": config.get("seed"), **json.loads(line)})
    epoch = max((row.get("epoch", 0) for row in history), default=0)
    eta = 0.0 if record["status"] == "done" else None
    if record["status"] in ACTIVE and epoch and epochs and started_t:
        eta = max(0.0, (last_t - started_t) / epoch * (epochs - epoch) - (time.time() - last_t))
    end = (record.get("ended") or {}).get("t") or time.time()
    return {"job_id": job_id, "status": record["status"], "epoch": epoch, "epochs": epochs, "history": history,
            "elapsed_s": end - record["created_t"], "eta_s": eta, "error": record["error"], "run_ids": record["run_ids"]}


def _tail(path: Path, n_lines: int, max_bytes: int = 256_000) -> str:
    if not path.is_file() or n_lines <= 0:
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - max_bytes))
        return "\n".join(fh.read().decode("utf-8", errors="replace").splitlines()[-n_lines:])


def log_tail(workspace: str | os.PathLike, job_id: str, n_lines: int = 40) -> dict:
    """The last `n_lines` of the worker's stdout and stderr (submitit's log files): {stdout, stderr}."""
    record = get_job(workspace, job_id)
    if not record.get("submitit_job_id"):
        return {"stdout": "", "stderr": ""}
    paths = _scheduler_job(record).paths
    return {"stdout": _tail(paths.stdout, n_lines), "stderr": _tail(paths.stderr, n_lines)}


def job_error(workspace: str | os.PathLike, job_id: str) -> str | None:
    """Why a job failed: its one-line error, then the traceback (error.txt) when it crashed."""
    record = get_job(workspace, job_id)
    if record["status"] != "failed":
        return None
    trace = job_dir(workspace, job_id) / "error.txt"
    return "\n\n".join([record["error"] or "failed", *([trace.read_text()] if trace.is_file() else [])])


# -- cancelling ---------------------------------------------------------------------------
def cancel(workspace: str | os.PathLike, job_id: str) -> dict:
    """Ask a queued or running job to stop; returns its record without waiting (`wait` does).

    The request is written first (the worker reads it at every epoch and while queued). Local: then
    SIGINT to the worker, the child of submitit's controller (psutil); the controller itself is never
    signalled (its SIGINT kills the worker 1 s later, possibly during its cleanup). Slurm: `scancel`
    (SIGTERM, the same clean cancel). The worker ends its runs `cancelled`, with their partial history.
    A finished job is left as it is."""
    import psutil

    from hsfm_core.runs import process_alive

    record = get_job(workspace, job_id)
    if record["status"] not in ACTIVE:
        return record
    record = _update(job_dir(workspace, job_id), cancel_requested=True)
    if record["spec"]["executor"] == "slurm" and record.get("submitit_job_id"):
        _scheduler_job(record).cancel(check=False)
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
