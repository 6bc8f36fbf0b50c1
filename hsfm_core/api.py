"""The public Python API (docs/ARCHITECTURE.md §Package): thin functions over the modules that do the
work, for scripts and notebooks. `import hsfm_core` loads this module only when one of its names is
first used, so importing the package stays cheap.

Every function takes a workspace as a `Workspace` (from `open_workspace`) or a folder path, and a
run as a run dict (what `train_runs`, `Workspace.runs` and `Workspace.run` return) or a run id.
Bad input raises `InputError` with the file, the value and what was expected, as the CLI prints it.
Figures are plotly `go.Figure`s: `fig.show()` in a notebook, `fig.write_html(path)` anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

import hsfm_core.train as _trainer  # loaded before the package binds its API names (see hsfm_core/__init__.py)
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore

Settings = Mapping[str, object] | Iterable[str] | None  # {"alpha": 2e-4} or ["alpha=2e-4"]


@dataclass(frozen=True)
class Workspace:
    """One workspace: its feature store, and the runs and run groups found beside it.

    `runs` and `run_groups` are read from disk on every access (a run finished by a job shows up at
    once); runs trained on another store (a store replaced with `--overwrite` keeps its runs/) are
    left out, as in the app.
    """

    path: Path
    store: FeatureStore

    @property
    def runs(self) -> list[dict]:
        """Every run trained on this store, in run-id order: dicts with run_id, path, status, method,
        config and metrics ({split: figures}, fractions in [0, 1])."""
        from hsfm_core.runs import list_runs

        return [r for r in list_runs(self.path) if r["config"].get("store_hash") in (None, self.store.content_hash)]

    @property
    def run_groups(self) -> list:
        """The runs grouped by everything but their seed (`analysis.seeds.RunGroup`: name, method, runs)."""
        from hsfm_core.analysis.seeds import run_groups

        return run_groups(self.runs)

    def run(self, run_id: str) -> dict:
        """One run by id, refused when it was trained on another store."""
        from hsfm_core.runs import check_run_fits_store, find_run

        run = find_run(self.path, run_id)
        check_run_fits_store(run, self.store)
        return run

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r}, {self.store.manifest['n_rows']} rows, {len(self.runs)} runs)"


def open_workspace(path: str | os.PathLike) -> Workspace:
    """Open a workspace: a feature store with its runs/ beside it.

    Args:
        path: the workspace folder (written by `hsfm extract`, `hsfm import` or `demo_workspace`).

    Returns:
        A `Workspace` with `.store` (the memory-mapped `FeatureStore`), `.runs` and `.run_groups`.

    Raises:
        InputError: the folder holds no store, or its manifest or data files are corrupt.

    Example:
        >>> ws = open_workspace("ws/waterbirds-vitb32")
        >>> ws.store.groups.names, len(ws.runs)
    """
    path = Path(path).expanduser().resolve()
    return Workspace(path, FeatureStore.open(path))


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


def _workspace(workspace: Workspace | str | os.PathLike) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else open_workspace(workspace)


def _run(ws: Workspace, run: dict | str) -> dict:
    if isinstance(run, str):
        return ws.run(run)
    from hsfm_core.runs import check_run_fits_store

    check_run_fits_store(run, ws.store)
    return run


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

    ws = _workspace(workspace)
    trained = _trainer.train(ws.path, method, preset=preset, overrides=_overrides(settings), seeds=seeds,
                             device=device, progress=progress)
    return [find_run(ws.path, t.run_id) for t in trained]


def sweep(workspace: Workspace | str | os.PathLike, method: str, grid: Mapping[str, Sequence], *,
          seeds: Sequence[int] = (0, 1, 2), preset: str | None = None, settings: Settings = None,
          device: str = "auto", max_parallel: int | None = None,
          on_configuration: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
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

    Returns:
        One row per configuration: its settings, seeds done, val and test `*_mean` / `*_std` figures
        (fractions), run ids, and `selected` (True on the configuration chosen on validation).

    Example:
        >>> table = sweep(ws, "hsfm", {"alpha": [5e-5, 2e-4], "eta": [0.1, 1.0]}, seeds=[0, 1, 2])
        >>> table[table["selected"]]
    """
    from hsfm_core import sweeps

    ws = _workspace(workspace)
    if not isinstance(grid, Mapping):
        raise InputError(f"grid: expected a dict of setting → values, got {type(grid).__name__}")
    items = [f"{key}={','.join(_text(v) for v in values)}" for key, values in grid.items()]
    request = sweeps.SweepRequest(method=method, grid=sweeps.parse_grid(method, items),
                                  seeds=tuple(dict.fromkeys(int(s) for s in seeds)), preset=preset,
                                  overrides=tuple(_overrides(settings)), device=device, max_parallel=max_parallel)
    return sweeps.run(ws.path, request, on_configuration)


