import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hsfm_core.cli import main
from hsfm_core.errors import InputError
from hsfm_core.features.store import INIT_HEAD
from hsfm_core.runs import list_runs
from hsfm_core.train import train
from tests.gaussian import gaussian_workspace

FAST = ["E=3", "K_H=2", "T=3", "n=6", "K_hard=16", "alpha=1e-3"]


def cli(*args) -> int:
    return main([str(a) for a in args])


def test_hsfm_run_directory(tmp_path, capsys):
    store = gaussian_workspace(tmp_path / "ws")
    assert cli("train", "--workspace", tmp_path / "ws", "--method", "hsfm", "--set", *FAST,
               "--seeds", 0, 1, "--quiet") == 0
    out = capsys.readouterr().out
    assert "2 seeds, test: wga" in out and "±" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert len(summary["runs"]) == 2 and summary["summary"]["wga"]["n"] == 2

    runs = list_runs(tmp_path / "ws")
    assert [r["config"]["seed"] for r in runs] == [0, 1] and {r["status"] for r in runs} == {"done"}
    run = runs[0]
    config = run["config"]
    assert config["method"] == "hsfm" and config["preset"] == "auto" and config["device"] == "cpu"
    assert "ResNet-50" in config["preset_reason"]  # generated features: the paper's presets do not apply
    assert config["hyperparameters"]["epochs"] == 3 and config["hyperparameters"]["inner_lr"] == 1e-3
    assert config["store_hash"] == store.content_hash and config["code_version"].startswith("0.1.0")
    assert config["init_head"]["source"].startswith("erm probe") and 1 <= config["fitted"]["best_epoch"] <= 3

    head = load_file(run["path"] / "head.safetensors")
    assert set(head) == {"weight", "bias", "init.weight", "init.bias"} and head["weight"].shape == (2, 16)
    support = load_file(run["path"] / "support.safetensors")
    assert set(support) == {"before", "after", "indices", "labels"}
    assert support["before"].shape == support["after"].shape == (12, 16)
    rows = support["indices"].numpy()
    assert (store.meta["split"].to_numpy()[rows] == "train").all()
    assert store.meta["y"].to_numpy()[rows].tolist() == support["labels"].tolist() == [0] * 6 + [1] * 6
    np.testing.assert_array_equal(support["before"].numpy(), store.features[rows])

    history = [json.loads(line) for line in (run["path"] / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and "outer_loss" in history[0] and "val_wga" in history[0]
    metrics = json.loads((run["path"] / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    assert set(metrics["test"]) == {"group_acc", "group_n", "group_ci", "wga", "worst_group", "avg_plain",
                                    "avg_adjusted", "mean_group"}
    assert metrics["val"]["wga"] == pytest.approx(history[config["fitted"]["best_epoch"] - 1]["val_wga"])


def test_erm_and_dfr_runs_and_listing(tmp_path, capsys):
    gaussian_workspace(tmp_path / "ws")
    assert cli("train", "--workspace", tmp_path / "ws", "--method", "erm", "--quiet") == 0
    assert cli("train", "--workspace", tmp_path / "ws", "--method", "dfr", "--set", "n_refits=3", "--seeds", 0, 1,
               "--quiet") == 0
    runs = {r["run_id"]: r for r in list_runs(tmp_path / "ws")}
    erm = next(r for r in runs.values() if r["method"] == "erm")
    head = load_file(erm["path"] / "head.safetensors")
    assert torch.equal(head["weight"], head["init.weight"])
    dfr = [r for r in runs.values() if r["method"] == "dfr"]
    assert len(dfr) == 2 and all(r["config"]["fitted"]["scaler_fit_on"] == "val" for r in dfr)
    assert all(r["config"]["fitted"]["selected_C"] in (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01) for r in dfr)
    capsys.readouterr()
    assert cli("runs", "--workspace", tmp_path / "ws") == 0
    listing = capsys.readouterr().out
    assert "test WGA" in listing and all(run_id in listing for run_id in runs)
    assert cli("eval", "--workspace", tmp_path / "ws", "--run", erm["run_id"]) == 0
    table = capsys.readouterr().out
    assert "← worst" in table and "adjusted average (train group weights)" in table and "landbird · water" in table


def test_store_without_train_split(tmp_path):
    gaussian_workspace(tmp_path / "ws", splits=("val", "test"))
    for method in ("hsfm", "erm"):
        with pytest.raises(InputError, match="has no train split"):
            train(tmp_path / "ws", method)
    runs = train(tmp_path / "ws", "dfr", overrides=["n_refits=2"])
    assert runs[0].metrics["test"]["avg_adjusted"] is None  # no train proportions to weight by
    assert len(list_runs(tmp_path / "ws")) == 1


def _no_runs(ws) -> bool:
    return not list_runs(ws) and not any((ws / "runs").glob(".incoming-*")) if (ws / "runs").exists() else True


def test_bad_input_leaves_no_run(tmp_path, capsys):
    ws = tmp_path / "ws"
    store = gaussian_workspace(ws)
    assert cli("train", "--workspace", ws, "--method", "hsfm", "--set", "eta=fast") == 2
    assert "eta=fast" in capsys.readouterr().err
    assert cli("train", "--workspace", ws, "--method", "hsfm", "--preset", "imagenet") == 2
    assert cli("train", "--workspace", ws, "--method", "dfr", "--set", "E=3") == 2
    assert _no_runs(ws)

    # NaN / inf features (a store edited by hand): found in the fit, the runs it started are removed
    features = np.load(ws / "features.npy", mmap_mode="r+")
    val_row = int(store.rows("val")[4])
    features[val_row, 3] = np.inf
    features.flush()
    del features
    with pytest.raises(InputError, match="validation features contain NaN or inf"):
        train(ws, "hsfm", overrides=FAST)
    assert _no_runs(ws)


def test_init_head_dimension_mismatch_and_one_class_split(tmp_path):
    from safetensors.torch import save_file

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    manifest = json.loads((ws / "manifest.json").read_text())
    save_file({"weight": torch.zeros(2, 8), "bias": torch.zeros(2)}, ws / INIT_HEAD)
    (ws / "manifest.json").write_text(json.dumps({**manifest, "init_head": INIT_HEAD}))
    with pytest.raises(InputError, match=r"initial head is \(2, 8\) but the features are 16-d"):
        train(ws, "hsfm", overrides=FAST)
    assert _no_runs(ws)

    ws2 = tmp_path / "ws2"
    store = gaussian_workspace(ws2)
    meta = store.meta.copy()
    meta.loc[meta["split"] == "val", "y"] = 0
    meta["g"] = 2 * meta["y"] + meta["a"]
    from hsfm_core.features import write_store
    write_store(ws2, np.asarray(store.features), meta, {k: store.manifest[k] for k in (
        "dataset", "image_root", "class_names", "attribute_names", "backbone", "clip_space", "text_encoder",
        "shard")}, overwrite=True)
    for method in ("hsfm", "dfr"):
        # refused before any run exists: by the class check, or first by the validation-group check (every
        # group 0…G−1 needs rows: Groups.require_rows), which names the empty groups of class 1
        with pytest.raises(InputError, match=r"(val|validation) split has classes \[0\]|fewer than 2 rows of .*group 2"):
            train(ws2, method, overrides=FAST if method == "hsfm" else ())
    assert _no_runs(ws2)


def test_crash_marks_the_run_failed(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    train(ws, "erm")
    import hsfm_core.methods.hsfm as train_module

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train_module, "fit_hsfm", crash)
    with pytest.raises(RuntimeError):
        train(ws, "hsfm", overrides=FAST)
    runs = {r["method"]: r for r in list_runs(ws)}
    assert runs["hsfm"]["status"] == "failed" and "out of memory" in (runs["hsfm"]["path"] / "error.txt").read_text()
    assert runs["erm"]["status"] == "done"  # earlier runs untouched


def test_shard_store_cannot_train(tmp_path):
    store = gaussian_workspace(tmp_path / "ws")
    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    manifest["shard"] = {"index": 0, "count": 2}
    (tmp_path / "ws" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="one shard"):
        train(store.path, "erm")


def test_out_of_range_settings_are_refused_before_any_run(tmp_path):
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    for method, overrides, message in [
        ("hsfm", ["alpha=inf"], "inner_lr must be a finite number > 0"),
        ("dfr", ["n_refits=0"], "n_refits must be ≥ 1"),
        ("erm", ["C=-1"], "C must be a finite number > 0"),
        ("erm", ["max_iter=0"], "max_iter must be ≥ 1"),
    ]:
        with pytest.raises(InputError, match=message):
            train(ws, method, overrides=overrides)
    with pytest.raises(InputError, match="seeds must be"):
        train(ws, "dfr", seeds=[-1])
    assert _no_runs(ws)


def test_interrupt_marks_runs_cancelled(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    import hsfm_core.methods.hsfm as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fit_hsfm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(ws, "hsfm", overrides=FAST, seeds=[0, 1])
    assert [r["status"] for r in list_runs(ws)] == ["cancelled", "cancelled"]


def test_eval_of_a_run_that_no_longer_fits_the_store(tmp_path, capsys):
    ws = tmp_path / "ws"
    gaussian_workspace(ws, d=16)
    (run,) = train(ws, "erm")
    gaussian_workspace(tmp_path / "other", d=8)
    import shutil
    for name in ("manifest.json", "features.npy", "meta.parquet"):  # the store replaced, runs kept
        shutil.copy(tmp_path / "other" / name, ws / name)
    assert cli("eval", "--workspace", ws, "--run", run.run_id) == 2
    assert "trained on another store" in capsys.readouterr().err  # the one rule for analysis (Workspace.run)


def test_seeds_one_after_another_match_the_batch(tmp_path, monkeypatch):
    """Large supports train their seeds one by one (methods/hsfm.py): each run still gets its own whole
    history, in order, and the same head as the batched pass (same ops per seed)."""
    import hsfm_core.methods.hsfm as hsfm_module

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    batched = train(ws, "hsfm", overrides=FAST, seeds=[0, 1], device="cpu")
    monkeypatch.setattr(hsfm_module, "LOOP_SEEDS_FROM_SUPPORT_ROWS", 1)
    seen = []
    looped = train(ws, "hsfm", overrides=FAST, seeds=[0, 1], device="cpu",
                   progress=lambda epoch, epochs, entries: seen.append((epoch, epochs, [e is not None for e in entries])))
    assert seen[0] == (0, 6, []) and seen[1] == (1, 6, [True, False]) and seen[-1] == (6, 6, [False, True])
    for a, b in zip(batched, looped):
        history = [json.loads(line) for line in (b.path / "history.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in history] == [1, 2, 3]
        head_a, head_b = load_file(a.path / "head.safetensors"), load_file(b.path / "head.safetensors")
        torch.testing.assert_close(head_a["weight"], head_b["weight"], rtol=1e-4, atol=1e-5)


def _run_files(path) -> dict:
    volatile = {"run_id", "started_at", "finished_at"}
    return {"config": {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k not in volatile},
            "history": [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                        for line in (path / "history.jsonl").read_text().splitlines()],
            "metrics": json.loads((path / "metrics.json").read_text()), "status": (path / "status").read_text(),
            **{name: load_file(path / f"{name}.safetensors") for name in ("head", "support")}}


def test_train_many_writes_the_runs_train_writes(tmp_path):
    """Two requests that differ only in η share one pass (docs/ARCHITECTURE.md §Sweeps); each run's files are
    those of the same request trained alone (float32 here: test_sweep_passes compares in float64)."""
    from hsfm_core.spec import TrainSpec
    from hsfm_core.train import train_many

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    specs = [TrainSpec.create("hsfm", overrides=[*FAST, f"eta={eta}"], seeds=[0, 1], device="cpu", tags={"k": k})
             for k, eta in enumerate((0.1, 1.0))]
    seen = []
    together = train_many(ws, specs, run_ids=["many-a", "many-b"],
                          progress=lambda epoch, epochs, entries: seen.append((epoch, epochs, len(entries))))
    assert seen == [(0, 3, 0), (1, 3, 4), (2, 3, 4), (3, 3, 4)]  # one pass: every run trains every epoch
    assert [[r.run_id for r in runs] for runs in together] == [["many-a-s0", "many-a-s1"], ["many-b-s0", "many-b-s1"]]
    for spec, runs in zip(specs, together):
        alone = train(ws, spec)
        for a, b in zip(runs, alone):
            fa, fb = _run_files(a.path), _run_files(b.path)
            assert fa["config"] == fb["config"] and fa["config"]["request"] == spec.to_dict()
            assert fa["status"] == fb["status"] == "done\n" and fa["metrics"] == fb["metrics"]
            assert [h["epoch"] for h in fa["history"]] == [1, 2, 3]
            for ha, hb in zip(fa["history"], fb["history"]):
                assert ha.keys() == hb.keys() and ha["val_wga"] == hb["val_wga"]
                assert ha["outer_loss"] == pytest.approx(hb["outer_loss"], rel=1e-5)
            for name in ("head", "support"):
                for key in fb[name]:
                    torch.testing.assert_close(fa[name][key], fb[name][key], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(load_file(together[0][0].path / "head.safetensors")["weight"],
                              load_file(together[1][0].path / "head.safetensors")["weight"])


def test_train_many_checks_every_request_before_any_run(tmp_path):
    from hsfm_core.spec import TrainSpec
    from hsfm_core.train import train_many

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    good = TrainSpec.create("hsfm", overrides=FAST, seeds=[0, 1], device="cpu")
    (taken,) = train(ws, "erm", seeds=[0])  # erm-…-s0
    base = taken.run_id.removesuffix("-s0")
    for specs, run_ids, error, message in [
        ([good, good], ["a", base], InputError, "already exists"),
        ([good, good], ["a", "a"], InputError, "run ids given twice"),
        ([good, TrainSpec.create("hsfm", overrides=FAST, seeds=[0])], None, ValueError, "same seeds"),
        ([good, TrainSpec.create("erm", seeds=[0, 1])], None, ValueError, "one method"),
    ]:
        with pytest.raises(error, match=message):
            train_many(ws, specs, run_ids=run_ids)
    assert [r["run_id"] for r in list_runs(ws)] == [taken.run_id]  # nothing written, nothing removed


def test_train_many_keeps_issue_26s_endings(tmp_path, monkeypatch):
    """A diverging request fails alone (its runs kept `failed`, the others finished); bad input found inside the
    fit removes every run of the call; an interrupt leaves them all `cancelled`."""
    import hsfm_core.methods.hsfm as hsfm_module
    from hsfm_core.spec import TrainSpec
    from hsfm_core.train import TrainingDiverged, train_many

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    specs = [TrainSpec.create("hsfm", overrides=[*FAST, f"eta={eta}"], seeds=[0, 1], device="cpu")
             for eta in (0.1, 1e30)]  # η = 1e30: the edits overflow float32
    with pytest.raises(TrainingDiverged, match="2 of 4 run\\(s\\) failed") as caught:
        train_many(ws, specs, run_ids=["calm", "wild"])
    assert [r.run_id for r in caught.value.done] == ["calm-s0", "calm-s1"]
    statuses = {r["run_id"]: r["status"] for r in list_runs(ws)}
    assert statuses == {"calm-s0": "done", "calm-s1": "done", "wild-s0": "failed", "wild-s1": "failed"}
    assert "non-finite" in (ws / "runs" / "wild-s0" / "error.txt").read_text()

    def refuse(*args, **kwargs):
        raise InputError("bad features")

    monkeypatch.setattr(hsfm_module, "fit_hsfm", refuse)
    with pytest.raises(InputError, match="bad features"):
        train_many(ws, specs, run_ids=["bad-a", "bad-b"])
    assert len(list_runs(ws)) == 4  # nothing of the refused call is left

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hsfm_module, "fit_hsfm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_many(ws, specs, run_ids=["stop-a", "stop-b"])
    assert {r["status"] for r in list_runs(ws) if r["run_id"].startswith("stop-")} == {"cancelled"}


def test_a_trained_run_records_its_device_why_and_where(tmp_path):
    """config.json says where a run computed, why there (docs/ARCHITECTURE.md §Devices), and the machine's
    torch/CUDA versions, so a re-run elsewhere can say why it differs."""
    from hsfm_core.spec import TrainSpec
    from tests.gaussian import TINY_HSFM

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    (hsfm,) = train(ws, "hsfm", overrides=TINY_HSFM)
    config = json.loads((hsfm.path / "config.json").read_text())
    assert config["device"] == "cpu" and config["device_reason"].startswith("auto: CPU, because")
    assert config["environment"]["torch"] == torch.__version__ and config["environment"]["gpu"] is None
    (dfr,) = train(ws, "dfr", device="cuda:3")
    assert json.loads((dfr.path / "config.json").read_text())["device_reason"] == \
        "DFR never uses a device: it computes on the CPU"
    slurm = TrainSpec.create("hsfm", overrides=TINY_HSFM, executor="slurm", slurm={"partition": "p", "gpus": 0})
    (on_node,) = train(ws, slurm)
    config = json.loads((on_node.path / "config.json").read_text())
    assert config["device_reason"] == "auto → cpu: the job asks Slurm for no GPU" == config["request"]["device_note"]
