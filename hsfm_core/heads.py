"""A linear head over stored features: the classifier every method produces, and its evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hsfm_core.errors import InputError

CHUNK_ROWS = 65536  # bounded memory when the features are a large memory map


@dataclass
class LinearHead:
    weight: torch.Tensor  # C × d
    bias: torch.Tensor  # C

    @classmethod
    def from_sklearn(cls, coef: np.ndarray, intercept: np.ndarray) -> "LinearHead":
        """A fitted scikit-learn linear model → a C × d head on the same inputs.

        A binary model (one row w, b) becomes the symmetric head W = [−w/2, w/2], b = [−b/2, b/2],
        whose softmax is exactly sigmoid(w·x + b); a multinomial model (C rows) is taken as it is.
        """
        coef = np.asarray(coef, dtype=np.float64)
        intercept = np.asarray(intercept, dtype=np.float64).reshape(-1)
        if coef.ndim == 1 or coef.shape[0] == 1:
            w = torch.as_tensor(coef.reshape(-1) / 2)
            b = float(intercept[0]) / 2
            return cls(weight=torch.stack([-w, w]).float(), bias=torch.tensor([-b, b], dtype=torch.float32))
        return cls(weight=torch.as_tensor(coef).float(), bias=torch.as_tensor(intercept).float())

    def predict(self, features: np.ndarray) -> np.ndarray:
        return predict(features, self.weight, self.bias)


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
    groups = store.groups
    if tuple(weight.shape) != (groups.n_classes, store.dim) or tuple(bias.shape) != (groups.n_classes,):
        raise InputError(f"a head of shape {tuple(weight.shape)} does not fit {store.path} "
                         f"({groups.n_classes} classes, {store.dim}-d features): was the store replaced?")
    out = {}
    for split in splits:
        if not store.has_split(split):
            continue
        sel = store.select(split)
        out[split] = groups.metrics(predict(sel.features, weight, bias), sel.y, sel.g)
    return out
