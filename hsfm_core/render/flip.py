"""The picture as evidence: does the rendered attribute flip under an edit? (docs/ARCHITECTURE.md §Render)

For every support example of a run, render z and z + Δ, encode both renderings again with the store's
backbone and classify the attribute (`backbone.attribute_classifier`: the store's zero-shot attribute
prompts in a CLIP space, else a linear probe on its attribute labels). A class's **flip rate** is the
share of its support examples whose rendered attribute goes from the class's majority attribute (the
most common one among its train rows) to another one (with two attributes: the minority).

The **null**: the same statistic for random within-class edits — the difference of two real train
features of the example's class, rescaled to the norm of the example's own edit — drawn `null_draws`
times per example with a seeded generator. An edit that encodes the attribute flips more often than
a random edit of its size.
"""

from __future__ import annotations

import numpy as np

from hsfm_core.errors import InputError
from hsfm_core.render.backbone import attribute_classifier, store_backbone
from hsfm_core.render.base import (
    Renderer,
    _render_cached,
    _support_of,
    check_renderer_fits,
    workspace_cache,
)


def majority_attributes(store) -> np.ndarray:
    """Per class, the most common attribute among its train rows (ties: the lower index)."""
    groups = store.groups
    counts = np.asarray(store.manifest["group_counts"]["train"]).reshape(groups.n_classes, groups.n_attributes)
    return counts.argmax(axis=1)


