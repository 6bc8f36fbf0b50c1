"""CelebA reader: `list_attr_celeba` + `list_eval_partition`, target and attribute by name.

The original text files: `list_attr_celeba.txt` starts with a count line and a header line of
40 attribute names, then `<image> v1 … v40` rows with ±1 values; `list_eval_partition.txt` has
`<image> 0|1|2` rows. The `.csv` variants (as redistributed on Kaggle) have headers
`image_id,<attributes…>` and `image_id,partition`. Images are looked up in
`img_align_celeba/img_align_celeba/`, `img_align_celeba/` or the folder itself, or in `images`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hsfm_core.data.table import (
    SPLITS,
    DatasetTable,
    coded_column,
    listed,
    make_table,
    read_csv_strings,
    require_columns,
    safe_relative_paths,
)
from hsfm_core.errors import InputError

PLUS_MINUS = {"1": 1, "-1": 0}
SPLIT_CODES = {"0": 0, "1": 1, "2": 2}
IMAGE_DIRS = ("img_align_celeba/img_align_celeba", "img_align_celeba", ".")


def _find(root: Path, stem: str) -> Path:
    for suffix in (".txt", ".csv"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    raise InputError(f"CelebA: neither {stem}.txt nor {stem}.csv found in {root}")


def _read_attributes(path: Path) -> tuple[pd.DataFrame, int]:
    """Return (frame with 'image_id' + attribute columns as strings, first data line number)."""
    if path.suffix == ".csv":
        return read_csv_strings(path, "CelebA attribute file"), 2
    with open(path, encoding="utf-8") as fh:
        count_line = fh.readline().strip()
        header = fh.readline().split()
        try:
            declared = int(count_line)
        except ValueError:
            raise InputError(f"{path} line 1: expected the image count, found {count_line!r}") from None
        if not header:
            raise InputError(f"{path} line 2: expected the header line of attribute names")
        frame = _read_whitespace_table(fh, path, ["image_id", *header], lines_before=2)
    if len(frame) != declared:
        raise InputError(f"{path}: line 1 declares {declared} images but {len(frame)} rows follow")
    if frame.iloc[:, -1].eq("").any():
        i = int(np.flatnonzero(frame.iloc[:, -1].eq("").to_numpy())[0])
        raise InputError(f"{path} line {i + 3}: expected {len(header) + 1} fields (image and {len(header)} attributes)")
    return frame, 3


def _read_partition(path: Path) -> tuple[pd.DataFrame, int]:
    if path.suffix == ".csv":
        frame = read_csv_strings(path, "CelebA partition file")
        require_columns(frame, ("image_id", "partition"), path)
        return frame, 2
    with open(path, encoding="utf-8") as fh:
        return _read_whitespace_table(fh, path, ["image_id", "partition"], lines_before=0), 1


def _read_whitespace_table(fh, path: Path, columns: list[str], lines_before: int) -> pd.DataFrame:
    """Whitespace-separated rows that must have exactly len(columns) fields; name the first bad line."""
    import re

    expected = f"expected {len(columns)} fields per row ({columns[0]}, then {len(columns) - 1} value(s))"
    try:
        frame = pd.read_csv(fh, sep=r"\s+", header=None, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:  # pandas counts lines from where it started reading
        where = re.search(r"line (\d+), saw (\d+)", str(exc))
        line = f" line {int(where.group(1)) + lines_before} has {where.group(2)} fields;" if where else ""
        raise InputError(f"{path}:{line} {expected}") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: no rows") from None
    if frame.shape[1] != len(columns):
        row = int(np.flatnonzero(frame.iloc[:, len(columns):].ne("").any(axis=1).to_numpy())[0]) \
            if frame.shape[1] > len(columns) else 0
        raise InputError(f"{path} line {row + 1 + lines_before}: {expected}")
    frame.columns = columns
    return frame


def read_celeba(
    root: str | Path,
    target: str = "Blond_Hair",
    attribute: str = "Male",
    images: str | None = None,
) -> DatasetTable:
    root = Path(root)
    attr_path, part_path = _find(root, "list_attr_celeba"), _find(root, "list_eval_partition")
    attrs, attr_first = _read_attributes(attr_path)
    require_columns(attrs, ("image_id",), attr_path)
    names = [c for c in attrs.columns if c != "image_id"]
    for role, name in (("target", target), ("attribute", attribute)):
        if name not in names:
            raise InputError(f"{attr_path}: unknown {role} {name!r}; available: {', '.join(names)}")
    if target == attribute:
        raise InputError(f"CelebA: target and attribute must differ (both are {target!r})")
    y = coded_column(attrs, target, PLUS_MINUS, attr_path, attr_first)
    a = coded_column(attrs, attribute, PLUS_MINUS, attr_path, attr_first)

    part, part_first = _read_partition(part_path)
    split_code = coded_column(part, "partition", SPLIT_CODES, part_path, part_first)
    part_ids = part["image_id"].str.strip()
    duplicated = part_ids[part_ids.duplicated()].tolist()
    if duplicated:
        raise InputError(f"{part_path}: {len(duplicated)} image(s) listed more than once: {listed(duplicated)}")
    split_of = dict(zip(part_ids, split_code))
    image_ids = attrs["image_id"].str.strip().tolist()
    unassigned = [i for i in image_ids if i not in split_of]
    if unassigned:
        raise InputError(f"{part_path}: {len(unassigned)} image(s) of {attr_path.name} have no partition: {listed(unassigned)}")

    image_root = root / images if images else next(
        (root / d for d in IMAGE_DIRS if image_ids and (root / d / image_ids[0]).is_file()), root / IMAGE_DIRS[1]
    )
    return make_table(
        sample_id=image_ids,
        split=[SPLITS[split_of[i]] for i in image_ids],
        y=y,
        a=a,
        image_path=safe_relative_paths(image_ids, image_root, attr_path, attr_first),
        class_names=(f"not {target}", target),
        attribute_names=(f"not {attribute}", attribute),
        image_root=image_root,
        fmt="celeba",
        source=attr_path,
        options={"target": target, "attribute": attribute},
    )
