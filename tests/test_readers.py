import csv
import re
from pathlib import Path

import pytest

from hsfm_core.data import check_images, read_dataset
from hsfm_core.errors import InputError
from tests.helpers import CELEBA_ATTRS, SMALL_COUNTS, make_celeba, make_generic_csv

N_ROWS = sum(sum(v) for v in SMALL_COUNTS.values())


def rewrite_csv(path: Path, edit) -> None:
    """Apply `edit(rows)` to a CSV (header included) in place."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    edit(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_waterbirds_table(waterbirds_dir):
    table = read_dataset("waterbirds", waterbirds_dir)
    f = table.frame
    assert list(f.columns) == ["row_id", "sample_id", "split", "y", "a", "g", "image_path"]
    assert len(f) == N_ROWS and f["row_id"].tolist() == list(range(N_ROWS))
    assert table.group_counts() == {s: list(c) for s, c in SMALL_COUNTS.items()}
    assert (f["g"] == 2 * f["y"] + f["a"]).all()
    assert table.class_names == ("landbird", "waterbird")
    assert table.attribute_names == ("land background", "water background")
    assert f["sample_id"].iloc[0] == "1"
    check_images(table)


@pytest.mark.parametrize("split_words", [True, False])
def test_generic_csv_accepts_names_and_codes(tmp_path, split_words):
    csv_path = make_generic_csv(tmp_path / "ds", split_words=split_words)
    table = read_dataset("csv", tmp_path / "ds", csv_path, class_names=["cat", "dog"])
    assert table.split_counts() == {s: sum(c) for s, c in SMALL_COUNTS.items()}
    assert table.class_names == ("cat", "dog")
    assert table.frame["image_path"].iloc[3] == "images/00003.png"


# 3 classes × 2 attributes, groups g = 2y + a: (train, val, test) counts per group
COUNTS_3X2 = {"train": (5, 1, 5, 1, 1, 5), "val": (2,) * 6, "test": (2,) * 6}


def test_generic_csv_with_three_classes_names_them_by_the_values_present(tmp_path):
    csv_path = make_generic_csv(tmp_path / "ds", COUNTS_3X2)
    table = read_dataset("csv", tmp_path / "ds", csv_path)
    assert table.class_names == ("class 0", "class 1", "class 2")
    assert table.attribute_names == ("attribute 0", "attribute 1")
    assert table.group_counts() == {s: list(c) for s, c in COUNTS_3X2.items()}
    assert (table.frame["g"] == 2 * table.frame["y"] + table.frame["a"]).all()
    assert table.groups.n_groups == 6 and table.groups.train_counts == COUNTS_3X2["train"]
    named = read_dataset("csv", tmp_path / "ds", csv_path, class_names=["e", "n", "c"],
                         attribute_names=["plain", "negated", "quoted"])  # names declare an attribute with no rows
    assert named.groups.names[:3] == ["e · plain", "e · negated", "e · quoted"]
    assert named.group_counts()["val"] == [2, 2, 0, 2, 2, 0, 2, 2, 0]
    assert (named.frame["g"] == 3 * named.frame["y"] + named.frame["a"]).all()


def test_generic_csv_three_attributes_by_values(tmp_path):
    counts = {"train": (3, 1, 1, 1, 1, 3), "val": (1,) * 6, "test": (1,) * 6}  # 2 classes × 3 attributes
    csv_path = make_generic_csv(tmp_path / "ds", counts, n_attributes=3)
    table = read_dataset("csv", tmp_path / "ds", csv_path)
    assert table.class_names == ("class 0", "class 1")
    assert table.attribute_names == ("attribute 0", "attribute 1", "attribute 2")
    assert table.group_counts() == {s: list(c) for s, c in counts.items()}


def test_generic_csv_label_errors_name_file_line_and_column(tmp_path):
    csv_path = make_generic_csv(tmp_path / "ds", COUNTS_3X2)
    with pytest.raises(InputError, match=r"data.csv line 14: column 'y' has value 2, but 2 class names were given "
                                         r"\(cat, dog\), so values must be 0…1 \(14 bad row\(s\) in all\)"):
        read_dataset("csv", tmp_path / "ds", csv_path, class_names=["cat", "dog"])

    def relabel(old, new):
        def edit(rows):
            for r in rows[1:]:
                if r[3] == old:
                    r[3] = new
        return edit

    rewrite_csv(csv_path, relabel("2", "5"))  # classes 0, 1, 5: 2 to 4 never occur
    with pytest.raises(InputError, match=r"data.csv: column 'y' uses class values 0, 1, 5 but never 2, 3, 4: number "
                                         r"the classes 0…5 .* or give class names \(--class-names\)"):
        read_dataset("csv", tmp_path / "ds", csv_path)
    rewrite_csv(csv_path, relabel("5", "2"))

    def edit(rows):
        rows[4][4] = "1.0"

    rewrite_csv(csv_path, edit)
    with pytest.raises(InputError, match=r"data.csv line 5: column 'a' has value '1.0'; expected a whole number"):
        read_dataset("csv", tmp_path / "ds", csv_path)
    rewrite_csv(csv_path, lambda rows: rows[4].__setitem__(4, "-1"))
    with pytest.raises(InputError, match=r"line 5: column 'a' has value '-1'; expected a whole number"):
        read_dataset("csv", tmp_path / "ds", csv_path)
    rewrite_csv(csv_path, lambda rows: rows[4].__setitem__(4, "0"))
    with pytest.raises(InputError, match=r"class names must be distinct"):
        read_dataset("csv", tmp_path / "ds", csv_path, class_names=["a", "a", "b"])


@pytest.mark.parametrize("variant,nested", [("txt", False), ("csv", True)])
def test_celeba_variants(tmp_path, variant, nested):
    root = make_celeba(tmp_path / "celeba", variant=variant, nested=nested)
    table = read_dataset("celeba", root)
    assert table.group_counts() == {s: list(c) for s, c in SMALL_COUNTS.items()}
    assert table.class_names == ("not Blond_Hair", "Blond_Hair")
    assert table.attribute_names == ("not Male", "Male")
    assert table.image_root.name == "img_align_celeba"
    check_images(table)


def test_celeba_other_target_and_attribute(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    table = read_dataset("celeba", root, target="Smiling", attribute="Blond_Hair")
    assert table.frame["y"].tolist() == [i % 2 for i in range(N_ROWS)]
    assert table.options == {"target": "Smiling", "attribute": "Blond_Hair"}


def test_celeba_unknown_attribute_names_the_choices(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    with pytest.raises(InputError, match=r"unknown target 'Blond'.*Blond_Hair"):
        read_dataset("celeba", root, target="Blond")


def test_celeba_count_line_must_match(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    with pytest.raises(InputError, match=rf"declares {N_ROWS} images but {N_ROWS - 1} rows"):
        read_dataset("celeba", root)


def test_celeba_bad_value_names_line(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[4].split()
    fields[1 + CELEBA_ATTRS.index("Male")] = "7"
    lines[4] = " ".join(fields) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(InputError, match=r"list_attr_celeba.txt line 5: column 'Male' has value '7'"):
        read_dataset("celeba", root)


def test_missing_column_is_named(waterbirds_dir):
    rewrite_csv(waterbirds_dir / "metadata.csv", lambda rows: [r.pop(4) for r in rows])
    with pytest.raises(InputError, match=r"missing column 'place'"):
        read_dataset("waterbirds", waterbirds_dir)


@pytest.mark.parametrize("column,value", [(3, "3"), (2, "2"), (4, "x")])
def test_value_outside_allowed_set_names_line_and_value(waterbirds_dir, column, value):
    def edit(rows):
        rows[7][column] = value

    rewrite_csv(waterbirds_dir / "metadata.csv", edit)
    name = ["img_id", "img_filename", "y", "split", "place"][column]
    with pytest.raises(InputError, match=rf"metadata.csv line 8: column '{name}' has value '{value}'"):
        read_dataset("waterbirds", waterbirds_dir)


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/passwd", "a/../../b.png"])
def test_path_escaping_root_is_refused(waterbirds_dir, bad_path):
    def edit(rows):
        rows[3][1] = bad_path

    rewrite_csv(waterbirds_dir / "metadata.csv", edit)
    with pytest.raises(InputError, match=rf"line 4: image path '{re.escape(bad_path)}' escapes the dataset root"):
        read_dataset("waterbirds", waterbirds_dir)


def test_missing_images_are_counted_and_listed(waterbirds_dir):
    table = read_dataset("waterbirds", waterbirds_dir)
    gone = table.frame["image_path"].tolist()[:7]
    for rel in gone:
        (waterbirds_dir / rel).unlink()
    with pytest.raises(InputError) as info:
        check_images(table)
    msg = str(info.value)
    assert "7 image file(s) missing" in msg and gone[0] in msg and gone[4] in msg and "(2 more)" in msg


def test_unreadable_image_is_reported(waterbirds_dir):
    table = read_dataset("waterbirds", waterbirds_dir)
    rel = table.frame["image_path"].iloc[5]
    (waterbirds_dir / rel).write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=rf"1 image file\(s\) unreadable: {re.escape(rel)}"):
        check_images(table)


def test_empty_split_is_an_error(waterbirds_dir):
    rewrite_csv(waterbirds_dir / "metadata.csv", lambda rows: rows.__setitem__(slice(None), [
        r for r in rows if r[3] != "2"]))
    with pytest.raises(InputError, match=r"split test has no rows"):
        read_dataset("waterbirds", waterbirds_dir)


def test_missing_metadata_and_folder(tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        read_dataset("waterbirds", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="Waterbirds metadata file not found"):
        read_dataset("waterbirds", tmp_path / "empty")
    with pytest.raises(InputError, match="unknown dataset format 'imagenet'"):
        read_dataset("imagenet", tmp_path / "empty")
