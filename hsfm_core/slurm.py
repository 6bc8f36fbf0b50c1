"""The conversation with a Slurm scheduler, for the job layer (docs/ARCHITECTURE.md §Jobs): sbatch
parameters of a request, what can be checked before submitting, and a job's state as the scheduler sees it.

Every command runs with its output captured (stdout stays for results) and a timeout. A job's state comes
from `squeue` first (every job the controller still holds, ended ones included until MinJobAge, with the
pending reason), then `sacct`; when accounting is disabled too, a job neither lists has left the queue
(state GONE). Answers are cached per job for STATE_TTL_S, because the app polls every second.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from datetime import datetime

from hsfm_core.errors import InputError
from hsfm_core.resources import CHECKOUT

STATE_TTL_S = 10.0  # the app polls every second: ask squeue/sacct at most this often per job
COMMAND_TIMEOUT_S = 30
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                 "PREEMPTED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "READY")
# Pending reasons that no wait resolves: the request exceeds what the partition, account or QOS allows
NEVER_STARTS = {"PartitionConfig": "the request exceeds what the partition's nodes have (CPUs, GPUs or memory)",
                "PartitionNodeLimit": "the request exceeds the partition's node limits",
                "PartitionTimeLimit": "the time limit exceeds the partition's",
                "BadConstraints": "no node matches the constraints",
                "InvalidAccount": "the account is not valid", "InvalidQOS": "the QOS is not valid",
                "QOSMaxCpuPerJobLimit": "more CPUs than the QOS allows", "QOSMaxGRESPerJob": "more GPUs than the QOS allows",
                "QOSMaxWallDurationPerJobLimit": "a longer time limit than the QOS allows"}
_states: dict[str, tuple[float, dict | None]] = {}  # a cache of the scheduler's answers, nothing else


def command(*args: str) -> subprocess.CompletedProcess | None:
    """A Slurm command, its output captured (never on our stdout/stderr); None when it is missing or hangs."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    return None


def ask(slurm_id: str) -> dict | None:
    """{state, reason, source} of a Slurm job, or None when nothing can be concluded (no Slurm client here, the
    controller not answering). squeue first, then sacct; state GONE when neither has it (accounting disabled,
    or sacct has no record): the job has left the queue."""
    queue = command("squeue", "--noheader", "--states=all", f"--jobs={slurm_id}", "--format=%T|%r")
    if queue is None:
        return None
    if queue.returncode == 0 and queue.stdout.strip():
        state, _, reason = queue.stdout.strip().splitlines()[0].partition("|")
        return {"state": state.strip(), "reason": None if reason.strip() in ("", "None") else reason.strip(),
                "source": "squeue"}
    if queue.returncode != 0 and "invalid job id" not in (queue.stderr + queue.stdout).lower():
        return None  # the controller did not answer: nothing can be said
    # here the controller answered without the job: an unknown id, or an array task cancelled before it was split off
    accounting = command("sacct", "--noheader", "--allocations", "--parsable2", "--format=State,Reason",
                         f"--jobs={slurm_id}")
    if accounting is None:
        return None
    answer = (accounting.stdout + accounting.stderr).strip()
    if accounting.returncode == 0 and answer:
        state, _, reason = answer.splitlines()[0].partition("|")
        return {"state": state.split()[0], "reason": None if reason.strip() in ("", "None") else reason.strip(),
                "source": "sacct"}
    if accounting.returncode == 0 or "accounting storage is disabled" in answer.lower():
        why = "accounting is disabled" if answer else "sacct has no record of it"
        return {"state": "GONE", "reason": f"Slurm no longer lists job {slurm_id} and {why}", "source": "squeue"}
    return None


def state(key: str, slurm_id: str, fresh: bool = False) -> dict | None:
    """`ask(slurm_id)`, asked at most every STATE_TTL_S per `key` (the project's job id)."""
    cached = _states.get(key)
    if fresh or not cached or time.monotonic() - cached[0] >= STATE_TTL_S:
        _states[key] = cached = (time.monotonic(), ask(str(slurm_id)))
    return cached[1]


def last_state(key: str) -> dict | None:
    """The latest answer `state` got for `key`, without asking again (None if never asked)."""
    return _states.get(key, (0, None))[1]


def end_time(slurm_id: str | None) -> float | None:
    """When Slurm will end this job (its EndTime, from squeue), or None."""
    answer = command("squeue", "--noheader", f"--jobs={slurm_id}", "--format=%e") if slurm_id else None
    with contextlib.suppress(ValueError, IndexError, AttributeError):
        return datetime.fromisoformat(answer.stdout.split()[0]).timestamp()  # the controller's local time
    return None


def time_limit_warning_s(time_min: float) -> int:
    """Seconds before a Slurm job's end at which its worker stops at an epoch's end to end its runs cleanly (and
    `--signal=USR2@N`): 10 % of the limit, at least 5 s, at most 90 s — 6 s for 1 min, 90 s from 15 min on. A
    fixed 90 s exceeded short limits (the job was told at once) and cost every job up to 90 s of its time."""
    return int(min(90, max(5, float(time_min) * 60 // 10)))


def sbatch_parameters(options, job_id: str, workspace=None) -> dict:
    """`SlurmExecutor.update_parameters` keywords (sbatch vocabulary) for a job's `SlurmOptions`. The job runs in
    the workspace (`--chdir`; it must be on a filesystem the nodes share), not in the folder it was submitted from."""
    o, m = options.check(), float(options.mem_gb or 0)
    mem = f"{int(m)}GB" if m.is_integer() else f"{int(m * 1024)}MB"
    extra = {**({"chdir": str(workspace)} if workspace is not None else {}), **{str(k): v for k, v in o.extra.items()}}
    return {"job_name": f"hsfm-{job_id}", "partition": o.partition, "time": int(o.time_min), "nodes": 1,
            "ntasks_per_node": 1, "signal_delay_s": time_limit_warning_s(o.time_min),
            "setup": [*o.setup, f"export PYTHONPATH={CHECKOUT}${{PYTHONPATH:+:$PYTHONPATH}}"],
            **({"gpus_per_node": int(o.gpus)} if int(o.gpus) > 0 else {}),
            **({"cpus_per_task": int(o.cpus)} if o.cpus is not None else {}),
            **({"mem": mem} if o.mem_gb is not None else {}),
            **({"additional_parameters": extra} if extra else {})}


def check_here(options) -> None:
    """What can be checked before submitting to Slurm (InputError, nothing registered): the Slurm commands are on
    PATH and the partition exists. What cannot be seen from here — the workspace on a filesystem the nodes
    share, this interpreter (`sys.executable`) and the project at the same paths there — is the README's."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise InputError("Slurm: sbatch/squeue not found on PATH; submit from a machine of the cluster "
                         "(a login node) with the Slurm client installed")
    answer = command("sinfo", "--noheader", "--format=%R")
    if answer is not None and answer.returncode == 0:
        known = sorted(set(answer.stdout.split()))
        unknown = [p for p in str(options.partition).split(",") if p not in known]
        if unknown:
            raise InputError(f"Slurm partition {', '.join(unknown)!s} does not exist here; partitions: "
                             f"{', '.join(known) or 'none'}")
