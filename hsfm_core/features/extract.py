"""Images → feature store: read a dataset table, encode every image, write the store atomically.

Large datasets can be split across machines with `shard=(i, n)` (contiguous row blocks,
0-based i); each shard is a complete store that records which block it holds and a
fingerprint of the dataset listing, and `merge_shards` checks and concatenates them.

How the features were computed is part of what they are: the manifest's `extraction` records the
device kind and GPU, the precision (fp32, or bf16/fp16 autocast), the TF32 switches, torch and its
CUDA build (docs/ARCHITECTURE.md §Devices), and shards computed differently are not merged. Image
decoding runs in `hsfm_core.device.extraction_workers` processes by default (from the usable cores).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from hsfm_core.data.table import DatasetTable, check_images, listed
from hsfm_core.errors import InputError
from hsfm_core.features.encoders import Encoder
from hsfm_core.features.store import INIT_HEAD, FeatureStore, StoreWriter
from hsfm_core.safe_io import open_image, read_bytes, resolve_image


class ImageRows(torch.utils.data.Dataset):
    """Decoded, preprocessed images; a file that fails to decode is flagged, not fatal here."""

    def __init__(self, paths: list[str], preprocess):
        self.paths = paths
        self.preprocess = preprocess
        self.placeholder = preprocess(Image.new("RGB", (8, 8)))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = open_image(self.paths[i])  # decompression bombs and broken files alike: flagged
        except InputError:
            return self.placeholder, i, False
        return self.preprocess(image), i, True


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' (0 ≤ i < n) → (i, n)."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {text!r}: need 0 ≤ i < n (shards are numbered from 0)")
    return i, n


def dataset_fingerprint(table: DatasetTable) -> str:
    """Identifies the dataset listing (ids, splits, labels, paths) so shards of different listings never merge."""
    h = hashlib.blake2b(digest_size=12)
    for column in ("sample_id", "split", "y", "a", "image_path"):
        h.update("\0".join(table.frame[column].astype(str)).encode())
    return h.hexdigest()


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def extraction_record(device: torch.device, precision: str, num_workers: int, batch_size: int) -> dict:
    """How the features are computed: `extraction` in the manifest (merge compares the first three)."""
    from hsfm_core.device import device_facts, environment, tf32_switches

    where = environment(str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
                        device_facts(device.index or 0 if device.type == "cuda" else None),
                        tf32_switches() if device.type == "cuda" else None)
    return {"device": device.type, "precision": precision, "tf32": where["tf32"], "gpu": where["gpu"],
            "torch": where["torch"], "cuda": where["cuda"] if device.type == "cuda" else None,
            "cudnn": where["cudnn"] if device.type == "cuda" else None, "num_workers": int(num_workers),
            "batch_size": int(batch_size)}


def _manifest(table: DatasetTable, encoder: Encoder) -> dict:
    return {
        "dataset": {"format": table.format, "source": str(table.source.resolve()), "options": table.options},
        "image_root": str(table.image_root.resolve()),
        "class_names": list(table.class_names),
        "attribute_names": list(table.attribute_names),
        "backbone": encoder.backbone,
        "clip_space": encoder.clip_space,
        "text_encoder": encoder.text_encoder,
        "shard": None,
    }


def extract(
    table: DatasetTable,
    encoder: Encoder,
    out: str | os.PathLike,
    *,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int | None = None,
    shard: tuple[int, int] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    precision: str = "fp32",
) -> FeatureStore:
    """Encode every image of `table` (or one shard of it) with `encoder` on `device` into a store at `out`.

    `num_workers`: image-decoding processes (spawned); None picks them from the usable cores and the
    device (`hsfm_core.device.extraction_workers`). `precision`: "fp32", or "bf16" / "fp16" autocast
    (fp16 on a GPU only); the features are stored as `dtype` either way."""
    from hsfm_core.device import extraction_workers, usable_cpus

    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 autocast needs a GPU; on the CPU use bf16 or fp32")
    if num_workers is None:
        num_workers = extraction_workers(device.type, usable_cpus())
    frame = table.frame
    rows = np.arange(len(frame))
    manifest = {**_manifest(table, encoder), "extraction": extraction_record(device, precision, num_workers, batch_size)}
    if shard is not None:
        index, count = shard
        rows = np.array_split(rows, count)[index]
        manifest["shard"] = {"index": index, "count": count, "rows": [int(rows[0]), int(rows[-1]) + 1] if len(rows) else [0, 0],
                             "dataset_rows": len(frame), "dataset_fingerprint": dataset_fingerprint(table)}
    part = table if shard is None else _take(table, rows)
    check_images(part)
    if encoder.init_head is not None and encoder.init_head["weight"].shape[0] != len(table.class_names):
        raise InputError(f"the checkpoint's fc has {encoder.init_head['weight'].shape[0]} outputs but the dataset "
                         f"has {len(table.class_names)} classes")

    paths = [str(resolve_image(table.image_root, p)) for p in part.frame["image_path"]]  # inside the root only
    loader = torch.utils.data.DataLoader(
        ImageRows(paths, encoder.preprocess), batch_size=batch_size, num_workers=num_workers,
        # spawn: forking after torch/OpenMP has started can hang the child on these machines
        multiprocessing_context="spawn" if num_workers > 0 else None,
        persistent_workers=False, pin_memory=device.type == "cuda",
    )
    failed: list[int] = []
    with StoreWriter(out, len(paths), encoder.dim, dtype, overwrite=overwrite) as writer:
        bar = tqdm(total=len(paths), unit="img", desc="extract", disable=not progress, smoothing=0.1)
        autocast = PRECISIONS[precision]
        for images, index, ok in loader:
            with torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext():
                feats = encoder.encode(images.to(device, non_blocking=True)).cpu().numpy()
            writer.features[index.numpy()] = feats
            failed.extend(index[~ok].tolist())
            bar.update(len(index))
        bar.close()
        if failed:
            names = [part.frame["image_path"].iat[i] for i in failed]
            raise InputError(f"{table.source}: {len(failed)} image file(s) could not be decoded: {listed(names)}; "
                             f"no store was written")
        if encoder.init_head is not None:
            from safetensors.torch import save

            writer.add_file(INIT_HEAD, save({k: v.contiguous() for k, v in encoder.init_head.items()}))
        return writer.commit(part.frame, manifest)


def _take(table: DatasetTable, rows: np.ndarray) -> DatasetTable:
    # row_id keeps the dataset-wide position, so merged shards line up.
    return replace(table, frame=table.frame.iloc[rows].reset_index(drop=True))


def _identity(manifest: dict) -> dict:
    """What must agree between shards. Not paths: machines may mount data and checkpoints elsewhere.
    Not the GPU model or torch version (recorded): a cluster's nodes differ in those; but the device
    kind, the precision and TF32 change the numbers more than they do."""
    how = manifest.get("extraction") or {}
    return {"backbone": manifest["backbone"]["id"], "dim": manifest["dim"], "dtype": manifest["dtype"],
            "class names": manifest["class_names"], "attribute names": manifest["attribute_names"],
            "dataset format": [manifest["dataset"]["format"], manifest["dataset"]["options"]],
            "extraction device": how.get("device"), "extraction precision": how.get("precision"),
            "TF32 switches": how.get("tf32")}


def merge_shards(shard_dirs: list[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> FeatureStore:
    """Check that the shards are the complete set of one extraction, then concatenate them."""
    if not shard_dirs:
        raise InputError("--merge needs the shard stores to merge")
    stores = [FeatureStore.open(p) for p in shard_dirs]
    for s in stores:
        if not s.manifest.get("shard"):
            raise InputError(f"{s.path}: not a shard (extracted without --shard)")
    first = stores[0].manifest
    for s in stores[1:]:
        for what, value in _identity(s.manifest).items():
            if value != _identity(first)[what]:
                raise InputError(f"{s.path}: {what} differs from {stores[0].path} ({value!r} vs {_identity(first)[what]!r})")
    count = first["shard"]["count"]
    by_index = {}
    for s in stores:
        i = s.manifest["shard"]["index"]
        if i in by_index:
            raise InputError(f"shard {i}/{count} given twice: {by_index[i].path} and {s.path}")
        by_index[i] = s
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise InputError(f"cannot merge: shard(s) {', '.join(missing)} missing")
    ordered = [by_index[i] for i in range(count)]
    meta = pd.concat([s.meta for s in ordered], ignore_index=True)
    if not np.array_equal(meta["row_id"].to_numpy(), np.arange(len(meta))):
        raise InputError("cannot merge: the shards' rows do not cover the dataset exactly once")
    manifest = {k: first[k] for k in ("dataset", "image_root", "class_names", "attribute_names", "backbone",
                                      "clip_space", "text_encoder")}
    if first.get("extraction") is not None:
        manifest["extraction"] = first["extraction"]
    manifest["shard"] = None
    with StoreWriter(out, len(meta), first["dim"], first["dtype"], overwrite=overwrite) as writer:
        start = 0
        for s in ordered:  # stream shard by shard: the merged matrix never sits in memory twice
            writer.features[start : start + len(s.features)] = s.features
            start += len(s.features)
        if first.get("init_head"):
            heads = {read_bytes(s.path / INIT_HEAD, "initial head") for s in ordered}
            if len(heads) != 1:
                raise InputError("cannot merge: the shards carry different initial heads (different checkpoints?)")
            writer.add_file(INIT_HEAD, heads.pop())
        return writer.commit(meta, manifest)
