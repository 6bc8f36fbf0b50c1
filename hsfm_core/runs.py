"""Run directories (docs/ARCHITECTURE.md §Runs): `<workspace>/runs/<run_id>/`.

    config.json         method, hyper-parameters, seed, device, store content hash, code version
    head.safetensors    weight, bias (final head); init.weight, init.bias (θ₀) when known
    support.safetensors before, after, indices, labels (HSFM only)
    history.jsonl       one JSON line per epoch, appended while training
    process.json        who writes the run: pid, process start time, host, Slurm job id (liveness)
    metrics.json        {split: group metrics} for val and test
    status              queued | running | done | failed | cancelled
    error.txt           why a run failed (failed runs only)

Every file is written atomically (temporary file + rename) except `history.jsonl`, which is
appended one whole line at a time. Existing runs are never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from hsfm_core.version import __version__
from hsfm_core.errors import InputError
from hsfm_core.fsutil import write_bytes_atomic, write_json_atomic, write_text_atomic
from hsfm_core.safe_io import check_fields, described, finite_number, read_json, read_safetensors, read_text

if TYPE_CHECKING:  # torch is imported where tensors are written or read: listing runs and liveness need none
    import torch  # (the background queue of jobs reads runs and stays small: docs/ARCHITECTURE.md §Jobs)

RUNS_DIR = "runs"
STATUSES = ("queued", "running", "done", "failed", "cancelled")
PROCESS_FILE = "process.json"
DIED = "the process ended without finishing (killed, or the machine stopped); its partial history is kept"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(method: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{method}-{stamp}-{uuid.uuid4().hex[:4]}"


def code_version() -> str:
    """hsfm_core's version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def run_dir(workspace: str | os.PathLike, run_id: str) -> Path:
    """`<workspace>/runs/<run_id>`, after checking that the id is a plain name."""
    if not _RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    return Path(workspace) / RUNS_DIR / run_id


_run_dir = run_dir


def run_ids_for(run_id: str, seeds: Sequence[int]) -> list[str]:
    """The run ids `train(run_id=…)` writes: one per seed, `<run_id>-s<seed>`."""
    return [f"{run_id}-s{int(seed)}" for seed in dict.fromkeys(seeds)]


def free_run_ids(workspace: str | os.PathLike, run_id: str, seeds: Sequence[int]) -> list[str]:
    """`run_ids_for`, after checking that none exists yet: runs are never overwritten."""
    run_ids = run_ids_for(run_id, seeds)
    for rid in run_ids:
        if run_dir(workspace, rid).exists():
            raise InputError(f"{run_dir(workspace, rid)} already exists; runs are never overwritten")
    return run_ids


