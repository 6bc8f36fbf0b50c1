import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hsfm_core import sweeps
from hsfm_core.analysis.diagnostics import data_scale, edit_diagnostics
from hsfm_core.analysis.seeds import aggregate, format_mean_std, paper_table, run_groups
from hsfm_core.cli import main
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore, write_store
from hsfm_core.runs import list_runs
from tests.gaussian import MANIFEST, gaussian_workspace

TINY = ("E=2", "K_H=2", "T=2", "n=4", "K_hard=8")
ROOT = Path(__file__).resolve().parent.parent


def tiny_request(**changes) -> sweeps.SweepRequest:
    fields = {"method": "hsfm", "grid": sweeps.parse_grid("hsfm", ["alpha=1e-3,1e-2", "eta=0.1"]), "seeds": (0, 1),
              "overrides": TINY, "device": "cpu", "max_parallel": 1}
    return sweeps.SweepRequest(**{**fields, **changes})


def test_grid_uses_the_set_names_and_checks_values():
    assert sweeps.parse_grid("hsfm", ["alpha=5e-5,2e-4", "K_hard=16,64"]) == {"inner_lr": [5e-5, 2e-4],
                                                                              "hard_per_class": [16, 64]}
    for bad, message in [(["lr=1,2"], "unknown key 'lr'"), (["E=2.5"], "epochs must be int"), ([], "at least one"),
                         (["alpha=1e-3,1e-3"], "distinct"), (["alpha=1e-3", "inner_lr=2e-3"], "given twice")]:
        with pytest.raises(InputError, match=message):
            sweeps.parse_grid("hsfm", bad)
    with pytest.raises(InputError, match="must be a finite number > 0"):  # checked before anything is written
        sweeps.create("/nonexistent-ws", tiny_request(grid={"inner_lr": [-1.0]}))


def test_selection_reads_validation_only(tmp_path):
    """The same sweep on a store whose test labels are permuted selects the same configuration with the
    same validation figures; only the test columns change."""
    ws = tmp_path / "ws"
    store = gaussian_workspace(ws)
    permuted = tmp_path / "permuted"
    meta = store.meta.copy()
    test = np.flatnonzero(meta["split"].to_numpy() == "test")
    meta.loc[test, "y"] = np.random.default_rng(7).permutation(meta.loc[test, "y"].to_numpy())
    meta["g"] = store.groups.group_of(meta["y"].to_numpy(), meta["a"].to_numpy())
    write_store(permuted, np.asarray(store.features), meta, MANIFEST)

    request = tiny_request(grid=sweeps.parse_grid("hsfm", ["alpha=1e-4,1e-2", "eta=0.01,1"]))
    first, second = sweeps.run(ws, request), sweeps.run(permuted, request)
    val_columns = [c for c in first.columns if c.startswith("val_")]
    pd.testing.assert_frame_equal(first[val_columns], second[val_columns])
    assert not first["test_wga_mean"].equals(second["test_wga_mean"])
    assert first["selected"].sum() == 1 and first["selected"].tolist() == second["selected"].tolist()

    # and `select` itself never looks at test: scrambling every test column changes nothing
    scrambled = first.copy()
    for column in [c for c in first.columns if c.startswith("test_")]:
        scrambled[column] = np.random.default_rng(1).permutation(scrambled[column].to_numpy())
    assert sweeps.select(scrambled) == sweeps.select(first)


def test_selection_tie_break():
    table = pd.DataFrame({"config": [0, 1, 2, 3], "seeds_done": [2, 2, 2, 1], "seeds": [2, 2, 2, 2],
                          "val_wga_mean": [0.8, 0.9, 0.9, 0.99], "val_avg_adjusted_mean": [0.95, 0.91, 0.93, 0.99]})
    assert sweeps.select(table) == 2  # 3 is unfinished; 1 and 2 tie on WGA, 2 has the higher adjusted average
    table.loc[2, "val_avg_adjusted_mean"] = 0.91
    assert sweeps.select(table) == 1  # a full tie: the earlier configuration


