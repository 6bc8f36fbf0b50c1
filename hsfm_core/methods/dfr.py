"""DFR — Deep Feature Reweighting (Kirichenko et al., 2023), last-layer retraining on validation.

Scaler: `StandardScaler` fitted on val, the set DFR trains on (the original code fitted it on
train, its successor on val; val also works for stores without a train split): on the fitting
half while tuning, on all of val for the final head.
Tuning: C from `c_grid` by worst-group accuracy; fit an L1 logistic regression on one
group-balanced subsample of a random half of val (the same subsample for every C), score on
the other half. Final head: the coefficients and intercepts of `n_refits` fits on fresh
group-balanced subsamples of all of val, averaged, then folded with the scaler into a head on
raw features. Two classes use liblinear as DFR does; C > 2 classes use a multinomial L1 model
(saga), since liblinear is one-vs-rest only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hsfm_core.errors import InputError
from hsfm_core.groups import Groups
from hsfm_core.heads import LinearHead
from hsfm_core.methods.base import FittedHead, Method, check_positive
from hsfm_core.methods.erm import require_all_classes

DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


@dataclass(frozen=True)
class DFRSettings:
    c_grid: tuple = DFR_C_GRID  # inverse L1 strengths tried, in DFR's order (ties → earlier)
    n_refits: int = 20  # group-balanced refits averaged into the final head

    def __post_init__(self) -> None:
        object.__setattr__(self, "c_grid", tuple(float(c) for c in self.c_grid))
        check_positive(self, ints=("n_refits",), what="DFR")
        if not self.c_grid or not all(np.isfinite(c) and c > 0 for c in self.c_grid):
            raise InputError(f"DFR setting c_grid must list numbers > 0, got {list(self.c_grid)}")


class DFR:
    """The estimator: `DFR(groups, …).fit(x_val, y_val, g_val).head_` (scikit-learn's shape)."""

    def __init__(self, groups: Groups, c_grid=DFR_C_GRID, n_refits: int = 20, seed: int = 0):
        self.groups = groups
        self.c_grid = tuple(c_grid)
        self.n_refits = n_refits
        self.seed = seed

    def _fit_l1(self, x, y, C):
        # random_state: the solvers draw from numpy's global state otherwise, so a run would not be
        # reproducible from its seed alone
        if self.groups.n_classes == 2:  # pure L1 (sklearn ≥ 1.8 spelling)
            model = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=self.seed)
        else:
            model = LogisticRegression(C=C, l1_ratio=1.0, solver="saga", max_iter=2000, random_state=self.seed)
        return model.fit(x, y)

    def fit(self, features: np.ndarray, y: np.ndarray, g: np.ndarray) -> "DFR":
        require_all_classes(y, self.groups.n_classes, "validation split")
        DFRSettings(self.c_grid, self.n_refits)  # range checks
        rng = np.random.default_rng(self.seed)
        x = np.asarray(features, dtype=np.float64)

        # Tuning: one random half of val fits (on one group-balanced subsample, shared by every C),
        # the other half scores worst-group accuracy. The scaler sees only the fitting half.
        order = rng.permutation(len(x))
        tune_fit, tune_eval = order[: len(x) // 2], order[len(x) // 2 :]
        rows = tune_fit[self.groups.balanced_subsample(rng, g[tune_fit])]
        scaler = StandardScaler().fit(x[tune_fit])
        x_fit, x_eval = scaler.transform(x[rows]), scaler.transform(x[tune_eval])
        scores = {}
        for C in self.c_grid:
            model = self._fit_l1(x_fit, y[rows], C)
            scores[C] = self.groups.worst_group_accuracy(model.predict(x_eval), y[tune_eval], g[tune_eval])
        best_c = max(self.c_grid, key=lambda c: (scores[c], -self.c_grid.index(c)))  # ties: earlier in grid

        # Final: scaler on all of val, n_refits fits on fresh group-balanced subsamples, averaged.
        scaler = StandardScaler().fit(x)
        x = scaler.transform(x)
        coefs, intercepts = [], []
        for _ in range(self.n_refits):
            rows = self.groups.balanced_subsample(rng, g)
            model = self._fit_l1(x[rows], y[rows], best_c)
            coefs.append(model.coef_)
            intercepts.append(model.intercept_)
        coef, intercept = np.mean(coefs, axis=0), np.mean(intercepts, axis=0)
        # w·(x − μ)/σ + b  =  (w/σ)·x + (b − w·μ/σ)
        raw_coef = coef / scaler.scale_
        self.head_ = LinearHead.from_sklearn(raw_coef, intercept - raw_coef @ scaler.mean_)
        self.best_C_, self.tuning_scores_ = best_c, scores
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.head_.predict(features)


class DFRMethod(Method):
    name = "dfr"
    label = "DFR"
    description = "Deep Feature Reweighting: L1 logistic head refit on group-balanced validation, C tuned on val"
    order = 1
    Settings = DFRSettings
    needs = ("val",)

    def fit(self, store, settings, seeds, *, device="cpu", progress=None):
        val = store.select("val")
        saved = store.init_head()  # θ₀, for before/after views, when the extraction recorded one
        out = []
        for seed in seeds:
            dfr = DFR(store.groups, settings.c_grid, settings.n_refits, seed).fit(np.asarray(val.features), val.y, val.g)
            out.append(FittedHead(
                seed=seed, weight=dfr.head_.weight, bias=dfr.head_.bias,
                init_weight=saved["weight"] if saved else None, init_bias=saved["bias"] if saved else None,
                selected={"selected_C": dfr.best_C_, "tuning_wga": {str(c): v for c, v in dfr.tuning_scores_.items()},
                          "scaler_fit_on": "val"}))
        return out


METHOD = DFRMethod()
