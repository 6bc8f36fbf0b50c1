"""Edit diagnostics (docs/ARCHITECTURE.md §HSFM): how far each edit moved its feature, and whether the
edited feature has left the data.

For every support example with original feature z and edit Δ = z' − z:

- `edit_norm` ‖Δ‖ and `relative_edit_norm` ‖Δ‖ / ‖z‖;
- `off_data_ratio`: the Euclidean distance from z' to its nearest real feature of the store,
  divided by the store's typical nearest-neighbour distance (the median, over a sample of real
  features, of the distance to their nearest *other* real feature). A ratio near 1 means z' sits
  among real features as closely as real features sit among each other.

An edited point counts as **off the data** when its ratio exceeds what real features reach: the
99th percentile of the real features' own ratios (measured on the same sample), so the threshold
adapts to the store's density instead of being a magic number. Decode scores and nearest images
of such points are extrapolations; the views say so when the median support example is off the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFERENCE_SAMPLE = 4096  # real features whose nearest-neighbour distances set the scale
REFERENCE_PERCENTILE = 99.0
CHUNK_ROWS = 16384
QUERY_BLOCK = 512  # 512 × 16384 float64 distances = 64 MB at a time


@dataclass(frozen=True)
class DataScale:
    """The store's nearest-neighbour scale: typical distance and the off-the-data threshold ratio."""

    typical_nn_distance: float
    off_data_threshold: float  # ratio above which a point is farther from the data than 99% of real points
    sample_size: int


def _nearest_distances(queries: np.ndarray, features: np.ndarray, exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """Exact Euclidean distance from each query to its nearest row of `features` (float64, in blocks of
    QUERY_BLOCK × CHUNK_ROWS so memory stays bounded), skipping row `exclude_rows[i]` for query i (a real
    feature is not its own neighbour)."""
    q_all = np.asarray(queries, dtype=np.float64)
    best = np.full(len(q_all), np.inf)
    for start in range(0, len(features), CHUNK_ROWS):
        block = np.asarray(features[start : start + CHUNK_ROWS], dtype=np.float64)
        block_sq = (block**2).sum(axis=1)
        for q0 in range(0, len(q_all), QUERY_BLOCK):
            q = q_all[q0 : q0 + QUERY_BLOCK]
            d2 = (q**2).sum(axis=1)[:, None] - 2 * q @ block.T + block_sq[None, :]
            if exclude_rows is not None:
                own = exclude_rows[q0 : q0 + QUERY_BLOCK]
                inside = (own >= start) & (own < start + len(block))
                d2[np.flatnonzero(inside), own[inside] - start] = np.inf
            best[q0 : q0 + QUERY_BLOCK] = np.minimum(best[q0 : q0 + QUERY_BLOCK], d2.min(axis=1))
    return np.sqrt(np.maximum(best, 0.0))


def data_scale(features: np.ndarray, seed: int = 0, sample: int = REFERENCE_SAMPLE) -> DataScale:
    """Typical nearest-neighbour distance of a store's features, from a seeded sample of rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), size=min(sample, len(features)), replace=False))
    distances = _nearest_distances(np.asarray(features[rows]), features, exclude_rows=rows)
    typical = float(np.median(distances))
    typical = typical if typical > 0 else float(np.mean(distances)) or 1.0  # duplicated features: avoid ÷0
    return DataScale(typical, float(np.percentile(distances / typical, REFERENCE_PERCENTILE)), len(rows))


def store_scale(store) -> DataScale:
    """`data_scale` of a store's features, cached in `<workspace>/cache/` by content hash (one pass over the
    store per store: seconds on the demo, about a minute for 200k × 512 on 2 cores)."""
    import json

    from hsfm_core.fsutil import write_json_atomic

    path = store.path / "cache" / f"data-scale-{store.content_hash.split(':')[-1]}.json"
    try:
        return DataScale(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        scale = data_scale(store.features)
        write_json_atomic(path, {"typical_nn_distance": scale.typical_nn_distance,
                                 "off_data_threshold": scale.off_data_threshold, "sample_size": scale.sample_size})
        return scale


def run_diagnostics(store, support: dict) -> dict:
    """`edit_diagnostics` of a run's support set (safetensors `before` / `after`) on its store."""
    return edit_diagnostics(support["before"].numpy(), support["after"].numpy(), store.features, store_scale(store))


def edit_diagnostics(before: np.ndarray, after: np.ndarray, features: np.ndarray,
                     scale: DataScale | None = None) -> dict:
    """Per support example and in summary: edit norms, relative norms, off-data ratios.

    Returns {"per_example": {edit_norm, relative_edit_norm, off_data_ratio, off_data} (lists),
    "median_edit_norm", "median_relative_edit_norm", "median_off_data_ratio", "off_data_share",
    "median_off_data", "typical_nn_distance", "off_data_threshold"}.
    """
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    scale = scale or data_scale(features)
    edit = np.linalg.norm(after - before, axis=1)
    relative = edit / np.maximum(np.linalg.norm(before, axis=1), 1e-12)
    ratio = _nearest_distances(after, features) / scale.typical_nn_distance
    off = ratio > scale.off_data_threshold
    return {
        "per_example": {"edit_norm": edit.tolist(), "relative_edit_norm": relative.tolist(),
                        "off_data_ratio": ratio.tolist(), "off_data": off.tolist()},
        "median_edit_norm": float(np.median(edit)),
        "median_relative_edit_norm": float(np.median(relative)),
        "median_off_data_ratio": float(np.median(ratio)),
        "off_data_share": float(off.mean()),
        "median_off_data": bool(np.median(ratio) > scale.off_data_threshold),
        "typical_nn_distance": scale.typical_nn_distance,
        "off_data_threshold": scale.off_data_threshold,
    }


def warning_text(diagnostics: dict) -> str | None:
    """The sentence views show when the median edit has left the data; None when it has not."""
    if not diagnostics["median_off_data"]:
        return None
    return (f"The median edited feature lies {diagnostics['median_off_data_ratio']:.1f}× the store's typical "
            f"nearest-neighbour distance from any real feature (real features stay below "
            f"{diagnostics['off_data_threshold']:.1f}×; median edit {diagnostics['median_relative_edit_norm']:.0%} "
            f"of a feature's norm). Readings of edited points are extrapolations there.")
