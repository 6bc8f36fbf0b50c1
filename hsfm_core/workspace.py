"""A workspace = one feature store + `runs/` + `cache/` in the same directory (docs/ARCHITECTURE.md §Workspace).

This module finds the workspace the app should open and summarises it for display.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from hsfm_core.data.table import SPLITS

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
