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

**The cache.** Rendering and re-encoding every example's edit and null edits takes seconds (the Lesson's
run group of three seeds: about 10 CPU-s cold). What the statistic is computed from — the attribute read
back from each rendering, n × 2 for the edits and n × draws for the null — is kept beside the renderings
(`<workspace>/cache/render/flip/<key>.json`, written atomically), keyed by everything that decides it:
the renderer's identity (its weights), the store's content hash, the run and a digest of its support
tensors, the seed, the number of null draws, and the classifier's identity (the backbone record, the
attribute names, the prompts or the probe's rule). A later process reads the attributes back and
computes the rates again (microseconds); a file that is unreadable, of another key, or whose arrays
are not the shapes and values this run's would have, is a miss: recomputed and rewritten, never
trusted (docs/ARCHITECTURE.md §Render).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from hsfm_core.errors import InputError
from hsfm_core.render.backbone import PROMPT_TEMPLATES, attribute_classifier, store_backbone
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


CACHE_SUBDIR = "flip"  # beside the renderings: <workspace>/cache/render/flip/
CACHE_FORMAT, CACHE_VERSION = "hsfm-flip-attributes", 1


def flip_rates(store, run: dict, renderer: Renderer, *, seed: int | None = None, null_draws: int = 8,
               cache=True) -> dict:
    """Flip rates of one run's edits as seen through `renderer`, per class, with the null.

    Args:
        store: the run's `FeatureStore`.
        run: a run dict with a support set (an HSFM run), checked against the store.
        renderer: an `inverter` or `unclip` renderer for the store.
        seed: the rendering seed and the null's generator (default: the run's training seed).
        null_draws: random within-class edits per support example.
        cache: True (the workspace's render cache, and the attributes read back in its `flip/` folder),
            a `RenderCache` (the same in its folder), or False.

    Returns:
        {"renderer", "classifier", "seed", "null_draws", "run",
         "per_class": [{class, name, rate, null_rate, null_rate_std, n, flipped, majority, minority,
                        start_majority}],
         "per_example": [{support, row, class, before, after, flipped}]}
        `rate`: share of the class's n support examples whose rendered attribute goes majority → other;
        `null_rate`: the same over all null draws; `null_rate_std`: its std over draws;
        `start_majority`: how many renderings of z show the majority attribute at all."""
    return _flip_rates(store, run, renderer, seed, null_draws, cache, compute=True)


def cached_flip_rates(store, run: dict, renderer: Renderer, *, seed: int | None = None, null_draws: int = 8,
                      cache=True) -> dict | None:
    """`flip_rates` when the attributes read back are in the cache on disk, else None (nothing is rendered):
    what a page asks before deciding to compute in the background."""
    return _flip_rates(store, run, renderer, seed, null_draws, cache, compute=False)


def _flip_rates(store, run: dict, renderer: Renderer, seed: int | None, null_draws: int, cache,
                compute: bool) -> dict | None:
    if isinstance(null_draws, bool) or not isinstance(null_draws, int) or null_draws < 1:
        raise InputError(f"null_draws must be an integer ≥ 1, got {null_draws!r}")
    check_renderer_fits(renderer, store)
    support = _support_of(store, run)
    if seed is None:
        seed = int(run["config"].get("seed", 0) or 0)
    cache = workspace_cache(store) if cache is True else (cache or None)
    labels = support["labels"].numpy().astype(np.int64)
    folder = cache.folder / CACHE_SUBDIR if cache is not None and cache.folder is not None else None
    record = cache_record(store, run, support, renderer, seed, null_draws) if folder is not None else None
    path = folder / f"{_digest(record)}.json" if folder is not None else None
    hit = read_cached(path, record, len(labels), null_draws, len(store.attribute_names)) if path else None
    if hit is not None:
        classifier, predicted, predicted_null = hit
    elif not compute:
        return None
    else:
        classifier, predicted, predicted_null = _read_back(store, run, renderer, support, seed, null_draws, cache)
        if path is not None:
            write_cached(path, record, classifier, predicted, predicted_null)
    return _rates(store, run, renderer, support, labels, seed, null_draws, classifier, predicted, predicted_null)


