"""Validation sweeps (docs/ARCHITECTURE.md §Sweeps): a grid over any settings × seeds of one method,
selected on validation only.

    sweeps/<sweep_id>/request.json   method, preset, grid, fixed overrides, seeds, placement
    sweeps/<sweep_id>/status         running | submitted | done | failed | cancelled, as its writer last said
                                     (readers derive the state: `status`)
    sweeps/<sweep_id>/process.json   who runs it: the foreground `run`, or the background queue of `submit`
                                     (pid, start time, host: a run's process record)
    sweeps/<sweep_id>/.lock          flock held by whoever runs it, either way
    sweeps/<sweep_id>/cancel         present when a cancel was asked for
    sweeps/<sweep_id>/results.csv    one row per configuration: settings, run ids, seeds finished, val and test
                                     mean ± std, selected (written when a foreground sweep stops;
                                     `read_results`; `progress` computes it live)
    sweeps/<sweep_id>/jobs.json      the background jobs of a submitted sweep, {config: job id}, as launched
    sweeps/<sweep_id>/queue.json     what a local `submit` queued (checked requests; `jobs.serve_queue`)
    sweeps/<sweep_id>/queue.log      the background queue's log

Every (configuration, seed) is an ordinary run, `<sweep_id>-c<k>-s<seed>`, tagged in its config
with `sweep` and `sweep_config`. The sweep id is a hash of the method, preset, grid and fixed
overrides, so running the same sweep again finds its runs: finished ones are kept, unfinished ones
(failed, cancelled, killed) are trained again — a sweep resumes after a crash or a cancel, and
adding seeds trains only the new ones.

**Selection reads validation only.** Eligible configurations have every requested seed finished;
the selected one has the highest mean val worst-group accuracy over its seeds; ties (equal to
1e-9) go to the higher mean val adjusted average, then to the earlier configuration in grid order.
Test figures are reported for every configuration and never read by `select`.

**Before anything is written** (`check`): the request's fields (types, seeds 0…2**32−1, no key both fixed and
swept: `SweepRequest`), its size against the workspace's limit (`jobs/settings.json` max_sweep_runs, default
500 configurations × seeds; `yes=True` — the CLI's `--yes` — runs a larger one), every configuration's
settings, and the store (it must exist: a sweep never creates the workspace; every split and validation group
the method needs).

Execution. Whoever runs a sweep holds its `.lock`, so the two ways exclude each other. In the foreground
(`run`, the CLI's default) the configurations train in passes (`passes`: those that differ only in the
method's row scalars — HSFM's α, η, clip norm — share one `train_many` call, every run exactly the run
`train` writes alone), in parallel worker processes (`spawn`), at most `max_parallel` at a time (default: the
workspace's job limit); the workers die with the process that runs them (`parallel.process_pool`). In the
background (`submit`, the app's Sweep view and the CLI's `--submit local|slurm`) each configuration is one job
of the existing job machinery. Locally, one small
background process — the sweep's queue (`jobs.serve_queue`: no torch in it), which inherits the lock —
launches a configuration's job only while fewer than the job limit of them are queued or training: a
waiting configuration costs no process, and jobs.json grows as they launch (`cancel` reaches every one). On Slurm the
configurations go as ONE job array (`jobs.launch_array`, submitit's `executor.batch()`), one task per
configuration, each task an ordinary job (status, cancel), and the scheduler queues them. In the background a
configuration's seeds train in one `train` call (a job is one request; on Slurm `--time` stays a per-configuration
limit), where HSFM batches or loops them by size (`methods/hsfm.py`).

A sweep's state is derived like a run's (`status`): `running`/`submitted` while its process lives or any of
its jobs is active; once neither, done (every seed finished), cancelled (a cancel was asked for) or failed
— so a SIGKILLed sweep reads failed at the next read, and running it again resumes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Callable, Sequence

import pandas as pd

from hsfm_core import methods
from hsfm_core.analysis.seeds import mean_std
from hsfm_core.errors import InputError
from hsfm_core.fsutil import write_json_atomic, write_text_atomic
from hsfm_core.methods.base import check_seeds
from hsfm_core.runs import process_alive, process_record, read_process, read_run, run_dir
from hsfm_core.safe_io import finite_number, read_json, read_text
from hsfm_core.spec import EXECUTORS, TrainSpec

SWEEPS_DIR = "sweeps"
# The most configurations × seeds one pass trains (`passes`): a pass's tensors grow with its rows, and a failed
# pass fails all of them. 36 rows hold the demo's 12-configuration × 3-seed sweep's passes whole.
MAX_PASS_ROWS = 64
TIE = 1e-9
FIGURES = ("wga", "avg_adjusted")
STATUSES = ("running", "submitted", "done", "failed", "cancelled")  # as written; readers derive (see `status`)
_SWEEP_ID = re.compile(r"^sweep-[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9a-f]{8}$")


@dataclass(frozen=True)
class SweepRequest:
    """What to sweep. Built, every field is checked (types, the method's keys, seeds 0…2**32−1, no key both
    fixed and swept): an InputError here means nothing was written. Range checks of each configuration's
    values, the workspace's store and the size limit come in `check`."""

    method: str
    grid: dict  # field name → list of values, in the order given
    seeds: tuple[int, ...] = (0, 1, 2)
    preset: str | None = None
    overrides: tuple[str, ...] = ()  # fixed `key=value` for every configuration
    device: str = "auto"
    executor: str = "local"
    slurm: dict | None = None
    max_parallel: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise InputError(f"method must be a method name, found {self.method!r:.40}")
        method = methods.get(self.method)
        if not isinstance(self.grid, dict) or not self.grid:
            raise InputError(f"a sweep needs at least one --grid key=v1,v2,… (grid must map settings to lists of "
                             f"values, found {self.grid!r:.40})")
        grid, swept = {}, {}
        for key, values in self.grid.items():
            name = method.field_name(str(key), f"--grid {key}")
            if name in swept:
                raise InputError(f"--grid {key}: {name} is given twice")
            if not isinstance(values, (list, tuple)) or not values:
                raise InputError(f"--grid {key}: expected a list of values, found {values!r:.40}")
            grid[key] = [_grid_value(method, name, value, key) for value in values]
            if len(set(map(repr, grid[key]))) != len(grid[key]):
                raise InputError(f"--grid {key}: expected distinct values, found {list(values)!r:.60}")
            swept[name] = key
        if not isinstance(self.overrides, (list, tuple)) or not all(isinstance(o, str) for o in self.overrides):
            raise InputError(f"overrides must be a list of key=value strings, found {self.overrides!r:.40}")
        both = [name for name in method.parse(self.overrides) if name in swept]
        if both:
            raise InputError(f"{both[0]} is both fixed (--set) and swept (--grid {swept[both[0]]}=…): a configuration "
                             f"would silently drop one of them; give it in --grid only")
        if not isinstance(self.seeds, (list, tuple)) or not all(isinstance(s, int) for s in self.seeds):
            raise InputError(f"seeds must be a list of integers, found {self.seeds!r:.40}")
        seeds = check_seeds(self.seeds)
        for key, value, kinds in (("preset", self.preset, (str, type(None))), ("device", self.device, (str,)),
                                  ("slurm", self.slurm, (dict, type(None)))):
            if not isinstance(value, kinds):
                raise InputError(f"{key} must be {'a string' if str in kinds else 'an object'}"
                                 f"{' or null' if type(None) in kinds else ''}, found {value!r:.40}")
        if self.executor not in EXECUTORS:
            raise InputError(f"unknown executor {self.executor!r:.40}; expected local or slurm")
        if self.max_parallel is not None and (isinstance(self.max_parallel, bool) or not isinstance(self.max_parallel, int)
                                              or self.max_parallel < 1):
            raise InputError(f"the job limit (max_parallel) must be an integer ≥ 1, found {self.max_parallel!r:.40}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "overrides", tuple(self.overrides))

    @property
    def sweep_id(self) -> str:
        identity = json.dumps({"method": self.method, "preset": self.preset, "grid": self.grid,
                               "overrides": list(self.overrides)}, sort_keys=True, default=str)
        return f"sweep-{self.method}-{hashlib.blake2b(identity.encode(), digest_size=4).hexdigest()}"

    @property
    def n_configurations(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    def configurations(self) -> list[dict]:
        """Every grid point, {field: value}, in grid order (the first field varies slowest)."""
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]

    def spec(self, configuration: dict, seeds: Sequence[int], k: int) -> TrainSpec:
        pairs = [f"{name}={_text(value)}" for name, value in configuration.items()]
        return TrainSpec.create(self.method, preset=self.preset, overrides=[*self.overrides, *pairs], seeds=seeds,
                                device=self.device, executor=self.executor, slurm=self.slurm,
                                max_parallel=self.max_parallel, tags={"sweep": self.sweep_id, "sweep_config": k})


def _grid_value(method, name: str, value, key):
    """One grid value of the field's type (JSON gives a tuple field's values as lists); the method's range
    checks follow in `check`, per configuration."""
    kind = method.field_types()[name]
    if kind is tuple and isinstance(value, (list, tuple)) and all(finite_number(v) for v in value):
        return tuple(value)
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool), float: finite_number,
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}.get(kind, lambda v: False)
    if not ok(value):
        raise InputError(f"--grid {key}: {name} takes {'numbers' if kind is tuple else kind.__name__} values, "
                         f"found {value!r:.40}")
    return value


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
    """`<workspace>/sweeps/<sweep_id>`, after checking that the id is a sweep id (no path: `..`, `/`)."""
    if not isinstance(sweep_id, str) or not _SWEEP_ID.match(sweep_id):
        raise InputError(f"sweep id {sweep_id!r:.80}: expected sweep-<method>-<8 hex digits>, e.g. sweep-hsfm-1a2b3c4d")
    return Path(workspace) / SWEEPS_DIR / sweep_id


