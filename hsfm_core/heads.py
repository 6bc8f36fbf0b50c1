"""A linear head over stored features: the classifier every method produces."""

from __future__ import annotations

import numpy as np
import torch

CHUNK_ROWS = 65536  # bounded memory when the features are a large memory map


def predict(features: np.ndarray, weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    """argmax(features @ weightᵀ + bias), computed in float32 chunks."""
    w, b = weight.detach().float().cpu(), bias.detach().float().cpu()
    out = np.empty(len(features), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(features), CHUNK_ROWS):
            x = torch.from_numpy(np.array(features[start : start + CHUNK_ROWS], dtype=np.float32))  # a copy: memmaps are read-only
            out[start : start + len(x)] = (x @ w.T + b).argmax(dim=1).numpy()
    return out


def evaluate_head(store, weight: torch.Tensor, bias: torch.Tensor, splits=("val", "test")) -> dict:
    """`metrics.json` content for a head on a store: {split: group metrics} for the splits it has.

    The adjusted average uses the store's train group counts; a store without a train split
    (an imported reference cache) has none, and says so with `avg_adjusted: null`.
    """
    from hsfm_core.errors import InputError
    from hsfm_core.metrics import group_metrics

    if tuple(weight.shape) != (len(store.class_names), store.dim) or tuple(bias.shape) != (len(store.class_names),):
        raise InputError(f"a head of shape {tuple(weight.shape)} does not fit {store.path} "
                         f"({len(store.class_names)} classes, {store.dim}-d features): was the store replaced?")
    train_counts = store.manifest["group_counts"].get("train")
    out = {}
    for split in splits:
        if not store.has_split(split):
            continue
        sel = store.select(split)
        out[split] = group_metrics(predict(sel.features, weight, bias), sel.y, sel.g, store.n_groups, train_counts)
    return out
