"""DFR — Deep Feature Reweighting (Kirichenko et al., 2023), last-layer retraining on validation.

Two recipes, chosen by the `recipe` setting (and the presets of the same names); a run's config.json
records which (`preset`, `hyperparameters.recipe`, `fitted.recipe`).

`val_scaler` (the default): the Studio's recipe. `StandardScaler` fitted on val, the set DFR trains
on: on the whole fitting half while tuning, on all of val for the final head (val also works for
stores without a train split). Tuning: C from `c_grid` by worst-group accuracy; fit an L1 logistic
regression on one group-balanced subsample of a random half of val (the same subsample for every
C), score on the other half. Final head: the coefficients and intercepts of `n_refits` fits on fresh
group-balanced subsamples of all of val, averaged, then folded with the scaler into a head on raw
features. Randomness: `np.random.default_rng(seed)` and `random_state=seed` for every solver. Two
classes use liblinear as DFR does; C > 2 classes use a multinomial L1 model (saga), since liblinear
is binary only in scikit-learn ≥ 1.8.

`official`: the authors' code, seed for seed — `dfr_on_validation_tune` and `dfr_on_validation_eval`
of github.com/PolinaKirichenko/deep_feature_reweighting, `dfr_evaluate_spurious.py`, called the way
its script calls them (`balance_val=True`, `add_train=False`, one tuning split, 20 refits; the
transcription the tests run it against is `tests/reference_dfr.py`). It differs from `val_scaler` in:
- the tuning scaler is fitted on the group-balanced subsample of the fitting half (not the whole half);
- the final scaler is fitted on all of train. A store without a train split has nothing to fit it on
  (their script always has one): the final scaler is then fitted on all of val, as `val_scaler` does,
  and the run records `scaler_fit_on: "val (the store has no train split)"`;
- the fitting half is the *second* half of one shuffle of val (`idx[len // 2:]`), scored on the first;
- randomness: numpy's legacy Mersenne Twister seeded with the run's seed, drawn in their order —
  the shuffle of val, each group's shuffle, one `randint` per liblinear fit (scikit-learn's seed for
  liblinear), then per refit each group's shuffle, a shuffle of `arange(n_train)` (their code draws
  it even though it adds no train rows) and the fit. Their code uses numpy's *global* state; this
  module draws the same stream from its own `np.random.RandomState(seed)` (the same generator, passed
  as the solvers' `random_state`), so a run neither reads nor disturbs the global state;
- features as float32 (their ResNet embeddings are float32), `class_weight={0: 1, 1: 1}`.
Ties between Cs go to the earlier C in the grid in both recipes (their `np.argmax`). Their recipe is
binary (liblinear, a two-class `class_weight`); on a store with C > 2 classes `official` is refused.
What the two recipes give on the demo and on a generated world: README "Methods, run groups and
sweeps" (`benchmarks/bench_dfr_official.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hsfm_core.errors import InputError
from hsfm_core.groups import Groups
from hsfm_core.heads import LinearHead
from hsfm_core.methods.base import MIN_VAL_ROWS_PER_GROUP, FittedHead, Method, check_positive
from hsfm_core.methods.erm import require_all_classes

DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # the authors' C_OPTIONS
RECIPES = ("val_scaler", "official")


@dataclass(frozen=True)
class DFRSettings:
    c_grid: tuple = DFR_C_GRID  # inverse L1 strengths tried, in DFR's order (ties → earlier)
    n_refits: int = 20  # group-balanced refits averaged into the final head
    recipe: str = field(default="val_scaler", metadata={
        "help": "val_scaler (the Studio's) or official (the authors' code, seed for seed)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "c_grid", tuple(float(c) for c in self.c_grid))
        check_positive(self, ints=("n_refits",), what="DFR")
        if not self.c_grid or not all(np.isfinite(c) and c > 0 for c in self.c_grid):
            raise InputError(f"DFR setting c_grid must list numbers > 0, got {list(self.c_grid)}")
        if self.recipe not in RECIPES:
            raise InputError(f"DFR setting recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")


PRESETS = {"val_scaler": DFRSettings(), "official": DFRSettings(recipe="official")}


class DFR:
    """The val_scaler recipe: `DFR(groups, …).fit(x_val, y_val, g_val).head_` (scikit-learn's shape)."""

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


class OfficialDFR:
    """The authors' recipe, seed for seed (see the module docstring): `OfficialDFR(groups, …).fit(x_val,
    y_val, g_val, x_train).head_`. Every line follows `dfr_on_validation_tune` / `dfr_on_validation_eval`
    (tests/reference_dfr.py) in what it computes and in the order it draws random numbers."""

    def __init__(self, groups: Groups, c_grid=DFR_C_GRID, n_refits: int = 20, seed: int = 0):
        self.groups = groups
        self.c_grid = tuple(c_grid)
        self.n_refits = n_refits
        self.seed = seed

    def _fit_l1(self, x, y, C, random_state):
        # their LogisticRegression(penalty="l1", C=c, solver="liblinear", class_weight={0: 1., 1: 1.});
        # l1_ratio=1 is scikit-learn ≥ 1.8's spelling of penalty="l1"
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", class_weight={0: 1.0, 1: 1.0},
                                  random_state=random_state).fit(x, y)

    def _balanced(self, random_state, g: np.ndarray, what: str) -> np.ndarray:
        """Their balancing: groups 0 … max(g), each shuffled in group order, each cut to the smallest."""
        members = [np.where(g == k)[0] for k in range(int(np.max(g)) + 1)]
        empty = [self.groups.names[k] for k, m in enumerate(members) if len(m) == 0]
        if empty:  # their code would fit on zero rows
            raise InputError(f"DFR (official recipe): {what} has no rows of group(s) {', '.join(empty)} "
                             f"(seed {self.seed}); the authors' balancing needs every group 0…{len(members) - 1}")
        smallest = min(len(m) for m in members)
        for m in members:
            random_state.shuffle(m)
        return np.concatenate([m[:smallest] for m in members])

    def fit(self, features: np.ndarray, y: np.ndarray, g: np.ndarray, train_features: np.ndarray | None = None
            ) -> "OfficialDFR":
        if self.groups.n_classes != 2:
            raise InputError(f"DFR's official recipe is binary (liblinear with a two-class class_weight, as in the "
                             f"authors' code); this store has {self.groups.n_classes} classes: use the val_scaler "
                             f"recipe (preset val_scaler), which fits a multinomial L1 head")
        require_all_classes(y, self.groups.n_classes, "validation split")
        DFRSettings(self.c_grid, self.n_refits, "official")  # range checks
        rs = np.random.RandomState(self.seed)  # = np.random.seed(seed) on numpy's global state, kept private
        x = np.asarray(features, dtype=np.float32)
        y, g = np.asarray(y), np.asarray(g)

        # dfr_on_validation_tune(balance_val=True, add_train=False, num_retrains=1)
        half = len(x) // 2
        idx = np.arange(len(x))
        rs.shuffle(idx)
        fit_rows, eval_rows = idx[half:], idx[:half]
        rows = fit_rows[self._balanced(rs, g[fit_rows], "the tuning half of val")]
        scaler = StandardScaler().fit(x[rows])  # on the balanced subsample: their x_train
        x_fit, x_eval = scaler.transform(x[rows]), scaler.transform(x[eval_rows])
        y_eval, g_eval = y[eval_rows], g[eval_rows]
        n_groups = int(np.max(g[fit_rows])) + 1
        missing = [self.groups.names[k] for k in range(n_groups) if not np.any(g_eval == k)]
        if missing:  # their worst-group accuracy would be NaN
            raise InputError(f"DFR (official recipe): the scoring half of val has no rows of group(s) "
                             f"{', '.join(missing)} (seed {self.seed})")
        scores = {}
        for C in self.c_grid:
            pred = self._fit_l1(x_fit, y[rows], C, rs).predict(x_eval)
            scores[C] = float(np.min([(pred == y_eval)[g_eval == k].mean() for k in range(n_groups)]))
        best_c = self.c_grid[int(np.argmax([scores[c] for c in self.c_grid]))]  # ties → earlier in the grid

        # dfr_on_validation_eval(num_retrains=n_refits, balance_val=True, add_train=False)
        if train_features is not None and len(train_features):
            scaler, self.scaler_fit_on_ = StandardScaler().fit(np.asarray(train_features, dtype=np.float32)), "train"
            n_train = len(train_features)
        else:
            scaler, self.scaler_fit_on_ = StandardScaler().fit(x), "val (the store has no train split)"
            n_train = 0
        coefs, intercepts = [], []
        for _ in range(self.n_refits):
            rows = self._balanced(rs, g, "the validation split")
            rs.shuffle(np.arange(n_train))  # their train_idx shuffle: no train row is used, the draws are
            model = self._fit_l1(scaler.transform(x[rows]), y[rows], best_c, rs)
            coefs.append(model.coef_)
            intercepts.append(model.intercept_)
        coef, intercept = np.mean(coefs, axis=0), np.mean(intercepts, axis=0)
        raw_coef = coef / scaler.scale_  # w·(x − μ)/σ + b  =  (w/σ)·x + (b − w·μ/σ)
        self.head_ = LinearHead.from_sklearn(raw_coef, intercept - raw_coef @ scaler.mean_)
        self.best_C_, self.tuning_scores_ = best_c, scores
        self.scaled_coef_, self.scaled_intercept_, self.scaler_ = coef, intercept, scaler
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.head_.predict(features)


