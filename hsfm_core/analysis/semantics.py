"""What a run group's edits encode, with evidence (docs/ARCHITECTURE.md §Semantics).

Decode (`analysis/decode.py`) reads one run's mean edit as raw cosines with CLIP text. This module
turns such a reading into a tested statement over **a run group** (the seeds of one configuration):

- **A null.** For every run and class, each support edit Δ_i is replaced by a random *within-class
  difference of real train features* (random sign), rescaled to ‖Δ_i‖, and the class's mean edit is
  recomputed; N draws (≥ 100, default 1,000), seeded and vectorised. Isotropic directions would be
  far too lenient: the attribute is the largest direction of variance inside a class, so random
  within-class differences already lean on it. p = (1 + #{|null| ≥ |observed|}) / (N + 1).
  The differences come from a seeded pool of `POOL_DIFFERENCES` (or 4 × the support size) pairs of
  train rows per class, so that one matrix product draws all N means.
- **Seeds** are combined with Fisher's method on the per-seed p-values, and a reading also needs the
  seeds to agree in sign (all of them by default, `sign_share`): Fisher alone would call two seeds
  pointing opposite ways "significant". Benjamini–Hochberg corrects across the concept bank.
- **Modality gap and class leakage** (`scoring="centred"`, the default): the bank's mean text embedding
  is subtracted and each concept renormalised (SpLiCE, DrML); the prompt-averaged class-name
  directions, centred alike, are projected out of the edit and of every concept, so "water" cannot
  score by riding on "waterbird". Concepts left with little length after that projection (the class
  names themselves) are set aside and named. `scoring="raw"` keeps Decode's plain cosines.
- **Explained share**: the share of the (projected) mean edit's squared norm inside the span of the
  scored concepts, beside what a random direction would get (rank / dimension).
- **Sparse explanation**: a non-negative Lasso (its exact path by scikit-learn's LARS, `positive=True`)
  of the unit mean edit on the signed bank [T, −T], at the weakest penalty on its path that keeps
  at most 10 concepts (SpLiCE's decomposition; it reports a cosine of 0.43–0.54 at 3–9 concepts).
- **The paper's claim**, where train has attribute labels: u_c = μ(c, minority) − μ(c, majority) of
  the original train features (the attribute of fewest / most train rows in the class), and the
  alignment cos(Δ̄_c, u_c) per seed against the same null. It needs no text, so it also works for
  stores outside CLIP space.

The statistics are pure functions over arrays (top half); `edit_semantics` reads a store and runs
(bottom half) and returns plain JSON types.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from hsfm_core.errors import InputError

DEFAULT_NULL_DRAWS = 1000
MIN_NULL_DRAWS = 100
DEFAULT_ALPHA = 0.05
DEFAULT_SIGN_SHARE = 1.0  # every seed must agree in sign
DEFAULT_CONTRAST = ("water background", "land background")  # decode.DEFAULT_CONTRAST (not imported: torch)
SCORINGS = ("centred", "raw")
POOL_DIFFERENCES = 4096  # within-class differences per class that null draws pick from (at least 4 × support)
SPARSE_MIN_ACTIVE, SPARSE_MAX_ACTIVE = 3, 10
CLASS_LEAK_MIN_NORM = 0.25  # a concept keeping less than this length after projecting out the class names is set aside
HISTOGRAM_BINS = 40
VERDICTS = ("toward_minority", "away_from_minority", "no_consistent_direction")


# ---------------------------------------------------------------------------------------------
# The null: random within-class differences of real train features, rescaled to each edit's norm
# ---------------------------------------------------------------------------------------------

def difference_pool(features, rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` differences x_j − x_k (float64, size × d) of random pairs j ≠ k of `rows` of `features`
    (a memory map is read only at the rows drawn). Pairs of identical features are dropped."""
    rows = np.asarray(rows)
    if len(rows) < 2:
        raise InputError(f"a null of within-class differences needs ≥ 2 train rows of the class, found {len(rows)}")
    j = rng.integers(0, len(rows), size)
    k = (j + rng.integers(1, len(rows), size)) % len(rows)  # uniform over the other rows
    needed, inverse = np.unique(np.concatenate([rows[j], rows[k]]), return_inverse=True)
    block = np.asarray(features[needed], dtype=np.float64)  # sorted rows: one sequential pass over a memory map
    pool = block[inverse[:size]] - block[inverse[size:]]
    pool = pool[np.linalg.norm(pool, axis=1) > 0]
    if not len(pool):
        raise InputError("every train feature of the class is identical, so there is no within-class difference "
                         "to build a null from")
    return pool


