"""Semantics (docs/ARCHITECTURE.md §Instruments, §Semantics): what a run group's edits encode, per
class, across seeds, against a null — `hsfm semantics` and `hc.edit_semantics`."""

from __future__ import annotations

import os
from typing import Sequence

from hsfm_core.errors import InputError
from hsfm_core.workspace import Workspace, as_workspace

DEFAULT_CONTRAST = ("water background", "land background")


def edited_groups(workspace: Workspace | str | os.PathLike) -> list:
    """The run groups whose runs carry edited features (a support set) and are finished, oldest
    configuration first: what semantics can read. `RunGroup`s of `analysis.seeds`."""
    ws = as_workspace(workspace)
    groups = []
    for group in ws.run_groups:
        done = [r for r in group.runs if r["status"] == "done" and (r["path"] / "support.safetensors").is_file()]
        if done:
            groups.append(type(group)(group.key, group.method, group.name, done))
    return sorted(groups, key=lambda g: max(r["run_id"].split("-", 1)[-1] for r in g.runs))


def resolve_group(workspace: Workspace | str | os.PathLike, group: str | None = None,
                  runs: Sequence[dict | str] | None = None) -> list[dict]:
    """The runs to read: the finished seeds of the run group named `group` (as `hsfm runs` and the
    pickers name it), or the listed runs, or — given neither — the newest edited configuration's."""
    ws = as_workspace(workspace)
    if group is not None and runs is not None:
        raise InputError("give a run group or a list of runs, not both")
    if runs is not None:
        if isinstance(runs, (str, dict)):
            runs = [runs]
        return [ws.run(r) for r in runs]
    groups = edited_groups(ws)
    if not groups:
        raise InputError(f"{ws.path} has no finished run with edited features (train HSFM first)")
    if group is None:
        return groups[-1].runs
    named = [g for g in groups if g.name == group]
    if len(named) != 1:
        known = "; ".join(sorted({g.name for g in groups}))
        raise InputError(f"run group {group!r}: " + ("more than one group has that name" if named else "no such group "
                         "with finished edited runs") + f" (groups: {known}); pass --runs instead")
    return named[0].runs


def edit_semantics(workspace: Workspace | str | os.PathLike, runs: Sequence[dict | str] | str | None = None, *,
                   group: str | None = None, concepts: str | os.PathLike | None = None,
                   words: tuple[Sequence[str], Sequence[str]] | None = None, contrast: tuple[str, str] = DEFAULT_CONTRAST, null_draws: int = 1000, alpha: float = 0.05,
                   seed: int = 0, scoring: str = "centred", bridge: Workspace | str | os.PathLike | None = None) -> dict:
    """What a run group's edits encode, with evidence: per class, the cross-seed agreement of the mean
    edit, its alignment with the class's attribute direction (the paper's claim) and a verdict, the
    concepts it reads as (centred bank, class names projected out) with q-values, the named contrast,
    a sparse few-concept explanation — each against a null of random within-class differences of real
    training features rescaled to the edits' norms.

    Args:
        workspace: a `Workspace` or its folder.
        runs: the seeds of one configuration (run dicts or ids); or give `group`; neither: the newest
            edited configuration.
        group: a run group's name, as `hsfm runs` lists it.
        concepts: a concept file (default: the bundled `assets/concepts.txt`); or `words`.
        words: the vocabulary in memory, (concepts, categories) — the Decode page's edited one.
        contrast: (positive, negative) concepts of the bank.
        null_draws: null draws per run and class (≥ 100).
        alpha: the level of verdicts and q-values.
        seed: seeds the null.
        scoring: "centred" (default) or "raw" cosines.
        bridge: a CLIP store of the same images, for stores outside CLIP space (the attribute alignment
            needs none).

    Returns:
        The dict `hsfm semantics --json` prints: {"scoring", "null_draws", "alpha", "runs", "seeds",
        "verdict_rule", "text", "per_class": [{class, name, seeds, verdict, verdict_rule,
        attribute_alignment, mean_edit_agreement, contrast, concepts, sparse, explained_share, …}],
        "per_example": […]} (docs/ARCHITECTURE.md §Semantics).

    Example:
        >>> result = edit_semantics(ws, group="HSFM · tuned on validation")
        >>> [(c["name"], c["verdict"]) for c in result["per_class"]]
    """
    from hsfm_core.analysis.semantics import edit_semantics as read

    ws = as_workspace(workspace)
    chosen = resolve_group(ws, group, runs)
    return read(ws.store, chosen, concepts=concepts, words=words, bridge_store=as_workspace(bridge).store if bridge else None,
                contrast=tuple(contrast), null_draws=null_draws, alpha=alpha, seed=seed, scoring=scoring)
