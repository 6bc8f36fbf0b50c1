"""Nearest real images to a feature: FAISS inner-product search on L2-normalised float32 features
(cosine similarity), and the edit-shift statistic built on it.

Index kind: exact `IndexFlatIP` up to `EXACT_MAX_ROWS` rows, an inverted-file index
(`IVF{nlist},Flat`, `nprobe` lists searched) above — see `benchmarks/bench_retrieval.py` for the
build times, latencies and recall behind the threshold. Store row ids travel with the vectors
(`IndexIDMap2`), so an index over any subset of a store answers in store rows. Indices are
cached per workspace under `cache/`, keyed by the store's content hash.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsfm_core.errors import InputError

EXACT_MAX_ROWS = 200_000  # exact search: 26 ms a single query at 200k × 512, 155 ms at 1M (measured)
IVF_NPROBE = 32
_CHUNK = 65536
_threads_lock = threading.Lock()  # faiss's OpenMP thread count is process-wide
_build_lock = threading.Lock()  # one index build at a time; queries do not wait for it


def normalized(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy with unit-norm rows (zero rows stay zero)."""
    import faiss

    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.ndim == 1:
        out = out[None]
    faiss.normalize_L2(out)
    return out


@dataclass
class FeatureIndex:
    index: object  # a faiss index wrapped in IndexIDMap2
    kind: str  # "exact" | "ivf"
    dim: int

    @classmethod
    def build(cls, features: np.ndarray, ids: np.ndarray | None = None, kind: str = "auto",
              nlist: int | None = None, seed: int = 0) -> "FeatureIndex":
        import faiss

        n, dim = features.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        kind = ("exact" if n <= EXACT_MAX_ROWS else "ivf") if kind == "auto" else kind
        if kind == "exact":
            base = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or int(np.sqrt(n))
            base = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on 40 points a list (faiss's own minimum is 39), not on every row
            sample = np.random.default_rng(seed).choice(n, size=min(n, 40 * nlist), replace=False)
            base.train(normalized(features[np.sort(sample)]))
            base.nprobe = IVF_NPROBE
        else:
            raise InputError(f"unknown index kind {kind!r}; expected auto, exact or ivf")
        index = faiss.IndexIDMap2(base)
        for start in range(0, n, _CHUNK):  # normalise chunk by chunk: no second full copy
            index.add_with_ids(normalized(features[start : start + _CHUNK]), ids[start : start + _CHUNK])
        return cls(index, kind, dim)

    def search(self, queries: np.ndarray, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine scores), each q × k, best first; −1 ids pad when fewer than k exist."""
        import faiss

        queries = normalized(queries)
        if queries.shape[1] != self.dim:
            raise InputError(f"query has dimension {queries.shape[1]}, the index {self.dim}")
        if len(queries) > 1:
            scores, ids = self.index.search(queries, k)
            return ids, scores
        # One interactive query: a single thread skips OpenMP's team start-up (1.3 vs 1.6 ms at
        # 12k rows, 26 vs 32 ms at 200k, measured); the thread count is process-wide, hence the lock.
        with _threads_lock:
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, ids = self.index.search(queries, k)
            finally:
                faiss.omp_set_num_threads(threads)
        return ids, scores

    def search_mean(self, vectors: np.ndarray, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of the mean of several vectors (each normalised first, as cosine space demands)."""
        return self.search(normalized(vectors).mean(axis=0), k)

    def save(self, path: str | os.PathLike) -> None:
        import faiss

        from hsfm_core.fsutil import atomic_path

        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str) -> "FeatureIndex":
        import faiss

        index = faiss.read_index(str(path))
        return cls(index, kind, index.d)


def workspace_index(store, kind: str = "auto") -> FeatureIndex:
    """The index over all of a store's rows, built once and cached in `<workspace>/cache/`."""
    resolved = ("exact" if store.manifest["n_rows"] <= EXACT_MAX_ROWS else "ivf") if kind == "auto" else kind
    path = Path(store.path) / "cache" / f"faiss-{resolved}-{store.content_hash.replace(':', '-')}.index"
    with _build_lock:
        if path.is_file():
            return FeatureIndex.load(path, resolved)
        index = FeatureIndex.build(store.features, kind=resolved)
        index.save(path)
        return index


def edit_shift(index: FeatureIndex, meta_a: np.ndarray, support_rows: np.ndarray, support_labels: np.ndarray,
               before: np.ndarray, after: np.ndarray, k: int = 16) -> dict:
    """For each support example, the share of its k nearest real neighbours whose spurious attribute
    differs from the example's own — for the original and the edited feature — per class and overall.

    A rise from before to after means the edits moved the examples toward the other attribute:
    the quantitative form of "edits move along the spurious attribute". The example's own row is
    left out of its neighbours.
    """
    own = meta_a[support_rows]

    def share(queries: np.ndarray) -> np.ndarray:
        ids, _ = index.search(queries, k + 1)
        out = np.empty(len(queries))
        for i, (row, neighbours) in enumerate(zip(support_rows, ids)):
            neighbours = neighbours[(neighbours != row) & (neighbours >= 0)][:k]
            out[i] = float(np.mean(meta_a[neighbours] != own[i])) if len(neighbours) else np.nan
        return out

    shares = {"before": share(before), "after": share(after)}
    result = {"k": k, "n_support": len(support_rows)}
    for name, mask in [("overall", np.ones(len(support_rows), bool))] + [
            (f"class_{c}", support_labels == c) for c in np.unique(support_labels)]:
        result[name] = {when: float(np.nanmean(values[mask])) for when, values in shares.items()}
        result[name]["change"] = result[name]["after"] - result[name]["before"]
    result["per_example"] = {when: values.tolist() for when, values in shares.items()}
    return result
