"""A workspace = one feature store + `runs/` + `cache/` in the same directory (docs/ARCHITECTURE.md §Workspace).

`Workspace` is what every instrument of the facade (`hsfm_core/instruments/`, docs/ARCHITECTURE.md
§Instruments) takes: the opened store and the runs beside it, with the one rule for resolving a run
against the store. This module also finds the workspace the app should open and summarises it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import pandas as pd

from hsfm_core.data.table import SPLITS
from hsfm_core.errors import InputError

if TYPE_CHECKING:
    from hsfm_core.features import FeatureStore

WORKSPACE_ENV = "HSFM_WORKSPACE"


def workspace_from_args(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Path | None:
    """`--workspace DIR` after `streamlit run app.py --`, else $HSFM_WORKSPACE, else None."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workspace")
    args, _ = parser.parse_known_args(list(argv))
    chosen = args.workspace or environ.get(WORKSPACE_ENV)
    return Path(chosen).expanduser() if chosen else None


def group_count_table(store) -> pd.DataFrame:
    """Rows = groups, columns = the store's splits, values = counts (from the manifest)."""
    counts = store.manifest["group_counts"]
    table = pd.DataFrame({s: counts[s] for s in SPLITS if s in counts}, index=store.groups.names)
    table.index.name = "group"
    return table


@dataclass(frozen=True)
class Workspace:
    """One workspace: its feature store, and the runs and run groups found beside it.

    `runs` and `run_groups` are read from disk on every access (a run finished by a job shows up at
    once); runs trained on another store (a store replaced with `--overwrite` keeps its runs/) are
    left out, as in the app.
    """

    path: Path
    store: "FeatureStore"

    def read_runs(self) -> tuple[list[dict], list[tuple[str, str]]]:
        """(every readable run trained on this store, in run-id order; (run id, reason) of the runs whose
        files cannot be read — named, never hiding the others)."""
        from hsfm_core.runs import list_runs

        unreadable: list = []
        runs = [r for r in list_runs(self.path, unreadable=unreadable)
                if r["config"].get("store_hash") in (None, self.store.content_hash)]
        return runs, unreadable

    @property
    def runs(self) -> list[dict]:
        """Every run trained on this store, in run-id order: dicts with run_id, path, status, method,
        config and metrics ({split: figures}, fractions in [0, 1])."""
        return self.read_runs()[0]

    @property
    def run_groups(self) -> list:
        """The runs grouped by everything but their seed (`analysis.seeds.RunGroup`: name, method, runs)."""
        from hsfm_core.analysis.seeds import run_groups

        return run_groups(self.runs)

    def run(self, run: dict | str) -> dict:
        """One run, by id or as a run dict, refused (InputError) when it was trained on another store."""
        from hsfm_core.runs import check_run_fits_store, find_run

        if isinstance(run, str):
            run = find_run(self.path, run)
        elif not isinstance(run, Mapping) or "run_id" not in run or "path" not in run:
            raise InputError(f"run {run!r}: expected a run id or a run dict (from Workspace.runs or train_runs)")
        check_run_fits_store(run, self.store)
        return run

    def support(self, run: dict | str) -> dict:
        """A feature editor's support tensors (before, after, indices, labels), checked against the store."""
        from hsfm_core.runs import load_support

        return load_support(self.run(run), self.store)

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
    from hsfm_core.features import FeatureStore

    path = Path(path).expanduser().resolve()
    return Workspace(path, FeatureStore.open(path))


def as_workspace(workspace: "Workspace | str | os.PathLike") -> Workspace:
    """A `Workspace` as it is, or a folder opened as one: what every instrument accepts."""
    return workspace if isinstance(workspace, Workspace) else open_workspace(workspace)