def process_record() -> dict:
    """This process, as a run records who writes it: pid, start time (to tell a reused pid apart),
    host, the Slurm job id on a cluster, and when it took the run (`at`)."""
    import psutil

    me = psutil.Process()
    return {"pid": me.pid, "started": me.create_time(), "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "at": time.time()}


MAX_PID = 2**31 - 1  # pids are C ints (Linux caps them at 2**22)


@described("a process id (an integer 1…2**31−1)")
def _pid(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PID


PROCESS_FIELDS = {"pid": _pid, "started": finite_number}
PROCESS_OPTIONAL = {"host": str, "slurm_job_id": (str, int), "at": finite_number}


def check_process(record, where: str) -> dict:
    """A process record (`process_record`'s keys with their types); InputError naming the key otherwise."""
    return check_fields(record, where, PROCESS_FIELDS, PROCESS_OPTIONAL)


def read_process(path: Path) -> dict | None:
    """A run's `process.json`: None when there is none (an import, or a run being created); InputError when it
    is there but is not a process record (so a reader names the run instead of guessing it alive or dead)."""
    file = Path(path) / PROCESS_FILE
    if not file.is_file() and not file.is_symlink():
        return None
    return check_process(read_json(file, "process record", allow_nan=False), str(file))


def process_alive(info: dict | None) -> bool | None:
    """Whether the process of a `process_record` still runs: True or False on its own host, None
    where it cannot be seen (another host, no record, a record that names no process). A zombie has finished."""
    import psutil

    if not info or info.get("host") != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(info["pid"]))
        return abs(process.create_time() - float(info["started"])) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except (KeyError, TypeError, ValueError, OverflowError):  # not a pid psutil can look up
        return None


class RunWriter:
    """A live run: created with its config and status `running`, history appended per epoch,
    then `finish` (head, metrics, support → `done`) or `fail` (→ `failed`, error.txt)."""

    def __init__(self, workspace: str | os.PathLike, run_id: str, config: dict):
        self.path = _run_dir(workspace, run_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()
        except FileExistsError:
            raise InputError(f"{self.path} already exists; runs are never overwritten") from None
        self.run_id = run_id
        end_dead_runs(workspace)  # a trainer killed earlier (SIGKILL, OOM) is marked failed by the next one
        write_json_atomic(self.path / PROCESS_FILE, process_record())
        write_json_atomic(self.path / "config.json", {**config, "run_id": run_id, "started_at": now()})
        (self.path / "history.jsonl").touch()
        self.set_status("running")

    def set_status(self, status: str) -> None:
        assert status in STATUSES, status
        write_text_atomic(self.path / "status", status + "\n")

    def status(self) -> str:
        return (self.path / "status").read_text().strip()

    def update_config(self, **fields) -> None:
        config = read_json(self.path / "config.json", "run config")
        write_json_atomic(self.path / "config.json", {**config, **fields})

    def append_history(self, entry: dict) -> None:
        with open(self.path / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()

    def finish(self, head: dict[str, torch.Tensor], metrics: dict,
               support: dict[str, torch.Tensor] | None = None) -> Path:
        write_bytes_atomic(self.path / "head.safetensors", _tensor_bytes(head))
        if support is not None:
            write_bytes_atomic(self.path / "support.safetensors", _tensor_bytes(support))
        write_json_atomic(self.path / "metrics.json", metrics)
        self.update_config(finished_at=now())
        self.set_status("done")
        return self.path

    def fail(self, message: str) -> None:
        write_text_atomic(self.path / "error.txt", message.rstrip() + "\n")
        self.set_status("failed")

    def discard(self) -> None:
        """Remove the run entirely (bad input found after it was created: nothing worth keeping)."""
        shutil.rmtree(self.path, ignore_errors=True)


def end_unfinished_run(workspace: str | os.PathLike, run_id: str, status: str, message: str | None = None) -> bool:
    """Mark a run whose process is gone (killed, cancelled before it could say so) `failed` or
    `cancelled`, keeping its partial history. Only runs still `queued`/`running` change; → whether it did."""
    assert status in ("failed", "cancelled"), status
    path = run_dir(workspace, run_id)
    status_file = path / "status"
    try:
        if not status_file.is_file() or read_text(status_file, "run status").strip() not in ("queued", "running"):
            return False
    except InputError:
        return False
    if message:
        write_text_atomic(path / "error.txt", message.rstrip() + "\n")
    write_text_atomic(status_file, status + "\n")
    return True


def end_dead_runs(workspace: str | os.PathLike) -> list[str]:
    """Mark `failed` every queued/running run whose recorded process is gone on this host; → their ids."""
    ended = []
    runs = Path(workspace) / RUNS_DIR
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        try:
            unfinished = (path / "status").is_file() and read_text(path / "status").strip() in ("queued", "running")
            if unfinished and process_alive(read_process(path)) is False \
                    and end_unfinished_run(workspace, path.name, "failed", DIED):
                ended.append(path.name)
        except InputError:  # another run's damaged files: its readers name it; nothing to end here
            continue
    return ended


def write_finished_run(workspace: str | os.PathLike, run_id: str, config: dict, head: dict[str, torch.Tensor],
                       metrics: dict, support: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a complete run (an import) in a hidden folder and rename it into place in one step."""
    target = _run_dir(workspace, run_id)
    if target.exists():
        raise InputError(f"{target} already exists; runs are never overwritten")
    tmp = target.parent / f".incoming-{run_id}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    try:
        (tmp / "config.json").write_text(json.dumps({**config, "run_id": run_id, "finished_at": now()}, indent=2))
        (tmp / "head.safetensors").write_bytes(_tensor_bytes(head))
        if support is not None:
            (tmp / "support.safetensors").write_bytes(_tensor_bytes(support))
        (tmp / "history.jsonl").touch()
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "status").write_text("done\n")
        os.rename(tmp, target)  # fails rather than merging if the target appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_run(path: Path) -> dict:
    """One run's id, status, method, config and (when present) metrics; InputError naming the file
    when one cannot be read. A `queued`/`running` run whose recorded process is gone (SIGKILL, a
    crashed machine) is marked `failed` here, so every reader sees the same."""
    config = read_json(path / "config.json", "run config")
    status = _read_status(path)
    if status in ("queued", "running") and process_alive(read_process(path)) is False:
        if end_unfinished_run(path.parent.parent, path.name, "failed", DIED):
            status = "failed"
        else:
            status = _read_status(path)  # it finished just now
    metrics = None
    if (path / "metrics.json").is_file():
        metrics = _check_metrics(read_json(path / "metrics.json", "run metrics", allow_nan=False), path / "metrics.json")
    method = config.get("method")
    if method is not None and not isinstance(method, str):
        raise InputError(f"{path / 'config.json'}: 'method' must be a string, found {method!r:.40}")
    return {"run_id": path.name, "path": path, "status": status, "method": method,
            "config": config, "metrics": metrics}


def _check_metrics(metrics: dict, where: Path) -> dict:
    """`{split: §Metrics}` as `metrics.group_metrics` writes it: the figures numbers or null, `group_acc` a list
    of them (every reader of runs aggregates it), `group_n` and `group_ci` lists when present."""
    bad = [k for k, v in metrics.items() if not isinstance(v, dict)]
    if bad:
        raise InputError(f"{where}: expected {{split: {{metric: value}}}}; {bad[0]!r} holds a "
                         f"{type(metrics[bad[0]]).__name__}")
    for split, figures in metrics.items():
        for key in ("wga", "avg_plain", "avg_adjusted", "mean_group"):
            value = figures.get(key)
            if value is not None and not finite_number(value):
                raise InputError(f"{where}: {split}.{key} must be a number or null, found {value!r:.40}")
        if not isinstance(figures.get("group_acc"), list):
            raise InputError(f"{where}: {split}.group_acc must be a list of per-group accuracies (number or null), "
                             f"found {figures.get('group_acc')!r:.40}")
        if not all(v is None or finite_number(v) for v in figures["group_acc"]):
            raise InputError(f"{where}: {split}.group_acc must hold numbers or null")
        for key in ("group_n", "group_ci"):
            if key in figures and not isinstance(figures[key], list):
                raise InputError(f"{where}: {split}.{key} must be a list")
    return metrics


def _read_status(path: Path) -> str:
    if not (path / "status").is_file():
        return "unknown"
    status = read_text(path / "status", "run status").strip()
    if status not in STATUSES:
        raise InputError(f"{path / 'status'}: {status!r:.40} is not a run status ({', '.join(STATUSES)})")
    return status


def list_runs(workspace: str | os.PathLike, unreadable: list | None = None) -> list[dict]:
    """Every run of a workspace, in run-id order (ids start with method and UTC time).

    With `unreadable` (a list), a run whose files cannot be read is left out and (run id, reason)
    is appended there; without it, the first such run's InputError propagates."""
    if not Path(workspace).is_dir():
        raise InputError(f"workspace {workspace} not found (no such folder)")
    runs = Path(workspace) / RUNS_DIR
    if not runs.is_dir():
        return []
    out = []
    for d in sorted(runs.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        if not (d / "config.json").exists():
            if unreadable is not None and any(d.iterdir()):  # files but no config: name it, not skip it
                unreadable.append((d.name, f"{d / 'config.json'}: run config not found"))
            continue
        try:
            out.append(read_run(d))
        except InputError as exc:
            if unreadable is None:
                raise
            unreadable.append((d.name, str(exc)))
    return out


def find_run(workspace: str | os.PathLike, run_id: str) -> dict:
    path = _run_dir(workspace, run_id)
    if not (path / "config.json").is_file():
        known = ", ".join(r["run_id"] for r in list_runs(workspace, unreadable=[])) or "none"
        raise InputError(f"no run {run_id!r} in {Path(workspace) / RUNS_DIR} (runs: {known})")
    return read_run(path)


def check_run_fits_store(run: dict, store) -> None:
    """Refuse to analyse a run against features it was not trained on (a store replaced with
    `--overwrite` keeps its runs/)."""
    recorded = run["config"].get("store_hash")
    if recorded and recorded != store.content_hash:
        raise InputError(f"run {run['run_id']} was trained on another store (content hash {recorded}; "
                         f"{store.path} now has {store.content_hash}): retrain it, or open the store it came from")


def load_support(run: dict, store=None) -> dict[str, torch.Tensor]:
    """A run's support set, checked: before/after n × d, labels and indices n; with `store`, d is
    the store's and every index a row of it (or −1, an imported reference run's)."""
    path = run["path"] / "support.safetensors"
    if not path.is_file():
        raise InputError(f"run {run['run_id']} ({run['method']}) has no support set: only HSFM runs edit features")
    support = read_safetensors(path, "support set", required=("before", "after", "indices", "labels"))
    before, after, indices, labels = (support[k] for k in ("before", "after", "indices", "labels"))
    n = len(after) if after.ndim else 0
    if after.ndim != 2 or before.shape != after.shape or indices.shape != (n,) or labels.shape != (n,):
        raise InputError(f"{path}: before {tuple(before.shape)}, after {tuple(after.shape)}, indices "
                         f"{tuple(indices.shape)}, labels {tuple(labels.shape)}; expected n × d, n × d, n and n")
    if indices.is_floating_point() or labels.is_floating_point() or not after.is_floating_point():
        raise InputError(f"{path}: indices and labels must be integers and before/after floats")
    if store is not None:
        if after.shape[1] != store.dim:
            raise InputError(f"{path}: support features are {after.shape[1]}-d; the store's are {store.dim}-d")
        import torch

        bad = torch.nonzero((indices < -1) | (indices >= len(store.meta))).flatten()
        if len(bad):
            i = int(bad[0])
            raise InputError(f"{path}: support example {i} points at row {int(indices[i])}, which {store.path} "
                             f"does not have (rows 0…{len(store.meta) - 1}; {len(bad)} bad index(es))")
        bad = torch.nonzero((labels < 0) | (labels >= len(store.class_names))).flatten()
        if len(bad):
            raise InputError(f"{path}: support example {int(bad[0])} has label {int(labels[bad[0]])}; "
                             f"the store has classes 0…{len(store.class_names) - 1}")
    return support


def load_head(run: dict, store=None) -> dict[str, torch.Tensor]:
    """A run's head {weight C × d, bias C}, checked against `store` when given."""
    path = run["path"] / "head.safetensors"
    if not path.is_file():
        raise InputError(f"run {run['run_id']} has no head.safetensors (status {run['status']})")
    head = read_safetensors(path, "head", required=("weight", "bias"))
    weight, bias = head["weight"], head["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or not weight.is_floating_point():
        raise InputError(f"{path}: weight {tuple(weight.shape)} {weight.dtype}, bias {tuple(bias.shape)}; "
                         f"expected a float C × d weight and a C bias")
    if store is not None and tuple(weight.shape) != (len(store.class_names), store.dim):
        raise InputError(f"{path}: a head of shape {tuple(weight.shape)} does not fit {store.path} "
                         f"({len(store.class_names)} classes, {store.dim}-d features): was the store replaced?")
    return head
