"""Import the feature caches researchers already have into a feature store (docs/ARCHITECTURE.md §Store).

- `reference`: the original HSFM code's `{train,val,test}_features.pt`, each
  `torch.save({"features": N×d, "labels": N, "envs": N})` with envs = group = A·label + attribute
  (usually only val and test exist), plus its best run `hsfm_best.pt` when present (`theta`
  {weight, bias}, `support_emb`, `support_init`, `support_labels`, `init_indices`, `epoch`, val
  figures), which becomes a run of the workspace.
- `dfr`: DFR's `.npz` with `embeddings_{split}`, `y_{split}`, `g_{split}`, `p_{split}` (p = the
  attribute, g = A·y + p).

Classes and attributes (any C ≥ 2, A ≥ 1; docs/ARCHITECTURE.md §Groups), over all splits together:
- C: `len(class_names)` when given, else max(2, largest label + 1) with every label below the
  largest present (`data.table.label_names`, the generic CSV's rule).
- A, DFR: `len(attribute_names)` when given, else from `p` by the same rule; then g = A·y + p is
  checked row by row.
- A, reference: the files hold no attribute, only envs. `len(attribute_names)` when given, else
  inferred as (largest envs + 1) / C — right whenever the last group (last class, last attribute)
  has a row. Every row must then satisfy A·label ≤ envs < A·(label + 1); a row that does not is
  an error naming it and how A was obtained, so a wrong inference never passes silently: give the
  attribute names to set A.

Loading is `torch.load(weights_only=True)` / `np.load(allow_pickle=False)`: nothing arbitrary
is unpickled. Imported stores have no images (`image_path` is empty) and are not assumed to be
in a CLIP space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from hsfm_core.data.table import COLUMNS, SPLITS, label_names
from hsfm_core.errors import InputError
from hsfm_core.features.store import FeatureStore, write_store
from hsfm_core.groups import Groups
from hsfm_core.safe_io import read_npz, read_torch_weights

REFERENCE_RUN_FILE = "hsfm_best.pt"
CLASS_OPTION = "class names (--class-names)"
ATTRIBUTE_OPTION = "attribute names (--attribute-names)"


@dataclass
class _Part:
    """One split of an imported cache: features, labels, and the attribute (DFR) or group (reference)."""

    split: str
    source: str  # the file (and split) that error messages name
    features: np.ndarray
    y: np.ndarray
    a: np.ndarray | None = None
    g: np.ndarray | None = None


def _check_part(part: _Part) -> None:
    """Shapes, finiteness, and whole non-negative label values, before any counting."""
    source, features = part.source, part.features
    if features.ndim != 2:
        raise InputError(f"{source}: features must be N × d, got shape {features.shape}")
    n = len(features)
    if n == 0:
        raise InputError(f"{source}: empty split (0 rows)")
    for name, arr in (("labels", part.y), ("attribute", part.a), ("groups", part.g)):
        if arr is None:
            continue
        if arr.shape != (n,):
            raise InputError(f"{source}: {name} has shape {arr.shape}, expected ({n},) to match the features")
        arr = _whole(arr, source, name)
        bad = np.flatnonzero(arr < 0)
        if len(bad):
            raise InputError(f"{source}: row {bad[0]}: {name} value {arr[bad[0]]} is negative")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise InputError(f"{source}: row {np.flatnonzero(~finite)[0]}: features contain NaN or inf "
                         f"({int((~finite).sum())} row(s) in all)")
    _check_scale(features, source)


# Training computes in float32 (max 3.4e38): logits, squared norms, Gram matrices and Adam's second moments
# square the features and sum them over d dimensions and many rows. Features whose rows' norms exceed
# sqrt(float32 max) / 1e3 ≈ 1.8e16 leave those sums no room (±3e38 features made HSFM's head NaN, issue 26);
# real backbones' features have norms of 1 to 1e3.
MAX_FEATURE_NORM = float(np.sqrt(np.finfo(np.float32).max)) / 1e3


def _check_scale(features: np.ndarray, source: str, chunk: int = 65_536) -> None:
    """Refuse features whose scale would overflow float32 arithmetic while training (row norms in float64)."""
    for start in range(0, len(features), chunk):
        block = np.asarray(features[start : start + chunk], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        if (norms > MAX_FEATURE_NORM).any():
            i = int(np.argmax(norms > MAX_FEATURE_NORM))
            raise InputError(f"{source}: row {start + i}: a feature vector of norm {norms[i]:.3g} would overflow "
                             f"float32 arithmetic while training (norms must stay below {MAX_FEATURE_NORM:.2g}; "
                             f"real features have norms of about 1 to 1000): rescale the features before importing")


def _where(parts: list[_Part], what: str):
    """Index into the concatenated parts → 'file [split]: row i: what'."""
    starts = np.cumsum([0] + [len(p.y) for p in parts])

    def where(i: int) -> str:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return f"{parts[k].source}: row {i - starts[k]}: {what}"
    return where


def _class_names(parts: list[_Part], class_names: Sequence[str] | None, origin: str) -> tuple[str, ...]:
    y = np.concatenate([p.y for p in parts]).astype(np.int64)
    return label_names(y, class_names, "class", _where(parts, "label"), f"{origin}: the label array", CLASS_OPTION)


def _dfr_groups(parts: list[_Part], class_names, attribute_names, origin: str) -> Groups:
    """C from y, A from p (or the names given); then g = A·y + p on every row."""
    classes = _class_names(parts, class_names, origin)
    a = np.concatenate([p.a for p in parts]).astype(np.int64)
    attributes = label_names(a, attribute_names, "attribute", _where(parts, "attribute (p)"),
                             f"{origin}: the attribute array (p)", ATTRIBUTE_OPTION)
    groups = Groups(classes, attributes)
    for part in parts:
        bad = np.flatnonzero(part.g != groups.group_of(part.y, part.a))
        if len(bad):
            i = bad[0]
            raise InputError(f"{part.source}: row {i}: group {part.g[i]} is not {groups.n_attributes}·label + "
                             f"attribute (label {part.y[i]}, attribute {part.a[i]})")
    return groups


def _reference_groups(parts: list[_Part], class_names, attribute_names, origin: str) -> Groups:
    """C from the labels (or the names given); A given, or inferred from the largest envs; then
    attribute = envs − A·label on every row, which must lie in 0 … A−1."""
    classes = _class_names(parts, class_names, origin)
    if attribute_names is not None:
        attributes = tuple(str(n) for n in attribute_names)
        how = f"{len(attributes)} attribute names were given"
    else:
        g = np.concatenate([p.g for p in parts]).astype(np.int64)
        top = int(np.argmax(g))
        where_top = _where(parts, "envs")(top).rsplit(": envs", 1)[0]
        if (int(g[top]) + 1) % len(classes):
            raise InputError(f"{origin}: cannot infer the number of attributes A: envs = A·label + attribute, and "
                             f"the largest envs, {g[top]} ({where_top}), + 1 is not a multiple of the "
                             f"{len(classes)} classes; give the {ATTRIBUTE_OPTION} to set A")
        count = (int(g[top]) + 1) // len(classes)
        attributes = tuple(f"attribute {k}" for k in range(count))
        how = f"inferred as (largest envs {g[top]}, {where_top}, + 1) / {len(classes)} classes"
    groups = Groups(classes, attributes)
    for part in parts:
        part.a = part.g - groups.n_attributes * part.y
        bad = np.flatnonzero((part.a < 0) | (part.a >= groups.n_attributes))
        if len(bad):
            i = bad[0]
            raise InputError(f"{part.source}: row {i}: envs {part.g[i]} with label {part.y[i]} is not A·label + "
                             f"attribute for A = {groups.n_attributes} attributes ({how}); give the "
                             f"{ATTRIBUTE_OPTION} if A is wrong ({len(bad)} bad row(s) in this file)")
    return groups


def _assemble(parts: list[_Part], groups: Groups) -> tuple[np.ndarray, pd.DataFrame]:
    dims = {p.features.shape[1] for p in parts}
    if len(dims) != 1:
        raise InputError(f"splits have different feature dimensions: "
                         f"{', '.join(f'{p.split} {p.features.shape[1]}' for p in parts)}")
    features = np.concatenate([p.features for p in parts])
    split = np.concatenate([[p.split] * len(p.features) for p in parts])
    y = np.concatenate([p.y for p in parts]).astype(np.int64)
    a = np.concatenate([p.a for p in parts]).astype(np.int64)
    within = np.concatenate([np.arange(len(p.features)) for p in parts])
    meta = pd.DataFrame({
        "row_id": np.arange(len(features), dtype=np.int64),
        "sample_id": [f"{s}:{i}" for s, i in zip(split, within)],  # position within the source split
        "split": split.astype(str),
        "y": y,
        "a": a,
        "g": groups.group_of(y, a),
        "image_path": "",
    })
    return features, meta[list(COLUMNS)]


def _manifest(kind: str, source: Path, groups: Groups) -> dict:
    return {
        "dataset": {"format": f"import:{kind}", "source": str(source.resolve()), "options": {}},
        "image_root": None,
        "class_names": list(groups.class_names),
        "attribute_names": list(groups.attribute_names),
        "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": f"import:{kind}:{source.name}"},
        "clip_space": False,
        "text_encoder": None,
        "shard": None,
    }


def _load_pt(path: Path) -> object:
    return read_torch_weights(path, "torch weights file")


def _features(values: np.ndarray, source: str) -> np.ndarray:
    """Real numbers only: complex embeddings would lose their imaginary part, strings are no features."""
    if values.dtype.kind not in "fiu":
        raise InputError(f"{source}: features must be real numbers, got dtype {values.dtype}"
                         + (" (complex values are refused: casting would drop the imaginary part)"
                            if values.dtype.kind == "c" else ""))
    return values.astype(np.float32, copy=False)


def _whole(values: np.ndarray, source: str, name: str) -> np.ndarray:
    """Integer labels: whole, finite numbers (1.0 is 1; 0.5, 1.9 or NaN are refused, never truncated)."""
    if values.dtype.kind not in "iubf":
        raise InputError(f"{source}: {name} must be whole numbers, got dtype {values.dtype}")
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise InputError(f"{source}: row {bad[0]}: {name} value {values[bad[0]]} is not a whole number "
                             f"({len(bad)} such row(s); labels are never truncated)")
    return values.astype(np.int64)


def _as_numpy(obj: object, key: str, path: Path) -> np.ndarray:
    if not isinstance(obj, dict) or key not in obj:
        found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path}: missing key {key!r} (found {found})")
    value = obj[key]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()  # numpy has no bfloat16
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    raise InputError(f"{path}: {key!r} must be a tensor, got {type(value).__name__}")


def import_reference(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                     class_names: Sequence[str] | None = None,
                     attribute_names: Sequence[str] | None = None) -> FeatureStore:
    """The reference code's feature files (and best run) → a store; C and A as the module docstring says."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"--path {folder}: expected the folder holding {{train,val,test}}_features.pt")
    parts = []
    for split in SPLITS:
        file = folder / f"{split}_features.pt"
        if not file.is_file():
            continue
        obj = _load_pt(file)
        part = _Part(split, str(file), _features(_as_numpy(obj, "features", file), str(file)),
                     _as_numpy(obj, "labels", file), g=_as_numpy(obj, "envs", file))
        _check_part(part)
        part.y, part.g = part.y.astype(np.int64), part.g.astype(np.int64)
        parts.append(part)
    if not parts:
        raise InputError(f"{folder}: none of train_features.pt, val_features.pt, test_features.pt found")
    groups = _reference_groups(parts, class_names, attribute_names, str(folder))
    features, meta = _assemble(parts, groups)
    run_file = folder / REFERENCE_RUN_FILE
    run = read_reference_run(run_file, features.shape[1], groups.n_classes) if run_file.is_file() else None
    store = write_store(out, features, meta, _manifest("reference", folder, groups), overwrite=overwrite)
    if run is not None:  # checked above, before the store was written
        write_reference_run(run, run_file, store)
    return store


