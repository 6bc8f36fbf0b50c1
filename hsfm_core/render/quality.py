"""How good a renderer is, measured the way the flip rate uses it (docs/ARCHITECTURE.md §Render): render
held-out features, encode the renderings again with the store's backbone, and compare.

- median cosine between the re-encoded rendering and the feature it was rendered from;
- the attribute (zero-shot prompts in a CLIP space, else a linear probe) of the re-encoded rendering
  against the real image's (its stored feature) and against the labels; the same for the class;
- the same numbers for the nearest real image among the reference rows (by feature cosine, itself
  excluded): what the Neighbors page shows today, the reference a rendering should approach.
"""

from __future__ import annotations

import numpy as np

from hsfm_core.render.backbone import (
    attribute_classifier,
    class_classifier,
    store_backbone,
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_rows(store, rows: np.ndarray, reference_rows: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each row, the reference row with the most similar feature (cosine), never the row itself."""
    ref = _unit(store.features[reference_rows]).astype(np.float32)
    out = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        sims = _unit(store.features[part]).astype(np.float32) @ ref.T
        sims[part[:, None] == reference_rows[None, :]] = -np.inf
        out[start : start + chunk] = reference_rows[sims.argmax(axis=1)]
    return out


def inverter_quality(store, renderer, rows, reference_rows=None, seed: int = 0) -> dict:
    """The quality numbers of `renderer` on store `rows` (see the module docstring); `reference_rows`
    (default: the train split) are where the nearest real image is looked for."""
    rows = np.asarray(rows, dtype=np.int64)
    reference_rows = store.rows("train") if reference_rows is None else np.asarray(reference_rows, dtype=np.int64)
    features = np.asarray(store.features[rows], dtype=np.float32)
    rendered = store_backbone(store).encode_uint8(renderer.render(features, seed=seed))
    nearest = nearest_rows(store, rows, reference_rows)
    nearest_features = np.asarray(store.features[nearest], dtype=np.float32)
    attribute, klass = attribute_classifier(store), class_classifier(store)
    meta = store.meta
    a, y = meta["a"].to_numpy()[rows], meta["y"].to_numpy()[rows]
    real_a, real_y = attribute.predict(features), klass.predict(features)

    def numbers(encoded: np.ndarray) -> dict:
        pa, py = attribute.predict(encoded), klass.predict(encoded)
        cos = np.sum(_unit(encoded) * _unit(features), axis=1)
        return {"median_cosine": float(np.median(cos)), "cosine_q10": float(np.quantile(cos, 0.1)),
                "attribute_agreement": float((pa == real_a).mean()), "attribute_accuracy": float((pa == a).mean()),
                "class_agreement": float((py == real_y).mean()), "class_accuracy": float((py == y).mean())}

    splits = sorted(set(meta["split"].to_numpy()[rows]))
    return {"n": int(len(rows)), "rows": "a seeded sample of the " + " + ".join(splits) + " split",
            "classifier": f"{attribute.kind} ({', '.join(attribute.names)}; {', '.join(klass.names)})",
            "rendered": numbers(rendered), "nearest_real": numbers(nearest_features),
            "real": {"attribute_accuracy": float((real_a == a).mean()), "class_accuracy": float((real_y == y).mean())}}
