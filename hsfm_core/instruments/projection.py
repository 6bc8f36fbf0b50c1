"""Projection (docs/ARCHITECTURE.md §Instruments, §App): the UMAP map of a store with a run's edits."""

from __future__ import annotations

import os

import pandas as pd

from hsfm_core.errors import InputError
from hsfm_core.workspace import Workspace, as_workspace

SPLITS = ("train", "val", "test")


def project_map(workspace: Workspace | str | os.PathLike, run: dict | str | None = None, *, split: str | None = None,
                n_neighbors: int = 15, min_dist: float = 0.1) -> dict:
    """Fit (or read from the workspace's cache/) the 2-D UMAP map of the store's features together with
    a run's edited support features. What `hsfm project` prints.

    Returns:
        {"coordinates": the map's parquet file, "points": its number of rows}.
    """
    from hsfm_core.analysis.projection import ProjectionParams, project

    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 2 \
            or not 0 <= min_dist <= 1:
        raise InputError(f"n_neighbors must be an integer ≥ 2 and min_dist in [0, 1], got {n_neighbors} and {min_dist}")
    if split is not None and split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)} (or none for every row)")
    ws = as_workspace(workspace)
    rows = ws.store.rows(split) if split else None
    path = project(ws.store, ws.run(run) if run is not None else None, rows,
                   ProjectionParams(n_neighbors=n_neighbors, min_dist=min_dist))
    import pyarrow.parquet as pq

    return {"coordinates": str(path), "points": pq.read_metadata(path).num_rows}


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
        `frame.attrs["coordinates"]` is the cached parquet file (`project_map`'s answer).

    Example:
        >>> frame = project(ws, hsfm_runs[0], split="val")
        >>> frame[frame["kind"] == "edited"][["x", "y"]]
    """
    answer = project_map(workspace, run, split=split, n_neighbors=n_neighbors, min_dist=min_dist)
    frame = pd.read_parquet(answer["coordinates"])
    frame.attrs["coordinates"] = answer["coordinates"]
    return frame


def projection_figure(workspace: Workspace | str | os.PathLike, run: dict | str | None = None, *,
                      colour: str = "group", split: str | None = None, frame: pd.DataFrame | None = None):
    """The Projection page's map: every point as a light backdrop (a group-stratified sample above 50,000
    points), a run's support points before (circles) → after (diamonds) with arrows.

    Args:
        workspace, run, split: as `project`.
        colour: "group", "class", "attribute", "split", "correct" or "kind".
        frame: an already computed `project` frame (the page passes its cached one).

    Returns:
        A plotly `go.Figure`.

    Example:
        >>> projection_figure(ws, hsfm_runs[0], colour="attribute").show()
    """
    from hsfm_core.analysis.projection import backdrop_sample
    from hsfm_core.studio.figures import COLOUR_FIELDS, colour_values, projection_map

    if colour not in COLOUR_FIELDS:
        raise InputError(f"colour {colour!r}: expected one of {', '.join(COLOUR_FIELDS)}")
    ws = as_workspace(workspace)
    frame = project(ws, run, split=split) if frame is None else frame
    store = ws.store
    colours = colour_values(frame, colour, store.class_names, store.attribute_names, store.groups.names)
    return projection_map(frame, colours, backdrop_sample(frame))
