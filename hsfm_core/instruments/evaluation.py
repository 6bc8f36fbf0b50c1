"""Evaluation (docs/ARCHITECTURE.md §Instruments, §Metrics): a run's head on val and test, and its run group."""

from __future__ import annotations

import os

from hsfm_core.workspace import Workspace, as_workspace


def evaluate(workspace: Workspace | str | os.PathLike, run: dict | str) -> dict:
    """A run's head evaluated on the store's val and test splits, now (the figures in its metrics.json
    were computed the same way when it finished).

    Args:
        workspace: a `Workspace` or its folder.
        run: a run dict or run id (refused when it was trained on another store).

    Returns:
        {split: figures}: `group_acc`, `group_ci` (Wilson 95%), `group_n`, `wga`, `worst_group`,
        `avg_plain`, `avg_adjusted` (train group weights), `mean_group` — fractions in [0, 1].

    Example:
        >>> evaluate(ws, runs[0])["test"]["wga"]
    """
    from hsfm_core.heads import evaluate_head
    from hsfm_core.runs import load_head

    ws = as_workspace(workspace)
    head = load_head(ws.run(run), ws.store)
    return evaluate_head(ws.store, head["weight"], head["bias"])


def run_group_summary(workspace: Workspace | str | os.PathLike, run: dict | str) -> dict | None:
    """The run's group (same settings, other seeds): per split, mean ± sample std of the per-group
    accuracies and the averages over its finished seeds; None when the run has no group.

    Returns:
        {"name", "run_ids", "val": aggregate, "test": aggregate}, each aggregate as
        `analysis.seeds.aggregate` gives it (`n`, `seeds`, `group_acc` {mean, std}, `wga` {mean, std}, …).
    """
    from hsfm_core.analysis.seeds import aggregate, group_key, run_groups

    ws = as_workspace(workspace)
    key = group_key(ws.run(run))
    group = next((g for g in run_groups(ws.runs) if g.key == key), None)
    if group is None:
        return None
    return {"name": group.name, "run_ids": [r["run_id"] for r in group.runs],
            **{split: aggregate(group, split) for split in ("val", "test")}}