def draw_null(rng: np.random.Generator, n_draws: int, n_support: int, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices N × n into the pool, signs N × n of ±1): which difference replaces each support edit."""
    return rng.integers(0, pool_size, (n_draws, n_support)), rng.choice(np.array([-1.0, 1.0]), (n_draws, n_support))


def null_mean_edits(indices: np.ndarray, signs: np.ndarray, edit_norms: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Mean edit of each null draw (N × d): mean_i signs[·, i] · ‖Δ_i‖ · pool[indices[·, i]] / ‖pool[·]‖.

    Vectorised as one product (N × Q weights) @ (Q × d pool) when the support is large (float32: the
    cost of the CelebA preset), else a gather per chunk of draws."""
    n_draws, n_support = indices.shape
    pool_norms = np.linalg.norm(pool, axis=1)
    weights = signs * np.asarray(edit_norms, dtype=np.float64)[None, :] / pool_norms[indices] / n_support
    if 32 * n_support >= len(pool):  # dense BLAS beats a random-access gather long before equal flops
        flat = (np.arange(n_draws)[:, None] * len(pool) + indices).ravel()
        mixing = np.bincount(flat, weights.ravel(), minlength=n_draws * len(pool)).reshape(n_draws, len(pool))
        return (mixing.astype(np.float32) @ np.asarray(pool, dtype=np.float32)).astype(np.float64)
    out = np.empty((n_draws, pool.shape[1]))
    chunk = max(1, (1 << 23) // max(1, n_support * pool.shape[1]))  # ≤ 64 MB gathered at a time
    for start in range(0, n_draws, chunk):
        stop = min(n_draws, start + chunk)
        out[start:stop] = np.einsum("nk,nkd->nd", weights[start:stop], pool[indices[start:stop]])
    return out


def cosines(directions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """cos of each direction (m × D) with each target (K × D): m × K (0 for a zero vector)."""
    d = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    t = np.atleast_2d(np.asarray(targets, dtype=np.float64))
    dn = np.linalg.norm(d, axis=1, keepdims=True)
    tn = np.linalg.norm(t, axis=1, keepdims=True)
    return (d / np.where(dn > 0, dn, 1)) @ (t / np.where(tn > 0, tn, 1)).T


def permutation_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Two-sided permutation p-values: (1 + #{|null| ≥ |observed|}) / (N + 1) per statistic.
    `observed` (K,), `null` (N × K)."""
    observed, null = np.asarray(observed, dtype=np.float64), np.asarray(null, dtype=np.float64)
    exceed = (np.abs(null) >= np.abs(observed)[None, :] - 1e-12).sum(axis=0)  # ties (equal up to rounding) count
    return (1.0 + exceed) / (len(null) + 1.0)


def combine_seeds(p_values: np.ndarray) -> np.ndarray:
    """Fisher's method over seeds (axis 0): one p-value per statistic. One seed: its own p."""
    p_values = np.atleast_2d(np.asarray(p_values, dtype=np.float64))
    if len(p_values) == 1:
        return p_values[0].copy()
    return np.asarray(stats.combine_pvalues(p_values, method="fisher", axis=0).pvalue, dtype=np.float64)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) across a family."""
    p_values = np.asarray(p_values, dtype=np.float64)
    return np.asarray(stats.false_discovery_control(p_values, method="bh"), dtype=np.float64) if len(p_values) else p_values


def sign_agreement(per_seed: np.ndarray) -> np.ndarray:
    """Share of seeds whose value has the sign of the mean over seeds, per statistic (axis 0)."""
    per_seed = np.atleast_2d(np.asarray(per_seed, dtype=np.float64))
    mean_sign = np.sign(per_seed.mean(axis=0))
    return (np.sign(per_seed) == mean_sign[None, :]).mean(axis=0) * (mean_sign != 0)


def verdict_rule(alpha: float, sign_share: float) -> str:
    seeds = "every seed" if sign_share >= 1 else f"at least {sign_share:.0%} of the seeds"
    return (f"toward_minority (away_from_minority) when {seeds} give a positive (negative) cos(Δ̄_c, u_c) and "
            f"Fisher's combination of the seeds' two-sided null p-values is below α = {alpha:g}; "
            f"otherwise no_consistent_direction")


def verdict(per_seed: Sequence[float], p_combined: float, alpha: float, sign_share: float) -> str:
    """The class's verdict on the attribute alignment (see `verdict_rule`)."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    agreement = float(sign_agreement(per_seed[:, None])[0])
    if p_combined < alpha and agreement >= sign_share - 1e-12:
        return VERDICTS[0] if per_seed.mean() > 0 else VERDICTS[1]
    return VERDICTS[2]


# ---------------------------------------------------------------------------------------------
# Text geometry: centring, class-name projection, explained share, sparse explanation
# ---------------------------------------------------------------------------------------------

def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def _orthonormal_rows(x: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis (r × D) of the rows' span."""
    if not len(x):
        return np.zeros((0, x.shape[1]))
    _, s, vt = np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)
    return vt[: int((s > tol * max(s[0], 1e-300)).sum())]


@dataclass(frozen=True)
class TextSpace:
    """The concept vectors edits are scored against, in the text encoder's joint space.

    `vectors` (K × D, unit rows) are the concepts as scored: centred and with the class-name
    directions `removed` (r × D, orthonormal) projected out (`scoring="centred"`), or the raw bank
    embeddings. `kept[k]` is False for a concept set aside because the projection left it (almost)
    nothing; `span` is an orthonormal basis of the kept vectors' span (for the explained share)."""

    scoring: str
    concepts: list[str]
    vectors: np.ndarray
    kept: np.ndarray
    removed: np.ndarray
    span: np.ndarray

    def project(self, directions: np.ndarray) -> np.ndarray:
        """Directions with the class-name directions projected out (as they are for raw scoring)."""
        d = np.atleast_2d(np.asarray(directions, dtype=np.float64))
        return d - (d @ self.removed.T) @ self.removed if len(self.removed) else d

    def scores(self, directions: np.ndarray) -> np.ndarray:
        """cos(projected direction, concept) for every direction (m × D) and concept: m × K."""
        return cosines(self.project(directions), self.vectors)

    def explained_share(self, directions: np.ndarray) -> np.ndarray:
        """‖projection onto the kept concepts' span‖² / ‖direction‖², after the class-name projection."""
        d = self.project(directions)
        total = (d**2).sum(axis=1)
        inside = ((d @ self.span.T) ** 2).sum(axis=1)
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)

    @property
    def chance_share(self) -> float:
        """What a random isotropic direction's explained share averages: rank / free dimensions."""
        return len(self.span) / max(1, self.vectors.shape[1] - len(self.removed))


def text_space(concepts: list[str], bank: np.ndarray, class_embeddings: np.ndarray | None,
               scoring: str = "centred") -> TextSpace:
    """Build the scored concept vectors from unit bank embeddings (K × D) and prompt-averaged
    class-name embeddings (C × D). Centred: T̃ = unit(T − mean T), Ẽ = unit(E − mean T); the span of
    Ẽ is projected out of T̃ and the result renormalised."""
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    bank = _unit_rows(np.asarray(bank, dtype=np.float64))
    if scoring == "raw":
        kept = np.ones(len(bank), dtype=bool)
        return TextSpace("raw", list(concepts), bank, kept, np.zeros((0, bank.shape[1])), _orthonormal_rows(bank))
    mean = bank.mean(axis=0)
    centred = _unit_rows(bank - mean)
    removed = np.zeros((0, bank.shape[1]))
    if class_embeddings is not None and len(class_embeddings):
        removed = _orthonormal_rows(_unit_rows(_unit_rows(np.asarray(class_embeddings, dtype=np.float64)) - mean))
    projected = centred - (centred @ removed.T) @ removed if len(removed) else centred
    length = np.linalg.norm(projected, axis=1)
    kept = length >= CLASS_LEAK_MIN_NORM
    vectors = np.where(kept[:, None], _unit_rows(projected), 0.0)
    return TextSpace("centred", list(concepts), vectors, kept, removed, _orthonormal_rows(vectors[kept]))


def sparse_explanation(direction: np.ndarray, vectors: np.ndarray, names: Sequence[str],
                       max_active: int = SPARSE_MAX_ACTIVE) -> dict:
    """Non-negative Lasso of the unit direction on [T, −T] (D × 2K), at the weakest penalty with at most
    `max_active` concepts. The whole Lasso path is computed exactly by LARS (scikit-learn's
    `lars_path(method="lasso", positive=True)`, the same objective ‖y − Xw‖² / (2·D) + α‖w‖₁ as
    `Lasso(positive=True)`), so "the weakest penalty within the budget" is the knot just before the
    (max_active + 1)-th concept enters. → {"concepts": [{concept, weight}] by |weight| (weight < 0: along
    −concept), "cosine": reconstruction cosine, "alpha": the penalty}."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import lars_path

    target = np.asarray(direction, dtype=np.float64).ravel()
    norm = np.linalg.norm(target)
    if norm == 0 or not len(vectors):
        return {"concepts": [], "cosine": None, "alpha": None, "cosine_by_size": {}}
    target = target / norm
    dictionary = np.concatenate([vectors, -vectors]).T  # D × 2K
    with warnings.catch_warnings():  # near-degenerate knots late on the path do not reach the chosen one
        warnings.simplefilter("ignore", ConvergenceWarning)
        alphas, _, coefs = lars_path(dictionary, target, method="lasso", positive=True,
                                     max_iter=4 * max_active + 8)
    active = (np.abs(coefs) > 0).sum(axis=0)

    def knot(budget: int) -> int:  # the last knot before more than `budget` concepts are active
        over = np.flatnonzero(active > budget)
        return (int(over[0]) if len(over) else len(alphas)) - 1

    def reconstruction_cosine(coef: np.ndarray) -> float | None:
        reconstruction = dictionary @ coef
        return float(cosines(reconstruction, target)[0, 0]) if np.linalg.norm(reconstruction) > 0 else None

    best = knot(max_active)
    coef = coefs[:, best]
    weights = coef[: len(vectors)] - coef[len(vectors):]
    order = [int(i) for i in np.argsort(-np.abs(weights)) if weights[i] != 0]
    return {"concepts": [{"concept": names[i], "weight": float(weights[i])} for i in order],
            "cosine": reconstruction_cosine(coef), "alpha": float(alphas[best]),
            # the same path at smaller budgets, for a comparison with SpLiCE's 3–9 concepts
            "cosine_by_size": {str(k): reconstruction_cosine(coefs[:, knot(k)]) for k in (SPARSE_MIN_ACTIVE, 5, max_active)}}


def jaccard_across(sets: Sequence[set]) -> float | None:
    """Mean pairwise Jaccard overlap of the seeds' chosen concept sets (None below two seeds)."""
    pairs = [(a, b) for a, b in combinations(sets, 2)]
    if not pairs:
        return None
    return float(np.mean([len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs]))


# ---------------------------------------------------------------------------------------------
# A run group, as arrays
# ---------------------------------------------------------------------------------------------

@dataclass
class SeedEdits:
    """One run's support edits: Δ = after − before (n × d, store space) and the support's labels."""

    run_id: str
    seed: int | None
    delta: np.ndarray
    labels: np.ndarray
    rows: np.ndarray | None = None  # store rows of the support examples


@dataclass
class ClassReference:
    """What a class's statistics are measured against, from the original train features."""

    index: int
    name: str
    pool: np.ndarray  # Q × d within-class differences, unit rows, float32 (the null's building blocks)
    direction: np.ndarray | None  # u_c, unit; None without two attributes in the class's train rows
    minority: str | None = None
    majority: str | None = None
    train_counts: dict | None = None
    why_no_direction: str | None = None


def class_references(features, y: np.ndarray, a: np.ndarray, train: np.ndarray, class_names: Sequence[str],
                     attribute_names: Sequence[str], classes: Sequence[int], seed: int, pool_size: int) -> list[ClassReference]:
    """Difference pool and attribute direction for each class in `classes` (train rows only)."""
    out = []
    for c in classes:
        rows = np.flatnonzero(train & (y == c))
        pool = difference_pool(features, rows, pool_size, np.random.default_rng([seed, 7, int(c)]))
        pool = _unit_rows(pool).astype(np.float32)  # only directions matter: every draw is rescaled
        counts = {attribute_names[k]: int((a[rows] == k).sum()) for k in range(len(attribute_names))}
        present = [k for k in range(len(attribute_names)) if counts[attribute_names[k]] > 0]
        ref = ClassReference(int(c), str(class_names[c]), pool, None, train_counts=counts)
        if len(attribute_names) < 2:
            ref.why_no_direction = "the store has one attribute, so there is no minority attribute"
        elif len(present) < 2:
            ref.why_no_direction = f"class {class_names[c]!r} shows one attribute in train"
        else:
            order = sorted(present, key=lambda k: (counts[attribute_names[k]], k))
            minority, majority = order[0], order[-1]
            direction = (_class_mean(features, rows[a[rows] == minority])
                         - _class_mean(features, rows[a[rows] == majority]))
            if np.linalg.norm(direction) == 0:
                ref.why_no_direction = "the minority and majority attributes have the same mean feature"
            else:
                ref.direction = direction / np.linalg.norm(direction)
                ref.minority, ref.majority = str(attribute_names[minority]), str(attribute_names[majority])
        out.append(ref)
    return out


def _class_mean(features, rows: np.ndarray, chunk: int = 16384) -> np.ndarray:
    total = np.zeros(features.shape[1])
    for start in range(0, len(rows), chunk):
        total += np.asarray(features[rows[start:start + chunk]], dtype=np.float64).sum(axis=0)
    return total / len(rows)


def _finite(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return None, None
    return _finite(values.mean()), (_finite(values.std(ddof=1)) if len(values) > 1 else None)


def _clip_unit(x: float | None) -> float | None:
    return None if x is None else float(min(1.0, max(-1.0, x)))


def _histogram(null_values: np.ndarray) -> dict:
    """Counts of the null alignment per seed over shared edges (for the page's histogram)."""
    lo, hi = float(np.min(null_values)), float(np.max(null_values))
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, HISTOGRAM_BINS + 1)
    return {"edges": [float(e) for e in edges],
            "counts": [[int(c) for c in np.histogram(v, bins=edges)[0]] for v in null_values]}


def group_semantics(seeds: list[SeedEdits], references: list[ClassReference], *, text: TextSpace | None = None,
                    to_text: Callable[[np.ndarray], np.ndarray] | None = None, text_reason: str | None = None,
                    contrast: tuple[str, str] = DEFAULT_CONTRAST, null_draws: int = DEFAULT_NULL_DRAWS,
                    alpha: float = DEFAULT_ALPHA, seed: int = 0, sign_share: float = DEFAULT_SIGN_SHARE) -> dict:
    """The semantics of a run group (the JSON of `edit_semantics`, less the run/store keys), from arrays.

    `text`/`to_text` (a linear map from store space into the text space) are None when the store
    has no text space; then the text parts are None and `text_reason` says why."""
    concept_index = {name: k for k, name in enumerate(text.concepts)} if text is not None else {}
    per_class, per_example = [], [{"run": s.run_id, "seed": s.seed, "rows": None if s.rows is None else
                                    [int(r) for r in s.rows], "classes": [int(c) for c in s.labels],
                                    "alignment": [None] * len(s.labels), "agrees": [None] * len(s.labels)}
                                   for s in seeds]
    for ref in references:
        present = [i for i, s in enumerate(seeds) if (s.labels == ref.index).any()]
        if not present:
            continue
        runs = [seeds[i] for i in present]
        means, nulls = [], []
        for i, s in zip(present, runs):
            delta = s.delta[s.labels == ref.index]
            means.append(delta.mean(axis=0))
            indices, signs = draw_null(np.random.default_rng([seed, i, ref.index]), null_draws, len(delta), len(ref.pool))
            nulls.append(null_mean_edits(indices, signs, np.linalg.norm(delta, axis=1), ref.pool))
        means = np.asarray(means)
        entry = {"class": ref.index, "name": ref.name, "seeds": [s.seed for s in runs], "runs": [s.run_id for s in runs],
                 "n_support": [int((s.labels == ref.index).sum()) for s in runs]}

        entry.update(_alignment_readings(ref, runs, means, nulls, alpha, sign_share))  # §5
        for i, s, own, agrees in zip(present, runs, entry.pop("_example_alignment"), entry.pop("_example_agrees")):
            for k, row in enumerate(np.flatnonzero(s.labels == ref.index) if own is not None else []):
                per_example[i]["alignment"][row] = float(own[k])
                per_example[i]["agrees"][row] = None if agrees is None else bool(agrees[k])
        entry["mean_edit_agreement"] = _seed_agreement(means, nulls)

        # §1–4 the text readings
        if text is None:
            entry.update({"contrast": None, "concepts": None, "all_concepts": None, "sparse": None,
                          "explained_share": None, "text_reason": text_reason})
        else:
            entry.update(_text_readings(text, to_text, means, nulls, concept_index, contrast, alpha, sign_share))
        per_class.append(entry)
    return {"verdict_rule": verdict_rule(alpha, sign_share), "per_class": per_class, "per_example": per_example}


def _alignment_readings(ref: ClassReference, runs: list[SeedEdits], means: np.ndarray, nulls: list[np.ndarray],
                        alpha: float, sign_share: float) -> dict:
    """§5 of one class: cos(Δ̄_c, u_c) per seed against the null, the verdict, the verdict with each seed
    left out, and each support edit's own alignment (`_example_alignment`, `_example_agrees`: per seed)."""
    deltas = [s.delta[s.labels == ref.index] for s in runs]
    if ref.direction is None:
        return {"verdict": None, "verdict_rule": f"no verdict: {ref.why_no_direction}",
                "attribute": {"minority": None, "majority": None, "train_counts": ref.train_counts,
                              "reason": ref.why_no_direction},
                "attribute_alignment": None,
                "per_example": {"share_agreeing": None, "share_agreeing_per_seed": [None] * len(runs), "share_positive": None},
                "_example_alignment": [None] * len(runs), "_example_agrees": [None] * len(runs)}
    observed = cosines(means, ref.direction)[:, 0]
    null = np.stack([cosines(n, ref.direction)[:, 0] for n in nulls])  # seeds × N
    p_seed = np.array([permutation_p(observed[k:k + 1], null[k][:, None])[0] for k in range(len(runs))])
    p = float(combine_seeds(p_seed[:, None])[0])
    reading = verdict(observed, p, alpha, sign_share)
    # what it would take to overturn the verdict: the verdict with each seed left out in turn (≥ 3 seeds)
    left_out = []
    for k in range(len(runs) if len(runs) >= 3 else 0):
        keep = [j for j in range(len(runs)) if j != k]
        p_k = float(combine_seeds(p_seed[keep][:, None])[0])
        left_out.append({"seed": runs[k].seed, "run": runs[k].run_id, "p_value": p_k,
                         "verdict": verdict(observed[keep], p_k, alpha, sign_share)})
    mean, std = _mean_std(observed)
    own = [cosines(d, ref.direction)[:, 0] for d in deltas]
    sign = {VERDICTS[0]: 1.0, VERDICTS[1]: -1.0}.get(reading)
    agrees = [None if sign is None else np.sign(o) == sign for o in own]
    shares = [None if a is None else float(a.mean()) for a in agrees]
    return {
        "verdict": reading, "verdict_rule": verdict_rule(alpha, sign_share),
        "attribute": {"minority": ref.minority, "majority": ref.majority, "train_counts": ref.train_counts},
        "attribute_alignment": {
            "per_seed": [float(v) for v in observed], "mean": mean, "std": std, "p_value": p,
            "p_per_seed": [float(v) for v in p_seed], "sign_agreement": float(sign_agreement(observed[:, None])[0]),
            "null_mean": float(null.mean()), "null_q95_abs": float(np.quantile(np.abs(null), 0.95)),
            "null_histogram": _histogram(null), "leave_one_seed_out": left_out,
            "holds_without_any_one_seed": all(x["verdict"] == reading for x in left_out) if left_out else None},
        "per_example": {"share_agreeing": None if sign is None else float(np.mean(shares)),
                        "share_agreeing_per_seed": shares,
                        "share_positive": float(np.mean(np.concatenate(own) > 0))},
        "_example_alignment": own, "_example_agrees": agrees,
    }


def _seed_agreement(means: np.ndarray, nulls: list[np.ndarray]) -> dict:
    """Pairwise cosine of the seeds' mean edits, beside isotropic chance (1/√d, the typical |cos| of two
    random directions) and the 95th percentile of the same cosine between null draws of two seeds."""
    chance = float(1 / math.sqrt(means.shape[1]))
    pairs = list(combinations(range(len(means)), 2))
    if not pairs:
        return {"mean_cosine": None, "min_cosine": None, "chance": chance, "null_q95": None, "pairs": 0,
                "reason": "one seed: agreement across seeds is unknown"}
    pair_cos = [float(cosines(means[i], means[j])[0, 0]) for i, j in pairs]
    null_pairs = np.concatenate([np.einsum("nd,nd->n", _unit_rows(nulls[i]), _unit_rows(nulls[j])) for i, j in pairs])
    return {"mean_cosine": float(np.mean(pair_cos)), "min_cosine": float(np.min(pair_cos)), "chance": chance,
            "null_q95": float(np.quantile(null_pairs, 0.95)), "pairs": len(pairs)}


def _text_readings(text: TextSpace, to_text, means: np.ndarray, nulls: list[np.ndarray], concept_index: dict,
                   contrast: tuple[str, str], alpha: float, sign_share: float) -> dict:
    """Concept table, named contrast, explained share and sparse explanation of one class over seeds."""
    kept = np.flatnonzero(text.kept)
    mapped = to_text(means)  # seeds × D
    all_observed = text.scores(mapped)
    observed = all_observed[:, kept]  # seeds × K
    p_seed = np.empty_like(observed)
    null_scores = []
    for k, null in enumerate(nulls):
        scores = text.scores(to_text(null))  # N × K_all
        null_scores.append(scores)
        p_seed[k] = permutation_p(observed[k], scores[:, kept])
    p = combine_seeds(p_seed)
    q = benjamini_hochberg(p)
    agree = sign_agreement(observed)
    mean, std = observed.mean(axis=0), (observed.std(axis=0, ddof=1) if len(observed) > 1 else np.full(len(kept), np.nan))
    table = [{"concept": text.concepts[k], "mean": _clip_unit(float(mean[j])), "std": _finite(std[j]),
              "sign_agreement": float(agree[j]), "p_value": float(p[j]), "q_value": float(q[j]),
              "significant": bool(q[j] < alpha and agree[j] >= sign_share - 1e-12)}
             for j, k in enumerate(kept)]
    table.sort(key=lambda row: -row["mean"])

    # the named contrast: cos(·, positive) − cos(·, negative), with the same null, and its rank among random pairs
    positive, negative = contrast
    pos, neg = concept_index[positive], concept_index[negative]
    if text.kept[pos] and text.kept[neg]:
        values = all_observed[:, pos] - all_observed[:, neg]
        p_contrast = combine_seeds(np.array([permutation_p(values[k:k + 1], (s[:, pos] - s[:, neg])[:, None])[0]
                                             for k, s in enumerate(null_scores)])[:, None])[0]
        seed_mean = all_observed[:, kept].mean(axis=0)
        pair_values = np.abs(seed_mean[:, None] - seed_mean[None, :])[np.triu_indices(len(kept), 1)]
        named = abs(float(values.mean()))
        c_mean, c_std = _mean_std(values)
        contrast_entry = {"positive": positive, "negative": negative, "per_seed": [float(v) for v in values],
                          "mean": c_mean, "std": c_std, "p_value": float(p_contrast),
                          "sign_agreement": float(sign_agreement(values[:, None])[0]),
                          # share of the bank's other concept pairs whose |mean contrast| is at least the named one's
                          "random_pair_rank": float(((pair_values >= named - 1e-12).sum() - 1) / max(1, len(pair_values) - 1)),
                          "random_pairs": int(len(pair_values) - 1)}
    else:
        contrast_entry = {"positive": positive, "negative": negative, "per_seed": None, "mean": None, "std": None,
                          "p_value": None, "sign_agreement": None, "random_pair_rank": None,
                          "reason": "a contrast concept lies along a class name and was set aside"}

    # explained share and the sparse explanation (per seed, and of the seeds' mean direction)
    share = text.explained_share(mapped)
    projected = text.project(mapped)
    class_share = 1 - (projected**2).sum(axis=1) / np.maximum((mapped**2).sum(axis=1), 1e-300)
    vectors, names = text.vectors[kept], [text.concepts[k] for k in kept]
    per_seed = [sparse_explanation(d, vectors, names) for d in projected]
    group = sparse_explanation(_unit_rows(projected).mean(axis=0), vectors, names)
    chosen = [{(c["concept"], c["weight"] > 0) for c in s["concepts"]} for s in per_seed]
    return {
        "contrast": contrast_entry,
        "concepts": [row for row in table if row["significant"]],
        "all_concepts": table,
        "set_aside": [text.concepts[k] for k in np.flatnonzero(~text.kept)],
        "sparse": {**group, "jaccard_across_seeds": jaccard_across(chosen),
                   "per_seed": [{"concepts": s["concepts"], "cosine": s["cosine"]} for s in per_seed]},
        "explained_share": _finite(np.nanmean(share)),
        "explained_share_per_seed": [_finite(v) for v in share],
        "explained_share_chance": float(text.chance_share),
        "class_name_share": _finite(np.mean(class_share)) if len(text.removed) else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# Runs and stores
# ---------------------------------------------------------------------------------------------

def _config_difference(first: dict, other: dict) -> str:
    """What differs between two runs' group keys: 'method hsfm vs dfr', 'inner_lr 0.001 vs 0.002'."""
    a, b = json.loads(_group_key(first)), json.loads(_group_key(other))
    parts = []
    for key in a:
        if a[key] == b[key]:
            continue
        if isinstance(a[key], dict) and isinstance(b[key], dict):  # settings: name the differing ones
            parts += [f"{k} {a[key].get(k)!r} vs {b[key].get(k)!r}" for k in sorted(set(a[key]) | set(b[key]))
                      if a[key].get(k) != b[key].get(k)]
        else:
            parts.append(f"{key} {str(a[key])[:40]} vs {str(b[key])[:40]}")
    return ", ".join(parts)


def _group_key(run: dict) -> str:
    from hsfm_core.analysis.seeds import group_key

    return group_key(run)


def check_options(*, null_draws: int = DEFAULT_NULL_DRAWS, alpha: float = DEFAULT_ALPHA,
                  sign_share: float = DEFAULT_SIGN_SHARE, scoring: str = "centred",
                  contrast: Sequence[str] = DEFAULT_CONTRAST, concepts=None,
                  words: tuple[Sequence[str], Sequence[str]] | None = None) -> tuple[list[str], list[str]]:
    """Check the options (no file but the concept file is read); → the concept bank's (concepts,
    categories), from the file `concepts` (default: the bundled one) or in memory as `words`."""
    from hsfm_core.analysis.decode import read_concepts

    if isinstance(null_draws, bool) or not isinstance(null_draws, (int, np.integer)) or null_draws < MIN_NULL_DRAWS:
        raise InputError(f"null draws must be an integer ≥ {MIN_NULL_DRAWS} (p-values below 1/(N+1) are out of reach "
                         f"with fewer), got {null_draws!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise InputError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not (isinstance(sign_share, (int, float)) and 0.5 < sign_share <= 1):
        raise InputError(f"sign_share (the share of seeds that must agree in sign) must lie in (0.5, 1], got {sign_share!r}")
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    if len(contrast) != 2 or contrast[0] == contrast[1]:
        raise InputError(f"the contrast needs two different concepts (positive, negative), got {list(contrast)}")
    if words is not None:
        if concepts is not None:
            raise InputError("give a concept file or a vocabulary (words), not both")
        names, categories = [str(w) for w in words[0]], [str(c) for c in words[1]]
        if len(names) != len(categories) or len(names) < 2 or len(set(names)) != len(names):
            raise InputError(f"the vocabulary needs ≥ 2 distinct concepts, each with a category "
                             f"({len(names)} concepts, {len(categories)} categories)")
    else:
        names, categories = read_concepts(concepts)
    missing = [c for c in contrast if c not in names]
    if missing:
        source = "the vocabulary" if words is not None else concepts or "the bundled assets/concepts.txt"
        raise InputError(f"contrast concept {missing[0]!r} is not in the concept bank ({source}: "
                         f"{', '.join(names[:8])}, …); choose two of its concepts")
    return names, categories


def check_run_group(store, runs: Sequence[dict], **options) -> dict:
    """Refuse a bad group before anything is computed: InputError naming the run and what is missing.

    Checks: runs given and distinct; each finished, trained on this store and with a support set
    (whose labels and indices fit the store); all of one configuration (`seeds.group_key`: method,
    store, settings, sweep configuration); the store has train rows of every class in the supports;
    and the options (`check_options`: N ≥ 100, α, sign share, scoring, the contrast in the bank).
    → {run_id: support tensors} (so they are read once)."""
    from hsfm_core.runs import check_run_fits_store, load_support

    check_options(**options)
    runs = list(runs or [])
    if not runs:
        raise InputError("semantics needs at least one run (the seeds of one configuration)")
    ids = [r.get("run_id") for r in runs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"run {duplicates[0]} is listed twice")
    first = runs[0]
    for run in runs:
        check_run_fits_store(run, store)
        if run.get("status") != "done":
            raise InputError(f"run {run['run_id']} is {run.get('status')}: semantics reads finished runs only")
    for run in runs[1:]:
        if _group_key(run) != _group_key(first):
            raise InputError(f"run {run['run_id']} is not a seed of the configuration of {first['run_id']} "
                             f"({_config_difference(first, run)}); pass the seeds of one configuration")
    supports = {run["run_id"]: load_support(run, store) for run in runs}
    train = store.meta["split"].to_numpy() == "train"
    y = store.meta["y"].to_numpy()
    for run_id, support in supports.items():
        for c in np.unique(support["labels"].numpy()):
            if (train & (y == c)).sum() < 2:
                raise InputError(f"run {run_id}: class {store.class_names[int(c)]!r} has fewer than 2 train rows in "
                                 f"{store.path}, so there is no null of within-class differences")
    return supports


def _text_for(store, bridge_store, concepts: list[str], categories: list[str], scoring: str):
    """(TextSpace, map into its space, None) or (None, None, why there is no text reading)."""
    from hsfm_core.analysis.decode import clip_space_map, encode_concepts

    try:
        to_clip, text_encoder = clip_space_map(store, bridge_store)
    except InputError as exc:
        return None, None, str(exc)
    cache = store.path / "cache"
    bank = encode_concepts(text_encoder, concepts, categories, cache_dir=cache)
    class_bank = encode_concepts(text_encoder, list(store.class_names), ["class"] * len(store.class_names), cache_dir=cache)
    return text_space(concepts, bank.embeddings, class_bank.embeddings, scoring), to_clip, None


def edit_semantics(store, runs: Sequence[dict], *, concepts=None, words=None, bridge_store=None,
                   contrast: tuple[str, str] = DEFAULT_CONTRAST, null_draws: int = DEFAULT_NULL_DRAWS,
                   alpha: float = DEFAULT_ALPHA, seed: int = 0, scoring: str = "centred",
                   sign_share: float = DEFAULT_SIGN_SHARE, require_text: bool = False) -> dict:
    """What the edits of a run group encode: per class, across seeds, against a null.

    Args:
        store: the FeatureStore the runs were trained on.
        runs: run dicts (`runs.list_runs`/`find_run`) of one configuration, one per seed.
        concepts: a concept file (default: the bundled assets/concepts.txt); or `words`.
        words: the vocabulary in memory, (concepts, categories) (the Decode page's edited one).
        bridge_store: a CLIP store of the same images, for a store outside CLIP space; without one
            such a store gets the attribute alignment only, and "text" says why.
        contrast: (positive, negative) concepts of the bank.
        null_draws: N ≥ 100 null draws per run and class. alpha: the level of verdicts and q-values.
        seed: seeds the null. scoring: "centred" (default) or "raw" cosines.
        sign_share: the share of seeds that must agree in sign (1.0: all).
        require_text: raise instead of leaving the text readings out when there is no text space.

    Returns:
        {"scoring", "null_draws", "alpha", "seed", "sign_share", "runs", "seeds", "store", "contrast",
        "concepts_file", "null", "combine", "verdict_rule", "text": {available, reason, ...},
        "per_class": [...], "per_example": [...]}: see docs/ARCHITECTURE.md §Semantics for every key.
        Fractions lie in [0, 1], cosines in [−1, 1]; None where a value does not exist."""
    options = dict(null_draws=null_draws, alpha=alpha, sign_share=sign_share, scoring=scoring,
                   contrast=tuple(contrast), concepts=concepts, words=words)
    names, categories = check_options(**options)
    supports = check_run_group(store, runs, **options)
    text, to_text, reason = _text_for(store, bridge_store, names, categories, scoring)
    if text is None and require_text:
        raise InputError(reason)
    seeds = [SeedEdits(run["run_id"], (run.get("config") or {}).get("seed"),
                       (supports[run["run_id"]]["after"].double() - supports[run["run_id"]]["before"].double()).numpy(),
                       supports[run["run_id"]]["labels"].numpy().astype(np.int64),
                       supports[run["run_id"]]["indices"].numpy().astype(np.int64)) for run in runs]
    classes = sorted({int(c) for s in seeds for c in np.unique(s.labels)})
    largest = max(int((s.labels == c).sum()) for s in seeds for c in classes)
    meta = store.meta
    references = class_references(store.features, meta["y"].to_numpy(), meta["a"].to_numpy(),
                                  meta["split"].to_numpy() == "train", store.class_names, store.attribute_names,
                                  classes, seed, max(POOL_DIFFERENCES, 4 * largest))
    result = group_semantics(seeds, references, text=text, to_text=to_text, text_reason=reason,
                             contrast=tuple(contrast), null_draws=int(null_draws), alpha=float(alpha), seed=int(seed),
                             sign_share=float(sign_share))
    from hsfm_core.analysis.decode import DEFAULT_CONCEPTS

    return {
        "scoring": scoring, "null_draws": int(null_draws), "alpha": float(alpha), "seed": int(seed),
        "sign_share": float(sign_share), "runs": [r["run_id"] for r in runs], "seeds": [s.seed for s in seeds],
        "store": str(store.path), "contrast": {"positive": contrast[0], "negative": contrast[1]},
        "concepts_file": None if words is not None else str(concepts or DEFAULT_CONCEPTS),
        "null": ("each support edit replaced by a random within-class difference of train features (random sign), "
                 f"rescaled to the edit's norm; {int(null_draws)} draws per run and class; "
                 "p = (1 + #{|null| ≥ |observed|}) / (N + 1)"),
        "combine": "Fisher's method over the seeds' p-values; Benjamini–Hochberg across the concept bank",
        "text": {"available": text is not None, "reason": reason, "scoring": scoring if text is not None else None,
                 "bank_size": len(names), "set_aside": None if text is None else
                 [names[k] for k in np.flatnonzero(~text.kept)]},
        **result,
    }