def check(workspace: str | os.PathLike, request: SweepRequest, yes: bool = False) -> None:
    """Everything about a sweep that can be refused before anything is written: its size against the
    workspace's limit (`jobs/settings.json` "max_sweep_runs", default 500 configurations × seeds; `yes` runs a
    larger one), every configuration's settings, and the workspace's store (it must exist — a sweep never
    creates the folder — and hold every split, and every validation group, the method needs), and the device
    on this machine (a local sweep's launch check)."""
    from hsfm_core import jobs
    from hsfm_core.train import open_store_for

    runs, limit = request.n_configurations * len(request.seeds), jobs.settings(workspace)["max_sweep_runs"]
    if runs > limit and not yes:
        raise InputError(f"this sweep is {request.n_configurations} configuration(s) × {len(request.seeds)} seed(s) = "
                         f"{runs} runs, over the limit of {limit}: pass --yes to run it anyway, or set "
                         f"\"max_sweep_runs\" in {Path(workspace, 'jobs', 'settings.json')}")
    specs = [request.spec(configuration, request.seeds, k) for k, configuration in enumerate(request.configurations())]
    open_store_for(workspace, request.method)
    # `cuda:1` on a one-GPU machine is refused here, before anything is written; without the test kernel, which
    # each worker runs: this process lives on beside them and must hold no CUDA context (§Devices, may_probe)
    specs[0].check_device_here(probe=False)


