"""Dataset readers: one per format, all returning a `DatasetTable` (see `table.py`)."""

from __future__ import annotations

from pathlib import Path

from hsfm_core.data.celeba import read_celeba
from hsfm_core.data.generic_csv import read_generic_csv
from hsfm_core.data.table import SPLITS, DatasetTable, check_images
from hsfm_core.data.waterbirds import read_waterbirds
from hsfm_core.errors import InputError

FORMATS = ("waterbirds", "celeba", "csv")


def read_dataset(fmt: str, root: str | Path, csv: str | Path | None = None, **options) -> DatasetTable:
    """Read a dataset folder of the given format into the common table."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    if fmt == "waterbirds":
        return read_waterbirds(root, csv)
    if fmt == "celeba":
        if csv:
            raise InputError("--csv does not apply to --format celeba (it reads list_attr_celeba and list_eval_partition)")
        return read_celeba(root, **options)
    if fmt == "csv":
        return read_generic_csv(root, csv, **options)
    raise InputError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")


__all__ = ["FORMATS", "SPLITS", "DatasetTable", "check_images", "read_dataset"]