def read_reference_run(file: Path, dim: int, n_classes: int = 2) -> dict:
    """Load and check the reference code's `hsfm_best.pt`: head, support set and saved figures."""
    obj = _load_pt(file)
    theta = obj.get("theta") if isinstance(obj, dict) else None
    if not isinstance(theta, dict) or not {"weight", "bias"} <= set(theta):
        raise InputError(f"{file}: expected 'theta' with 'weight' and 'bias'")
    weight = torch.as_tensor(_features(_as_numpy(theta, "weight", Path(f"{file} theta")), f"{file}: theta.weight"))
    bias = torch.as_tensor(_features(_as_numpy(theta, "bias", Path(f"{file} theta")), f"{file}: theta.bias"))
    if tuple(weight.shape) != (n_classes, dim) or tuple(bias.shape) != (n_classes,):
        raise InputError(f"{file}: theta.weight {tuple(weight.shape)} / bias {tuple(bias.shape)}; expected "
                         f"({n_classes}, {dim}) / ({n_classes},) for {n_classes} classes and {dim}-d features")
    support = {
        "before": torch.as_tensor(_features(_as_numpy(obj, "support_init", file), f"{file}: support_init")),
        "after": torch.as_tensor(_features(_as_numpy(obj, "support_emb", file), f"{file}: support_emb")),
        "labels": torch.as_tensor(_whole(_as_numpy(obj, "support_labels", file), str(file), "support_labels")),
        # positions in the reference code's train split, which an imported store rarely holds
        "reference_indices": torch.as_tensor(_whole(_as_numpy(obj, "init_indices", file), str(file), "init_indices")),
    }
    if support["before"].shape != support["after"].shape or support["after"].ndim != 2 \
            or support["after"].shape[1:] != (dim,):
        raise InputError(f"{file}: support_init {tuple(support['before'].shape)} and support_emb "
                         f"{tuple(support['after'].shape)} must both be n × {dim}")
    n = len(support["after"])
    if support["labels"].shape != (n,) or support["reference_indices"].shape != (n,):
        raise InputError(f"{file}: support_labels and init_indices must hold {n} values, one per support row")
    bad = torch.nonzero((support["labels"] < 0) | (support["labels"] >= n_classes)).flatten()
    if len(bad):
        raise InputError(f"{file}: support example {int(bad[0])} has label {int(support['labels'][bad[0]])}; "
                         f"expected 0…{n_classes - 1}")
    for name in ("before", "after"):
        if not torch.isfinite(support[name]).all() or not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise InputError(f"{file}: theta and the support features must be finite (NaN or inf found)")
    support["indices"] = torch.full((n,), -1, dtype=torch.long)  # no store row: see reference_indices
    tensor_keys = ("theta", "support_init", "support_emb", "support_labels", "init_indices")
    saved = {k: _scalar_or_none(v) for k, v in obj.items() if k not in tensor_keys}
    return {"weight": weight, "bias": bias, "support": support, "saved": saved}