def _open(workspace: Path, request: SweepRequest, yes: bool, busy_ok: bool) -> tuple[Path, IO]:
    """Check the sweep, take its lock (`.lock`, held by whoever runs it: a foreground `run` or the background
    queue of `submit` — so the two ways exclude each other) and write request.json. → (folder, the lock)."""
    check(workspace, request, yes)
    directory = sweep_dir(workspace, request.sweep_id)
    directory.mkdir(parents=True, exist_ok=True)
    lock = open(directory / ".lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise InputError(f"sweep {request.sweep_id} is already running in another process (in the foreground, or "
                         f"as background jobs): follow it, or stop it with `sweep --cancel {request.sweep_id}`") from None
    try:
        busy = _active_jobs(workspace, request.sweep_id)
        if busy and not busy_ok:
            raise InputError(f"sweep {request.sweep_id} has {len(busy)} background job(s) still queued or training "
                             f"({', '.join(busy)}): wait for them, or stop them with `sweep --cancel {request.sweep_id}`")
        write_json_atomic(directory / "request.json", {**_request_dict(request), "sweep_id": request.sweep_id})
    except BaseException:
        lock.close()
        raise
    return directory, lock


def create(workspace: str | os.PathLike, request: SweepRequest, yes: bool = False) -> Path:
    """Check the sweep (`check`: InputError before anything is written) and write its request.json. → its folder."""
    directory, lock = _open(Path(workspace), request, yes, busy_ok=True)
    lock.close()
    return directory


def load_request(workspace: str | os.PathLike, sweep_id: str) -> SweepRequest:
    """A sweep's request.json, checked as `SweepRequest` checks a new one; InputError naming the file."""
    path = sweep_dir(workspace, sweep_id) / "request.json"
    if not path.exists():
        raise InputError(f"no sweep {sweep_id!r} in {Path(workspace) / SWEEPS_DIR}")
    data = read_json(path, "sweep request", allow_nan=False)
    known = {f.name for f in fields(SweepRequest)}
    missing = [key for key in ("method", "grid") if key not in data]
    if missing:
        raise InputError(f"{path}: unreadable sweep request (missing key {missing[0]!r})")
    try:
        request = SweepRequest(**{key: value for key, value in data.items() if key in known})
    except InputError as exc:
        raise InputError(f"{path}: unreadable sweep request ({exc})") from None
    if request.sweep_id != sweep_id:
        raise InputError(f"{path}: the request describes sweep {request.sweep_id}, not {sweep_id} (edited by hand?)")
    return request


def config_run_id(request: SweepRequest, k: int) -> str:
    """The run id that configuration k's runs are named after (`<it>-s<seed>`, `train`'s `run_id`)."""
    return f"{request.sweep_id}-c{k:02d}"


def run_id_of(request: SweepRequest, k: int, seed: int) -> str:
    return f"{config_run_id(request, k)}-s{seed}"


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


def passes(request: SweepRequest, todo: Sequence[tuple[int, dict, list[int]]], workers: int = 1,
           max_rows: int | None = None) -> list[tuple[list[int], list[int]]]:
    """The sweep's units of work, [(configurations, seeds)], each trained by ONE `train_many` call.

    Configurations with the same unfinished seeds whose grid values differ only in the method's `row_scalars`
    (HSFM: α, η, clip norm) share a pass: the scalars become a leading axis like the seeds, each row exactly its
    own run (docs/ARCHITECTURE.md §Sweeps). A setting that changes a shape (HSFM's n, T, K_H, K_hard, E), or any
    setting of a method without row scalars, keeps configurations apart. A pass holds at most `max_rows`
    configurations × seeds (default `MAX_PASS_ROWS`); while there are fewer units than `workers`, the largest
    is halved, so every worker trains. Grid order is kept within and across units."""
    method = methods.get(request.method)
    scalars = set(getattr(method, "row_scalars", ()))
    max_rows = MAX_PASS_ROWS if max_rows is None else max_rows
    groups: dict[tuple, list[tuple[int, list[int]]]] = {}
    for k, configuration, seeds in todo:
        shape = [(name, repr(value)) for name, value in configuration.items()
                 if method.field_name(name) not in scalars]
        key = (tuple(seeds), tuple(shape)) if scalars else (k,)
        groups.setdefault(key, []).append((k, list(seeds)))
    units = []
    for members in groups.values():
        seeds = members[0][1]
        size = max(1, max_rows // len(seeds))  # configurations per pass
        parts = math.ceil(len(members) / size)
        units += [([k for k, _ in chunk], seeds) for chunk in _split(members, parts)]
    while units and len(units) < workers and max(len(ks) for ks, _ in units) > 1:
        i = max(range(len(units)), key=lambda j: len(units[j][0]))
        (ks, seeds), half = units[i], (len(units[i][0]) + 1) // 2
        units[i:i + 1] = [(ks[:half], seeds), (ks[half:], seeds)]
    return sorted(units, key=lambda unit: unit[0][0])


def _split(items: list, parts: int) -> list[list]:
    """`items` in `parts` consecutive chunks of sizes differing by at most one."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def _train_pass(workspace: str, request_dict: dict, ks: list[int], seeds: list[int], threads: int) -> dict[int, str]:
    """One unit of `passes` in a worker process: configurations `ks` on `seeds`, one `train_many` call.
    → {configuration: done, cancelled, or `failed: why`} (the runs say more; the other units go on)."""
    import torch

    from hsfm_core.train import train_many

    torch.set_num_threads(threads)  # parallel workers share the cores instead of oversubscribing them
    request = SweepRequest(**request_dict)
    configurations = request.configurations()
    cancel_flag = sweep_dir(workspace, request.sweep_id) / "cancel"

    def progress(epoch, epochs, entries):
        if cancel_flag.exists():
            raise KeyboardInterrupt("sweep cancelled")

    if cancel_flag.exists():
        return {k: "cancelled" for k in ks}
    for k in ks:
        _clear_unfinished(workspace, request, k, seeds)
    outcome = "done"
    try:
        train_many(workspace, [request.spec(configurations[k], seeds, k) for k in ks], progress=progress,
                   run_ids=[config_run_id(request, k) for k in ks])
    except KeyboardInterrupt:
        outcome = "cancelled"
    except InputError as exc:  # bad input, or some runs diverged (TrainingDiverged: the others finished)
        outcome = f"failed: {exc}"
    except Exception as exc:  # noqa: BLE001 — train_many recorded it in the runs (error.txt); the sweep goes on
        outcome = f"failed: {type(exc).__name__}: {exc}"
    finished = {k for k in ks if all(_run_status(workspace, run_id_of(request, k, s)) == "done" for s in seeds)}
    return {k: "done" if k in finished else outcome if outcome != "done" else "failed" for k in ks}


def _limit(workspace, request: SweepRequest) -> int:
    from hsfm_core import jobs

    return request.max_parallel or jobs.job_limit(workspace)


def run(workspace: str | os.PathLike, request: SweepRequest,
        on_configuration: Callable[[int, int, str], None] | None = None, *, yes: bool = False) -> pd.DataFrame:
    """Train every unfinished (configuration, seed) of the sweep here, then return `results(...)`.

    `on_configuration(done, total, outcome)` is called as each configuration ends (outcome: done, cancelled or
    `failed: why`). Workers die with this process (`parallel.process_pool`). `yes`: run a sweep larger than the
    workspace's limit (`check`)."""
    from hsfm_core.parallel import process_pool, submit_all

    workspace = Path(workspace).resolve()
    directory, lock = _open(workspace, request, yes, busy_ok=False)
    status = "failed"
    try:
        (directory / "cancel").unlink(missing_ok=True)
        write_json_atomic(directory / "process.json", process_record())  # before the status: readers check it
        write_text_atomic(directory / "status", "running\n")
        todo = pending(workspace, request)
        outcomes: list[str] = []
        if todo:
            limit = _limit(workspace, request)
            units = passes(request, todo, workers=limit)
            workers = min(limit, len(units))
            threads = max(1, (os.cpu_count() or 1) // workers)
            with process_pool(workers) as pool:
                futures = submit_all(pool, _train_pass, [(str(workspace), _request_dict(request), ks, seeds, threads)
                                                         for ks, seeds in units])
                for future in as_completed(futures):
                    for outcome in future.result().values():  # a pass's configurations end together
                        outcomes.append(outcome)
                        if on_configuration is not None:
                            on_configuration(len(outcomes), len(todo), outcome)
        status = "cancelled" if "cancelled" in outcomes else "failed" if any(o.startswith("failed") for o in outcomes) \
            else "done"
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    finally:
        write_text_atomic(directory / "status", status + "\n")
        write_results(workspace, request)
        lock.close()
    return results(workspace, request)


def submit(workspace: str | os.PathLike, request: SweepRequest, *, yes: bool = False) -> dict:
    """Run the sweep in the background; → {configuration: job id, or None while it waits in the sweep's queue}.

    Local: ONE small background process, the sweep's queue (`jobs.serve_queue`, holding the sweep's lock), launches
    a job per configuration only while fewer than the job limit of them are queued or training, so a waiting
    configuration costs no process; jobs.json lists each job as it is launched (`cancel` reaches them).
    Slurm: every configuration at once, as one job array (the scheduler queues them). Follow it with `progress`."""
    from hsfm_core import jobs

    workspace = Path(workspace).resolve()
    directory, lock = _open(workspace, request, yes, busy_ok=True)
    try:
        (directory / "cancel").unlink(missing_ok=True)
        launched = _launched(workspace, request.sweep_id)
        active = {k for k, job_id in launched.items() if _job_active(workspace, job_id)}
        todo = [(k, seeds) for k, _, seeds in pending(workspace, request)
                if str(k) not in active]  # still queued or training from an earlier submit: not launched twice
        if request.executor == "slurm":  # one sbatch: a job array, one task per configuration
            for k, seeds in todo:
                _clear_unfinished(workspace, request, k, seeds)
            configurations = request.configurations()
            specs = [(request.spec(configurations[k], seeds, k), config_run_id(request, k)) for k, seeds in todo]
            records = jobs.launch_array(workspace, specs)
            launched.update({str(k): record["job_id"] for (k, _), record in zip(todo, records)})
            write_json_atomic(directory / "jobs.json", launched)
            (directory / "process.json").unlink(missing_ok=True)  # no process of ours runs it: Slurm does
            write_text_atomic(directory / "status", ("submitted" if launched else "done") + "\n")
            return launched
        if not todo and not active:
            write_text_atomic(directory / "status", "done\n")
            write_results(workspace, request)
            return {}
        configurations = request.configurations()  # checked by _open: the queue launches them unchecked

        def entry(k: int, seeds: list[int]) -> dict:
            return {"key": str(k), "run_id": config_run_id(request, k),
                    "spec": request.spec(configurations[k], seeds, k).to_dict()}

        units = passes(request, [(k, configurations[k], seeds) for k, seeds in todo], workers=_limit(workspace, request))
        entries = [{**entry(ks[0], seeds), "also": [entry(k, seeds) for k in ks[1:]]} for ks, seeds in units]
        write_json_atomic(directory / "queue.json", {"limit": _limit(workspace, request), "entries": entries})
        write_json_atomic(directory / "jobs.json", launched)
        queue = jobs.start_queue(workspace, directory, lock)
        write_text_atomic(directory / "status", "submitted\n")
        queue.stdin.write(b"go\n")  # registered: the queue may start (and write the final status)
        queue.stdin.close()
        return {**{k: launched[k] for k in sorted(active, key=int)}, **{str(k): None for k, _ in todo}}
    finally:
        lock.close()  # the queue holds the lock through its own descriptor


def _job_active(workspace, job_id: str) -> bool:
    from hsfm_core import jobs

    return jobs.job_active(workspace, job_id)


def _active_jobs(workspace, sweep_id: str) -> list[str]:
    """The sweep's queued or training jobs, each once (a pass's job is every one of its configurations' job)."""
    launched = dict.fromkeys(_launched(workspace, sweep_id).values())
    return [job_id for job_id in launched if _job_active(workspace, job_id)]


def _ended(workspace, request: SweepRequest) -> str:
    """How a sweep nobody runs any more ended, from its runs: done (every seed finished), cancelled (a cancel
    was asked for) or failed."""
    if not pending(workspace, request):
        return "done"
    return "cancelled" if (sweep_dir(workspace, request.sweep_id) / "cancel").exists() else "failed"


def progress(workspace: str | os.PathLike, sweep_id: str) -> dict:
    """{status, configurations, finished, table, request}: a sweep's state read from its runs (`status`)."""
    request = load_request(workspace, sweep_id)
    table = results(workspace, request)
    state = status(workspace, sweep_id)
    finished = int((table["seeds_done"] == table["seeds"]).sum())
    if finished == len(table):
        state = "done"
    return {"status": state, "configurations": len(table), "finished": finished, "table": table, "request": request}


def _clear_unfinished(workspace, request: SweepRequest, k: int, seeds: list[int]) -> None:
    """Remove this sweep's own unfinished attempts (failed, cancelled, killed) of configuration k, to retrain them."""
    for seed in seeds:
        path = run_dir(workspace, run_id_of(request, k, seed))
        if path.exists():
            shutil.rmtree(path)


def _launched(workspace, sweep_id: str) -> dict:
    """{configuration: job id} of a submitted sweep (jobs.json; empty when none); InputError when damaged."""
    from hsfm_core import jobs

    path = sweep_dir(workspace, sweep_id) / "jobs.json"
    if not path.exists():
        return {}
    launched = read_json(path, "sweep's job list", allow_nan=False)
    for k, job_id in launched.items():
        if not str(k).isdigit() or not isinstance(job_id, str):
            raise InputError(f"{path}: expected {{configuration: job id}}, found {k!r:.20}: {job_id!r:.40}")
        jobs.job_dir(workspace, job_id)  # a job id, not a path
    return launched


def _request_dict(request: SweepRequest) -> dict:
    return {**asdict(request), "seeds": list(request.seeds), "overrides": list(request.overrides)}


def cancel(workspace: str | os.PathLike, sweep_id: str) -> None:
    """Stop a sweep: foreground workers end their runs `cancelled` at the next epoch, the background queue
    launches nothing more, its jobs are cancelled through the job layer. Running the sweep again resumes it."""
    from hsfm_core import jobs

    directory = sweep_dir(workspace, sweep_id)
    load_request(workspace, sweep_id)
    write_text_atomic(directory / "cancel", time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    for job_id in _launched(workspace, sweep_id).values():
        if _job_active(workspace, job_id):
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
    """new | running | done | failed | cancelled, derived like a run's: the status file says what its writer
    last said; a `running` or `submitted` sweep whose process (process.json: the foreground run, or the
    background queue) is gone on this host, with none of its jobs still active, has ended — done when every
    seed finished, else cancelled (a cancel was asked for) or failed. So a SIGKILLed sweep reads failed at the
    next read. InputError when a file it needs is damaged."""
    directory = sweep_dir(workspace, sweep_id)
    path = directory / "status"
    if not path.exists():
        return "new"
    recorded = read_text(path, "sweep status").strip()
    if recorded not in STATUSES:
        raise InputError(f"{path}: {recorded!r:.40} is not a sweep status ({', '.join(STATUSES)})")
    if recorded not in ("running", "submitted"):
        return recorded
    runner = read_process(directory)
    alive = process_alive(runner)
    if alive is None and runner is None and recorded == "running":  # written before process.json existed
        alive = _lock_held(directory)
    if alive is not False and (runner is not None or recorded == "running"):
        return "running"  # alive here, or on another host (where we cannot look)
    if _active_jobs(workspace, sweep_id):
        return "running"
    return _ended(workspace, load_request(workspace, sweep_id))


def _lock_held(directory: Path) -> bool:
    """Whether some process holds the sweep's lock (only asked of a sweep without a process record)."""
    with open(directory / ".lock", "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def list_sweeps(workspace: str | os.PathLike) -> list[dict]:
    """Every sweep of a workspace: id, method, status, configurations × seeds. A sweep whose files cannot be read
    is listed with its `error` (never hiding the others)."""
    root = Path(workspace) / SWEEPS_DIR
    out = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if directory.name.startswith(".") or not directory.is_dir():
            continue
        try:
            request = load_request(workspace, directory.name)
            state = status(workspace, directory.name)
        except InputError as exc:
            out.append({"sweep_id": directory.name, "error": str(exc)})
            continue
        out.append({"sweep_id": directory.name, "method": request.method, "status": state,
                    "configurations": request.n_configurations, "seeds": list(request.seeds), "grid": request.grid})
    return out


RESULT_COLUMNS = {"config": "integer", "seeds_done": "integer", "seeds": "integer", "selected": "bool",
                  **{f"{split}_{key}_{stat}": "float" for split in ("val", "test") for key in FIGURES
                     for stat in ("mean", "std")}}


def read_results(workspace: str | os.PathLike, sweep_id: str) -> pd.DataFrame:
    """results.csv as its writer left it (`write_results`, when the sweep last stopped): one row per
    configuration with the columns of `results`. InputError naming the file, row and column otherwise."""
    from hsfm_core.data.table import read_csv_strings

    path = sweep_dir(workspace, sweep_id) / "results.csv"
    if not path.exists():
        raise InputError(f"{path}: not written yet (a sweep writes it when it stops)")
    frame = read_csv_strings(path, "sweep results")
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    out = frame.copy()
    for column, kind in RESULT_COLUMNS.items():
        values = []
        for row, text in enumerate(frame[column].astype(str).str.strip()):
            value = _cell(text, kind)
            if value is None:
                raise InputError(f"{path}: row {row + 2}, column {column}: expected {_KINDS[kind]}, found {text!r:.40}")
            values.append(value)
        out[column] = pd.Series(values, index=frame.index, dtype={"integer": "int64", "bool": bool}.get(kind, "float64"))
    over = (out["seeds_done"] > out["seeds"]).to_numpy().nonzero()[0]
    if len(over):
        raise InputError(f"{path}: row {int(over[0]) + 2}: seeds_done is more than seeds")
    return out


_KINDS = {"integer": "an integer ≥ 0", "bool": "True or False", "float": "a finite number or nothing"}


def _cell(text: str, kind: str):
    """A results.csv cell as its kind, or None when it is not one (a missing figure is NaN)."""
    if kind == "bool":
        return {"True": True, "False": False}.get(text)
    if kind == "float" and text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if kind == "integer":
        return int(value) if value.is_integer() and 0 <= value < 2**53 else None
    return value
