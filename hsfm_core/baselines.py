"""ERM and DFR heads with scikit-learn's estimator shape (`fit` → `self`, `predict`, `head_`).

Both end as a 2-class linear head (weight C × d, bias C) on the *raw* stored features, so every
method shares one interface and one evaluator. A binary logistic model (w, b) becomes the
symmetric head W = [−w/2, w/2], b = [−b/2, b/2]: its softmax is exactly sigmoid(w·x + b).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hsfm_core.errors import InputError

DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


@dataclass
class LinearHead:
    weight: torch.Tensor  # C × d
    bias: torch.Tensor  # C

    @classmethod
    def from_binary(cls, coef: np.ndarray, intercept: float) -> "LinearHead":
        w = torch.as_tensor(np.asarray(coef, dtype=np.float64).reshape(-1) / 2)
        b = float(intercept) / 2
        return cls(weight=torch.stack([-w, w]).float(), bias=torch.tensor([-b, b], dtype=torch.float32))

    def predict(self, features: np.ndarray) -> np.ndarray:
        from hsfm_core.heads import predict

        return predict(features, self.weight, self.bias)


def _require_both_classes(y: np.ndarray, what: str) -> None:
    present = sorted(set(np.unique(y).tolist()))
    if present != [0, 1]:
        raise InputError(f"the {what} has classes {present}; a head needs both classes 0 and 1")


class ERMProbe:
    """θ₀ for CLIP features: L2-regularised logistic regression (C = 1.0, lbfgs) on the train split
    as stored (no standardisation), the usual linear-probe recipe."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        if not (np.isfinite(C) and C > 0) or max_iter < 1:
            raise InputError(f"the ERM probe needs C > 0 and max_iter ≥ 1, got C={C}, max_iter={max_iter}")
        self.C = C
        self.max_iter = max_iter

    def fit(self, features: np.ndarray, y: np.ndarray) -> "ERMProbe":
        _require_both_classes(y, "train split")
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        model.fit(np.asarray(features, dtype=np.float32), y)
        self.head_ = LinearHead.from_binary(model.coef_, model.intercept_[0])
        self.n_iter_ = int(model.n_iter_[0])
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.head_.predict(features)


def _group_balanced(rng: np.random.Generator, g: np.ndarray, n_groups: int) -> np.ndarray:
    """Every present group cut to the smallest present group's size (DFR's subsampling)."""
    members = [np.flatnonzero(g == k) for k in range(n_groups)]
    members = [m for m in members if len(m)]
    size = min(len(m) for m in members)
    return np.concatenate([rng.permutation(m)[:size] for m in members])


def _worst_group_accuracy(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    return min(float((pred[g == k] == y[g == k]).mean()) for k in np.unique(g))


class DFR:
    """Deep Feature Reweighting (Kirichenko et al.) on the validation split.

    Scaler: `StandardScaler` fitted on val, the set DFR trains on (the original code fitted it on
    train, its successor on val; val also works for stores without a train split): on the fitting
    half while tuning, on all of val for the final head.
    Tuning: C from `c_grid` by worst-group accuracy; fit an L1 liblinear logistic regression on one
    group-balanced subsample of a random half of val (the same subsample for every C), score on
    the other half. Final head: the coefficients and intercepts of `n_refits` fits on fresh
    group-balanced subsamples of all of val, averaged, then folded with the scaler into a head on
    raw features.
    """

    def __init__(self, c_grid=DFR_C_GRID, n_refits: int = 20, seed: int = 0, n_groups: int = 4):
        self.c_grid = tuple(c_grid)
        self.n_refits = n_refits
        self.seed = seed
        self.n_groups = n_groups

    def _fit_l1(self, x, y, C):
        model = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear")  # pure L1 (sklearn ≥ 1.8 spelling)
        return model.fit(x, y)

    def fit(self, features: np.ndarray, y: np.ndarray, g: np.ndarray) -> "DFR":
        _require_both_classes(y, "validation split")
        if self.n_refits < 1:
            raise InputError(f"DFR needs n_refits ≥ 1, got {self.n_refits}")
        rng = np.random.default_rng(self.seed)
        x = np.asarray(features, dtype=np.float64)

        # Tuning: one random half of val fits (on one group-balanced subsample, shared by every C),
        # the other half scores worst-group accuracy. The scaler sees only the fitting half.
        order = rng.permutation(len(x))
        tune_fit, tune_eval = order[: len(x) // 2], order[len(x) // 2 :]
        rows = tune_fit[_group_balanced(rng, g[tune_fit], self.n_groups)]
        scaler = StandardScaler().fit(x[tune_fit])
        x_fit, x_eval = scaler.transform(x[rows]), scaler.transform(x[tune_eval])
        scores = {}
        for C in self.c_grid:
            model = self._fit_l1(x_fit, y[rows], C)
            scores[C] = _worst_group_accuracy(model.predict(x_eval), y[tune_eval], g[tune_eval])
        best_c = max(self.c_grid, key=lambda c: (scores[c], -self.c_grid.index(c)))  # ties: earlier in grid

        # Final: scaler on all of val, n_refits fits on fresh group-balanced subsamples, averaged.
        scaler = StandardScaler().fit(x)
        x = scaler.transform(x)
        coefs, intercepts = [], []
        for _ in range(self.n_refits):
            rows = _group_balanced(rng, g, self.n_groups)
            model = self._fit_l1(x[rows], y[rows], best_c)
            coefs.append(model.coef_[0])
            intercepts.append(model.intercept_[0])
        coef, intercept = np.mean(coefs, axis=0), float(np.mean(intercepts))
        # w·(x − μ)/σ + b  =  (w/σ)·x + (b − w·μ/σ)
        raw_coef = coef / scaler.scale_
        self.head_ = LinearHead.from_binary(raw_coef, intercept - float(raw_coef @ scaler.mean_))
        self.best_C_, self.tuning_scores_ = best_c, scores
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.head_.predict(features)
