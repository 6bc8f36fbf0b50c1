"""The Home page, run headless with Streamlit's AppTest."""

from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from hsfm_core.features import write_store
from hsfm_core.workspace import workspace_from_args

APP = str(Path(__file__).resolve().parents[1] / "app.py")
MANIFEST = {"dataset": {"format": "csv", "source": "x", "options": {}}, "image_root": None,
            "class_names": ["landbird", "waterbird"], "attribute_names": ["land", "water"],
            "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": "import:test"},
            "clip_space": False, "text_encoder": None, "shard": None}


def small_workspace(path):
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    a = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    meta = pd.DataFrame({"row_id": np.arange(8), "sample_id": list("abcdefgh"),
                         "split": ["train"] * 4 + ["val"] * 2 + ["test"] * 2, "y": y, "a": a, "g": 2 * y + a,
                         "image_path": ""})
    return write_store(path, np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), meta, MANIFEST)


def test_workspace_from_args_and_env(tmp_path):
    assert workspace_from_args(["--workspace", str(tmp_path)], {}) == tmp_path
    assert workspace_from_args([], {"HSFM_WORKSPACE": str(tmp_path)}) == tmp_path
    assert workspace_from_args(["--workspace", "/a"], {"HSFM_WORKSPACE": "/b"}).as_posix() == "/a"
    assert workspace_from_args([], {}) is None


def test_home_without_workspace_or_demo_bundle_explains_how_to_start(monkeypatch, tmp_path):
    import hsfm_core.demo.build

    monkeypatch.delenv("HSFM_WORKSPACE", raising=False)
    monkeypatch.setattr(hsfm_core.demo.build, "DEMO_CLIP", tmp_path / "no-bundle")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "No workspace given" in at.info[0].value


def test_home_shows_the_workspace(tmp_path, monkeypatch):
    small_workspace(tmp_path / "ws")
    monkeypatch.setenv("HSFM_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["train", "val", "test"]
    assert table.loc["waterbird · water", "train"] == 1 and table.loc["landbird · land", "val"] == 1
    assert [m.value for m in at.metric][:2] == ["8", "4"]


def test_home_reports_a_broken_workspace(tmp_path, monkeypatch):
    (tmp_path / "ws").mkdir()
    monkeypatch.setenv("HSFM_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert "no manifest.json" in at.error[0].value
