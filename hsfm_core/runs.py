"""Run directories (DESIGN §3/§4): `<workspace>/runs/<run_id>/`.

    config.json         method, hyper-parameters, seed, device, store content hash, code version
    head.safetensors    weight, bias (final head); init.weight, init.bias (θ₀) when known
    support.safetensors before, after, indices, labels (HSFM only)
    history.jsonl       one JSON line per epoch
    metrics.json        {split: group metrics} for val and test
    status              queued | running | done | failed | cancelled

A finished run is assembled in a hidden folder under `runs/` and renamed into place, so a run
directory that exists is complete; existing runs are never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

from hsfm_core import __version__
from hsfm_core.errors import InputError

RUNS_DIR = "runs"
STATUSES = ("queued", "running", "done", "failed", "cancelled")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def new_run_id(method: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{method}-{stamp}-{uuid.uuid4().hex[:6]}"


def write_finished_run(
    workspace: str | os.PathLike,
    run_id: str,
    config: dict,
    head: dict[str, torch.Tensor],
    metrics: dict,
    support: dict[str, torch.Tensor] | None = None,
    history: list[dict] | None = None,
) -> Path:
    """Write a complete run in one atomic step and return its directory."""
    if not _RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    runs = Path(workspace) / RUNS_DIR
    target = runs / run_id
    if target.exists():
        raise InputError(f"{target} already exists; runs are never overwritten")
    tmp = runs / f".incoming-{run_id}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    try:
        config = {**config, "run_id": run_id, "hsfm_core_version": __version__,
                  "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().float().contiguous().cpu() for k, v in head.items()}, tmp / "head.safetensors")
        if support is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in support.items()}, tmp / "support.safetensors")
        (tmp / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history or []))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "status").write_text("done\n")
        os.rename(tmp, target)  # fails rather than merging if target appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def list_runs(workspace: str | os.PathLike) -> list[dict]:
    """Every run of a workspace: id, status, method and config, oldest first."""
    runs = Path(workspace) / RUNS_DIR
    out = []
    for d in sorted(runs.iterdir()) if runs.is_dir() else []:
        if d.name.startswith(".") or not (d / "config.json").is_file():
            continue
        config = json.loads((d / "config.json").read_text())
        status = (d / "status").read_text().strip() if (d / "status").is_file() else "unknown"
        out.append({"run_id": d.name, "path": d, "status": status, "method": config.get("method"), "config": config})
    return out
