"""Validation sweeps (docs/ARCHITECTURE.md §Sweeps): a grid over any settings × seeds of one method,
selected on validation only.

    sweeps/<sweep_id>/request.json   method, preset, grid, fixed overrides, seeds, placement
    sweeps/<sweep_id>/status         running | done | failed | cancelled
    sweeps/<sweep_id>/cancel         present when a cancel was asked for
    sweeps/<sweep_id>/results.csv    one row per configuration: settings, run ids, seeds finished, val and test
                                     mean ± std, selected (written when a foreground sweep ends)
    sweeps/<sweep_id>/jobs.json      the background jobs of a submitted sweep, {config: job id}

Every (configuration, seed) is an ordinary run, `<sweep_id>-c<k>-s<seed>`, tagged in its config
with `sweep` and `sweep_config`. The sweep id is a hash of the method, preset, grid and fixed
overrides, so running the same sweep again finds its runs: finished ones are kept, unfinished ones
(failed, cancelled, killed) are trained again — a sweep resumes after a crash or a cancel, and
adding seeds trains only the new ones.

**Selection reads validation only.** Eligible configurations have every requested seed finished;
the selected one has the highest mean val worst-group accuracy over its seeds; ties (equal to
1e-9) go to the higher mean val adjusted average, then to the earlier configuration in grid order.
Test figures are reported for every configuration and never read by `select`.

Execution. In the foreground (`run`, the CLI's default) configurations train in parallel worker
processes (`spawn`), at most `max_parallel` at a time (default: the workspace's job limit). In the
background (`submit`, the app's Sweep view and the CLI's `--submit local|slurm`) each configuration
is one job of the existing job machinery: local jobs (`jobs.launch`) wait for the workspace's
concurrency slots; on Slurm the configurations go as ONE job array (`jobs.launch_array`, submitit's
`executor.batch()`), one task per configuration, each task an ordinary job (status, cancel). Either way a configuration's seeds train in one
`train` call, where HSFM batches or loops them by size (`methods/hsfm.py`).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import multiprocessing as mp
import pandas as pd

from hsfm_core import methods
from hsfm_core.analysis.seeds import mean_std
from hsfm_core.errors import InputError
from hsfm_core.fsutil import write_json_atomic, write_text_atomic
from hsfm_core.runs import read_run, run_dir
from hsfm_core.spec import TrainSpec

SWEEPS_DIR = "sweeps"
TIE = 1e-9
FIGURES = ("wga", "avg_adjusted")


@dataclass(frozen=True)
class SweepRequest:
    method: str
    grid: dict  # field name → list of values, in the order given
    seeds: tuple[int, ...] = (0, 1, 2)
    preset: str | None = None
    overrides: tuple[str, ...] = ()  # fixed `key=value` for every configuration
    device: str = "auto"
    executor: str = "local"
    slurm: dict | None = None
    max_parallel: int | None = None

    @property
    def sweep_id(self) -> str:
        identity = json.dumps({"method": self.method, "preset": self.preset, "grid": self.grid,
                               "overrides": list(self.overrides)}, sort_keys=True, default=str)
        return f"sweep-{self.method}-{hashlib.blake2b(identity.encode(), digest_size=4).hexdigest()}"

    def configurations(self) -> list[dict]:
        """Every grid point, {field: value}, in grid order (the first field varies slowest)."""
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]

    def spec(self, configuration: dict, seeds: Sequence[int], k: int) -> TrainSpec:
        pairs = [f"{name}={_text(value)}" for name, value in configuration.items()]
        return TrainSpec.create(self.method, preset=self.preset, overrides=[*self.overrides, *pairs], seeds=seeds,
                                device=self.device, executor=self.executor, slurm=self.slurm,
                                max_parallel=self.max_parallel, tags={"sweep": self.sweep_id, "sweep_config": k})


def _text(value) -> str:
    return ",".join(map(repr, value)) if isinstance(value, tuple) else repr(value) if isinstance(value, float) else str(value)


def parse_grid(method_name: str, items: Sequence[str]) -> dict:
    """['alpha=5e-5,2e-4', 'eta=0.1,1'] → {'inner_lr': [5e-05, 0.0002], 'outer_lr': [0.1, 1.0]}: the same names
    and types as `--set` (field names or the paper's symbols), values checked by the method."""
    method = methods.get(method_name)
    grid: dict = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not raw.strip():
            raise InputError(f"--grid {item!r}: expected key=v1,v2,…")
        name = method.field_name(key.strip(), item)
        if name in grid:
            raise InputError(f"--grid {item!r}: {name} is given twice")
        values = [method.coerce(name, v.strip(), item) for v in raw.split(",") if v.strip()]
        if not values or len(set(map(repr, values))) != len(values):
            raise InputError(f"--grid {item!r}: expected distinct values separated by commas")
        grid[name] = values
    if not grid:
        raise InputError("a sweep needs at least one --grid key=v1,v2,…")
    return grid


def sweep_dir(workspace: str | os.PathLike, sweep_id: str) -> Path:
    return Path(workspace) / SWEEPS_DIR / sweep_id


def create(workspace: str | os.PathLike, request: SweepRequest) -> Path:
    """Check every configuration (InputError before anything is written) and write request.json."""
    for k, configuration in enumerate(request.configurations()):
        request.spec(configuration, request.seeds, k)
    directory = sweep_dir(workspace, request.sweep_id)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "request.json", {**asdict(request), "seeds": list(request.seeds),
                                                   "overrides": list(request.overrides), "sweep_id": request.sweep_id})
    return directory


