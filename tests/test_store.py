import json
import os

import numpy as np
import pandas as pd
import pytest

from hsfm_core.data.table import COLUMNS
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore, StoreWriter, write_store
from hsfm_core.features import store as store_module

MANIFEST = {"dataset": {"format": "csv", "source": "x", "options": {}}, "image_root": "/data",
            "class_names": ["c0", "c1"], "attribute_names": ["a0", "a1"],
            "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": "test"},
            "clip_space": False, "text_encoder": None, "shard": None}


def make_arrays(n=40, d=8, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d)).astype(np.float32)
    split = np.array(["train"] * 20 + ["val"] * 10 + ["test"] * 10)
    y, a = rng.integers(0, 2, n), rng.integers(0, 2, n)
    meta = pd.DataFrame({"row_id": np.arange(n), "sample_id": [f"s{i}" for i in range(n)], "split": split,
                         "y": y, "a": a, "g": 2 * y + a, "image_path": [f"img/{i}.png" for i in range(n)]})
    return features, meta


def test_roundtrip_and_selection(tmp_path):
    features, meta = make_arrays()
    store = write_store(tmp_path / "ws", features, meta, MANIFEST)
    again = FeatureStore.open(tmp_path / "ws")
    assert isinstance(again.features, np.memmap) and not again.features.flags.writeable
    np.testing.assert_array_equal(again.features, features)
    assert list(again.meta.columns) == list(COLUMNS)
    assert again.manifest["splits"] == {"train": 20, "val": 10, "test": 10}
    assert again.content_hash == store.content_hash
    val = again.select("val")
    np.testing.assert_array_equal(val.rows, np.arange(20, 30))
    np.testing.assert_array_equal(val.features, features[20:30])
    assert isinstance(val.features, np.memmap)  # a contiguous split stays a view
    g1 = again.select("test", groups=[1, 3])
    expected = np.flatnonzero((meta["split"] == "test") & meta["g"].isin([1, 3]))
    np.testing.assert_array_equal(g1.rows, expected)
    np.testing.assert_array_equal(g1.features, features[expected])
    np.testing.assert_array_equal(g1.y, meta["y"].to_numpy()[expected])
    assert again.image_path(3) == again.image_root / "img/3.png"


def test_float16_store(tmp_path):
    features, meta = make_arrays()
    store = write_store(tmp_path / "ws", features.astype(np.float16), meta, MANIFEST)
    assert store.features.dtype == np.float16 and store.manifest["dtype"] == "float16"


def test_content_hash_tracks_features_and_labels(tmp_path):
    features, meta = make_arrays()
    h0 = write_store(tmp_path / "a", features, meta, MANIFEST).content_hash
    assert write_store(tmp_path / "b", features, meta, MANIFEST).content_hash == h0
    features2 = features.copy()
    features2[5, 3] += 1e-3
    assert write_store(tmp_path / "c", features2, meta, MANIFEST).content_hash != h0
    meta2 = meta.copy()
    meta2.loc[7, "y"] = 1 - meta2.loc[7, "y"]
    meta2["g"] = 2 * meta2["y"] + meta2["a"]
    assert write_store(tmp_path / "d", features, meta2, MANIFEST).content_hash != h0


def test_missing_split_and_bad_group_are_explained(tmp_path):
    features, meta = make_arrays()
    keep = meta["split"] != "train"
    store = write_store(tmp_path / "ws", features[keep.to_numpy()], meta[keep].assign(row_id=np.arange(keep.sum())),
                        MANIFEST)
    assert store.splits == ("val", "test")
    with pytest.raises(InputError, match=r"has no 'train' split \(it has val, test\)"):
        store.select("train")
    with pytest.raises(InputError, match=r"unknown group\(s\) \[7\]"):
        store.select("val", groups=[7])


def test_crash_mid_write_leaves_old_store_intact(tmp_path):
    features, meta = make_arrays()
    old = write_store(tmp_path / "ws", features, meta, MANIFEST)
    (tmp_path / "ws" / "runs" / "r1").mkdir(parents=True)
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "ws", 40, 8, overwrite=True) as writer:
            writer.features[:] = 0
            raise RuntimeError("crash while encoding")
    again = FeatureStore.open(tmp_path / "ws")
    assert again.content_hash == old.content_hash
    assert not list((tmp_path / "ws").glob(".incoming-*"))
    assert (tmp_path / "ws" / "runs" / "r1").is_dir()


