"""Tables (docs/ARCHITECTURE.md §Instruments, §Sweeps): runs, run groups and per-group accuracy, as
`hsfm runs`, `hsfm table`, the Groups page and `hc.group_table` / `hc.summary_table` show them."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from hsfm_core.errors import InputError
from hsfm_core.workspace import Workspace, as_workspace

SPLITS = ("val", "test")
FORMATS = ("markdown", "latex", "csv")


def _split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


def _runs(ws: Workspace, runs: Sequence[dict | str] | None) -> list[dict]:
    return ws.runs if runs is None else [ws.run(r) for r in runs]


def group_rows(runs: list[dict]) -> list[dict]:
    """Run groups (runs differing only in their seed) with mean ± std of val and test figures."""
    from hsfm_core.analysis.seeds import aggregate, run_groups

    out = []
    for group in run_groups(runs):
        row = {"group": group.name, "method": group.method, "run_ids": [r["run_id"] for r in group.runs]}
        for split in SPLITS:
            agg = aggregate(group, split)
            row["seeds"] = max(row.get("seeds", 0), agg["n"])
            row[split] = {k: agg[k] for k in ("wga", "avg_adjusted", "avg_plain", "mean_group")}
        out.append(row)
    return out


def runs_overview(workspace: Workspace | str | os.PathLike) -> dict:
    """Every run of a workspace folder with its headline figures, its run groups, and the runs that
    cannot be read (named, never hiding the others). Reads `runs/` only, so it works while the store
    is being replaced.

    Returns:
        {"runs": [{run_id, method, status, seed, test_wga, test_avg_adjusted, val_wga}],
         "groups": [{group, method, run_ids, seeds, val: {wga: {mean, std}, …}, test: {…}}],
         "unreadable": [{run_id, reason}]} — fractions in [0, 1].
    """
    from hsfm_core.runs import list_runs

    path = workspace.path if isinstance(workspace, Workspace) else workspace
    unreadable: list = []
    runs = list_runs(path, unreadable=unreadable)
    rows = []
    for r in runs:
        test = (r["metrics"] or {}).get("test") or {}
        val = (r["metrics"] or {}).get("val") or {}
        rows.append({"run_id": r["run_id"], "method": r["method"], "status": r["status"],
                     "seed": r["config"].get("seed"), "test_wga": test.get("wga"),
                     "test_avg_adjusted": test.get("avg_adjusted"), "val_wga": val.get("wga")})
    return {"runs": rows, "groups": group_rows(runs),
            "unreadable": [{"run_id": i, "reason": why} for i, why in unreadable]}


def group_table(workspace: Workspace | str | os.PathLike, split: str = "test",
                runs: Sequence[dict | str] | None = None) -> pd.DataFrame:
    """Per-group accuracy of each run group (runs that differ only in their seed): mean and sample std
    over its finished seeds.

    Args:
        workspace: a `Workspace` or its folder.
        split: "val" or "test".
        runs: the runs to include, as dicts or ids (default: every run of the workspace).

    Returns:
        One row per (run group, group): `run group`, `method`, `group` (its "class · attribute" name),
        `g`, `mean`, `std` (fractions; std is NaN with one seed), `seeds`, `worst` (the run group's worst
        group). `table.pivot(index="group", columns="run group", values="mean")` is the usual view.

    Example:
        >>> group_table(ws, "test", runs=dfr_runs + hsfm_runs)
    """
    from hsfm_core.analysis.compare import seed_accuracy_table

    ws = as_workspace(workspace)
    return seed_accuracy_table(ws.store, _runs(ws, runs), _split(split))


def summary_table(workspace: Workspace | str | os.PathLike, split: str = "test",
                  runs: Sequence[dict | str] | None = None, fmt: str | None = None) -> pd.DataFrame | str:
    """The run groups as a paper's table: worst-group accuracy and the averages, mean ± std over seeds.

    Args:
        workspace: a `Workspace` or its folder.
        split: "val" or "test".
        runs: the runs to include, as dicts or ids (default: every run of the workspace).
        fmt: None for a DataFrame, or "markdown", "latex" or "csv" for the text `hsfm table` prints.

    Returns:
        A DataFrame (one row per run group: `group`, `method`, `seeds`, and `<figure>_mean` /
        `<figure>_std` for wga, avg_adjusted, avg_plain, mean_group), or the table as text.

    Example:
        >>> print(summary_table(ws, fmt="markdown"))
    """
    from hsfm_core.analysis.seeds import paper_table, run_groups
    from hsfm_core.analysis.seeds import summary_table as table

    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"fmt {fmt!r}: expected None or one of {', '.join(FORMATS)}")
    ws = as_workspace(workspace)
    groups = run_groups(_runs(ws, runs))
    return table(groups, _split(split)) if fmt is None else paper_table(groups, split, fmt)


def accuracy_table(workspace: Workspace | str | os.PathLike, runs: Sequence[dict | str], split: str) -> pd.DataFrame:
    """Per-group accuracy of single runs with Wilson 95% intervals (the Groups page's "single runs")."""
    from hsfm_core.analysis.compare import accuracy_table as table

    ws = as_workspace(workspace)
    return table(ws.store, _runs(ws, runs), _split(split))


def averages_table(workspace: Workspace | str | os.PathLike, runs: Sequence[dict | str], split: str,
                   over_seeds: bool = True) -> pd.DataFrame:
    """The labelled averages (worst-group, plain, adjusted, mean over groups): per run group as mean ±
    std over seeds, or per single run."""
    from hsfm_core.analysis.compare import averages_table as single, seed_averages_table

    ws = as_workspace(workspace)
    chosen = _runs(ws, runs)
    return seed_averages_table(chosen, _split(split)) if over_seeds else single(ws.store, chosen, _split(split))


def predictions(workspace: Workspace | str | os.PathLike, run: dict | str, split: str) -> np.ndarray:
    """A run's predicted class for every row of `split`, in store-row order of that split."""
    from hsfm_core.analysis.compare import predictions as predict

    ws = as_workspace(workspace)
    return predict(ws.store, ws.run(run), _split(split))


def confusion(workspace: Workspace | str | os.PathLike, predicted: np.ndarray, split: str) -> pd.DataFrame:
    """Predicted class counts per group of `split` (rows: groups, columns: predicted classes)."""
    from hsfm_core.analysis.compare import confusion_by_group

    ws = as_workspace(workspace)
    return confusion_by_group(ws.store, predicted, _split(split))


def prediction_flips(workspace: Workspace | str | os.PathLike, before: np.ndarray, after: np.ndarray,
                     split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every row whose prediction changed between two runs, counts per group: fixed / broken)."""
    from hsfm_core.analysis.compare import flip_counts
    from hsfm_core.analysis.compare import prediction_flips as flips_of

    ws = as_workspace(workspace)
    flips = flips_of(ws.store, before, after, _split(split))
    return flips, flip_counts(flips, ws.store)


def train_correlation(workspace: Workspace | str | os.PathLike) -> pd.DataFrame | None:
    """Per class, the share of its training images that show its usual attribute (the shortcut the
    data teaches), or None without a train split."""
    from hsfm_core.analysis.compare import train_correlation as correlation

    return correlation(as_workspace(workspace).store)


def example_rows(workspace: Workspace | str | os.PathLike, split: str, per_group: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to `per_group` store rows of each group of `split`, drawn with `seed` (the pictures of Home and
    the Lesson)."""
    from hsfm_core.analysis.compare import example_rows as rows

    if split not in ("train", *SPLITS):
        raise InputError(f"split {split!r}: expected train, val or test")
    return rows(as_workspace(workspace).store, split, per_group, seed)
