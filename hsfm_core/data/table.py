"""The one table every dataset reader returns, and the checks every reader shares.

A `DatasetTable` holds one row per image with the columns

    row_id     int64  position in the table (and later in the feature store)
    sample_id  str    the dataset's own id for the image (img_id, file name, id column)
    split      str    "train" | "val" | "test"
    y          int64  class label, 0 … C−1
    a          int64  spurious attribute, 0 … A−1
    g          int64  group = A·y + a, written by `Groups.group_of` (docs/ARCHITECTURE.md §Groups)
    image_path str    path relative to `image_root`, with "/" separators

plus the class and attribute names (C and A are their counts). Readers validate as they parse, so
a bad file fails with the file, line, column and value named, before any image is touched.

How many classes and attributes a file has (`label_names`): names given by the user declare the
count K, and every value must lie in 0 … K−1; without names, K = max(2, largest value + 1), every
value below the largest must occur, and the names are "class 0" … / "attribute 0" ….
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from hsfm_core.errors import InputError
from hsfm_core.groups import Groups

SPLITS = ("train", "val", "test")
COLUMNS = ("row_id", "sample_id", "split", "y", "a", "g", "image_path")
MAX_LISTED = 5  # how many offending items an error message lists


@dataclass(frozen=True)
class DatasetTable:
    frame: pd.DataFrame
    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...]
    image_root: Path
    format: str
    source: Path
    options: dict = field(default_factory=dict)  # reader options worth recording (target, attribute)

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    def split_counts(self) -> dict[str, int]:
        counts = self.frame["split"].value_counts()
        return {s: int(counts.get(s, 0)) for s in SPLITS}

    @property
    def groups(self) -> Groups:
        return Groups(self.class_names, self.attribute_names, self.group_counts().get("train"))

    def group_counts(self) -> dict[str, list[int]]:
        return group_counts(self.frame, Groups(self.class_names, self.attribute_names))


def group_counts(frame: pd.DataFrame, groups: Groups) -> dict[str, list[int]]:
    """{split: [count of group 0, 1, ...]} for the splits present in `frame`."""
    out = {}
    for split in SPLITS:
        g = frame.loc[frame["split"] == split, "g"].to_numpy()
        if len(g):
            out[split] = groups.counts(g)
    return out


def listed(items: Sequence[str]) -> str:
    """'a, b, c, … (n more)': the first few offending items of an error message."""
    items = list(items)
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f", … ({more} more)" if more > 0 else "")


def read_csv_strings(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV with every cell as a string, so that validation sees the raw values."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # ParserError and EmptyDataError are ValueErrors
        raise InputError(f"{path}: cannot parse as CSV ({exc})") from None


def require_columns(frame: pd.DataFrame, required: Iterable[str], source: Path) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(
            f"{source}: missing column {', '.join(repr(c) for c in missing)} "
            f"(expected columns {', '.join(required)}; found {', '.join(map(str, frame.columns))})"
        )


def coded_column(
    frame: pd.DataFrame,
    column: str,
    codes: dict[str, int],
    source: Path,
    first_data_line: int,
) -> np.ndarray:
    """Map the raw strings of `column` through `codes`; name the first line with any other value."""
    raw = frame[column].astype(str).str.strip()
    mapped = raw.map(codes)
    bad = mapped.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = ", ".join(dict.fromkeys(codes))
        raise InputError(
            f"{source} line {i + first_data_line}: column {column!r} has value {raw.iloc[i]!r}; "
            f"expected one of {allowed} ({int(bad.sum())} bad row(s) in all)"
        )
    return mapped.to_numpy(dtype=np.int64)


def integer_column(frame: pd.DataFrame, column: str, source: Path, first_data_line: int) -> np.ndarray:
    """A column of whole numbers 0, 1, 2, …; name the first line with anything else."""
    raw = frame[column].astype(str).str.strip()
    bad = ~raw.str.fullmatch(r"[0-9]{1,9}").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{source} line {i + first_data_line}: column {column!r} has value {raw.iloc[i]!r}; "
            f"expected a whole number 0, 1, 2, … ({int(bad.sum())} bad row(s) in all)"
        )
    return raw.to_numpy().astype(np.int64)


def label_names(values: np.ndarray, names: Sequence[str] | None, what: str, where: Callable[[int], str],
                described: str, option: str) -> tuple[str, ...]:
    """The class (what="class") or attribute names of a labelled file, by the rule in the module
    docstring. `values` are non-negative ints; `where(i)` names value i's file, line and column;
    `described` names the column as a whole; `option` is how a user gives the names."""
    values = np.asarray(values, dtype=np.int64)
    if names is not None:
        names = tuple(str(n) for n in names)
        bad = np.flatnonzero(values >= len(names))
        if len(bad):
            i = int(bad[0])
            raise InputError(
                f"{where(i)} has value {values[i]}, but {len(names)} {what} names were given "
                f"({listed(list(names))}), so values must be 0…{len(names) - 1} ({len(bad)} bad row(s) in all)"
            )
        return names
    plural = "classes" if what == "class" else f"{what}s"
    present = np.unique(values)
    count = max(2, int(present[-1]) + 1 if len(present) else 0)
    n_skipped = (int(present[-1]) + 1 - len(present)) if len(present) else 0
    if n_skipped:
        skipped, k = [], 0  # the first few values 0 … largest that never occur (without listing them all)
        for v in present.tolist() + [int(present[-1]) + 1]:
            skipped += [str(m) for m in range(k, min(v, k + MAX_LISTED - len(skipped)))]
            k = v + 1
            if len(skipped) >= MAX_LISTED:
                break
        more = f", … ({n_skipped - len(skipped)} more)" if n_skipped > len(skipped) else ""
        raise InputError(
            f"{described} uses {what} values {listed([str(v) for v in present])} but never "
            f"{', '.join(skipped)}{more}: number the {plural} 0…{int(present[-1])} with each one present, "
            f"or give {option} to declare {plural} that have no rows"
        )
    return tuple(f"{what} {k}" for k in range(count))


def safe_relative_paths(
    paths: Sequence[str], image_root: Path, source: Path, first_data_line: int
) -> list[str]:
    """Normalise image paths and refuse any that leave `image_root` (absolute or `..`)."""
    out = []
    for i, raw in enumerate(paths):
        p = str(raw).strip().replace("\\", "/")
        if any(ord(c) < 32 or c == "\x7f" for c in p):  # a NUL byte (no file name holds one), a newline, a tab
            raise InputError(f"{source} line {i + first_data_line}: image path {raw!r} holds a control character "
                             f"(such as a NUL byte); paths must be plain file names")
        norm = posixpath.normpath(p) if p else ""
        if not p or p.startswith("/") or norm == ".." or norm.startswith("../") or (len(p) > 1 and p[1] == ":"):
            what = "is empty" if not p else f"{raw!r} escapes the dataset root {image_root}"
            raise InputError(f"{source} line {i + first_data_line}: image path {what}; paths must be relative and stay inside it")
        out.append(norm)
    return out


def check_splits_nonempty(splits: np.ndarray, source: Path, required: Sequence[str] = SPLITS) -> None:
    present = set(np.unique(splits).tolist())
    empty = [s for s in required if s not in present]
    if empty:
        raise InputError(f"{source}: split {', '.join(empty)} has no rows; every dataset needs rows in {', '.join(required)}")


def make_table(
    *,
    sample_id: Sequence[str],
    split: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    image_path: Sequence[str],
    class_names: Sequence[str],
    attribute_names: Sequence[str],
    image_root: Path,
    fmt: str,
    source: Path,
    options: dict | None = None,
) -> DatasetTable:
    check_splits_nonempty(np.asarray(split), source)
    for column, values in (("id", list(map(str, sample_id))), ("image", list(image_path))):
        repeated = pd.Series(values)[pd.Series(values).duplicated()].unique().tolist()
        if repeated:
            raise InputError(f"{source}: {len(repeated)} {column}(s) listed more than once: {listed(repeated)}; "
                             f"each image must appear once (a repeat would count twice in training and metrics)")
    groups = Groups(tuple(class_names), tuple(attribute_names))
    y, a = np.asarray(y, dtype=np.int64), np.asarray(a, dtype=np.int64)
    groups.check_labels(y, a, str(source))  # readers check with line numbers first; this is the backstop
    frame = pd.DataFrame(
        {
            "row_id": np.arange(len(y), dtype=np.int64),
            "sample_id": pd.Series(list(map(str, sample_id)), dtype=str),
            "split": pd.Series(np.asarray(split), dtype=str),
            "y": y,
            "a": a,
            "g": groups.group_of(y, a),
            "image_path": pd.Series(list(image_path), dtype=str),
        }
    )
    return DatasetTable(
        frame=frame,
        class_names=tuple(class_names),
        attribute_names=tuple(attribute_names),
        image_root=Path(image_root),
        format=fmt,
        source=Path(source),
        options=dict(options or {}),
    )


def check_images(table: DatasetTable, verify_headers: bool = True) -> None:
    """Every image must exist as a file under the root and (optionally) open as an image.

    Header verification reads a few bytes per file with PIL (no decoding), which catches
    files that are not images at all; files that open but fail to decode are caught during
    extraction and reported the same way.
    """
    from hsfm_core.safe_io import check_image_header, resolve_image

    root = table.image_root
    missing, unreadable, outside = [], [], []
    for rel in table.frame["image_path"]:
        try:
            path = resolve_image(root, rel)  # symlinks followed: nothing outside the root is read
        except InputError:
            outside.append(rel)
            continue
        if not path.is_file():
            missing.append(rel)
            continue
        if verify_headers:
            try:
                check_image_header(path)  # decompression bombs count as unreadable
            except InputError:
                unreadable.append(rel)
    problems = []
    if outside:
        problems.append(f"{len(outside)} image path(s) lead outside {root} (a symlink?): {listed(outside)}")
    if missing:
        problems.append(f"{len(missing)} image file(s) missing under {root}: {listed(missing)}")
    if unreadable:
        problems.append(f"{len(unreadable)} image file(s) unreadable: {listed(unreadable)}")
    if problems:
        raise InputError(f"{table.source}: " + "; ".join(problems))