def _read_back(store, run: dict, renderer: Renderer, support: dict, seed: int, null_draws: int,
               cache) -> tuple[str, np.ndarray, np.ndarray]:
    """Render z, z + Δ and z + each null edit, re-encode, classify the attribute: (the classifier's
    description, predicted n × 2, predicted_null n × draws)."""
    before, after = support["before"].numpy().astype(np.float32), support["after"].numpy().astype(np.float32)
    labels = support["labels"].numpy().astype(np.int64)
    positions = list(range(len(labels)))
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

    return (f"{classify.kind} ({', '.join(classify.names)})", attributes(images).astype(np.int64),
            attributes(null_images).astype(np.int64))


def _rates(store, run: dict, renderer: Renderer, support: dict, labels: np.ndarray, seed: int, null_draws: int,
           classifier: str, predicted: np.ndarray, predicted_null: np.ndarray) -> dict:
    """The statistic from the attributes read back: predicted n × 2 (z, z + Δ), predicted_null n × draws."""
    n = len(labels)
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
    return {"renderer": renderer.name, "classifier": classifier,
            "seed": int(seed), "null_draws": null_draws, "run": run["run_id"],
            "per_class": per_class, "per_example": per_example}


# -- the cache of the attributes read back -------------------------------------------------------------------
def cache_record(store, run: dict, support: dict, renderer: Renderer, seed: int, null_draws: int) -> dict:
    """Everything that decides the attributes read back from a run's renderings (the cache's key)."""
    from hsfm_core.render.inverter import backbone_record

    tensors = hashlib.blake2b(digest_size=16)
    for name in ("before", "after", "labels", "indices"):
        array = np.ascontiguousarray(support[name].numpy())
        tensors.update(f"{name}:{array.dtype}:{array.shape}|".encode())
        tensors.update(array.tobytes())
    clip_space = bool(store.manifest.get("clip_space") and store.manifest.get("text_encoder"))
    return {"renderer": [renderer.name, renderer.key], "store": store.content_hash, "run": run["run_id"],
            "support": tensors.hexdigest(), "seed": int(seed), "null_draws": int(null_draws),
            "classifier": {"backbone": backbone_record(store), "attributes": store.attribute_names,
                           "text_encoder": store.manifest.get("text_encoder") if clip_space else None,
                           "rule": ["zero-shot", list(PROMPT_TEMPLATES)] if clip_space else ["linear probe", "a"]}}


def _digest(record: dict) -> str:
    text = json.dumps([CACHE_FORMAT, CACHE_VERSION, record], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def read_cached(path: Path, record: dict, n: int, null_draws: int, n_attributes: int
                ) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(classifier, predicted n × 2, predicted_null n × draws) from a cache file, or None: absent,
    unreadable, of another key, or holding anything but attribute indices of the expected shapes."""
    from hsfm_core.safe_io import read_json

    if not path.is_file():
        return None
    try:
        cached = read_json(path, "cached flip-rate attributes", allow_nan=False)
    except InputError:
        return None
    if (cached.get("format") != CACHE_FORMAT or cached.get("version") != CACHE_VERSION
            or cached.get("key") != json.loads(json.dumps(record)) or not isinstance(cached.get("classifier"), str)):
        return None
    arrays = []
    for name, shape in (("predicted", (n, 2)), ("predicted_null", (n, null_draws))):
        values = cached.get(name)
        if not (isinstance(values, list) and len(values) == shape[0]
                and all(isinstance(row, list) and len(row) == shape[1] for row in values)
                and all(type(v) is int and 0 <= v < n_attributes for row in values for v in row)):
            return None
        arrays.append(np.array(values, dtype=np.int64).reshape(shape))
    return cached["classifier"], arrays[0], arrays[1]


def write_cached(path: Path, record: dict, classifier: str, predicted: np.ndarray, predicted_null: np.ndarray) -> None:
    from hsfm_core.fsutil import write_text_atomic

    try:
        write_text_atomic(path, json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": record,
                                            "classifier": classifier, "predicted": predicted.tolist(),
                                            "predicted_null": predicted_null.tolist()}))
    except (OSError, InputError):
        pass  # a read-only workspace: computed again next time


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