def write_reference_run(run: dict, file: Path, store: FeatureStore) -> Path:
    """A checked reference run → `runs/hsfm-reference-<time>-<id>/` of the workspace."""
    from hsfm_core.heads import evaluate_head
    from hsfm_core.runs import new_run_id, write_finished_run

    saved = run["saved"]
    config = {
        "method": "hsfm",
        "source": f"import:reference:{file.resolve()}",
        "store_hash": store.content_hash,
        "seed": saved.get("seed"),
        "device": None,
        "hyperparameters": None,  # the reference file does not record them
        "reference_saved": saved,  # epoch and val figures as the reference code saved them
        # support indices point into the reference code's train split, which this store may not hold
        "support_indices_refer_to": "reference_indices: the reference code's train split (indices = -1)",
    }
    weight, bias = run["weight"], run["bias"]
    return write_finished_run(store.path, new_run_id("hsfm-reference"), config, {"weight": weight, "bias": bias},
                              evaluate_head(store, weight, bias), support=run["support"])


def _scalar_or_none(value: object) -> object:
    """JSON-safe copy of a saved figure (epoch, val accuracy, …); tensors of more than one value are dropped."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_scalar_or_none(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _scalar_or_none(v) for k, v in value.items()}
    return str(value)


def import_dfr(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
               class_names: Sequence[str] | None = None,
               attribute_names: Sequence[str] | None = None) -> FeatureStore:
    """DFR's embeddings `.npz` → a store; C and A as the module docstring says."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--path {file}: DFR .npz file not found")
    npz = read_npz(file, "DFR .npz archive")  # truncated, not a zip, object arrays: InputError
    parts = []
    for split in SPLITS:
        keys = [f"{k}_{split}" for k in ("embeddings", "y", "g", "p")]
        present = [k for k in keys if k in npz]
        if not present:
            continue
        if len(present) != len(keys):
            missing = sorted(set(keys) - set(present))
            raise InputError(f"{file}: split {split!r} has {', '.join(present)} but lacks {', '.join(missing)}")
        features, y, g, p = (npz[k] for k in keys)
        source = f"{file} [{split}]"
        part = _Part(split, source, _features(features, source), y, a=p, g=g)
        _check_part(part)
        part.y, part.a, part.g = (_whole(v, source, name) for v, name in ((y, "labels"), (p, "attribute"), (g, "groups")))
        parts.append(part)
    if not parts:
        raise InputError(f"{file}: no embeddings_train / embeddings_val / embeddings_test arrays "
                         f"(found {', '.join(npz) or 'nothing'})")
    groups = _dfr_groups(parts, class_names, attribute_names, str(file))
    features, meta = _assemble(parts, groups)
    return write_store(out, features, meta, _manifest("dfr", file, groups), overwrite=overwrite)
