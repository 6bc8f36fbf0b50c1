import json

import numpy as np
import pandas as pd
import pytest

from hsfm_core.cli import main
from hsfm_core.analysis.projection import ProjectionParams, neighbour_agreement, project
from hsfm_core.runs import find_run
from hsfm_core.train import train
from tests.gaussian import TINY_HSFM, gaussian_workspace

pytestmark = pytest.mark.slow  # the first UMAP in a process compiles numba kernels


def test_map_holds_originals_edits_and_correctness_and_is_cached(tmp_path, capsys):
    ws = tmp_path / "ws"
    store = gaussian_workspace(ws, d=16, sizes=(300, 150, 150))
    (trained,) = train(ws, "hsfm", overrides=TINY_HSFM)
    run = find_run(ws, trained.run_id)
    path = project(store, run)
    frame = pd.read_parquet(path)
    assert len(frame) == 600 + 8
    assert frame["kind"].value_counts().to_dict() == {"original": 592, "support": 8, "edited": 8}
    edited = frame[frame["kind"] == "edited"]
    assert edited["support"].tolist() == list(range(8)) and edited["y_class"].tolist() == [0] * 4 + [1] * 4
    support_rows = frame.loc[frame["kind"] == "support", "row"].tolist()
    assert sorted(support_rows) == sorted(edited["row"].tolist())
    assert frame["correct"].dtype == bool and np.isfinite(frame[["x", "y"]].to_numpy()).all()
    originals = frame[frame["kind"] != "edited"]
    assert (originals["group"].to_numpy() == store.meta["g"].to_numpy()[originals["row"].to_numpy()]).all()

    stamp = path.stat().st_mtime_ns
    assert project(store, run) == path and path.stat().st_mtime_ns == stamp  # a cache hit: no recompute
    other = project(store, run, params=ProjectionParams(n_neighbors=10))
    assert other != path
    (erm,) = train(ws, "erm")
    (dfr,) = train(ws, "dfr", overrides=["n_refits=2"])
    plain = project(store)
    by_erm, by_dfr = project(store, find_run(ws, erm.run_id)), project(store, find_run(ws, dfr.run_id))
    assert len({plain, by_erm, by_dfr}) == 3  # `correct` depends on the head: never a shared file
    assert "correct" not in pd.read_parquet(plain) and "correct" in pd.read_parquet(by_dfr)

    capsys.readouterr()
    assert main(["project", "--workspace", str(ws), "--split", "val"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 150 and out["coordinates"].endswith(".parquet")


def test_neighbour_agreement():
    rng = np.random.default_rng(0)
    high = rng.normal(size=(200, 5))
    assert neighbour_agreement(high, high, np.arange(10), metric="euclidean") == 1.0
    assert neighbour_agreement(high, rng.normal(size=(200, 2)), np.arange(50), metric="euclidean") < 0.3
