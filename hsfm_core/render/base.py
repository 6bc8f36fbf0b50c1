"""The renderer contract and its cache (docs/ARCHITECTURE.md §Render).

A renderer turns feature vectors into pictures: `render(features n × d, seed) → uint8 n × H × W × 3`,
in batches, the same pixels for the same (features, seed). Two implement it: `inverter` (a
feature-inversion decoder trained on a store's own images, `render/inverter.py`) and `unclip`
(Stable Diffusion 2.1 unCLIP, `render/unclip.py`).

What a page or the CLI renders is an edit: a run's support example z, its edit Δ = after − before,
and the points z + t·Δ along it (`edit_features`). `render_edits` and `render_class_means` render
those through a `RenderCache`: one entry per (renderer, store, run, rows, t, seed), kept in memory
and on disk under `<workspace>/cache/render/`, so a slider that returns to a step, or a page that
reopens, renders nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hsfm_core.errors import InputError

CACHE_DIR = Path("cache") / "render"  # inside the workspace, beside the store
MEMORY_CACHE_BYTES = 256 * 2**20  # in-process entries kept (least recently used dropped first)


class Renderer:
    """What every renderer is: a name, an identity for caches, an output size and `render`.

    Subclasses set `name`, `key` (changes whenever the pixels could: weights, settings) and `size`,
    and implement `_render_batch(features float32 b × d, seed) → uint8 b × H × W × 3`."""

    name: str = ""  # "inverter" | "unclip"
    key: str = ""  # the renderer's identity in cache keys (its weights' hash and settings)
    size: int = 0  # H = W of the images it returns
    dim: int = 0  # the feature dimension it takes
    batch_size: int = 64

    def render(self, features, seed: int = 0) -> np.ndarray:
        """`features` (n × d, or one d-vector) → uint8 images n × H × W × 3, the same for the same seed."""
        x = np.array(features, dtype=np.float32)  # a private, writable copy (store rows are read-only memmaps)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"the {self.name} renderer takes n × {self.dim} features; got shape {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise InputError(f"features to render hold NaN or inf (rows {np.flatnonzero(~np.isfinite(x).all(1))[:5].tolist()})")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise InputError(f"seed must be an integer ≥ 0, got {seed!r}")
        out = np.empty((len(x), self.size, self.size, 3), dtype=np.uint8)
        for start in range(0, len(x), self.batch_size):
            # every row starts from the same noise for a seed (a stochastic renderer seeds one generator per
            # row with it), so z and z + t·Δ differ only by the feature, wherever a row sits in a batch
            out[start : start + self.batch_size] = self._render_batch(x[start : start + self.batch_size], int(seed))
        return out

    def _render_batch(self, features: np.ndarray, seed: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key})"


# -- what to render: points along a run's edits ------------------------------------------------------------
def check_steps(steps: Sequence[float]) -> list[float]:
    """The step values t of z + t·Δ, as floats; finite, at least one."""
    try:
        values = [float(t) for t in steps]
    except (TypeError, ValueError):
        raise InputError(f"steps must be numbers (e.g. 0,0.5,1); got {steps!r}") from None
    if not values or not all(np.isfinite(values)):
        raise InputError(f"steps must be one or more finite numbers; got {steps!r}")
    return values


def check_support(support: Sequence[int] | None, n: int) -> list[int]:
    """Support example positions 0…n−1 (None: all of them)."""
    if support is None:
        return list(range(n))
    chosen = [int(k) for k in support]
    bad = [k for k in chosen if not 0 <= k < n]
    if bad or not chosen:
        raise InputError(f"support example(s) {bad or chosen}: this run has support examples 0..{n - 1}")
    return chosen


def edit_features(before: np.ndarray, after: np.ndarray, steps: Sequence[float]) -> np.ndarray:
    """z + t·Δ for each row and step: (rows × steps × d), Δ = after − before."""
    before = np.asarray(before, dtype=np.float32)
    delta = np.asarray(after, dtype=np.float32) - before
    t = np.asarray(check_steps(steps), dtype=np.float32)
    return before[:, None, :] + t[None, :, None] * delta[:, None, :]


def class_mean_edits(support: dict) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Per class of the support set: (classes, mean feature before, mean edited feature) — the class's mean
    support feature and that plus its mean edit."""
    labels = support["labels"].numpy()
    before, after = support["before"].numpy().astype(np.float32), support["after"].numpy().astype(np.float32)
    classes = [int(c) for c in np.unique(labels)]
    return (classes, np.stack([before[labels == c].mean(0) for c in classes]),
            np.stack([after[labels == c].mean(0) for c in classes]))


