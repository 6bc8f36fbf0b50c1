"""A generated spurious-correlation problem: a weak core direction (the class) and a strong
spurious one (the attribute), 95% correlated in train and balanced in val/test."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hsfm_core.features import write_store
from hsfm_core.groups import Groups

MANIFEST = {"dataset": {"format": "synthetic", "source": "gaussian", "options": {}}, "image_root": None,
            "class_names": ["landbird", "waterbird"], "attribute_names": ["land", "water"],
            "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": "gaussian"},
            "clip_space": False, "text_encoder": None, "shard": None}


# HSFM settings small enough for a run in well under a second (tests that need a run, not a result)
TINY_HSFM = ["E=2", "K_H=2", "T=2", "n=4", "K_hard=8", "alpha=1e-3"]


def gaussian_split(n: int, d: int, correlation: float, seed: int, core: float = 1.0, spurious: float = 3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < correlation, y, 1 - y)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += core * (2 * y - 1)
    x[:, 1] += spurious * (2 * a - 1)
    return x, y, a


def gaussian_problem(d: int = 64, sizes=(2000, 1000, 3000), seed: int = 0) -> dict:
    """{split: (x, y, a)} for train (95% correlated), val and test (balanced)."""
    correlations = {"train": 0.95, "val": 0.5, "test": 0.5}
    return {split: gaussian_split(n, d, correlations[split], seed + i)
            for i, (split, n) in enumerate(zip(("train", "val", "test"), sizes))}


def gaussian_workspace(path, d: int = 16, sizes=(600, 300, 300), seed: int = 0, splits=("train", "val", "test")):
    problem = gaussian_problem(d, sizes, seed)
    x = np.concatenate([problem[s][0] for s in splits])
    y = np.concatenate([problem[s][1] for s in splits])
    a = np.concatenate([problem[s][2] for s in splits])
    split = np.concatenate([[s] * len(problem[s][0]) for s in splits])
    groups = Groups(MANIFEST["class_names"], MANIFEST["attribute_names"])
    meta = pd.DataFrame({"row_id": np.arange(len(x)), "sample_id": [str(i) for i in range(len(x))], "split": split,
                         "y": y, "a": a, "g": groups.group_of(y, a), "image_path": ""})
    return write_store(path, x, meta, MANIFEST)


def hsfm_and_erm_runs(workspace):
    """A tiny HSFM run (with a support set) and an ERM run (without one) in `workspace`."""
    from hsfm_core.train import train

    (hsfm,) = train(workspace, "hsfm", overrides=TINY_HSFM)
    (erm,) = train(workspace, "erm")
    return hsfm, erm


# -- C classes × A attributes ----------------------------------------------------------------------
# A MultiNLI-shaped world (3 classes × 2 attributes): "negation" goes with contradiction in train.
MULTICLASS_CLASSES = ("entailment", "neutral", "contradiction")
MULTICLASS_ATTRIBUTES = ("no negation", "negation")
USUAL_ATTRIBUTE = (0, 0, 1)  # class c mostly shows attribute USUAL_ATTRIBUTE[c] in train


def multiclass_split(n: int, d: int, correlation: float, seed: int, usual=USUAL_ATTRIBUTE, n_attributes: int = 2,
                     core: float = 2.0, spurious: float = 3.0):
    """(x, y, a): y uniform over the C = len(usual) classes; a = the class's usual attribute with
    probability `correlation`, else another attribute at random (`correlation` = 1/A: independent).
    Class c adds `core` on feature c, attribute k adds `spurious` on feature C + k."""
    rng = np.random.default_rng(seed)
    n_classes = len(usual)
    y = rng.integers(0, n_classes, n)
    usual_a = np.asarray(usual)[y]
    other = (usual_a + rng.integers(1, n_attributes, n)) % n_attributes if n_attributes > 1 else usual_a
    a = np.where(rng.random(n) < correlation, usual_a, other)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[np.arange(n), y] += core
    x[np.arange(n), n_classes + a] += spurious
    return x, y, a


def multiclass_problem(d: int = 32, sizes=(3000, 1200, 1200), seed: int = 0, correlation: float = 0.95) -> dict:
    """{split: (x, y, a)}: train correlated, val and test with independent attributes."""
    correlations = {"train": correlation, "val": 0.5, "test": 0.5}
    return {split: multiclass_split(n, d, correlations[split], seed + i)
            for i, (split, n) in enumerate(zip(("train", "val", "test"), sizes))}


def multiclass_workspace(path, d: int = 32, sizes=(3000, 1200, 1200), seed: int = 0):
    """The 3 × 2 world as a store (written with `write_store`, no images)."""
    problem = multiclass_problem(d, sizes, seed)
    groups = Groups(MULTICLASS_CLASSES, MULTICLASS_ATTRIBUTES)
    x = np.concatenate([problem[s][0] for s in problem])
    y = np.concatenate([problem[s][1] for s in problem])
    a = np.concatenate([problem[s][2] for s in problem])
    split = np.concatenate([[s] * len(problem[s][0]) for s in problem])
    meta = pd.DataFrame({"row_id": np.arange(len(x)), "sample_id": [str(i) for i in range(len(x))], "split": split,
                         "y": y, "a": a, "g": groups.group_of(y, a), "image_path": ""})
    manifest = {**MANIFEST, "dataset": {"format": "synthetic", "source": "gaussian-3x2", "options": {}},
                "class_names": list(MULTICLASS_CLASSES), "attribute_names": list(MULTICLASS_ATTRIBUTES)}
    return write_store(path, x, meta, manifest)
