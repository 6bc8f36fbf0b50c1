"""Generic CSV reader: `id,filename,split,y,a`, image paths relative to the dataset folder.

`split` is 0/1/2 or train/val/test. `y` is the class, 0 … C−1, and `a` the spurious attribute,
0 … A−1, for any C ≥ 2 and A ≥ 1 (group g = A·y + a, docs/ARCHITECTURE.md §Groups).

How many, and their names (`table.label_names`):
- `class_names` / `attribute_names` given (CLI `--class-names`, `--attribute-names`): they declare
  C / A; a value outside 0 … C−1 (0 … A−1) is an error naming the line and column.
- not given: C = max(2, largest y + 1) and A = max(2, largest a + 1), every value below the
  largest must occur somewhere in the file, and the names are "class 0", "class 1", … and
  "attribute 0", …. A binary file therefore reads as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hsfm_core.data.table import (
    SPLITS,
    DatasetTable,
    coded_column,
    integer_column,
    label_names,
    make_table,
    read_csv_strings,
    require_columns,
    safe_relative_paths,
)

REQUIRED = ("id", "filename", "split", "y", "a")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "0": 0, "1": 1, "2": 2}
FIRST_LINE = 2  # line 1 is the header


def read_generic_csv(
    root: str | Path,
    csv: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    attribute_names: Sequence[str] | None = None,
) -> DatasetTable:
    root = Path(root)
    source = Path(csv) if csv else root / "metadata.csv"
    frame = read_csv_strings(source, "dataset CSV")
    require_columns(frame, REQUIRED, source)
    split_code = coded_column(frame, "split", SPLIT_CODES, source, FIRST_LINE)
    y = integer_column(frame, "y", source, FIRST_LINE)
    a = integer_column(frame, "a", source, FIRST_LINE)
    classes = label_names(y, class_names, "class", lambda i: f"{source} line {i + FIRST_LINE}: column 'y'",
                          f"{source}: column 'y'", "class names (--class-names)")
    attributes = label_names(a, attribute_names, "attribute", lambda i: f"{source} line {i + FIRST_LINE}: column 'a'",
                             f"{source}: column 'a'", "attribute names (--attribute-names)")
    return make_table(
        sample_id=frame["id"].tolist(),
        split=[SPLITS[c] for c in split_code],
        y=y,
        a=a,
        image_path=safe_relative_paths(frame["filename"].tolist(), root, source, FIRST_LINE),
        class_names=classes,
        attribute_names=attributes,
        image_root=root,
        fmt="csv",
        source=source,
    )
