"""Neighbours, edit shift and edit diagnostics (docs/ARCHITECTURE.md §Instruments): the nearest real
images (FAISS, cosine) to a feature before and after its edit, and how far the edits moved."""

from __future__ import annotations

import os

import numpy as np

from hsfm_core.errors import InputError
from hsfm_core.workspace import Workspace, as_workspace


def _k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an integer ≥ 1, got {k!r}")
    return int(k)


def edit_diagnostics(workspace: Workspace | str | os.PathLike, run: dict | str, example: int | None = None) -> dict:
    """How far a run's edits moved (docs/ARCHITECTURE.md §HSFM, `analysis/diagnostics.py`): the summary
    with its off-the-data `warning` (None when on the data), and `per_example` lists — or, given
    `example`, that support example's own figures in place of the lists."""
    from hsfm_core.analysis.diagnostics import run_diagnostics, warning_text

    ws = as_workspace(workspace)
    result = run_diagnostics(ws.store, ws.support(run))
    summary = {k: v for k, v in result.items() if k != "per_example"} | {"warning": warning_text(result)}
    if example is None:
        return summary | {"per_example": result["per_example"]}
    return summary | {k: values[example] for k, values in result["per_example"].items()}


def neighbors(workspace: Workspace | str | os.PathLike, run: dict | str | None = None, support: int | None = None, *,
              row: int | None = None, edited: bool = False, k: int = 16, exclude_query: bool = False) -> dict:
    """The nearest real images (FAISS, cosine) to one support example of a run (original or edited
    feature), or to one store row's feature.

    Args:
        workspace: a `Workspace` or its folder.
        run, support: a run with a support set and the support example, 0 … (support size − 1).
        row: instead of a support example, a store row (its own feature; `edited` uses its edited
            feature when `run` has it in its support set).
        edited: query with the edited feature instead of the original.
        k: how many neighbours.
        exclude_query: leave the query's own store row out of its neighbours.

    Returns:
        {"run", "support", "row" (the query's store row, −1 when unknown), "edited", "neighbors":
        [{row, cosine, sample_id, split, y, a, g, image_path, image}] nearest first ("image": the
        absolute path, "" when unknown), "edit_diagnostics" (the support example's, with a run)}.
        This dict is `hsfm neighbors --json`; `pandas.DataFrame(result["neighbors"])` tabulates it.

    Example:
        >>> pd.DataFrame(neighbors(ws, hsfm_runs[0], support=3, edited=True, k=8)["neighbors"])
    """
    from hsfm_core.analysis.retrieval import workspace_index

    ws = as_workspace(workspace)
    k = _k(k)
    if (support is None) == (row is None):
        raise InputError("give exactly one query: a support example of a run, or a store row")
    run = ws.run(run) if run is not None else None
    tensors = ws.support(run) if run is not None else None
    n_rows = ws.store.manifest["n_rows"]
    example = support
    if support is not None:
        if tensors is None:
            raise InputError("a support example needs the run it belongs to")
        n = len(tensors["after"])
        if isinstance(support, bool) or not isinstance(support, (int, np.integer)) or not 0 <= support < n:
            raise InputError(f"support {support}: this run has support examples 0..{n - 1}")
        query_row = int(tensors["indices"][support])
        query = tensors["after" if edited else "before"][support].numpy()
    else:
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= row < n_rows:
            raise InputError(f"row {row}: the store has rows 0..{n_rows - 1}")
        query_row = int(row)
        query = np.asarray(ws.store.features[query_row], dtype=np.float32)
        if edited:
            rows = tensors["indices"].tolist() if tensors is not None else []
            if query_row not in rows:
                raise InputError(f"row {query_row} is not a support example of "
                                 f"{run['run_id'] if run else 'any run'}, so it has no edited feature")
            example = rows.index(query_row)
            query = tensors["after"][example].numpy()
    ids, scores = workspace_index(ws.store).search(query, k + 1 if exclude_query else k)
    found = [(int(r), float(c)) for r, c in zip(ids[0], scores[0]) if r >= 0 and not (exclude_query and r == query_row)]
    meta = ws.store.meta
    out = {"run": run["run_id"] if run else None, "support": example, "row": query_row, "edited": bool(edited),
           "neighbors": [{"row": r, "cosine": c,
                          **{key: (v.item() if hasattr(v, "item") else v) for key, v in meta.iloc[r].items()},
                          "image": str(ws.store.image_path(r) or "")} for r, c in found[:k]]}
    if run is not None and example is not None:
        out["edit_diagnostics"] = edit_diagnostics(ws, run, example)
    return out


def edit_shift(workspace: Workspace | str | os.PathLike, run: dict | str, *, k: int = 16) -> dict:
    """For each support example with a store row, the share of its k nearest real neighbours whose
    spurious attribute differs from its own, for the original and the edited feature; per class and
    overall (`analysis.retrieval.edit_shift`). Support examples without a store row (an imported
    reference run's) are left out and counted; a run with none is refused.

    Args:
        workspace: a `Workspace` or its folder.
        run: a run with a support set (HSFM), as a dict or id.
        k: how many neighbours of each feature are counted.

    Returns:
        {"run", "k", "n_support", "left_out", "overall": {before, after, change}, "class_<c>": {…},
        "per_example": {before: [...], after: [...]}, "edit_diagnostics"} — fractions in [0, 1].
        This dict is `hsfm edit-shift --json`.

    Example:
        >>> edit_shift(ws, hsfm_runs[0], k=16)["overall"]["change"]
    """
    from hsfm_core.analysis.retrieval import edit_shift as shift
    from hsfm_core.analysis.retrieval import workspace_index

    ws = as_workspace(workspace)
    k = _k(k)
    run = ws.run(run)
    tensors = ws.support(run)
    known = tensors["indices"].numpy() >= 0
    if not known.any():
        raise InputError(f"run {run['run_id']} has support examples without store rows (an imported reference run): "
                         f"their own attribute is unknown")
    result = shift(workspace_index(ws.store), ws.store.meta["a"].to_numpy(), tensors["indices"].numpy()[known],
                   tensors["labels"].numpy()[known], tensors["before"].numpy()[known],
                   tensors["after"].numpy()[known], k=k)
    return {"run": run["run_id"], **result, "left_out": int((~known).sum()), "edit_diagnostics": edit_diagnostics(ws, run)}
