"""ERM: the initial head θ₀ itself — the extraction checkpoint's final layer, or a linear probe.

Every method that starts from θ₀ (HSFM, AFR) gets it from `initial_head`, so ERM, HSFM and AFR
runs on one store share one θ₀ and their before/after views compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from hsfm_core.errors import InputError
from hsfm_core.heads import LinearHead
from hsfm_core.methods.base import FittedHead, Method, check_positive


def require_all_classes(y: np.ndarray, n_classes: int, what: str) -> None:
    present = sorted(set(np.unique(y).tolist()))
    if present != list(range(n_classes)):
        raise InputError(f"the {what} has classes {present}; a head needs every class 0…{n_classes - 1}")


@dataclass(frozen=True)
class ERMSettings:
    C: float = 1.0  # inverse L2 strength of the probe
    max_iter: int = 1000

    def __post_init__(self) -> None:
        check_positive(self, ints=("max_iter",), floats=("C",), what="ERM probe")


class ERMProbe:
    """θ₀ for CLIP-like features: L2-regularised logistic regression (lbfgs) on the train features as
    stored (no standardisation), the usual linear-probe recipe; multinomial for C > 2 classes."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, features: np.ndarray, y: np.ndarray, n_classes: int = 2) -> "ERMProbe":
        ERMSettings(self.C, self.max_iter)  # range checks
        require_all_classes(y, n_classes, "train split")
        # lbfgs draws no random numbers; the fixed random_state keeps the probe independent of numpy's global
        # state should the solver ever change. θ₀ is one head per store (ERM, HSFM and AFR runs of every
        # seed share it), so it takes no run seed.
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=0)
        model.fit(np.asarray(features, dtype=np.float32), y)
        self.head_ = LinearHead.from_sklearn(model.coef_, model.intercept_)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.head_.predict(features)


def initial_head(store, settings: ERMSettings | None = None, train_rows: np.ndarray | None = None
                 ) -> tuple[LinearHead, dict]:
    """θ₀ and how it was obtained: the extraction checkpoint's fc, else the ERM probe on train
    (on `train_rows` only, when given: AFR keeps a held-out share for reweighting)."""
    saved = store.init_head()
    if saved is not None:
        expected = (store.groups.n_classes, store.dim)
        if tuple(saved["weight"].shape) != expected or tuple(saved["bias"].shape) != expected[:1]:
            raise InputError(f"{store.path}: the initial head is {tuple(saved['weight'].shape)} but the features are "
                             f"{store.dim}-d with {expected[0]} classes; expected {expected}")
        return LinearHead(saved["weight"], saved["bias"]), {"source": "checkpoint fc (init_head.safetensors)"}
    if not store.has_split("train"):
        raise InputError(f"{store.path}: the store has no train split (the ERM probe is fitted on train features) "
                         f"and no checkpoint head")
    settings = settings or ERMSettings()
    train = store.select("train")
    x, y = train.features, train.y
    if train_rows is not None:
        x, y = np.asarray(x)[train_rows], y[train_rows]
    probe = ERMProbe(settings.C, settings.max_iter).fit(x, y, store.groups.n_classes)
    info = {"source": "erm probe: L2 logistic regression on train (lbfgs)", "C": settings.C,
            "max_iter": settings.max_iter}
    if train_rows is not None:
        info["train_rows_used"] = int(len(train_rows))
    return probe.head_, info


class ERM(Method):
    name = "erm"
    label = "ERM"
    description = "the initial head θ₀: the checkpoint's final layer, or an L2 logistic probe on train"
    order = 0
    Settings = ERMSettings
    needs = ("val",)  # train too, unless the store has a checkpoint head (checked by initial_head)

    def fit(self, store, settings, seeds, *, device="cpu", progress=None):
        head, info = initial_head(store, settings)
        if store.init_head() is not None:
            info = {**info, "probe_settings_unused": True}
        return [FittedHead(seed=seed, weight=head.weight, bias=head.bias, init_weight=head.weight.clone(),
                           init_bias=head.bias.clone(), init_source=info) for seed in seeds]


METHOD = ERM()