def evaluate(workspace: Workspace | str | os.PathLike, run: dict | str) -> dict:
    """A run's head evaluated on the store's val and test splits, now (the figures in its metrics.json
    were computed the same way when it finished).

    Args:
        workspace: a `Workspace` or its folder.
        run: a run dict or run id.

    Returns:
        {split: figures}: `group_acc`, `group_ci` (Wilson 95%), `group_n`, `wga`, `worst_group`,
        `avg_plain`, `avg_adjusted` (train group weights), `mean_group` — fractions in [0, 1].

    Example:
        >>> evaluate(ws, runs[0])["test"]["wga"]
    """
    from hsfm_core.heads import evaluate_head
    from hsfm_core.runs import load_head

    ws = _workspace(workspace)
    head = load_head(_run(ws, run))
    return evaluate_head(ws.store, head["weight"], head["bias"])


def group_table(workspace: Workspace | str | os.PathLike, split: str = "test",
                runs: Sequence[dict] | None = None) -> pd.DataFrame:
    """Per-group accuracy of each run group (runs that differ only in their seed): mean and sample std
    over its finished seeds.

    Args:
        workspace: a `Workspace` or its folder.
        split: "val" or "test".
        runs: the runs to include (default: every run of the workspace).

    Returns:
        One row per (run group, group): `run group`, `method`, `group` (its "class · attribute" name),
        `g`, `mean`, `std` (fractions; std is NaN with one seed), `seeds`, `worst` (the run group's worst
        group). `table.pivot(index="group", columns="run group", values="mean")` is the usual view.

    Example:
        >>> group_table(ws, "test", runs=dfr_runs + hsfm_runs)
    """
    from hsfm_core.analysis.compare import seed_accuracy_table

    ws = _workspace(workspace)
    return seed_accuracy_table(ws.store, list(ws.runs if runs is None else runs), split)


def summary_table(workspace: Workspace | str | os.PathLike, split: str = "test", runs: Sequence[dict] | None = None,
                  fmt: str | None = None) -> pd.DataFrame | str:
    """The run groups as a paper's table: worst-group accuracy and the averages, mean ± std over seeds.

    Args:
        workspace: a `Workspace` or its folder.
        split: "val" or "test".
        runs: the runs to include (default: every run of the workspace).
        fmt: None for a DataFrame, or "markdown", "latex" or "csv" for the text `hsfm table` prints.

    Returns:
        A DataFrame (one row per run group: `group`, `method`, `seeds`, and `<figure>_mean` /
        `<figure>_std` for wga, avg_adjusted, avg_plain, mean_group), or the table as text.

    Example:
        >>> print(summary_table(ws, fmt="markdown"))
    """
    from hsfm_core.analysis.seeds import paper_table, run_groups
    from hsfm_core.analysis.seeds import summary_table as table

    ws = _workspace(workspace)
    groups = run_groups(list(ws.runs if runs is None else runs))
    return table(groups, split) if fmt is None else paper_table(groups, split, fmt)


def project(workspace: Workspace | str | os.PathLike, run: dict | str | None = None, *, split: str | None = None,
            n_neighbors: int = 15, min_dist: float = 0.1) -> pd.DataFrame:
    """A 2-D UMAP map of the store's features, fitted together with a run's edited support features
    (cached in the workspace's cache/: the second call is a file read).

    Args:
        workspace: a `Workspace` or its folder.
        run: a feature editor's run (HSFM) whose support set is added before → after; None for the store only.
        split: only this split's rows (default: every row).
        n_neighbors, min_dist: UMAP's parameters.

    Returns:
        One row per point: x, y, kind ("original" / "support" / "edited"), row, support, split,
        y_class, attribute, group — and `correct` under the run's head when a run is given.

    Example:
        >>> frame = project(ws, hsfm_runs[0], split="val")
        >>> frame[frame["kind"] == "edited"][["x", "y"]]
    """
    from hsfm_core.analysis.projection import ProjectionParams
    from hsfm_core.analysis.projection import project as project_map

    ws = _workspace(workspace)
    if n_neighbors < 2 or not 0 <= min_dist <= 1:
        raise InputError(f"n_neighbors must be ≥ 2 and min_dist in [0, 1], got {n_neighbors} and {min_dist}")
    rows = ws.store.rows(split) if split else None
    path = project_map(ws.store, _run(ws, run) if run is not None else None, rows,
                       ProjectionParams(n_neighbors=n_neighbors, min_dist=min_dist))
    return pd.read_parquet(path)