def load_request(workspace: str | os.PathLike, sweep_id: str) -> SweepRequest:
    path = sweep_dir(workspace, sweep_id) / "request.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SweepRequest(method=data["method"], grid=data["grid"], seeds=tuple(data["seeds"]),
                            preset=data.get("preset"), overrides=tuple(data.get("overrides") or ()),
                            device=data.get("device", "auto"), executor=data.get("executor", "local"),
                            slurm=data.get("slurm"), max_parallel=data.get("max_parallel"))
    except FileNotFoundError:
        raise InputError(f"no sweep {sweep_id!r} in {Path(workspace) / SWEEPS_DIR}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable sweep request ({type(exc).__name__}: {exc})") from None


def run_id_of(request: SweepRequest, k: int, seed: int) -> str:
    return f"{request.sweep_id}-c{k:02d}-s{seed}"


def _run_status(workspace, run_id: str) -> str | None:
    path = run_dir(workspace, run_id)
    try:
        return (path / "status").read_text(encoding="utf-8").strip() if path.is_dir() else None
    except (OSError, UnicodeDecodeError):
        return "unreadable"


def pending(workspace, request: SweepRequest) -> list[tuple[int, dict, list[int]]]:
    """(k, configuration, seeds still to train) for every configuration with unfinished seeds."""
    out = []
    for k, configuration in enumerate(request.configurations()):
        seeds = [s for s in request.seeds if _run_status(workspace, run_id_of(request, k, s)) != "done"]
        if seeds:
            out.append((k, configuration, seeds))
    return out


def _train_configuration(workspace: str, request_dict: dict, k: int, seeds: list[int], threads: int) -> str:
    """One configuration's seeds in a worker process: the unit of parallel work."""
    import torch

    from hsfm_core.train import train

    torch.set_num_threads(threads)  # parallel workers share the cores instead of oversubscribing them
    request = SweepRequest(**{**request_dict, "seeds": tuple(request_dict["seeds"]),
                              "overrides": tuple(request_dict["overrides"])})
    configuration = request.configurations()[k]
    cancel_flag = sweep_dir(workspace, request.sweep_id) / "cancel"

    def progress(epoch, epochs, entries):
        if cancel_flag.exists():
            raise KeyboardInterrupt("sweep cancelled")

    if cancel_flag.exists():
        return "cancelled"
    _clear_unfinished(workspace, request, k, seeds)
    try:
        train(workspace, request.spec(configuration, seeds, k), progress=progress, run_id=f"{request.sweep_id}-c{k:02d}")
    except KeyboardInterrupt:
        return "cancelled"
    return "done"


