"""The feature store: one directory per dataset × backbone (docs/ARCHITECTURE.md §Store).

    manifest.json   what the features are (dataset, backbone, dimension, CLIP space, names,
                    image root, split and group counts), how they were computed (`extraction`:
                    device, precision, TF32, torch and CUDA builds) and a content hash
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
import pyarrow as pa
import pyarrow.compute as pc

from hsfm_core.version import __version__
from hsfm_core.data.table import COLUMNS, SPLITS, group_counts
from hsfm_core.errors import InputError
from hsfm_core.groups import Groups
from hsfm_core.fsutil import write_json_atomic
from hsfm_core.safe_io import read_json, read_npy, read_parquet, read_safetensors, require_keys, resolve_image

STORE_FORMAT = "hsfm-feature-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"
FEATURES = "features.npy"
META = "meta.parquet"
INIT_HEAD = "init_head.safetensors"
STORE_FILES = (FEATURES, META, INIT_HEAD, MANIFEST)
FEATURE_DTYPES = ("float32", "float16")
_HASH_CHUNK_ROWS = 16384
WRITE_LOCK = ".hsfm-write.lock"  # held by a writer from "is there a store?" to its commit
COMMIT_LOCK = ".hsfm-commit.lock"  # exclusive while files are swapped; shared while a reader opens
WRITE_ID_KEY = "hsfm_write_id"  # meta.parquet's key-value metadata: which write made it
MANIFEST_TYPES = {
    "format": str, "version": int, "n_rows": int, "dim": int, "dtype": str, "splits": dict,
    "group_counts": dict, "class_names": list, "attribute_names": list, "content_hash": str,
    "backbone": dict, "clip_space": bool, "image_root": (str, type(None)), "dataset": dict,
}


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
        """Open and check a store: the manifest's keys and types, the features' shape, every meta
        row (labels in range, g = A·y + a, known splits, contiguous row ids, relative unique image
        paths) and the counts. A store being replaced is waited for (its commit lock), and a meta
        file of another write than the manifest is refused, so a mixed store never opens."""
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: " + ("a file, not a feature store folder" if path.exists()
                                            else "no such folder, so no feature store (or workspace) there"))
        with _commit_lock(path, shared=True):
            manifest_path = path / MANIFEST
            if not manifest_path.is_file():
                raise InputError(f"{path}: no {MANIFEST}, so this is not a feature store (or its write did not finish)")
            manifest = read_json(manifest_path, "store manifest")
            _check_manifest(manifest, manifest_path)
            features = read_npy(path / FEATURES, "feature matrix", mmap=True)
            meta, parquet_meta = read_parquet(path / META, "store metadata")
        expected = (manifest["n_rows"], manifest["dim"])
        if features.shape != expected or str(features.dtype) != manifest["dtype"]:
            raise InputError(
                f"{path / FEATURES}: shape {features.shape} {features.dtype} does not match the manifest "
                f"({expected[0]} × {expected[1]} {manifest['dtype']})"
            )
        written = parquet_meta.get(WRITE_ID_KEY)
        if manifest.get("write_id") and written != manifest["write_id"]:
            raise InputError(f"{path}: {META} comes from another write than {MANIFEST} (write {written} vs "
                             f"{manifest['write_id']}): the store was mixed by two writers; rewrite it with --overwrite")
        _check_meta(meta, manifest, path / META)
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
        """Real path of the image behind a row (symlinks followed), or None for stores imported
        without images; InputError when it lies outside the image root (`safe_io.resolve_image`)."""
        rel = self.meta["image_path"].iat[row]
        return resolve_image(self.image_root, rel) if self.image_root and rel else None

    def init_head(self) -> dict | None:
        """θ₀ saved at extraction (a ResNet checkpoint's `fc`): {"weight", "bias"} tensors, or None."""
        if not self.manifest.get("init_head"):
            return None
        return read_safetensors(self.path / INIT_HEAD, "initial head", required=("weight", "bias"))  # shapes: train

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
        self.created = not self.path.exists()  # a failed write removes the folder it made (if left empty)
        self.committed = False
        # One writer per target, from the "is there a store?" check below to the commit: a second
        # writer waits here, then sees the first one's store (and needs --overwrite).
        self._write_lock = _LockFile(self.path / WRITE_LOCK, shared=False, create=True).__enter__()
        try:
            if (self.path / MANIFEST).exists() and not overwrite:
                raise InputError(
                    f"{self.path} already holds a feature store; pass --overwrite to replace it "
                    f"(its runs/ and cache/ are kept)"
                )
            _remove_abandoned_incoming(self.path)
            self.write_id = uuid.uuid4().hex
            self.incoming = self.path / f".incoming-{os.getpid()}-{self.write_id[:8]}"
            self.incoming.mkdir()
            self.features = np.lib.format.open_memmap(self.incoming / FEATURES, mode="w+", dtype=dtype,
                                                      shape=(n_rows, dim))
        except BaseException:
            self.abort()
            raise
        self.extra_files: list[str] = []

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
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(meta, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), WRITE_ID_KEY: self.write_id})
        pq.write_table(table, self.incoming / META)
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
            "write_id": self.write_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hsfm_core_version": __version__,
        }
        del self.features  # close the memmap before moving the file
        _fsync_dir_files(self.incoming)
        # The manifest is the commit marker: remove the old one first, move data, add the new last.
        # Readers hold the commit lock shared while they open, so none sees half of this swap.
        with _commit_lock(self.path, shared=False):
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
        self._write_lock.release()
        return FeatureStore.open(self.path)

    def abort(self) -> None:
        if hasattr(self, "features"):
            del self.features
        if hasattr(self, "incoming"):
            shutil.rmtree(self.incoming, ignore_errors=True)
        if self.created and not self.committed:
            # a failed first write leaves no empty --out behind: remove the folder if only locks remain
            leftovers = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
            if leftovers <= {WRITE_LOCK, COMMIT_LOCK}:
                for name in leftovers:
                    (self.path / name).unlink(missing_ok=True)
                try:
                    self.path.rmdir()
                except OSError:
                    pass
        self._write_lock.release()

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