def null_edits(store, labels: np.ndarray, norms: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """draws × n × d random within-class differences of real train features, each rescaled to `norms[i]`."""
    rng = np.random.default_rng([int(seed), 23])
    train = store.rows("train")
    y = store.meta["y"].to_numpy()[train]
    out = np.zeros((draws, len(labels), store.dim), dtype=np.float32)
    for c in np.unique(labels):
        members = train[y == c]
        if len(members) < 2:
            raise InputError(f"{store.path}: class {store.class_names[int(c)]!r} has {len(members)} train row(s); "
                             f"null edits need two")
        where = np.flatnonzero(labels == c)
        pairs = rng.choice(len(members), size=(draws, len(where), 2))
        same = pairs[..., 0] == pairs[..., 1]
        pairs[..., 1][same] = (pairs[..., 1][same] + 1) % len(members)  # never a zero difference
        diff = (_rows(store, members[pairs[..., 0]].ravel()) - _rows(store, members[pairs[..., 1]].ravel())).reshape(draws, len(where), store.dim)
        lengths = np.linalg.norm(diff, axis=2, keepdims=True)
        out[:, where] = diff / np.maximum(lengths, 1e-12) * norms[where][None, :, None]
    return out


def _rows(store, rows: np.ndarray) -> np.ndarray:
    """Features of `rows` (any order, repeats allowed), read in row order from the memory-mapped store."""
    order = np.argsort(rows, kind="stable")
    fetched = np.asarray(store.features[rows[order]], dtype=np.float32)
    out = np.empty_like(fetched)
    out[order] = fetched
    return out


def flip_rates(store, run: dict, renderer: Renderer, *, seed: int | None = None, null_draws: int = 8,
               cache=True) -> dict:
    """Flip rates of one run's edits as seen through `renderer`, per class, with the null.

    Args:
        store: the run's `FeatureStore`.
        run: a run dict with a support set (an HSFM run), checked against the store.
        renderer: an `inverter` or `unclip` renderer for the store.
        seed: the rendering seed and the null's generator (default: the run's training seed).
        null_draws: random within-class edits per support example.
        cache: True (the workspace's render cache), a `RenderCache`, or False.

    Returns:
        {"renderer", "classifier", "seed", "null_draws", "run",
         "per_class": [{class, name, rate, null_rate, null_rate_std, n, flipped, majority, minority,
                        start_majority}],
         "per_example": [{support, row, class, before, after, flipped}]}
        `rate`: share of the class's n support examples whose rendered attribute goes majority → other;
        `null_rate`: the same over all null draws; `null_rate_std`: its std over draws;
        `start_majority`: how many renderings of z show the majority attribute at all."""
    if isinstance(null_draws, bool) or not isinstance(null_draws, int) or null_draws < 1:
        raise InputError(f"null_draws must be an integer ≥ 1, got {null_draws!r}")
    check_renderer_fits(renderer, store)
    support = _support_of(store, run)
    if seed is None:
        seed = int(run["config"].get("seed", 0) or 0)
    cache = workspace_cache(store) if cache is True else (cache or None)
    before, after = support["before"].numpy().astype(np.float32), support["after"].numpy().astype(np.float32)
    labels = support["labels"].numpy().astype(np.int64)
    n = len(labels)
    positions = list(range(n))
    delta = after - before
    features = np.stack([before, after], axis=1)  # n × 2 × d: t = 0, 1
    images = _render_cached(renderer, cache, store, run["run_id"], "support", positions, features, [0.0, 1.0], seed)
    nulls = null_edits(store, labels, np.linalg.norm(delta, axis=1), null_draws, seed)
    null_features = (before[None] + nulls).transpose(1, 0, 2)  # n × draws × d
    # cached like the edits, the draw number standing for t (a draw depends on the seed and the number of draws)
    null_images = _render_cached(renderer, cache, store, run["run_id"], f"null-s{seed}-of-{null_draws}", positions,
                                 null_features, [float(k) for k in range(null_draws)], seed)

    backbone = store_backbone(store)
    classify = attribute_classifier(store)
    size = images.shape[-2]

    def attributes(batch: np.ndarray) -> np.ndarray:
        flat = batch.reshape(-1, size, size, 3)
        return classify.predict(backbone.encode_uint8(flat)).reshape(batch.shape[:2])

    predicted = attributes(images)  # n × 2
    predicted_null = attributes(null_images)  # n × draws
    majority = majority_attributes(store)[labels]  # n
    start = predicted[:, 0] == majority
    flipped = start & (predicted[:, 1] != majority)
    flipped_null = start[:, None] & (predicted_null != majority[:, None])  # n × draws

    names = store.attribute_names
    counts = np.asarray(store.manifest["group_counts"]["train"]).reshape(len(store.class_names), len(names))
    per_class = []
    for c in np.unique(labels):
        mine = labels == c
        minority = [names[a] for a in np.argsort(counts[c]) if a != majority[mine][0]][0]
        per_class.append({
            "class": int(c), "name": store.class_names[int(c)], "n": int(mine.sum()),
            "rate": float(flipped[mine].mean()), "flipped": int(flipped[mine].sum()),
            "null_rate": float(flipped_null[mine].mean()),
            "null_rate_std": float(flipped_null[mine].mean(axis=0).std(ddof=1)) if null_draws > 1 else 0.0,
            "majority": names[int(majority[mine][0])], "minority": minority,
            "start_majority": int(start[mine].sum()),
        })
    per_example = [{"support": i, "row": int(support["indices"][i]), "class": int(labels[i]),
                    "before": names[int(predicted[i, 0])], "after": names[int(predicted[i, 1])],
                    "flipped": bool(flipped[i])} for i in range(n)]
    return {"renderer": renderer.name, "classifier": f"{classify.kind} ({', '.join(classify.names)})",
            "seed": int(seed), "null_draws": null_draws, "run": run["run_id"],
            "per_class": per_class, "per_example": per_example}


def summarize(results: list[dict]) -> dict:
    """Flip rates of several runs (seeds) of one configuration → per class mean ± std (ddof 1) over the
    runs of the rate and of the null rate: {"runs", "per_class": [{class, name, rate_mean, rate_std,
    null_mean, null_std, rates, null_rates}]}."""
    if not results:
        raise InputError("no flip-rate results to summarise")
    by_class: dict[int, dict] = {}
    for result in results:
        for row in result["per_class"]:
            entry = by_class.setdefault(row["class"], {"class": row["class"], "name": row["name"], "rates": [],
                                                       "null_rates": []})
            entry["rates"].append(row["rate"])
            entry["null_rates"].append(row["null_rate"])
    out = []
    for c in sorted(by_class):
        e = by_class[c]
        std = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
        out.append({**e, "rate_mean": float(np.mean(e["rates"])), "rate_std": std(e["rates"]),
                    "null_mean": float(np.mean(e["null_rates"])), "null_std": std(e["null_rates"])})
    return {"runs": [r["run"] for r in results], "per_class": out}
