"""Waterbirds `metadata.csv` reader (Sagawa et al. layout).

Columns `img_id,img_filename,y,split,place,place_filename`; split 0/1/2 = train/val/test;
y = 1 waterbird; place = 1 water background. Images live under the dataset folder at
`img_filename`. `place_filename` names the Places image the bird was pasted on and is not used.
"""

from __future__ import annotations

from pathlib import Path

from hsfm_core.data.table import (
    DatasetTable,
    coded_column,
    make_table,
    read_csv_strings,
    require_columns,
    safe_relative_paths,
)

CLASS_NAMES = ("landbird", "waterbird")
ATTRIBUTE_NAMES = ("land background", "water background")
REQUIRED = ("img_id", "img_filename", "y", "split", "place")
SPLIT_CODES = {"0": 0, "1": 1, "2": 2}
BINARY = {"0": 0, "1": 1}


def read_waterbirds(root: str | Path, csv: str | Path | None = None) -> DatasetTable:
    root = Path(root)
    source = Path(csv) if csv else root / "metadata.csv"
    frame = read_csv_strings(source, "Waterbirds metadata file")
    require_columns(frame, REQUIRED, source)
    first_line = 2  # line 1 is the header
    split_code = coded_column(frame, "split", SPLIT_CODES, source, first_line)
    return make_table(
        sample_id=frame["img_id"].tolist(),
        split=[("train", "val", "test")[c] for c in split_code],
        y=coded_column(frame, "y", BINARY, source, first_line),
        a=coded_column(frame, "place", BINARY, source, first_line),
        image_path=safe_relative_paths(frame["img_filename"].tolist(), root, source, first_line),
        class_names=CLASS_NAMES,
        attribute_names=ATTRIBUTE_NAMES,
        image_root=root,
        fmt="waterbirds",
        source=source,
    )
