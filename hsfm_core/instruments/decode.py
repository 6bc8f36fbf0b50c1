"""Decode (docs/ARCHITECTURE.md §Instruments): a run's edits, or a Projection selection, read in
CLIP words: directions scored by cosine against a concept bank's text embeddings."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from hsfm_core.errors import InputError
from hsfm_core.workspace import Workspace, as_workspace

DEFAULT_CONTRAST = ("water background", "land background")


def vocabulary(concepts: str | os.PathLike | None = None,
               words: tuple[Sequence[str], Sequence[str]] | None = None) -> tuple[list[str], list[str]]:
    """(concepts, categories) from a concept file (default: the bundled one) or given in memory as
    (concepts, categories) — the Decode page's edited vocabulary. At least two, no duplicates."""
    from hsfm_core.analysis.decode import read_concepts

    if concepts is not None and words is not None:
        raise InputError("give a concept file or a vocabulary, not both")
    if words is None:
        return read_concepts(concepts)
    names, categories = ([str(x).strip() for x in part] for part in words)
    if len(names) != len(categories):
        raise InputError(f"vocabulary: {len(names)} concepts but {len(categories)} categories")
    kept = [(c, k or "custom") for c, k in zip(names, categories) if c]
    repeated = sorted({c for c, _ in kept if [x for x, _ in kept].count(c) > 1})
    if repeated or len(kept) < 2:
        raise InputError("the vocabulary needs at least two concepts and no duplicates"
                         + (f" (repeated: {', '.join(repeated)})" if repeated else ""))
    return [c for c, _ in kept], [k for _, k in kept]


def concept_bank(workspace: Workspace | str | os.PathLike, concepts: str | os.PathLike | None = None, *,
                 words: tuple[Sequence[str], Sequence[str]] | None = None,
                 bridge: Workspace | str | os.PathLike | None = None):
    """(ConceptBank, map of directions into CLIP space, text encoder record) for the store: the one
    place a bank is built. InputError when the store cannot be decoded (not CLIP and no bridge)."""
    from hsfm_core.analysis.decode import clip_space_map, encode_concepts

    ws = as_workspace(workspace)
    to_clip, text_encoder = clip_space_map(ws.store, as_workspace(bridge).store if bridge is not None else None)
    bank = encode_concepts(text_encoder, *vocabulary(concepts, words), cache_dir=ws.store.path / "cache")
    return bank, to_clip, text_encoder


def _contrast(bank, contrast) -> tuple[str, str]:
    contrast = tuple(contrast)
    if len(contrast) != 2:
        raise InputError(f"contrast {contrast!r}: expected (positive, negative)")
    missing = [c for c in contrast if c not in bank.concepts]
    if missing:
        raise InputError(f"contrast concept(s) {', '.join(map(repr, missing))} are not in the concept bank "
                         f"({len(bank.concepts)} concepts); add them to the vocabulary or choose others")
    return contrast


def decode(workspace: Workspace | str | os.PathLike, run: dict | str, *, concepts: str | os.PathLike | None = None,
           words: tuple[Sequence[str], Sequence[str]] | None = None, top: int = 10,
           contrast: tuple[str, str] = DEFAULT_CONTRAST, bridge: Workspace | str | os.PathLike | None = None,
           support: Sequence[int] | None = None, diagnostics: bool = True) -> dict:
    """Read a feature editor's edits in words: each class's mean edit Δ = after − before (and each
    support example's) scored by cosine against CLIP text concepts, with a named contrast.

    Args:
        workspace: a `Workspace` in a CLIP joint space (or give `bridge`).
        run: an HSFM run (a run with a support set), as a dict or id.
        concepts: a concept file (default: the bundled `assets/concepts.txt`); or `words`.
        words: the vocabulary in memory, (concepts, categories).
        top: how many concepts to list per direction.
        contrast: (positive, negative): the contrast is cos(Δ, positive) − cos(Δ, negative).
        bridge: a CLIP store of the same images, for stores that are not in a CLIP space (ResNet-50).
        support: also score the mean edit of these support examples (→ "selection").
        diagnostics: add "edit_diagnostics" (a nearest-neighbour search over the store; a view that
            already shows them passes False).

    Returns:
        {"run", "concepts" (bank size), "text_encoder", "contrast": {positive, negative},
        "per_class": [{class, name, n, top: [{concept, category, cosine}], contrast}],
        "per_example": [{support, row, class, top, contrast}], "selection" (with `support`),
        "edit_diagnostics": {… summary, "warning", "per_example": {…}}} — the diagnostics say how far
        the edits moved and whether they left the data (then the readings are extrapolations).
        This dict is `hsfm decode --json`.

    Example:
        >>> for c in decode(ws, hsfm_runs[0])["per_class"]:
        ...     print(c["name"], [t["concept"] for t in c["top"][:3]], round(c["contrast"], 2))
    """
    from hsfm_core.analysis.decode import decode_edit_selection, decode_run
    from hsfm_core.instruments.retrieval import edit_diagnostics

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"top must be an integer ≥ 1, got {top!r}")
    ws = as_workspace(workspace)
    run = ws.run(run)
    tensors = ws.support(run)
    bank, to_clip, text_encoder = concept_bank(ws, concepts, words=words, bridge=bridge)
    contrast = _contrast(bank, contrast)
    result = decode_run(ws.store, tensors, bank, to_clip, ws.store.class_names, top, contrast)
    out = {"run": run["run_id"], "concepts": len(bank.concepts), "text_encoder": text_encoder, **result}
    if support is not None:
        out["selection"] = decode_edit_selection(tensors, list(support), bank, to_clip, top, contrast)
    if diagnostics:
        out["edit_diagnostics"] = edit_diagnostics(ws, run)
    return out


def describe_selection(workspace: Workspace | str | os.PathLike, rows: Sequence[int], *,
                       concepts: str | os.PathLike | None = None,
                       words: tuple[Sequence[str], Sequence[str]] | None = None, top: int = 10,
                       bridge: Workspace | str | os.PathLike | None = None) -> dict:
    """What sets a set of store rows apart (a Projection selection): per class present, the concepts
    of "selection mean − class mean" of the original features.

    Returns:
        {"per_class": [{class, name, n, top: [{concept, category, cosine}]}]}.
    """
    from hsfm_core.analysis.decode import describe_selection as describe

    ws = as_workspace(workspace)
    rows = np.asarray(rows, dtype=np.int64)
    n = ws.store.manifest["n_rows"]
    if rows.ndim != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= n:
        raise InputError(f"rows: expected a non-empty list of store rows in 0..{n - 1}")
    bank, to_clip, _ = concept_bank(ws, concepts, words=words, bridge=bridge)
    described = describe(ws.store, rows, bank, to_clip, top=top)
    for entry in described["per_class"]:
        entry["name"] = ws.store.class_names[entry["class"]]
    return described


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