def run(workspace: str | os.PathLike, request: SweepRequest,
        on_configuration: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """Train every unfinished (configuration, seed) of the sweep, then return `results(...)`.

    `on_configuration(done, total, status)` is called as each configuration ends.
    """
    from hsfm_core import jobs

    workspace = Path(workspace).resolve()
    directory = create(workspace, request)
    lock = open(directory / ".lock", "a")
    try:  # one foreground run of a sweep at a time: two would train the same runs
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise InputError(f"sweep {request.sweep_id} is already running in another process") from None
    (directory / "cancel").unlink(missing_ok=True)
    write_text_atomic(directory / "status", "running\n")
    todo = pending(workspace, request)
    status = "done"
    try:
        if todo:
            limit = int(request.max_parallel or jobs.job_limit(workspace))
            workers = min(limit, len(todo))
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_train_configuration, str(workspace), _request_dict(request), k, seeds, threads)
                           for k, _, seeds in todo]
                for done, future in enumerate(as_completed(futures), start=1):
                    outcome = future.result()
                    if outcome == "cancelled":
                        status = "cancelled"
                    if on_configuration is not None:
                        on_configuration(done, len(todo), outcome)
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        write_text_atomic(directory / "status", status + "\n")
        write_results(workspace, request)
        lock.close()
    return results(workspace, request)


def submit(workspace: str | os.PathLike, request: SweepRequest) -> dict:
    """Launch every unfinished configuration as a background job (`jobs.launch`), return {config: job id}.

    Local jobs queue for the workspace's slots; Slurm jobs go to the scheduler. Follow it with `progress`."""
    from hsfm_core import jobs

    workspace = Path(workspace).resolve()
    directory = create(workspace, request)
    (directory / "cancel").unlink(missing_ok=True)
    launched = _launched(workspace, request.sweep_id)
    active = {k for k, job_id in launched.items() if jobs.get_job(workspace, job_id)["status"] in jobs.ACTIVE}
    todo = [(k, request.spec(configuration, seeds, k), seeds) for k, configuration, seeds in pending(workspace, request)
            if str(k) not in active]  # still queued or training from an earlier submit: not launched twice
    for k, _, seeds in todo:
        _clear_unfinished(workspace, request, k, seeds)
    if request.executor == "slurm":  # one sbatch: a job array, one task per configuration
        records = jobs.launch_array(workspace, [(spec, f"{request.sweep_id}-c{k:02d}") for k, spec, _ in todo])
        launched.update({str(k): record["job_id"] for (k, _, _), record in zip(todo, records)})
    for k, spec, _ in todo if request.executor != "slurm" else ():
        launched[str(k)] = jobs.launch(workspace, spec, run_id=f"{request.sweep_id}-c{k:02d}")["job_id"]
    write_json_atomic(directory / "jobs.json", launched)
    write_text_atomic(directory / "status", ("submitted" if launched else "done") + "\n")
    return launched


def progress(workspace: str | os.PathLike, sweep_id: str) -> dict:
    """{status, configurations, finished, table}: a sweep's state read from its runs (and jobs when submitted).

    status: done (every seed finished), running (runs or jobs still active), cancelled, failed (some
    runs ended without finishing), or new."""
    from hsfm_core import jobs

    request = load_request(workspace, sweep_id)
    table = results(workspace, request)
    recorded = status(workspace, sweep_id)
    finished = int((table["seeds_done"] == table["seeds"]).sum())
    if finished == len(table):
        state = "done"
    elif recorded == "submitted":
        active = [j for j in _launched(workspace, sweep_id).values() if jobs.get_job(workspace, j)["status"] in jobs.ACTIVE]
        state = "running" if active else ("cancelled" if (sweep_dir(workspace, sweep_id) / "cancel").exists()
                                          else "failed")
    else:
        state = recorded
    return {"status": state, "configurations": len(table), "finished": finished, "table": table, "request": request}


def _clear_unfinished(workspace, request: SweepRequest, k: int, seeds: list[int]) -> None:
    """Remove this sweep's own unfinished attempts (failed, cancelled, killed) of configuration k, to retrain them."""
    for seed in seeds:
        path = run_dir(workspace, run_id_of(request, k, seed))
        if path.exists():
            shutil.rmtree(path)