# -- the cache ----------------------------------------------------------------------------------------------
class RenderCache:
    """Rendered images by (renderer, store, run, rows, t, seed): in memory (bounded, LRU) and, when a
    folder is given, on disk as one .npy per entry (written atomically; an unreadable or mismatched file is
    a miss and is rewritten). Thread-safe: app sessions are threads."""

    def __init__(self, folder: str | os.PathLike | None = None, memory_bytes: int = MEMORY_CACHE_BYTES):
        self.folder = Path(folder) if folder is not None else None
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(renderer: Renderer, store_hash: str, run_id: str, what: str, rows: Sequence[int], t: float,
            seed: int) -> str:
        text = json.dumps([renderer.name, renderer.key, store_hash, run_id, what, [int(r) for r in rows],
                           float(t), int(seed)])
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.hits += 1
                return self._memory[key]
        path = self.folder / f"{key}.npy" if self.folder is not None else None
        if path is not None and path.is_file():
            from hsfm_core.safe_io import read_npy

            try:
                images = read_npy(path, "cached rendering")
            except InputError:
                images = None  # truncated or foreign: render again
            if images is not None and images.shape == shape and images.dtype == np.uint8:
                self._remember(key, images)
                with self._lock:
                    self.hits += 1
                return images
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, images: np.ndarray) -> None:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        images.setflags(write=False)
        self._remember(key, images)
        if self.folder is not None:
            from hsfm_core.fsutil import atomic_path

            try:
                with atomic_path(self.folder / f"{key}.npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, images, allow_pickle=False)
            except OSError:
                pass  # a read-only workspace: the memory copy still serves this process

    def _remember(self, key: str, images: np.ndarray) -> None:
        with self._lock:
            if key in self._memory:
                return
            self._memory[key] = images
            self._used += images.nbytes
            while self._used > self.memory_bytes and len(self._memory) > 1:
                _, dropped = self._memory.popitem(last=False)
                self._used -= dropped.nbytes


_caches: dict[Path, RenderCache] = {}
_caches_lock = threading.Lock()


def workspace_cache(store) -> RenderCache:
    """The one cache of a workspace in this process (`<workspace>/cache/render/`)."""
    folder = (Path(store.path) / CACHE_DIR).resolve()
    with _caches_lock:
        if folder not in _caches:
            _caches[folder] = RenderCache(folder)
        return _caches[folder]


def _render_cached(renderer: Renderer, cache: RenderCache | None, store, run_id: str, what: str,
                   rows: list[int], features: np.ndarray, steps: list[float], seed: int) -> np.ndarray:
    """features rows × steps × d → images rows × steps × H × W × 3, rendering only the steps not cached
    (all missing steps in one call, so a strip is one batch)."""
    shape = (len(rows), renderer.size, renderer.size, 3)
    out = np.empty((len(rows), len(steps), *shape[1:]), dtype=np.uint8)
    missing = []
    for j, t in enumerate(steps):
        hit = cache.get(cache.key(renderer, store.content_hash, run_id, what, rows, t, seed), shape) if cache else None
        if hit is None:
            missing.append(j)
        else:
            out[:, j] = hit
    if missing:
        batch = features[:, missing].transpose(1, 0, 2).reshape(-1, features.shape[-1])  # step-major
        images = renderer.render(batch, seed=seed).reshape(len(missing), len(rows), *shape[1:])
        for k, j in enumerate(missing):
            out[:, j] = images[k]
            if cache is not None:
                cache.put(cache.key(renderer, store.content_hash, run_id, what, rows, steps[j], seed), images[k])
    return out


def _support_of(store, run: dict) -> dict:
    from hsfm_core.runs import check_run_fits_store, load_support

    check_run_fits_store(run, store)
    return load_support(run, store)


def render_edits(renderer: Renderer, store, run: dict, support: Sequence[int] | None = None,
                 steps: Sequence[float] = (0.0, 1.0), seed: int = 0,
                 cache: RenderCache | None | bool = True) -> np.ndarray:
    """Render z + t·Δ for support examples of a run (a run dict with a support set).

    Returns uint8 (len(support) × len(steps) × H × W × 3). `cache`: True = the workspace's cache, a
    `RenderCache`, or False/None for none."""
    check_renderer_fits(renderer, store)
    tensors = _support_of(store, run)
    chosen = check_support(support, len(tensors["after"]))
    steps = check_steps(steps)
    features = edit_features(tensors["before"].numpy()[chosen], tensors["after"].numpy()[chosen], steps)
    cache = workspace_cache(store) if cache is True else (cache or None)
    return _render_cached(renderer, cache, store, run["run_id"], "support", chosen, features, steps, seed)


def render_class_means(renderer: Renderer, store, run: dict, steps: Sequence[float] = (0.0, 1.0), seed: int = 0,
                       cache: RenderCache | None | bool = True) -> tuple[list[int], np.ndarray]:
    """Per class of a run's support set, render m + t·Δ̄ (m its mean support feature, Δ̄ its mean edit).

    Returns (classes, uint8 images classes × steps × H × W × 3)."""
    check_renderer_fits(renderer, store)
    classes, before, after = class_mean_edits(_support_of(store, run))
    steps = check_steps(steps)
    features = edit_features(before, after, steps)
    cache = workspace_cache(store) if cache is True else (cache or None)
    return classes, _render_cached(renderer, cache, store, run["run_id"], "class-mean", classes, features, steps, seed)


def check_renderer_fits(renderer: Renderer, store) -> None:
    if renderer.dim != store.dim:
        raise InputError(f"the {renderer.name} renderer takes {renderer.dim}-d features; {store.path} holds "
                         f"{store.dim}-d features")