def _check_manifest(manifest: dict, where: Path) -> None:
    """Every key the app and the CLI read, with its JSON type, and the values they rely on."""
    if manifest.get("format") != STORE_FORMAT or manifest.get("version") != STORE_VERSION:
        raise InputError(f"{where}: expected format {STORE_FORMAT!r} version {STORE_VERSION}, "
                         f"found {manifest.get('format')!r} version {manifest.get('version')!r}")
    require_keys(manifest, MANIFEST_TYPES, str(where))
    if manifest["n_rows"] < 0 or manifest["dim"] < 1:
        raise InputError(f"{where}: n_rows must be ≥ 0 and dim ≥ 1, found {manifest['n_rows']} and {manifest['dim']}")
    if manifest["dtype"] not in FEATURE_DTYPES:
        raise InputError(f"{where}: dtype {manifest['dtype']!r}; expected one of {', '.join(FEATURE_DTYPES)}")
    for key in ("class_names", "attribute_names"):
        if not all(isinstance(n, str) for n in manifest[key]):
            raise InputError(f"{where}: {key} must be a list of strings")
    groups = Groups(manifest["class_names"], manifest["attribute_names"])  # ≥ 2 classes, ≥ 1 attribute, distinct
    splits = manifest["splits"]
    if set(splits) - set(SPLITS) or not all(type(v) is int and v >= 0 for v in splits.values()) \
            or sum(splits.values()) != manifest["n_rows"]:
        raise InputError(f"{where}: splits {splits} must count rows of {', '.join(SPLITS)} adding up to n_rows "
                         f"{manifest['n_rows']}")
    for split, counts in manifest["group_counts"].items():
        if split not in SPLITS or not isinstance(counts, list) or len(counts) != groups.n_groups \
                or not all(type(c) is int and c >= 0 for c in counts):
            raise InputError(f"{where}: group_counts[{split!r}] must be {groups.n_groups} counts ≥ 0 of a known split")
    if not isinstance(manifest["backbone"].get("id"), str) or not isinstance(manifest["backbone"].get("kind"), str):
        raise InputError(f"{where}: backbone must have string 'id' and 'kind'")
    if manifest.get("init_head") not in (None, INIT_HEAD):
        raise InputError(f"{where}: init_head must be {INIT_HEAD!r} or null, found {manifest.get('init_head')!r}")
    if manifest.get("shard") is not None and not isinstance(manifest["shard"], dict):
        raise InputError(f"{where}: shard must be an object or null")
    if manifest.get("extraction") is not None and not isinstance(manifest["extraction"], dict):
        raise InputError(f"{where}: extraction (how the features were computed) must be an object or null")


