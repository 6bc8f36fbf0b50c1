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

import torch
from safetensors.torch import load_file, save

from hsfm_core import __version__
from hsfm_core.errors import InputError
from hsfm_core.fsutil import write_bytes_atomic, write_json_atomic, write_text_atomic

RUNS_DIR = "runs"
STATUSES = ("queued", "running", "done", "failed", "cancelled")
PROCESS_FILE = "process.json"
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
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def run_dir(workspace: str | os.PathLike, run_id: str) -> Path:
    """`<workspace>/runs/<run_id>`, after checking that the id is a plain name."""
    if not _RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    return Path(workspace) / RUNS_DIR / run_id


_run_dir = run_dir


def process_record() -> dict:
    """This process, as a run records who writes it: pid, start time (to tell a reused pid apart),
    host, the Slurm job id on a cluster, and when it took the run (`at`)."""
    import psutil

    me = psutil.Process()
    return {"pid": me.pid, "started": me.create_time(), "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "at": time.time()}


def read_process(path: Path) -> dict | None:
    """A run's `process.json`, or None (not written, or an import)."""
    try:
        return json.loads((Path(path) / PROCESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def process_alive(info: dict | None) -> bool | None:
    """Whether the process of a `process_record` still runs: True or False on its own host, None
    where it cannot be seen (another host, no record). A zombie has finished."""
    import psutil

    if not info or info.get("host") != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(info["pid"]))
        return abs(process.create_time() - float(info["started"])) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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
        config = json.loads((self.path / "config.json").read_text())
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
    if not status_file.is_file() or status_file.read_text().strip() not in ("queued", "running"):
        return False
    if message:
        write_text_atomic(path / "error.txt", message.rstrip() + "\n")
    write_text_atomic(status_file, status + "\n")
    return True


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
    """One run's id, status, method, config and (when present) metrics."""
    config = json.loads((path / "config.json").read_text())
    status = (path / "status").read_text().strip() if (path / "status").is_file() else "unknown"
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else None
    return {"run_id": path.name, "path": path, "status": status, "method": config.get("method"),
            "config": config, "metrics": metrics}


def list_runs(workspace: str | os.PathLike, unreadable: list | None = None) -> list[dict]:
    """Every run of a workspace, in run-id order (ids start with method and UTC time).

    With `unreadable` (a list), a run whose config or metrics cannot be read is left out and
    (run id, reason) is appended there; without it, the error propagates."""
    runs = Path(workspace) / RUNS_DIR
    if not runs.is_dir():
        return []
    out = []
    for d in sorted(runs.iterdir()):
        if d.name.startswith(".") or not (d / "config.json").is_file():
            continue
        try:
            out.append(read_run(d))
        except (OSError, ValueError) as exc:
            if unreadable is None:
                raise
            unreadable.append((d.name, f"{type(exc).__name__}: {exc}"))
    return out


def find_run(workspace: str | os.PathLike, run_id: str) -> dict:
    path = _run_dir(workspace, run_id)
    if not (path / "config.json").is_file():
        known = ", ".join(r["run_id"] for r in list_runs(workspace)) or "none"
        raise InputError(f"no run {run_id!r} in {Path(workspace) / RUNS_DIR} (runs: {known})")
    return read_run(path)


def check_run_fits_store(run: dict, store) -> None:
    """Refuse to analyse a run against features it was not trained on (a store replaced with
    `--overwrite` keeps its runs/)."""
    recorded = run["config"].get("store_hash")
    if recorded and recorded != store.content_hash:
        raise InputError(f"run {run['run_id']} was trained on another store (content hash {recorded}; "
                         f"{store.path} now has {store.content_hash}): retrain it, or open the store it came from")


def load_support(run: dict) -> dict[str, torch.Tensor]:
    path = run["path"] / "support.safetensors"
    if not path.is_file():
        raise InputError(f"run {run['run_id']} ({run['method']}) has no support set: only HSFM runs edit features")
    return load_file(path)


def load_head(run: dict) -> dict[str, torch.Tensor]:
    path = run["path"] / "head.safetensors"
    if not path.is_file():
        raise InputError(f"run {run['run_id']} has no head.safetensors (status {run['status']})")
    return load_file(path)
