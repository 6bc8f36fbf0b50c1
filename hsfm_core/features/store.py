"""The feature store: one directory per dataset × backbone (docs/ARCHITECTURE.md §Store).

    manifest.json   what the features are (dataset, backbone, dimension, CLIP space, names,
                    image root, split and group counts) and a content hash
    features.npy    N × d, opened memory-mapped (read-only)
    meta.parquet    row_id, sample_id, split, y, a, g, image_path — row i describes features[i];
                    g = A·y + a for the manifest's C class and A attribute names (§Groups)
    init_head.safetensors   (optional) θ₀ = the backbone checkpoint's final layer

The directory is also the workspace (docs/ARCHITECTURE.md §Workspace): `runs/`, `jobs/`, `sweeps/`
and `cache/` live beside these files.

Atomicity: a store is written into a hidden `.incoming-*` folder inside the target, the data
files are moved into place, and `manifest.json` is renamed in last. A store without a manifest
does not open, so a crash at any point leaves either the old store, or no store — never a half
one that opens. Replacing a store removes its manifest first for the same reason; the workspace's
folders are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from hsfm_core import __version__
from hsfm_core.data.table import COLUMNS, SPLITS, group_counts
from hsfm_core.errors import InputError
from hsfm_core.groups import Groups
from hsfm_core.fsutil import write_json_atomic

STORE_FORMAT = "hsfm-feature-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"
FEATURES = "features.npy"
META = "meta.parquet"
INIT_HEAD = "init_head.safetensors"
STORE_FILES = (FEATURES, META, INIT_HEAD, MANIFEST)
FEATURE_DTYPES = ("float32", "float16")
_HASH_CHUNK_ROWS = 16384


@dataclass(frozen=True)
class Selection:
    """Rows of a store: their positions, features (N × d) and metadata."""

    rows: np.ndarray
    features: np.ndarray
    meta: pd.DataFrame

    @property
    def y(self) -> np.ndarray:
        return self.meta["y"].to_numpy()

    @property
    def a(self) -> np.ndarray:
        return self.meta["a"].to_numpy()

    @property
    def g(self) -> np.ndarray:
        return self.meta["g"].to_numpy()


class FeatureStore:
    """A read-only view of a feature store directory. Open with `FeatureStore.open(path)`."""

    def __init__(self, path: Path, manifest: dict, features: np.ndarray, meta: pd.DataFrame):
        self.path = path
        self.manifest = manifest
        self.features = features
        self.meta = meta

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStore":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"{path}: no {MANIFEST}, so this is not a feature store (or its write did not finish)")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{manifest_path}: not valid JSON ({exc})") from None
        if manifest.get("format") != STORE_FORMAT or manifest.get("version") != STORE_VERSION:
            raise InputError(
                f"{manifest_path}: expected format {STORE_FORMAT!r} version {STORE_VERSION}, "
                f"found {manifest.get('format')!r} version {manifest.get('version')!r}"
            )
        try:
            features = np.load(path / FEATURES, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path / FEATURES}: cannot open ({exc})") from None
        expected = (manifest["n_rows"], manifest["dim"])
        if features.shape != expected or str(features.dtype) != manifest["dtype"]:
            raise InputError(
                f"{path / FEATURES}: shape {features.shape} {features.dtype} does not match the manifest "
                f"({expected[0]} × {expected[1]} {manifest['dtype']})"
            )
        try:
            meta = pd.read_parquet(path / META)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path / META}: cannot read ({exc})") from None
        missing = [c for c in COLUMNS if c not in meta.columns]
        if missing or len(meta) != manifest["n_rows"]:
            raise InputError(
                f"{path / META}: expected {manifest['n_rows']} rows with columns {', '.join(COLUMNS)}; "
                f"found {len(meta)} rows" + (f", missing {', '.join(missing)}" if missing else "")
            )
        return cls(path, manifest, features, meta)

    # -- what it holds ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def attribute_names(self) -> list[str]:
        return list(self.manifest["attribute_names"])

    @cached_property
    def groups(self) -> Groups:
        """The group contract of this store (classes × attributes, names, train proportions)."""
        return Groups.from_manifest(self.manifest)

    @property
    def n_groups(self) -> int:
        return self.groups.n_groups

    @property
    def splits(self) -> tuple[str, ...]:
        counts = self.manifest["splits"]
        return tuple(s for s in SPLITS if counts.get(s, 0) > 0)

    def has_split(self, split: str) -> bool:
        return split in self.splits

    @property
    def image_root(self) -> Path | None:
        root = self.manifest.get("image_root")
        return Path(root) if root else None

    def image_path(self, row: int) -> Path | None:
        """Absolute path of the image behind a row, or None for stores imported without images."""
        rel = self.meta["image_path"].iat[row]
        return self.image_root / rel if self.image_root and rel else None

    def init_head(self) -> dict | None:
        """θ₀ saved at extraction (a ResNet checkpoint's `fc`): {"weight", "bias"} tensors, or None."""
        if not self.manifest.get("init_head"):
            return None
        from safetensors.torch import load_file

        return load_file(self.path / self.manifest["init_head"])

    # -- selecting -------------------------------------------------------------------------
    def rows(self, split: str | None = None, groups: Iterable[int] | None = None) -> np.ndarray:
        """Row positions (ascending) in `split` (all splits if None) and `groups` (all if None)."""
        mask = np.ones(len(self.meta), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
            if not self.has_split(split):
                raise InputError(
                    f"{self.path}: this store has no {split!r} split (it has {', '.join(self.splits) or 'none'})"
                )
            mask &= self.meta["split"].to_numpy() == split
        if groups is not None:
            groups = list(groups)
            bad = [g for g in groups if not 0 <= int(g) < self.n_groups]
            if bad:
                raise InputError(f"unknown group(s) {bad}; this store has groups 0..{self.n_groups - 1}")
            mask &= np.isin(self.meta["g"].to_numpy(), groups)
        return np.flatnonzero(mask)

    def select(self, split: str | None = None, groups: Iterable[int] | None = None) -> Selection:
        """Features and metadata of a split / group subset.

        A contiguous block of rows (splits usually are) comes back as a memory-mapped view, so
        selecting a split of a large store reads nothing until the features are used.
        """
        rows = self.rows(split, groups)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            features = self.features[rows[0] : rows[-1] + 1]
        else:
            features = self.features[rows]
        return Selection(rows=rows, features=features, meta=self.meta.iloc[rows].reset_index(drop=True))

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {self.manifest['splits'][s]}" for s in self.splits)
        return f"FeatureStore({self.path}, {self.manifest['n_rows']} × {self.dim}, {counts})"


def content_hash(features: np.ndarray, meta: pd.DataFrame) -> str:
    """blake2b over the feature bytes and the label/path columns: what a run was trained on."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{features.shape}|{features.dtype}".encode())
    for start in range(0, len(features), _HASH_CHUNK_ROWS):
        h.update(np.ascontiguousarray(features[start : start + _HASH_CHUNK_ROWS]).tobytes())
    for column in ("split", "y", "a", "g", "sample_id", "image_path"):
        values = meta[column]
        if values.dtype.kind in "iu":
            h.update(values.to_numpy(dtype=np.int64).tobytes())
        else:
            h.update("\0".join(values.astype(str)).encode("utf-8"))
    return "blake2b:" + h.hexdigest()


class StoreWriter:
    """Write a store atomically: fill `writer.features`, then `commit(meta, manifest)`.

    Use as a context manager; leaving the block with an exception (or without `commit`)
    deletes the incoming files and leaves any existing store as it was.
    """

    def __init__(self, path: str | os.PathLike, n_rows: int, dim: int, dtype: str = "float32",
                 overwrite: bool = False):
        self.path = Path(path)
        if dtype not in FEATURE_DTYPES:
            raise InputError(f"unsupported feature dtype {dtype!r}; expected one of {', '.join(FEATURE_DTYPES)}")
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} exists and is not a directory")
        if (self.path / MANIFEST).exists() and not overwrite:
            raise InputError(
                f"{self.path} already holds a feature store; pass --overwrite to replace it "
                f"(its runs/ and cache/ are kept)"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_incoming(self.path)
        self.incoming = self.path / f".incoming-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.incoming.mkdir()
        self.features = np.lib.format.open_memmap(self.incoming / FEATURES, mode="w+", dtype=dtype,
                                                  shape=(n_rows, dim))
        self.extra_files: list[str] = []
        self.committed = False

    def add_file(self, name: str, data: bytes) -> None:
        (self.incoming / name).write_bytes(data)
        self.extra_files.append(name)

    def commit(self, meta: pd.DataFrame, manifest: dict) -> FeatureStore:
        n_rows, dim = self.features.shape
        if len(meta) != n_rows:
            raise ValueError(f"meta has {len(meta)} rows, features {n_rows}")
        bad = _nonfinite_rows(self.features)
        if len(bad):
            raise InputError(f"{len(bad)} feature row(s) are not finite (NaN/inf), first rows {bad[:5].tolist()}")
        self.features.flush()
        meta = meta.loc[:, list(COLUMNS)].reset_index(drop=True)
        groups = Groups(manifest["class_names"], manifest["attribute_names"])
        _check_groups(meta, groups)
        meta.to_parquet(self.incoming / META, index=False)
        full_manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            **manifest,
            "n_rows": int(n_rows),
            "dim": int(dim),
            "dtype": str(self.features.dtype),
            "splits": {s: int((meta["split"] == s).sum()) for s in SPLITS},
            "group_counts": group_counts(meta, groups),
            "init_head": INIT_HEAD if INIT_HEAD in self.extra_files else None,
            "content_hash": content_hash(self.features, meta),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hsfm_core_version": __version__,
        }
        del self.features  # close the memmap before moving the file
        _fsync_dir_files(self.incoming)
        # The manifest is the commit marker: remove the old one first, move data, add the new last.
        (self.path / MANIFEST).unlink(missing_ok=True)
        new_files = {FEATURES, META, *self.extra_files}
        for name in STORE_FILES:
            if name != MANIFEST and name not in new_files:
                (self.path / name).unlink(missing_ok=True)  # a stale file of the replaced store
        for name in new_files:
            os.replace(self.incoming / name, self.path / name)
        write_json_atomic(self.path / MANIFEST, full_manifest)
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.committed = True
        return FeatureStore.open(self.path)

    def abort(self) -> None:
        if hasattr(self, "features"):
            del self.features
        shutil.rmtree(self.incoming, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()


def write_store(path: str | os.PathLike, features: np.ndarray, meta: pd.DataFrame, manifest: dict,
                dtype: str | None = None, overwrite: bool = False,
                extra_files: dict[str, bytes] | None = None) -> FeatureStore:
    """Write an in-memory feature matrix as a store (used by importers and merges)."""
    dtype = dtype or ("float16" if features.dtype == np.float16 else "float32")
    with StoreWriter(path, features.shape[0], features.shape[1], dtype, overwrite=overwrite) as writer:
        for start in range(0, len(features), _HASH_CHUNK_ROWS):
            writer.features[start : start + _HASH_CHUNK_ROWS] = features[start : start + _HASH_CHUNK_ROWS]
        for name, data in (extra_files or {}).items():
            writer.add_file(name, data)
        return writer.commit(meta, manifest)


def _check_groups(meta: pd.DataFrame, groups: Groups) -> None:
    """Labels within the manifest's classes and attributes, and g = A·y + a on every row."""
    y, a, g = (meta[c].to_numpy(dtype=np.int64) for c in ("y", "a", "g"))
    groups.check_labels(y, a, "store metadata")
    bad = np.flatnonzero(g != groups.group_of(y, a))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"store metadata: row {i}: group {g[i]} is not {groups.n_attributes}·y + a "
                         f"(y {y[i]}, a {a[i]}; {len(bad)} bad row(s) in all)")


def _nonfinite_rows(features: np.ndarray) -> np.ndarray:
    bad = [start + np.flatnonzero(~np.isfinite(features[start : start + _HASH_CHUNK_ROWS]).all(axis=1))
           for start in range(0, len(features), _HASH_CHUNK_ROWS)]
    return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)


def _fsync_dir_files(directory: Path) -> None:
    for child in directory.iterdir():
        with open(child, "rb") as fh:
            os.fsync(fh.fileno())


def _remove_abandoned_incoming(path: Path) -> None:
    """Delete `.incoming-<pid>-*` folders whose writer process no longer exists."""
    for child in path.glob(".incoming-*"):
        try:
            pid = int(child.name.split("-")[1])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(child, ignore_errors=True)
        except PermissionError:
            pass