class DFRMethod(Method):
    name = "dfr"
    label = "DFR"
    description = "Deep Feature Reweighting: L1 logistic head refit on group-balanced validation, C tuned on val"
    order = 1
    Settings = DFRSettings
    presets = PRESETS
    needs = ("val",)  # the official recipe also reads train, when the store has it (its final scaler)
    val_rows_per_group = MIN_VAL_ROWS_PER_GROUP  # balances every group of val and tunes C on val WGA

    def default_preset(self, store=None):
        return "val_scaler", ("the Studio's DFR (scalers fitted on val): on the demo it is the steadier of the two "
                              "recipes; preset official reproduces the authors' code seed for seed")

    def fit(self, store, settings, seeds, *, device="cpu", progress=None):
        val = store.select("val")
        saved = store.init_head()  # θ₀, for before/after views, when the extraction recorded one
        train_features = None
        if settings.recipe == "official" and store.has_split("train"):
            train_features = store.select("train").features
        out = []
        for seed in seeds:
            if settings.recipe == "official":
                dfr = OfficialDFR(store.groups, settings.c_grid, settings.n_refits, seed).fit(
                    val.features, val.y, val.g, train_features)
                scaler_fit_on = dfr.scaler_fit_on_
            else:
                dfr = DFR(store.groups, settings.c_grid, settings.n_refits, seed).fit(
                    np.asarray(val.features), val.y, val.g)
                scaler_fit_on = "val"
            out.append(FittedHead(
                seed=seed, weight=dfr.head_.weight, bias=dfr.head_.bias,
                init_weight=saved["weight"] if saved else None, init_bias=saved["bias"] if saved else None,
                selected={"recipe": settings.recipe, "selected_C": dfr.best_C_,
                          "tuning_wga": {str(c): v for c, v in dfr.tuning_scores_.items()},
                          "scaler_fit_on": scaler_fit_on}))
        return out


METHOD = DFRMethod()