def test_resume_trains_only_unfinished_runs(tmp_path):
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    request = tiny_request()
    table = sweeps.run(ws, request)
    assert table["seeds_done"].tolist() == [2, 2] and (ws / "sweeps" / request.sweep_id / "results.csv").is_file()
    runs = {r["run_id"]: r for r in list_runs(ws)}
    assert len(runs) == 4 and all(r["config"]["sweep"] == request.sweep_id for r in runs.values())
    kept = sweeps.run_id_of(request, 0, 0)
    broken = sweeps.run_id_of(request, 1, 1)
    (ws / "runs" / broken / "status").write_text("failed\n")
    stamp = (ws / "runs" / kept / "head.safetensors").stat().st_mtime_ns
    assert sweeps.pending(ws, request) == [(1, request.configurations()[1], [1])]
    table = sweeps.run(ws, tiny_request(seeds=(0, 1, 2)))  # resume, and add a seed
    assert table["seeds_done"].tolist() == [3, 3]
    assert (ws / "runs" / kept / "head.safetensors").stat().st_mtime_ns == stamp  # finished runs are kept
    assert (ws / "runs" / broken / "status").read_text().strip() == "done"


@pytest.mark.slow
def test_cancel_then_resume_from_the_cli(tmp_path):
    ws = tmp_path / "ws"
    gaussian_workspace(ws, d=64, sizes=(3000, 1500, 300))
    args = [sys.executable, "-m", "hsfm_core", "sweep", "--workspace", str(ws), "--method", "hsfm", "--grid",
            "alpha=1e-3,2e-3", "--set", "E=400", "K_H=4", "T=4", "n=8", "--seeds", "0", "--max-parallel", "1",
            "--device", "cpu", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def started() -> bool:
            return any(p.stat().st_size for p in (ws / "runs").glob("*/history.jsonl"))

        deadline = time.time() + 120
        while time.time() < deadline and not started():
            time.sleep(0.2)
        sweep_id = next((ws / "sweeps").iterdir()).name
        assert main(["sweep", "--workspace", str(ws), "--method", "hsfm", "--cancel", sweep_id]) == 0
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "cancelled" and result["selected"] is None
    statuses = {r["run_id"]: r["status"] for r in list_runs(ws)}
    assert "cancelled" in statuses.values() and "running" not in statuses.values()
    assert sweeps.status(ws, sweep_id) == "cancelled"
    request = sweeps.load_request(ws, sweep_id)  # running it again resumes: every cancelled run is pending
    assert request.sweep_id == sweep_id and [k for k, _, _ in sweeps.pending(ws, request)] == [0, 1]


def _run(seed, method, wga, adjusted, group_acc, settings=None, status="done"):
    return {"run_id": f"{method}-x-s{seed}", "method": method, "status": status,
            "config": {"seed": seed, "store_hash": "h", "hyperparameters": settings or {"a": 1}, "preset": None},
            "metrics": {"test": {"wga": wga, "avg_adjusted": adjusted, "avg_plain": adjusted, "mean_group": adjusted,
                                 "group_acc": group_acc}}}


def test_run_group_statistics_match_hand_computation():
    runs = [_run(0, "dfr", 0.80, 0.90, [0.9, 0.8, None, 1.0]), _run(1, "dfr", 0.84, 0.92, [0.95, 0.84, 0.5, 1.0]),
            _run(2, "dfr", 0.86, 0.91, [0.92, 0.86, 0.7, 0.9]), _run(3, "dfr", 0.1, 0.1, [0.1] * 4, status="failed"),
            _run(0, "erm", 0.30, 0.95, [1.0, 0.3, 0.4, 1.0]), _run(0, "dfr", 0.5, 0.5, [0.5] * 4, settings={"a": 2})]
    groups = run_groups(runs)
    assert [g.method for g in groups] == ["erm", "dfr", "dfr"]  # registry order: ERM first
    dfr = next(g for g in groups if g.method == "dfr" and len(g.runs) == 4)
    agg = aggregate(dfr, "test")
    assert agg["n"] == 3 and agg["seeds"] == [0, 1, 2]
    assert math.isclose(agg["wga"]["mean"], (0.80 + 0.84 + 0.86) / 3)
    assert math.isclose(agg["wga"]["std"], np.sqrt(((0.80 - 0.8333333) ** 2 + (0.84 - 0.8333333) ** 2
                                                     + (0.86 - 0.8333333) ** 2) / 2), rel_tol=1e-5)
    assert math.isclose(agg["group_acc"]["mean"][2], 0.6) and math.isclose(agg["group_acc"]["std"][2], np.std([0.5, 0.7], ddof=1))
    erm = aggregate(groups[0], "test")
    assert erm["n"] == 1 and erm["wga"]["std"] is None and format_mean_std(**erm["wga"]) == "30.0"
    assert format_mean_std(agg["wga"]["mean"], agg["wga"]["std"]) == "83.3 ± 3.1"
    table = paper_table(groups, "test", "markdown")
    assert "| ERM | 30.0 | 95.0 | 1 |" in table and "83.3 ± 3.1" in table
    assert r"83.3 $\pm$ 3.1" in paper_table(groups, "test", "latex")
    csv = pd.read_csv(__import__("io").StringIO(paper_table(groups, "test", "csv")))
    assert csv["seeds"].tolist() == [1, 3, 1]


def test_runs_table_and_eval_show_seed_statistics(tmp_path, capsys):
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    assert main(["train", "--workspace", str(ws), "--method", "dfr", "--seeds", "0", "1", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["runs", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "run groups" in out and " 3 " in out and "±" in out
    assert main(["runs", "--workspace", str(ws), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert groups[0]["seeds"] == 3 and groups[0]["test"]["wga"]["std"] is not None
    run_id = groups[0]["run_ids"][0]
    assert main(["eval", "--workspace", str(ws), "--run", run_id]) == 0
    assert "run group DFR · val_scaler (3 seeds" in capsys.readouterr().out  # the recipe is in the name
    out_file = tmp_path / "table.tex"
    assert main(["table", "--workspace", str(ws), "--format", "latex", "--out", str(out_file)]) == 0
    assert r"\begin{tabular}" in out_file.read_text() and "DFR" in out_file.read_text()


def test_edit_diagnostics_against_brute_force():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(700, 12)).astype(np.float32)
    before = features[:20]
    after = before + rng.normal(scale=[[0.01]] * 10 + [[5.0]] * 10, size=before.shape)
    scale = data_scale(features, sample=300)
    # brute force: all pairwise distances
    diff = features[:, None, :].astype(np.float64) - features[None, :, :]
    pairwise = np.sqrt((diff**2).sum(-1))
    np.fill_diagonal(pairwise, np.inf)
    rows = np.sort(np.random.default_rng(0).choice(700, size=300, replace=False))
    nn = pairwise[rows].min(axis=1)
    assert math.isclose(scale.typical_nn_distance, np.median(nn), rel_tol=1e-9)
    assert math.isclose(scale.off_data_threshold, np.percentile(nn / np.median(nn), 99), rel_tol=1e-9)
    out = edit_diagnostics(before, after, features, scale)
    to_data = np.sqrt(((after[:, None, :] - features[None].astype(np.float64)) ** 2).sum(-1)).min(axis=1)
    per = out["per_example"]
    np.testing.assert_allclose(per["edit_norm"], np.linalg.norm(after - before, axis=1), rtol=1e-9)
    np.testing.assert_allclose(per["relative_edit_norm"], np.linalg.norm(after - before, axis=1)
                               / np.linalg.norm(before, axis=1), rtol=1e-6)
    np.testing.assert_allclose(per["off_data_ratio"], to_data / scale.typical_nn_distance, rtol=1e-6, atol=1e-9)
    assert per["off_data"][:10] == [False] * 10 and all(per["off_data"][10:])  # small edits stay, large ones leave
    assert out["off_data_share"] == 0.5


def test_auto_preset_follows_the_feature_scale(tmp_path):
    from hsfm_core.spec import TrainSpec

    ratios = {}
    for scale in (0.05, 1.0, 10.0):
        store = gaussian_workspace(tmp_path / f"x{scale}", d=16)
        scaled = tmp_path / f"scaled{scale}"
        write_store(scaled, np.asarray(store.features) * scale, store.meta, MANIFEST)
        settings, preset, why = TrainSpec.create("hsfm").resolve(FeatureStore.open(scaled))
        assert preset == "auto" and "ResNet-50" in why
        ratios[scale] = (settings.inner_lr, settings.outer_lr)
    assert math.isclose(ratios[10.0][1] / ratios[1.0][1], 10, rel_tol=0.02)  # η ∝ feature scale
    assert math.isclose(ratios[0.05][1] / ratios[1.0][1], 0.05, rel_tol=0.02)
    assert ratios[10.0][0] < ratios[1.0][0] < ratios[0.05][0]  # α shrinks as the head's scale does
    with pytest.raises(InputError, match="no 'auto' preset"):
        TrainSpec.create("dfr", preset="auto")


def test_one_foreground_run_of_a_sweep_at_a_time(tmp_path):
    import fcntl

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    request = tiny_request()
    directory = sweeps.create(ws, request)
    with open(directory / ".lock", "a") as held:  # another process running this sweep
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="already running in another process"):
            sweeps.run(ws, request)
    assert not list_runs(ws)  # nothing trained, nothing removed
