"""Generic CSV reader: `id,filename,split,y,a`, image paths relative to the dataset folder.

`split` is 0/1/2 or train/val/test; `y` and `a` are 0/1. Class and attribute names default to
"class 0/1" and "attribute 0/1" and can be given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hsfm_core.data.table import (
    SPLITS,
    DatasetTable,
    coded_column,
    make_table,
    read_csv_strings,
    require_columns,
    safe_relative_paths,
)
from hsfm_core.errors import InputError

REQUIRED = ("id", "filename", "split", "y", "a")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "0": 0, "1": 1, "2": 2}
BINARY = {"0": 0, "1": 1}


def read_generic_csv(
    root: str | Path,
    csv: str | Path | None = None,
    class_names: Sequence[str] = ("class 0", "class 1"),
    attribute_names: Sequence[str] = ("attribute 0", "attribute 1"),
) -> DatasetTable:
    root = Path(root)
    source = Path(csv) if csv else root / "metadata.csv"
    for what, names in (("class", class_names), ("attribute", attribute_names)):
        if len(names) != 2:
            raise InputError(f"expected 2 {what} names, got {len(names)}: {list(names)}")
    frame = read_csv_strings(source, "dataset CSV")
    require_columns(frame, REQUIRED, source)
    first_line = 2
    split_code = coded_column(frame, "split", SPLIT_CODES, source, first_line)
    return make_table(
        sample_id=frame["id"].tolist(),
        split=[SPLITS[c] for c in split_code],
        y=coded_column(frame, "y", BINARY, source, first_line),
        a=coded_column(frame, "a", BINARY, source, first_line),
        image_path=safe_relative_paths(frame["filename"].tolist(), root, source, first_line),
        class_names=class_names,
        attribute_names=attribute_names,
        image_root=root,
        fmt="csv",
        source=source,
    )