def _check_meta(meta: pd.DataFrame, manifest: dict, where: Path) -> None:
    """The rows as the manifest describes them: every column, labels and groups, splits, row ids,
    image paths, and the counts the manifest reports (vectorised: a few ms for 10⁴ rows)."""
    missing = [c for c in COLUMNS if c not in meta.columns]
    if missing or len(meta) != manifest["n_rows"]:
        raise InputError(f"{where}: expected {manifest['n_rows']} rows with columns {', '.join(COLUMNS)}; "
                         f"found {len(meta)} rows" + (f", missing {', '.join(missing)}" if missing else ""))
    for column in ("row_id", "y", "a", "g"):
        if meta[column].dtype.kind not in "iu":
            raise InputError(f"{where}: column {column!r} must hold integers, found {meta[column].dtype}")
    row_id = meta["row_id"].to_numpy()
    shard = manifest.get("shard") or {}
    first = shard.get("rows", [0])[0] if isinstance(shard.get("rows"), list) and shard["rows"] else 0
    first = first if type(first) is int else 0  # a shard keeps the dataset-wide row ids of its block
    expected = np.arange(first, first + len(meta))
    if not np.array_equal(row_id, expected):
        i = int(np.flatnonzero(row_id != expected)[0])
        raise InputError(f"{where}: row {i}: row_id {row_id[i]}; row ids must be {first}, {first + 1}, … in order")
    _check_groups(meta, Groups(manifest["class_names"], manifest["attribute_names"]), str(where))
    split = _strings(meta, "split", where)
    counts = {str(v["values"]): int(v["counts"]) for v in pc.value_counts(split).to_pylist()}
    if set(counts) - set(SPLITS):
        unknown = ~meta["split"].isin(SPLITS).to_numpy()
        i = int(np.flatnonzero(unknown)[0])
        raise InputError(f"{where}: row {i}: split {meta['split'].iat[i]!r}; expected one of {', '.join(SPLITS)} "
                         f"({int(unknown.sum())} row(s) in all)")
    found = {s: counts.get(s, 0) for s in SPLITS}
    if any(found[s] != manifest["splits"].get(s, 0) for s in SPLITS):
        raise InputError(f"{where}: rows per split {found} differ from the manifest's {manifest['splits']}")
    paths = _strings(meta, "image_path", where)
    if _maybe_unsafe_paths(paths):  # a byte scan first; the exact (slower) test only when it may matter
        bad = pc.match_substring_regex(paths, r"^(/|\\|[A-Za-z]:)|(^|[/\\])\.\.([/\\]|$)").to_numpy(zero_copy_only=False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: row {i}: image path {meta['image_path'].iat[i]!r} is absolute or climbs out "
                             f"with '..'; paths must be relative to the image root ({int(bad.sum())} row(s) in all)")
    _refuse_duplicates(_strings(meta, "sample_id", where), meta["sample_id"], "sample_id", where)
    nonempty = pc.filter(paths, pc.not_equal(paths, "")) if manifest.get("image_root") is None else paths
    _refuse_duplicates(nonempty, meta["image_path"], "image_path", where)


def _strings(meta: pd.DataFrame, column: str, where: Path):
    """A text column as one Arrow large_string array (no nulls), for vectorised checks."""
    try:
        values = pa.array(meta[column], from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        values = None
    if isinstance(values, pa.ChunkedArray):  # Arrow-backed text read from several row groups (large stores)
        values = values.combine_chunks()
    if values is None or not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) \
            or values.null_count:
        raise InputError(f"{where}: column {column!r} must hold text in every row, found {meta[column].dtype}"
                         + (f" with {values.null_count} empty cell(s)" if values is not None and values.null_count else ""))
    return values.cast(pa.large_string())


def _maybe_unsafe_paths(paths) -> bool:
    """Whether any path could be absolute or hold '..': a scan of the raw bytes (µs for 10⁴ paths)."""
    if len(paths) == 0:
        return False
    _, offsets, data = paths.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[paths.offset: paths.offset + len(paths) + 1]
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0]: offsets[-1]] if data is not None else np.empty(0, np.uint8)
    if b".." in raw.tobytes():
        return True
    starts = offsets[:-1][offsets[1:] > offsets[:-1]] - offsets[0]
    first = raw[starts]
    second = raw[np.minimum(starts + 1, len(raw) - 1)]
    return bool(np.isin(first, (ord("/"), ord("\\"))).any() or (second == ord(":")).any())


def _refuse_duplicates(values, column_values: pd.Series, column: str, where: Path) -> None:
    if len(pc.unique(values)) == len(values):  # the common case, one hash pass
        return
    from hsfm_core.data.table import listed

    column_values = column_values[column_values.astype(str) != ""] if column == "image_path" else column_values
    repeated = column_values[column_values.duplicated()]
    raise InputError(f"{where}: column {column!r} lists {len(repeated)} value(s) more than once: "
                     f"{listed(repeated.astype(str).unique().tolist())}")


class _LockFile:
    """fcntl.flock on a file inside the store folder (shared or exclusive), released on exit."""

    def __init__(self, path: Path, shared: bool, create: bool):
        self.path, self.shared, self.create, self.fd = path, shared, create, None

    def __enter__(self) -> "_LockFile":
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT if self.create else os.O_RDONLY, 0o666)
            except FileNotFoundError:
                if self.create:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    continue
                return self  # no lock file: a store written before locks existed, nobody writing it
            except PermissionError:
                return self  # a read-only store of another user: readers cannot lock, writers cannot write
            fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
            try:  # the file may have been removed (an abandoned empty --out) while we waited
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same or not self.create:
                self.fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __exit__(self, *exc) -> None:
        self.release()


def _commit_lock(path: Path, shared: bool) -> _LockFile:
    return _LockFile(path / COMMIT_LOCK, shared=shared, create=not shared)


def _check_groups(meta: pd.DataFrame, groups: Groups, where: str = "store metadata") -> None:
    """Labels within the manifest's classes and attributes, and g = A·y + a on every row."""
    y, a, g = (meta[c].to_numpy(dtype=np.int64) for c in ("y", "a", "g"))
    groups.check_labels(y, a, where)
    bad = np.flatnonzero(g != groups.group_of(y, a))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{where}: row {i}: group {g[i]} is not {groups.n_attributes}·y + a "
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
    """Delete `.incoming-*` folders: called under the write lock, so their writers are gone."""
    for child in path.glob(".incoming-*"):
        shutil.rmtree(child, ignore_errors=True)