def decode(workspace: Workspace | str | os.PathLike, run: dict | str, *, concepts: str | os.PathLike | None = None,
           top: int = 10, contrast: tuple[str, str] = ("water background", "land background"),
           bridge: Workspace | str | os.PathLike | None = None) -> dict:
    """Read a feature editor's edits in words: each class's mean edit Δ = after − before (and each
    support example's) scored by cosine against CLIP text concepts, with a named contrast.

    Args:
        workspace: a `Workspace` in a CLIP joint space (or give `bridge`).
        run: an HSFM run (a run with a support set).
        concepts: a concept file (default: the bundled `assets/concepts.txt`).
        top: how many concepts to list per direction.
        contrast: (positive, negative): the contrast is cos(Δ, positive) − cos(Δ, negative).
        bridge: a CLIP store of the same images, for stores that are not in a CLIP space (ResNet-50).

    Returns:
        {"per_class": [{class, name, n, top: [{concept, category, cosine}], contrast}],
        "per_example": [...], "contrast": {...}, "text_encoder": {...}, "edit_diagnostics": {...}} —
        the diagnostics say how far the edits moved and whether they left the data (then the
        readings are extrapolations).

    Example:
        >>> for c in decode(ws, hsfm_runs[0])["per_class"]:
        ...     print(c["name"], [t["concept"] for t in c["top"][:3]], round(c["contrast"], 2))
    """
    from hsfm_core.analysis.decode import clip_space_map, decode_run, encode_concepts, read_concepts
    from hsfm_core.analysis.diagnostics import run_diagnostics, warning_text
    from hsfm_core.runs import load_support

    ws = _workspace(workspace)
    if top < 1:
        raise InputError(f"top must be ≥ 1, got {top}")
    support = load_support(_run(ws, run))
    to_clip, text_encoder = clip_space_map(ws.store, _workspace(bridge).store if bridge is not None else None)
    bank = encode_concepts(text_encoder, *read_concepts(concepts), cache_dir=ws.store.path / "cache")
    result = decode_run(ws.store, support, bank, to_clip, ws.store.class_names, top, tuple(contrast))
    diagnostics = run_diagnostics(ws.store, support)
    return {**result, "text_encoder": text_encoder, "edit_diagnostics": {**diagnostics, "warning": warning_text(diagnostics)}}


def neighbors(workspace: Workspace | str | os.PathLike, run: dict | str, support: int, *, edited: bool = False,
              k: int = 16) -> pd.DataFrame:
    """The nearest real images (FAISS, cosine) to one support example of a run, original or edited.

    Args:
        workspace: a `Workspace` or its folder.
        run: an HSFM run (a run with a support set).
        support: the support example, 0 … (support size − 1).
        edited: query with the edited feature instead of the original.
        k: how many neighbours.

    Returns:
        One row per neighbour, nearest first: row (store row), cosine, the store's meta columns
        (sample_id, split, y, a, g, image_path) and `image` (the absolute path, "" when unknown).

    Example:
        >>> neighbors(ws, hsfm_runs[0], support=3, edited=True, k=8)[["cosine", "g", "image"]]
    """
    from hsfm_core.analysis.retrieval import workspace_index
    from hsfm_core.runs import load_support

    ws = _workspace(workspace)
    if k < 1:
        raise InputError(f"k must be ≥ 1, got {k}")
    tensors = load_support(_run(ws, run))
    n = len(tensors["after"])
    if not 0 <= support < n:
        raise InputError(f"support {support}: this run has support examples 0..{n - 1}")
    query = tensors["after" if edited else "before"][support].numpy()
    ids, scores = workspace_index(ws.store).search(query, k)
    found = [(int(r), float(c)) for r, c in zip(ids[0], scores[0]) if r >= 0]
    frame = ws.store.meta.iloc[[r for r, _ in found]].reset_index(drop=True)
    frame.insert(0, "cosine", [c for _, c in found])
    frame.insert(0, "row", [r for r, _ in found])
    frame["image"] = [str(ws.store.image_path(r) or "") for r, _ in found]
    return frame


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


def projection_figure(workspace: Workspace | str | os.PathLike, run: dict | str | None = None, *,
                      colour: str = "group", split: str | None = None):
    """The Projection page's map: every point as a light backdrop (a group-stratified sample above 50,000
    points), a run's support points before (circles) → after (diamonds) with arrows.

    Args:
        workspace, run, split: as `project`.
        colour: "group", "class", "attribute", "split", "correct" or "kind".

    Returns:
        A plotly `go.Figure`.

    Example:
        >>> projection_figure(ws, hsfm_runs[0], colour="attribute").show()
    """
    from hsfm_core.analysis.projection import backdrop_sample
    from hsfm_core.studio.figures import COLOUR_FIELDS, colour_values, projection_map

    if colour not in COLOUR_FIELDS:
        raise InputError(f"colour {colour!r}: expected one of {', '.join(COLOUR_FIELDS)}")
    ws = _workspace(workspace)
    frame = project(ws, run, split=split)
    store = ws.store
    colours = colour_values(frame, colour, store.class_names, store.attribute_names, store.groups.names)
    return projection_map(frame, colours, backdrop_sample(frame))


def concept_figure(decoded: dict, class_name: str | None = None):
    """The Decode page's bars: the concepts a class's mean edit points to, by cosine.

    Args:
        decoded: what `decode` returned.
        class_name: which class (default: the first class in the result).

    Returns:
        A plotly `go.Figure`.

    Example:
        >>> concept_figure(decode(ws, hsfm_runs[0]), "waterbird").show()
    """
    from hsfm_core.studio.figures import concept_bars

    per_class = decoded["per_class"]
    names = [c["name"] for c in per_class]
    if class_name is not None and class_name not in names:
        raise InputError(f"class {class_name!r}: the decoded run has {', '.join(names)}")
    chosen = per_class[names.index(class_name) if class_name is not None else 0]
    return concept_bars(chosen["top"], f"mean edit of {chosen['name']} ({chosen['n']} support examples)")


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
