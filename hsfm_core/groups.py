"""The one group contract (docs/ARCHITECTURE.md §Groups): C classes × A attributes, g = A·y + a.

Every reader, importer, method, metric and view asks a `Groups` object for group ids, names,
class/attribute of a group, train proportions and worst-group accuracy; nothing else writes the
rule. Modelled on SpuCo's single group partition + group weights shared by methods and evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hsfm_core.errors import InputError


@dataclass(frozen=True)
class Groups:
    """C classes × A spurious attributes. Group g = A·y + a, so class_of(g) = g // A."""

    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...]
    train_counts: tuple[int, ...] | None = None  # examples per group in train; None without a train split

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "attribute_names", tuple(str(a) for a in self.attribute_names))
        if self.n_classes < 2 or self.n_attributes < 1:
            raise InputError(f"a dataset needs ≥ 2 classes and ≥ 1 attribute; got classes {list(self.class_names)}, "
                             f"attributes {list(self.attribute_names)}")
        for what, names in (("class", self.class_names), ("attribute", self.attribute_names)):
            if len(set(names)) != len(names):
                raise InputError(f"{what} names must be distinct, got {list(names)}")
        if self.train_counts is not None:
            counts = tuple(int(c) for c in self.train_counts)
            if len(counts) != self.n_groups or min(counts) < 0:
                raise InputError(f"train group counts {list(counts)}: expected {self.n_groups} counts ≥ 0")
            object.__setattr__(self, "train_counts", counts)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Groups":
        train = (manifest.get("group_counts") or {}).get("train")
        return cls(tuple(manifest["class_names"]), tuple(manifest["attribute_names"]),
                   tuple(train) if train is not None else None)

    # -- sizes and the rule ----------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_attributes(self) -> int:
        return len(self.attribute_names)

    @property
    def n_groups(self) -> int:
        return self.n_classes * self.n_attributes

    def group_of(self, y, a):
        """g = A·y + a, for ints or integer arrays."""
        return self.n_attributes * y + a

    def class_of(self, g):
        return g // self.n_attributes

    def attribute_of(self, g):
        return g % self.n_attributes

    # -- names -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """'class · attribute' for g = 0 … G−1."""
        return [f"{c} · {a}" for c in self.class_names for a in self.attribute_names]

    def name(self, g: int) -> str:
        return self.names[int(g)]

    # -- proportions and checks ------------------------------------------------------------
    @property
    def train_proportions(self) -> np.ndarray | None:
        if self.train_counts is None or sum(self.train_counts) == 0:
            return None
        counts = np.asarray(self.train_counts, dtype=np.float64)
        return counts / counts.sum()

    def counts(self, g: np.ndarray) -> list[int]:
        return np.bincount(np.asarray(g, dtype=np.int64), minlength=self.n_groups)[: self.n_groups].tolist()

    def check_labels(self, y: np.ndarray, a: np.ndarray, source: str, first_row: int = 0) -> None:
        """Every y in 0…C−1 and a in 0…A−1; else InputError naming the first bad row."""
        for what, values, size in (("label", y, self.n_classes), ("attribute", a, self.n_attributes)):
            values = np.asarray(values)
            bad = np.flatnonzero((values < 0) | (values >= size))
            if len(bad):
                i = int(bad[0])
                raise InputError(f"{source}: row {i + first_row}: {what} {values[i]} is outside 0…{size - 1} "
                                 f"({len(bad)} bad row(s) in all)")

    def require_rows(self, g: np.ndarray, minimum: int, where: str, why: str) -> None:
        """Every group g = 0…G−1 (not only those up to the largest present) has at least `minimum` rows in `g`;
        else InputError naming each group short of it, with its count."""
        counts = self.counts(g)
        short = [f"{self.name(k)} (group {k}: {n} row{'s' if n != 1 else ''})" for k, n in enumerate(counts) if n < minimum]
        if short:
            raise InputError(f"{where} has fewer than {minimum} rows of {', '.join(short)}; {why}, so it needs at least "
                             f"{minimum} rows of every group 0…{self.n_groups - 1}")

    def partition(self, g: np.ndarray) -> list[np.ndarray]:
        """Row positions of each group, g = 0 … G−1 (SpuCo's group partition)."""
        g = np.asarray(g)
        return [np.flatnonzero(g == k) for k in range(self.n_groups)]

    def balanced_subsample(self, rng: np.random.Generator, g: np.ndarray) -> np.ndarray:
        """Every present group cut to the smallest present group's size (DFR's subsampling)."""
        members = [m for m in self.partition(g) if len(m)]
        size = min(len(m) for m in members)
        return np.concatenate([rng.permutation(m)[:size] for m in members])

    # -- evaluation ------------------------------------------------------------------------
    def accuracies(self, pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Per-group accuracy (NaN for a group with no rows)."""
        correct = (np.asarray(pred) == np.asarray(y)).astype(np.float64)
        g = np.asarray(g, dtype=np.int64)
        n = np.bincount(g, minlength=self.n_groups)[: self.n_groups]
        hits = np.bincount(g, weights=correct, minlength=self.n_groups)[: self.n_groups]
        with np.errstate(invalid="ignore", divide="ignore"):
            return hits / n

    def worst_group_accuracy(self, pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
        return float(np.nanmin(self.accuracies(pred, y, g)))

    def metrics(self, pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> dict:
        """`metrics.json` figures for one split (see `metrics.group_metrics`), adjusted by train proportions."""
        from hsfm_core.metrics import group_metrics

        return group_metrics(pred, y, g, self.n_groups, self.train_counts)


def binary(class_names: Sequence[str] = ("class 0", "class 1"),
           attribute_names: Sequence[str] = ("attribute 0", "attribute 1")) -> Groups:
    """The Waterbirds/CelebA shape: 2 classes × 2 attributes."""
    return Groups(tuple(class_names), tuple(attribute_names))
