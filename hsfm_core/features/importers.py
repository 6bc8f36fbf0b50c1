"""Import the feature caches researchers already have into a feature store (DESIGN §3).

- `reference`: the original HSFM code's `{train,val,test}_features.pt`, each
  `torch.save({"features": N×d, "labels": N, "envs": N})` with envs = group = 2·y + a (usually
  only val and test exist), plus its best run `hsfm_best.pt` when present (`theta`
  {weight, bias}, `support_emb`, `support_init`, `support_labels`, `init_indices`, `epoch`, val
  figures), which becomes a run of the workspace.
- `dfr`: DFR's `.npz` with `embeddings_{split}`, `y_{split}`, `g_{split}`, `p_{split}`.

Loading is `torch.load(weights_only=True)` / `np.load(allow_pickle=False)`: nothing arbitrary
is unpickled. Imported stores have no images (`image_path` is empty) and are not assumed to be
in a CLIP space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from hsfm_core.data.table import COLUMNS, SPLITS
from hsfm_core.errors import InputError
from hsfm_core.features.store import FeatureStore, write_store

REFERENCE_RUN_FILE = "hsfm_best.pt"
DEFAULT_CLASS_NAMES = ("class 0", "class 1")
DEFAULT_ATTRIBUTE_NAMES = ("attribute 0", "attribute 1")


def _check_split_arrays(source: str, features: np.ndarray, y: np.ndarray, a: np.ndarray, g: np.ndarray) -> None:
    if features.ndim != 2:
        raise InputError(f"{source}: features must be N × d, got shape {features.shape}")
    n = len(features)
    if n == 0:
        raise InputError(f"{source}: empty split (0 rows)")
    for name, arr in (("labels", y), ("attribute", a), ("groups", g)):
        if arr.shape != (n,):
            raise InputError(f"{source}: {name} has shape {arr.shape}, expected ({n},) to match the features")
    for name, arr in (("label", y), ("attribute", a)):
        bad = np.flatnonzero((arr != 0) & (arr != 1))
        if len(bad):
            raise InputError(f"{source}: row {bad[0]}: {name} value {arr[bad[0]]} is not 0 or 1")
    bad = np.flatnonzero(g != 2 * y + a)
    if len(bad):
        i = bad[0]
        raise InputError(f"{source}: row {i}: group {g[i]} is not 2·label + attribute (label {y[i]}, attribute {a[i]})")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise InputError(f"{source}: row {np.flatnonzero(~finite)[0]}: features contain NaN or inf "
                         f"({int((~finite).sum())} row(s) in all)")


def _assemble(parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, pd.DataFrame]:
    dims = {p[1].shape[1] for p in parts}
    if len(dims) != 1:
        raise InputError(f"splits have different feature dimensions: "
                         f"{', '.join(f'{s} {f.shape[1]}' for s, f, _, _ in parts)}")
    features = np.concatenate([f for _, f, _, _ in parts])
    split = np.concatenate([[s] * len(f) for s, f, _, _ in parts])
    y = np.concatenate([p[2] for p in parts]).astype(np.int64)
    a = np.concatenate([p[3] for p in parts]).astype(np.int64)
    within = np.concatenate([np.arange(len(f)) for _, f, _, _ in parts])
    meta = pd.DataFrame({
        "row_id": np.arange(len(features), dtype=np.int64),
        "sample_id": [f"{s}:{i}" for s, i in zip(split, within)],  # position within the source split
        "split": split.astype(str),
        "y": y,
        "a": a,
        "g": 2 * y + a,
        "image_path": "",
    })
    return features, meta[list(COLUMNS)]


def _manifest(kind: str, source: Path, class_names: Sequence[str], attribute_names: Sequence[str]) -> dict:
    return {
        "dataset": {"format": f"import:{kind}", "source": str(source.resolve()), "options": {}},
        "image_root": None,
        "class_names": list(class_names),
        "attribute_names": list(attribute_names),
        "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": f"import:{kind}:{source.name}"},
        "clip_space": False,
        "text_encoder": None,
        "shard": None,
    }


def _load_pt(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as a weights-only torch file ({type(exc).__name__}: {exc})") from None


def _as_numpy(obj: object, key: str, path: Path) -> np.ndarray:
    if not isinstance(obj, dict) or key not in obj:
        found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path}: missing key {key!r} (found {found})")
    value = obj[key]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    raise InputError(f"{path}: {key!r} must be a tensor, got {type(value).__name__}")


def import_reference(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                     class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
                     attribute_names: Sequence[str] = DEFAULT_ATTRIBUTE_NAMES) -> FeatureStore:
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"--path {folder}: expected the folder holding {{train,val,test}}_features.pt")
    parts = []
    for split in SPLITS:
        file = folder / f"{split}_features.pt"
        if not file.is_file():
            continue
        obj = _load_pt(file)
        features = _as_numpy(obj, "features", file).astype(np.float32, copy=False)
        y, g = _as_numpy(obj, "labels", file).astype(np.int64), _as_numpy(obj, "envs", file).astype(np.int64)
        a = g - 2 * y
        _check_split_arrays(str(file), features, y, a, g)
        parts.append((split, features, y, a))
    if not parts:
        raise InputError(f"{folder}: none of train_features.pt, val_features.pt, test_features.pt found")
    features, meta = _assemble(parts)
    run_file = folder / REFERENCE_RUN_FILE
    run = read_reference_run(run_file, features.shape[1]) if run_file.is_file() else None  # checked before writing
    store = write_store(out, features, meta, _manifest("reference", folder, class_names, attribute_names),
                        overwrite=overwrite)
    if run is not None:
        write_reference_run(run, run_file, store)
    return store


def read_reference_run(file: Path, dim: int) -> dict:
    """Load and check the reference code's `hsfm_best.pt`: head, support set and saved figures."""
    obj = _load_pt(file)
    theta = obj.get("theta") if isinstance(obj, dict) else None
    if not isinstance(theta, dict) or not {"weight", "bias"} <= set(theta):
        raise InputError(f"{file}: expected 'theta' with 'weight' and 'bias'")
    weight, bias = theta["weight"].float(), theta["bias"].float()
    if tuple(weight.shape) != (2, dim) or tuple(bias.shape) != (2,):
        raise InputError(f"{file}: theta.weight {tuple(weight.shape)} / bias {tuple(bias.shape)}; expected "
                         f"(2, {dim}) / (2,) for 2 classes and {dim}-d features")
    support = {
        "before": torch.as_tensor(_as_numpy(obj, "support_init", file)).float(),
        "after": torch.as_tensor(_as_numpy(obj, "support_emb", file)).float(),
        "labels": torch.as_tensor(_as_numpy(obj, "support_labels", file)).long(),
        # positions in the reference code's train split, which an imported store rarely holds
        "reference_indices": torch.as_tensor(_as_numpy(obj, "init_indices", file)).long(),
    }
    if support["before"].shape != support["after"].shape or support["after"].shape[1:] != (dim,):
        raise InputError(f"{file}: support_init {tuple(support['before'].shape)} and support_emb "
                         f"{tuple(support['after'].shape)} must both be n × {dim}")
    n = len(support["after"])
    if support["labels"].shape != (n,) or support["reference_indices"].shape != (n,):
        raise InputError(f"{file}: support_labels and init_indices must hold {n} values, one per support row")
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
               class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
               attribute_names: Sequence[str] = DEFAULT_ATTRIBUTE_NAMES) -> FeatureStore:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--path {file}: DFR .npz file not found")
    try:
        npz = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: cannot read as .npz ({exc})") from None
    parts = []
    with npz:
        for split in SPLITS:
            keys = [f"{k}_{split}" for k in ("embeddings", "y", "g", "p")]
            present = [k for k in keys if k in npz.files]
            if not present:
                continue
            if len(present) != len(keys):
                missing = sorted(set(keys) - set(present))
                raise InputError(f"{file}: split {split!r} has {', '.join(present)} but lacks {', '.join(missing)}")
            try:
                features, y, g, p = (npz[k] for k in keys)
            except ValueError as exc:  # object arrays would need pickle: refused
                raise InputError(f"{file}: {exc}") from None
            features = features.astype(np.float32, copy=False)
            y, g, p = y.astype(np.int64), g.astype(np.int64), p.astype(np.int64)
            _check_split_arrays(f"{file} [{split}]", features, y, p, g)
            parts.append((split, features, y, p))
    if not parts:
        raise InputError(f"{file}: no embeddings_train / embeddings_val / embeddings_test arrays "
                         f"(found {', '.join(npz.files) or 'nothing'})")
    features, meta = _assemble(parts)
    return write_store(out, features, meta, _manifest("dfr", file, class_names, attribute_names), overwrite=overwrite)
