import json

import numpy as np
import pytest

from hsfm_core.cli import main
from hsfm_core.analysis.retrieval import FeatureIndex, edit_shift, workspace_index
from hsfm_core.train import train
from tests.gaussian import hsfm_and_erm_runs, gaussian_workspace


def brute_force(features, queries, k):
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ f.T
    return np.argsort(-sims, axis=1)[:, :k], -np.sort(-sims, axis=1)[:, :k]


def test_exact_index_is_cosine_search():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 24)).astype(np.float32) * rng.uniform(0.5, 3, (500, 1)).astype(np.float32)
    index = FeatureIndex.build(features)
    assert index.kind == "exact"
    queries = rng.normal(size=(7, 24)).astype(np.float32)
    ids, scores = index.search(queries, 10)
    expected_ids, expected_scores = brute_force(features, queries, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    self_ids, self_scores = index.search(features[42], 1)
    assert self_ids[0, 0] == 42 and self_scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_subset_index_answers_in_store_rows_and_mean_queries():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    rows = np.arange(1000, 1200)
    index = FeatureIndex.build(features, ids=rows)
    ids, _ = index.search(features[5], 1)
    assert ids[0, 0] == 1005
    pair = features[[3, 4]]
    unit = pair / np.linalg.norm(pair, axis=1, keepdims=True)
    np.testing.assert_array_equal(index.search_mean(pair, 5)[0], index.search(unit.mean(axis=0), 5)[0])


def test_ivf_index_recall_against_exact():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(50, 32)).astype(np.float32)
    features = centres[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 32)).astype(np.float32)
    queries = features[rng.choice(20_000, 200, replace=False)] + 0.05 * rng.normal(size=(200, 32)).astype(np.float32)
    exact, _ = FeatureIndex.build(features, kind="exact").search(queries, 16)
    ivf_index = FeatureIndex.build(features, kind="ivf")
    assert ivf_index.kind == "ivf"
    approx, _ = ivf_index.search(queries, 16)
    recall = np.mean([len(set(a) & set(e)) / 16 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_workspace_index_is_cached_by_content_hash(tmp_path):
    store = gaussian_workspace(tmp_path / "ws")
    first = workspace_index(store)
    cached = list((tmp_path / "ws" / "cache").glob("faiss-exact-*.index"))
    assert len(cached) == 1 and store.content_hash.split(":")[1] in cached[0].name
    again = workspace_index(store)
    q = np.asarray(store.features[:3])
    np.testing.assert_array_equal(first.search(q, 5)[0], again.search(q, 5)[0])


def test_edit_shift_counts_neighbours_with_the_other_attribute():
    rng = np.random.default_rng(3)
    # attribute 0 lives around +e1, attribute 1 around −e1
    a = np.repeat([0, 1], 100)
    features = rng.normal(size=(200, 4)).astype(np.float32) * 0.1
    features[:, 0] += np.where(a == 0, 1.0, -1.0)
    index = FeatureIndex.build(features)
    support_rows = np.array([0, 1, 150])
    before = features[support_rows]
    after = before.copy()
    after[:2, 0] = -1.0  # the two attribute-0 examples edited into the attribute-1 cluster
    result = edit_shift(index, a, support_rows, np.array([0, 0, 1]), before, after, k=8)
    assert result["class_0"] == {"before": 0.0, "after": 1.0, "change": 1.0}
    assert result["class_1"] == {"before": 0.0, "after": 0.0, "change": 0.0}
    assert result["overall"]["after"] == pytest.approx(2 / 3)


def test_neighbors_and_edit_shift_cli(tmp_path, capsys):
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    hsfm, erm = hsfm_and_erm_runs(ws)
    capsys.readouterr()
    assert main(["neighbors", "--workspace", str(ws), "--run", hsfm.run_id, "--support", "5", "-k", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["neighbors"]) == 4 and out["neighbors"][0]["row"] == out["row"]  # itself, unedited
    assert out["neighbors"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert {"split", "y", "a", "g"} <= set(out["neighbors"][1])
    assert main(["edit-shift", "--workspace", str(ws), "--run", hsfm.run_id, "-k", "8"]) == 0
    shift = json.loads(capsys.readouterr().out)
    assert shift["n_support"] == 8 and 0 <= shift["overall"]["before"] <= 1
    assert main(["edit-shift", "--workspace", str(ws), "--run", erm.run_id]) == 2
    assert "no support set" in capsys.readouterr().err
    assert main(["neighbors", "--workspace", str(ws), "--run", hsfm.run_id, "--support", "99"]) == 2
    assert "support examples 0..7" in capsys.readouterr().err


def test_analysis_refuses_a_run_from_a_replaced_store(tmp_path, capsys):
    import shutil

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    (hsfm,) = train(ws, "hsfm", overrides=["E=1", "K_H=1", "T=1", "n=4", "K_hard=8"])
    gaussian_workspace(tmp_path / "other", seed=7)
    for name in ("manifest.json", "features.npy", "meta.parquet"):  # replaced in place, runs/ kept
        shutil.copy(tmp_path / "other" / name, ws / name)
    for command in (["edit-shift"], ["neighbors", "--support", "0"], ["decode"]):
        assert main([command[0], "--workspace", str(ws), "--run", hsfm.run_id, *command[1:]]) == 2
        assert "was trained on another store" in capsys.readouterr().err
