"""The public Python API (docs/ARCHITECTURE.md §Package, §Instruments), for scripts and notebooks.
`import hsfm_core` loads this module only when one of its names is first used, so importing the
package stays cheap.

The analysis instruments are the facade's own functions (`hsfm_core/instruments/`), re-exported
here unchanged: `hc.decode(ws, run)` is the dict `hsfm decode --json` prints. This module adds what
is not an instrument: opening the demo, training and sweeping, and the figures of tables.

Every function takes a workspace as a `Workspace` (from `open_workspace`) or a folder path, and a
run as a run dict (what `train_runs`, `Workspace.runs` and `Workspace.run` return) or a run id.
Bad input raises `InputError` with the file, the value and what was expected, as the CLI prints it.
Figures are plotly `go.Figure`s: `fig.show()` in a notebook, `fig.write_html(path)` anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

import hsfm_core.train as _trainer  # loaded before the package binds its API names (see hsfm_core/__init__.py)
from hsfm_core.errors import InputError
from hsfm_core.instruments.decode import concept_figure, decode
from hsfm_core.instruments.evaluation import evaluate
from hsfm_core.instruments.projection import project, projection_figure
from hsfm_core.instruments.render import render
from hsfm_core.instruments.retrieval import edit_shift, neighbors
from hsfm_core.instruments.semantics import edit_semantics
from hsfm_core.instruments.tables import group_table, summary_table
from hsfm_core.workspace import Workspace, as_workspace, open_workspace

__all__ = ["Workspace", "concept_figure", "decode", "demo_workspace", "edit_semantics", "edit_shift", "evaluate",
           "group_figure", "group_table", "neighbors", "open_workspace", "project", "projection_figure", "render",
           "summary_table", "sweep", "train_runs", "training_figure"]

Settings = Mapping[str, object] | Iterable[str] | None  # {"alpha": 2e-4} or ["alpha=2e-4"]


def demo_workspace(path: str | os.PathLike | None = None, *,
                   progress: Callable[[str, float], None] | None = None) -> Workspace:
    """Open the bundled demo workspace (SynthBirds encoded by the bundled CLIP, every method over
    seeds 0–2), building it first when it is not built yet (about 1 min on 2 CPU cores). Unlike the
    app's first launch, it starts no background process (the app's Projection map is computed later).

    Args:
        path: where the demo lives (default: the app's, `~/.cache/hsfm-studio/demo-workspace-v3`;
            `HSFM_CACHE_DIR` moves it).
        progress: called as `progress(message, fraction_done)` while building.

    Returns:
        The demo's `Workspace`.

    Example:
        >>> ws = demo_workspace(progress=lambda message, done: print(f"{done:.0%} {message}"))
    """
    from hsfm_core.demo.build import build_demo

    # default_map="none": a library call starts no background process (the app computes its map itself)
    return open_workspace(build_demo(path, progress=progress, default_map="none"))


def _text(value) -> str:
    """A setting's value as the CLI's `--set` writes it (floats by repr, sequences comma-separated)."""
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _overrides(settings: Settings) -> list[str]:
    """{"alpha": 2e-4, "c_grid": (0.1, 1.0)} → ["alpha=0.0002", "c_grid=0.1,1.0"]: the CLI's `--set` form,
    parsed and checked by the method like any command line."""
    if settings is None:
        return []
    if isinstance(settings, Mapping):
        return [f"{key}={_text(value)}" for key, value in settings.items()]
    if isinstance(settings, str):
        raise InputError(f"settings {settings!r}: give a dict or a list of 'key=value' strings")
    return [str(item) for item in settings]


def train_runs(workspace: Workspace | str | os.PathLike, method: str, *, preset: str | None = None,
               settings: Settings = None, seeds: Sequence[int] = (0,), device: str = "auto",
               progress: Callable[[int, int, list], None] | None = None) -> list[dict]:
    """Train a registered method (ERM, DFR, AFR, HSFM) on a workspace: one finished run per seed.

    Named `train_runs`, not `train`: `hsfm_core.train` is the trainer's module, which would replace a
    function of that name on the package whenever it is imported.

    Args:
        workspace: a `Workspace` or its folder.
        method: a registry name: "erm", "dfr", "afr" or "hsfm" (`hsfm train --help` lists them).
        preset: a named preset of the method (HSFM: "waterbirds", "celeba", …, or "auto"); default: the
            method's own choice for this store, recorded with its reason in each run's config.
        settings: overrides by field name or alias, e.g. {"alpha": 2e-4, "eta": 0.1} (HSFM).
        seeds: one run per seed; ≥ 3 seeds give a run group with mean ± std.
        device: "auto" (CUDA when present), "cpu" or "cuda[:N]" (torch methods).
        progress: called as `progress(epoch, epochs, entries)` after each epoch (one history entry per seed).

    Returns:
        The new runs, as `Workspace.runs` lists them (metrics on val and test included).

    Example:
        >>> runs = train_runs(ws, "hsfm", settings={"alpha": 2e-4, "eta": 0.1}, seeds=[0, 1, 2])
        >>> [r["metrics"]["test"]["wga"] for r in runs]
    """
    from hsfm_core.runs import find_run

    ws = as_workspace(workspace)
    trained = _trainer.train(ws.path, method, preset=preset, overrides=_overrides(settings), seeds=seeds,
                             device=device, progress=progress)
    return [find_run(ws.path, t.run_id) for t in trained]


def sweep(workspace: Workspace | str | os.PathLike, method: str, grid: Mapping[str, Sequence], *,
          seeds: Sequence[int] = (0, 1, 2), preset: str | None = None, settings: Settings = None,
          device: str = "auto", max_parallel: int | None = None,
          on_configuration: Callable[[int, int, str], None] | None = None, yes: bool = False) -> pd.DataFrame:
    """A validation sweep: every grid configuration × every seed as an ordinary run, here and now
    (in `max_parallel` worker processes), then its results table. Rerunning resumes it.

    Selection reads validation only (mean val worst-group accuracy; ties: val adjusted average, then
    grid order); test figures are reported, never used to select. The workers are spawned processes,
    so a script calls `sweep` under `if __name__ == "__main__":`.

    Args:
        workspace: a `Workspace` or its folder.
        method: a registry name.
        grid: setting name (or alias) → the values to try, e.g. {"alpha": [5e-5, 2e-4], "eta": [0.1, 1]}.
        seeds: the seeds of each configuration.
        preset, settings: the base preset and fixed overrides of every configuration (as in `train_runs`).
        device: as in `train_runs`.
        max_parallel: configurations training at once (default: the workspace's job limit, 2).
        on_configuration: called as `on_configuration(done, total, status)` as each configuration ends.
        yes: run a grid larger than the workspace's limit (`jobs/settings.json` max_sweep_runs, default 500 runs).

    Returns:
        One row per configuration: its settings, seeds done, val and test `*_mean` / `*_std` figures
        (fractions), run ids, and `selected` (True on the configuration chosen on validation).

    Example:
        >>> table = sweep(ws, "hsfm", {"alpha": [5e-5, 2e-4], "eta": [0.1, 1.0]}, seeds=[0, 1, 2])
        >>> table[table["selected"]]
    """
    from hsfm_core import sweeps

    ws = as_workspace(workspace)
    if not isinstance(grid, Mapping):
        raise InputError(f"grid: expected a dict of setting → values, got {type(grid).__name__}")
    items = [f"{key}={','.join(_text(v) for v in values)}" for key, values in grid.items()]
    request = sweeps.SweepRequest(method=method, grid=sweeps.parse_grid(method, items),
                                  seeds=tuple(dict.fromkeys(int(s) for s in seeds)), preset=preset,
                                  overrides=tuple(_overrides(settings)), device=device, max_parallel=max_parallel)
    return sweeps.run(ws.path, request, on_configuration, yes=yes)


def group_figure(workspace: Workspace | str | os.PathLike, split: str = "test", runs: Sequence[dict] | None = None):
    """The Groups page's chart: per-group accuracy bars at the mean over each run group's seeds, ± one
    sample std, each run group's worst group hatched.

    Args: as `group_table`.

    Returns:
        A plotly `go.Figure`.

    Example:
        >>> group_figure(ws, "test", runs=dfr_runs + hsfm_runs).write_html("groups.html")
    """
    from hsfm_core.studio.figures import seed_accuracy_bars

    return seed_accuracy_bars(group_table(workspace, split, runs))


def training_figure(runs: dict | Sequence[dict]):
    """The Retrain page's curves from runs' history.jsonl: outer loss, validation accuracy and (feature
    editors) the median edit size per epoch, one line per seed.

    Args:
        runs: a run dict or several (e.g. one run group's runs).

    Returns:
        A plotly `go.Figure`.

    Example:
        >>> training_figure(hsfm_runs).show()
    """
    from hsfm_core.studio.figures import training_curves

    lines = []
    for run in [runs] if isinstance(runs, Mapping) else runs:
        path = Path(run["path"]) / "history.jsonl"
        if path.is_file():
            seed = run["config"].get("seed")
            lines += [{"seed": seed, **json.loads(line)} for line in path.read_text().splitlines() if line.strip()]
    columns = ["epoch", "seed", "outer_loss", "val_avg", "val_wga", "median_relative_edit"]
    return training_curves(pd.DataFrame(lines).reindex(columns=columns) if lines else pd.DataFrame(columns=columns))