def _launched(workspace, sweep_id: str) -> dict:
    """{configuration: job id} of a submitted sweep (empty when none or unreadable)."""
    try:
        return dict(json.loads((sweep_dir(workspace, sweep_id) / "jobs.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def _request_dict(request: SweepRequest) -> dict:
    return {**asdict(request), "seeds": list(request.seeds), "overrides": list(request.overrides)}


def cancel(workspace: str | os.PathLike, sweep_id: str) -> None:
    """Stop a sweep: foreground workers end their runs `cancelled` at the next epoch, background jobs are
    cancelled through the job layer. Running the sweep again resumes it."""
    from hsfm_core import jobs

    directory = sweep_dir(workspace, sweep_id)
    load_request(workspace, sweep_id)
    write_text_atomic(directory / "cancel", time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    for job_id in _launched(workspace, sweep_id).values():
        if jobs.get_job(workspace, job_id)["status"] in jobs.ACTIVE:
            jobs.cancel(workspace, job_id)


def results(workspace: str | os.PathLike, request: SweepRequest) -> pd.DataFrame:
    """One row per configuration: its settings, seeds finished, val and test mean ± std, and `selected`."""
    rows = []
    for k, configuration in enumerate(request.configurations()):
        finished = []
        for seed in request.seeds:
            path = run_dir(workspace, run_id_of(request, k, seed))
            if _run_status(workspace, path.name) == "done":
                try:
                    finished.append(read_run(path))
                except (OSError, ValueError):
                    continue
        row = {"config": k, **{name: _text(value) for name, value in configuration.items()},
               "seeds_done": len(finished), "seeds": len(request.seeds),
               "run_ids": " ".join(run_id_of(request, k, seed) for seed in request.seeds)}
        for split in ("val", "test"):
            for key in FIGURES:
                values = [(r["metrics"] or {}).get(split, {}).get(key) for r in finished]
                row[f"{split}_{key}_mean"], row[f"{split}_{key}_std"] = mean_std(values)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["selected"] = False
    chosen = select(table)
    if chosen is not None:
        table.loc[table["config"] == chosen, "selected"] = True
    return table


def select(table: pd.DataFrame) -> int | None:
    """The selected configuration's index, reading only the val columns (see the module docstring)."""
    val = table[["config", "seeds_done", "seeds", "val_wga_mean", "val_avg_adjusted_mean"]]
    eligible = val[(val["seeds_done"] == val["seeds"]) & val["val_wga_mean"].notna()]
    if eligible.empty:
        return None
    best = eligible["val_wga_mean"].max()
    tied = eligible[eligible["val_wga_mean"] >= best - TIE]
    best_adjusted = tied["val_avg_adjusted_mean"].fillna(-1).max()
    tied = tied[tied["val_avg_adjusted_mean"].fillna(-1) >= best_adjusted - TIE]
    return int(tied["config"].min())


def write_results(workspace: str | os.PathLike, request: SweepRequest) -> Path:
    from hsfm_core.fsutil import atomic_path

    path = sweep_dir(workspace, request.sweep_id) / "results.csv"
    with atomic_path(path) as tmp:
        results(workspace, request).to_csv(tmp, index=False)
    return path


def selected_settings(workspace: str | os.PathLike, request: SweepRequest, table: pd.DataFrame | None = None) -> dict | None:
    """The selected configuration's full settings by field name (from its first finished run's config)."""
    table = results(workspace, request) if table is None else table
    chosen = select(table)
    if chosen is None:
        return None
    for seed in request.seeds:
        path = run_dir(workspace, run_id_of(request, chosen, seed))
        if _run_status(workspace, path.name) == "done":
            return dict(read_run(path)["config"].get("hyperparameters") or {})
    return None


def status(workspace: str | os.PathLike, sweep_id: str) -> str:
    path = sweep_dir(workspace, sweep_id) / "status"
    try:
        return path.read_text(encoding="utf-8").strip() if path.is_file() else "new"
    except (OSError, UnicodeDecodeError):
        return "unreadable"


def list_sweeps(workspace: str | os.PathLike) -> list[dict]:
    """Every sweep of a workspace: id, method, status, configurations × seeds (unreadable ones named)."""
    root = Path(workspace) / SWEEPS_DIR
    out = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            request = load_request(workspace, directory.name)
        except InputError as exc:
            out.append({"sweep_id": directory.name, "error": str(exc)})
            continue
        out.append({"sweep_id": directory.name, "method": request.method, "status": status(workspace, directory.name),
                    "configurations": len(request.configurations()), "seeds": list(request.seeds),
                    "grid": request.grid})
    return out