def test_crash_during_commit_leaves_no_store_that_opens(tmp_path, monkeypatch):
    features, meta = make_arrays()
    write_store(tmp_path / "ws", features, meta, MANIFEST)
    (tmp_path / "ws" / "cache").mkdir()
    calls = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first data file has moved in
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_store(tmp_path / "ws", features * 2, meta, MANIFEST, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(InputError, match="no manifest.json"):
        FeatureStore.open(tmp_path / "ws")
    assert (tmp_path / "ws" / "cache").is_dir()
    # the next write succeeds and cleans up
    store = write_store(tmp_path / "ws", features, meta, MANIFEST, overwrite=True)
    np.testing.assert_array_equal(store.features, features)


def test_existing_store_needs_overwrite(tmp_path):
    features, meta = make_arrays()
    write_store(tmp_path / "ws", features, meta, MANIFEST)
    with pytest.raises(InputError, match="already holds a feature store; pass --overwrite"):
        write_store(tmp_path / "ws", features, meta, MANIFEST)


def test_nonfinite_features_are_refused(tmp_path):
    features, meta = make_arrays()
    features[[3, 9], 1] = np.nan
    with pytest.raises(InputError, match=r"2 feature row\(s\) are not finite .* first rows \[3, 9\]"):
        write_store(tmp_path / "ws", features, meta, MANIFEST)
    assert not (tmp_path / "ws" / "manifest.json").exists()


def test_open_checks_files_against_manifest(tmp_path):
    features, meta = make_arrays()
    write_store(tmp_path / "ws", features, meta, MANIFEST)
    np.save(tmp_path / "ws" / "features.npy", features[:10])
    with pytest.raises(InputError, match=r"shape \(10, 8\) float32 does not match the manifest \(40 × 8 float32\)"):
        FeatureStore.open(tmp_path / "ws")
    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    manifest["version"] = 99
    (tmp_path / "ws" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="version 99"):
        FeatureStore.open(tmp_path / "ws")


def test_labels_and_groups_must_fit_the_manifest(tmp_path):
    features, meta = make_arrays()
    bad = meta.copy()
    bad.loc[4, "g"] = 3 - bad.loc[4, "g"]
    with pytest.raises(InputError, match=r"store metadata: row 4: group \d is not 2·y \+ a"):
        write_store(tmp_path / "ws", features, bad, MANIFEST)
    bad = meta.copy()
    bad.loc[6, ["y", "g"]] = [2, 4 + bad.loc[6, "a"]]  # a third class the manifest does not name
    with pytest.raises(InputError, match=r"store metadata: row 6: label 2 is outside 0…1"):
        write_store(tmp_path / "ws", features, bad, MANIFEST)
    assert not (tmp_path / "ws" / "manifest.json").exists()
    three = {**MANIFEST, "class_names": ["c0", "c1", "c2"], "attribute_names": ["a0", "a1", "a2"]}
    meta3 = meta.assign(y=meta["y"] + (np.arange(40) % 3 == 0), a=(np.arange(40) % 3))
    meta3["g"] = 3 * meta3["y"] + meta3["a"]
    store = write_store(tmp_path / "ws", features, meta3, three)
    assert store.n_groups == 9 and store.groups.names[5] == "c1 · a2"
    assert sum(store.manifest["group_counts"]["train"]) == 20 and len(store.manifest["group_counts"]["test"]) == 9


def test_meta_read_from_several_row_groups_opens(tmp_path):
    """Large stores' meta.parquet comes back as chunked Arrow text (202,599 CelebA rows did); the open
    checks must read it whole, and still catch a bad path in a later chunk."""
    import pyarrow.parquet as pq

    features, meta = make_arrays()
    write_store(tmp_path / "ws", features, meta, MANIFEST)
    path = tmp_path / "ws" / "meta.parquet"
    table = pq.read_table(path)
    pq.write_table(table, path, row_group_size=7)  # schema metadata (the write stamp) is kept
    assert len(FeatureStore.open(tmp_path / "ws").meta) == len(meta)
    bad = table.set_column(table.schema.get_field_index("image_path"), "image_path",
                           [[*meta["image_path"][:30], "../outside.png", *meta["image_path"][31:]]])
    pq.write_table(bad, path, row_group_size=7)
    with pytest.raises(InputError, match="row 30: image path '../outside.png'"):
        FeatureStore.open(tmp_path / "ws")
