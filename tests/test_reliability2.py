"""Issue 26's defects, one test (or more) per class: sweeps and jobs survive kills, storms and hostile files;
a missing validation group is refused, never scored as if it were there; a diverged head ends `failed`.

The helpers at the top are shared with `benchmarks/bench_hostile.py` (its issue-26 cases)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# Many cheap HSFM epochs: a configuration that trains until it is stopped (thousands of epochs a minute).
ENDLESS = ("E=100000", "K_H=1", "T=1", "n=4", "K_hard=8")


def store_with_val_rows(path: Path, group: int = 3, keep: int = 0, scale: float | None = None, d: int = 8,
                        sizes=(200, 100, 100)) -> Path:
    """A Gaussian 2 × 2 store whose val split keeps only `keep` rows of `group` (all other rows as generated);
    `scale`: every feature multiplied by it (clipped to ±3e38, finite in float32)."""
    from hsfm_core.features import write_store
    from hsfm_core.groups import Groups
    from tests.gaussian import MANIFEST, gaussian_problem

    problem = gaussian_problem(d, sizes, 0)
    groups = Groups(MANIFEST["class_names"], MANIFEST["attribute_names"])
    parts = []
    for split in ("train", "val", "test"):
        x, y, a = problem[split]
        g = groups.group_of(y, a)
        rows = np.arange(len(y))
        if split == "val":
            rows = np.concatenate([rows[g != group], rows[g == group][:keep]])
        parts.append((split, x[rows], y[rows], a[rows]))
    x = np.concatenate([p[1] for p in parts]).astype(np.float64)
    if scale is not None:
        x = np.clip(x * scale, -3e38, 3e38)
    y = np.concatenate([p[2] for p in parts])
    a = np.concatenate([p[3] for p in parts])
    split = np.concatenate([[p[0]] * len(p[1]) for p in parts])
    meta = pd.DataFrame({"row_id": np.arange(len(x)), "sample_id": [str(i) for i in range(len(x))], "split": split,
                         "y": y, "a": a, "g": groups.group_of(y, a), "image_path": ""})
    write_store(path, x.astype(np.float32), meta, MANIFEST)
    return path


def registered_job(ws: Path) -> Path:
    """A job registered (job.json written) but not submitted: no process. → its directory."""
    from hsfm_core import jobs
    from hsfm_core.spec import TrainSpec

    return jobs._register(Path(ws).resolve(), TrainSpec.create("erm"), None)


def rewrite_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def processes_mentioning(text: str) -> list:
    """Live processes whose command line mentions `text` (a workspace path): a sweep's runner, the jobs'
    submitters, controllers and workers (submitit's folders lie in the workspace)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and any(text in part for part in process.info["cmdline"] or ()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_processes(processes) -> None:
    """SIGKILL these processes (by pid), children first."""
    import psutil

    for process in processes:
        try:
            targets = [*process.children(recursive=True), process]
        except psutil.Error:
            continue
        for target in targets:
            try:
                target.kill()
            except psutil.Error:
                pass


def rss_mb(processes) -> float:
    import psutil

    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def start_foreground_sweep(ws: Path, alphas: str = "1e-3,2e-3", max_parallel: int = 2, extra=()) -> subprocess.Popen:
    """`python -m hsfm_core sweep` of endless HSFM configurations, in its own session (so that a test can
    clean up its process group whatever the code under test leaves behind)."""
    args = [sys.executable, "-m", "hsfm_core", "sweep", "--workspace", str(ws), "--method", "hsfm", "--grid",
            f"alpha={alphas}", "--set", *ENDLESS, "--seeds", "0", "--max-parallel", str(max_parallel),
            "--device", "cpu", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def training_runs(ws: Path) -> list[Path]:
    """A sweep's run folders whose history has at least one epoch."""
    return [p.parent for p in Path(ws, "runs").glob("sweep-*/history.jsonl") if p.stat().st_size]




def stop_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session and everything left in its process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass


def copy_workspace(base: Path, target: Path) -> Path:
    shutil.copytree(base, target)
    return target


# -- the tests ------------------------------------------------------------------------------------------

import socket  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hsfm_core import jobs, sweeps  # noqa: E402
from hsfm_core.cli import main  # noqa: E402
from hsfm_core.errors import InputError  # noqa: E402
from hsfm_core.runs import list_runs  # noqa: E402
from tests.gaussian import TINY_HSFM, gaussian_workspace  # noqa: E402
from tests.helpers import until  # noqa: E402

TINY = [o for o in TINY_HSFM if not o.startswith("alpha=")]


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def last_line(err: str) -> str:
    return (err.strip().splitlines() or [""])[-1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small store with an ERM and a DFR run; copy it (`ws`) before damaging it."""
    from hsfm_core.train import train

    ws = tmp_path_factory.mktemp("base26") / "ws"
    gaussian_workspace(ws, d=8, sizes=(200, 100, 100))
    train(ws, "erm")
    train(ws, "dfr", overrides=["n_refits=2"])
    return ws


@pytest.fixture()
def ws(base, tmp_path) -> Path:
    return copy_workspace(base, tmp_path / "ws")


def erm_sweep(ws: Path, values=(1.0, 2.0)) -> Path:
    return sweeps.create(ws, sweeps.SweepRequest(method="erm", grid={"C": list(values)}, seeds=(0,)))


# -- 5. seeds -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [2**32, 2**63, -1])
def test_5_seeds_out_of_range_are_refused_before_any_run_exists(ws, capsys, seed):
    from hsfm_core.methods.base import parse_seeds
    from hsfm_core.spec import TrainSpec

    before = sorted(p.name for p in (ws / "runs").iterdir())
    for method in ("erm", "dfr", "afr"):
        code, _, err = cli(capsys, "train", "--workspace", ws, "--method", method, "--seeds", seed, "--quiet")
        assert code == 2 and last_line(err).startswith("error: seeds must be") and "4294967295" in err, err
    code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "dfr", "--grid", "n_refits=1,2", "--seeds", seed)
    assert code == 2 and last_line(err).startswith("error: seeds must be"), err
    assert sorted(p.name for p in (ws / "runs").iterdir()) == before and not (ws / "sweeps").exists()
    with pytest.raises(InputError, match="seeds must be"):
        TrainSpec.create("hsfm", seeds=[0, seed])
    with pytest.raises(InputError, match="seeds must be"):
        sweeps.SweepRequest(method="erm", grid={"C": [1.0]}, seeds=(seed,))
    with pytest.raises(InputError):
        parse_seeds(str(seed))
    assert TrainSpec.create("erm", seeds=[2**32 - 1]).seeds == (2**32 - 1,)  # the largest seed every method takes


# -- 6. job settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ['{"max_parallel": 0}', '{"max_parallel": -3}', '{"max_parallel": "two"}',
                                  '{"max_parallel": true}', '{"max_parallel": 2.5}', "[2]", "{x", '{"max_sweep_runs": 0}'])
def test_6_bad_job_settings_are_an_error_naming_the_file(ws, capsys, text):
    (ws / "jobs").mkdir()
    (ws / "jobs" / "settings.json").write_text(text)
    code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "dfr", "--grid", "n_refits=1,2", "--seeds", "0")
    assert code == 2 and last_line(err).startswith("error: ") and "settings.json" in err, err
    with pytest.raises(InputError, match="settings.json"):
        jobs.settings(ws)
    assert not (ws / "sweeps").exists()


def test_6_each_setting_keeps_the_others(ws):
    jobs.set_max_sweep_runs(ws, 40)
    jobs.set_max_parallel(ws, 3)
    assert jobs.settings(ws) == {"max_parallel": 3, "max_sweep_runs": 40} and jobs.job_limit(ws) == 3
    with pytest.raises(InputError, match="≥ 1"):
        jobs.set_max_parallel(ws, 0)


# -- 7. valid JSON of the wrong types -------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"grid": 5}, {"grid": {"C": "12"}}, {"grid": {"C": []}}, {"grid": {"nope": [1]}}, {"seeds": "01"},
    {"seeds": [True]}, {"seeds": [2**32]}, {"method": 7}, {"method": "nope"}, {"overrides": {}},
    {"max_parallel": "x"}, {"max_parallel": 0}, {"executor": "cloud"}, {"preset": 3}, {"grid": {"C": [1.0, 9.0]}}])
def test_7_a_sweep_request_of_wrong_types_is_named_and_hides_no_other_sweep(ws, capsys, change):
    good, bad = erm_sweep(ws), sweeps.create(ws, sweeps.SweepRequest(method="dfr", grid={"n_refits": [1, 2]}, seeds=(0,)))
    rewrite_json(bad / "request.json", lambda r: r.update(change))
    listed = sweeps.list_sweeps(ws)  # what the Retrain page's Sweep section reads first
    assert [s["sweep_id"] for s in listed if "error" not in s] == [good.name]
    (named,) = [s for s in listed if "error" in s]
    assert named["sweep_id"] == bad.name and "request.json" in named["error"]
    with pytest.raises(InputError, match="request.json"):
        sweeps.progress(ws, bad.name)
    code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "dfr", "--cancel", bad.name)
    assert code == 2 and last_line(err).startswith("error: ") and not (bad / "cancel").exists(), err


@pytest.mark.parametrize("change", [
    {"run_ids": 5}, {"run_ids": ["../x"]}, {"spec": []}, {"spec": {"method": "erm"}}, {"created_t": "yesterday"},
    {"submitit_folder": 3, "submitit_job_id": "1"}, {"ended": "done"}, {"ended": {"status": "weird"}},
    {"controller": {"pid": "abc", "started": 1.0, "host": socket.gethostname()}, "submitit_job_id": "1"},
    {"controller": {"pid": -5, "started": 1.0, "host": socket.gethostname()}, "submitit_job_id": "1"},
    {"cancel_requested": "yes"}, {"max_parallel": 0}, {"env": {"A": 1}}, {"job_id": "job-other"}])
def test_7_a_job_record_of_wrong_types_is_an_error_and_hides_no_other_job(ws, capsys, change):
    good, bad = registered_job(ws), registered_job(ws)
    rewrite_json(bad / "job.json", lambda r: r.update(change))
    for args in (["cancel", "--workspace", ws, bad.name, "--wait", "0"], ["jobs", "--workspace", ws, "--log", bad.name]):
        code, _, err = cli(capsys, *args)
        assert code == 2 and last_line(err).startswith("error: ") and "job.json" in err, err
    code, out, _ = cli(capsys, "jobs", "--workspace", ws, "--json")
    rows = {r["job_id"]: r["status"] for r in json.loads(out)}
    assert code == 0 and rows == {good.name: "queued", bad.name: "unreadable"}


@pytest.mark.parametrize("record", [{"pid": -5, "started": 1.0}, {"pid": "abc", "started": 1.0}, {"pid": 10**30, "started": 1.0},
                                    {"pid": 1, "started": "x"}, {"pid": 1, "started": 1.0, "host": 5}, {"pid": True, "started": 1}])
def test_7_a_process_record_of_wrong_types_hides_no_other_run(ws, capsys, record):
    bad = next(p for p in sorted((ws / "runs").iterdir()) if p.name.startswith("erm"))
    (bad / "status").write_text("running\n")
    (bad / "process.json").write_text(json.dumps({"host": socket.gethostname(), **record}))
    code, out, err = cli(capsys, "runs", "--workspace", ws, "--json")
    listing = json.loads(out)
    assert code == 0 and [r["method"] for r in listing["runs"]] == ["dfr"], err
    assert [u["run_id"] for u in listing["unreadable"]] == [bad.name] and "process.json" in listing["unreadable"][0]["reason"]
    code, _, err = cli(capsys, "train", "--workspace", ws, "--method", "erm", "--quiet")  # the next train ends dead runs
    assert code == 0, err
    assert (bad / "status").read_text() == "running\n"  # not guessed dead: it names no process


# -- 8. sweep ids ---------------------------------------------------------------------------------------

def test_8_a_sweep_id_cannot_climb_out_of_the_workspace(ws, tmp_path, capsys):
    other = tmp_path / "other"
    gaussian_workspace(other, d=8, sizes=(200, 100, 100))
    target = erm_sweep(other)
    for sweep_id in (f"../../other/sweeps/{target.name}", str(target), "..", f"{target.name}/../{target.name}"):
        code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "erm", "--cancel", sweep_id)
        assert code == 2 and last_line(err).startswith("error: sweep id"), err
        with pytest.raises(InputError, match="sweep id"):
            sweeps.sweep_dir(ws, sweep_id)
    assert not (target / "cancel").exists()


# -- 9. table --out -------------------------------------------------------------------------------------

def test_9_table_out_where_nothing_can_be_written_is_an_error(ws, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path, "/proc/nope/table.md", tmp_path / "a-file" / "table.md"):
        code, _, err = cli(capsys, "table", "--workspace", ws, "--out", out)
        assert code == 2 and last_line(err).startswith("error: ") and str(out) in err, err
    assert (tmp_path / "a-file").read_text() == "x"


# -- 10. a NUL byte in an image path -------------------------------------------------------------------

def test_10_an_image_path_with_a_nul_byte_is_refused_naming_the_line(tmp_path):
    from hsfm_core.data import read_dataset
    from hsfm_core.safe_io import resolve_image

    root = tmp_path / "data"
    root.mkdir()
    rows = [f"s{i},img{i}.png,{split},{i % 2},{i // 2 % 2}" for i, split in enumerate(["train"] * 4 + ["val"] * 4 + ["test"] * 4)]
    rows[5] = "s5,img5\x00.png,val,1,0"
    (root / "data.csv").write_text("id,filename,split,y,a\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match="line 7: image path .* control character"):
        read_dataset("csv", root, root / "data.csv")
    with pytest.raises(InputError, match="NUL byte"):
        resolve_image(root, "img\x00.png")


# -- 11. NaN in metrics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [lambda m: m["val"].update(wga=float("nan")),
                                    lambda m: m["test"].update(avg_adjusted=float("inf")),
                                    lambda m: m["test"]["group_acc"].__setitem__(0, float("-inf")),
                                    lambda m: m["test"].pop("group_acc")])
def test_11_runs_json_is_standard_json_when_a_metrics_file_holds_nan(ws, capsys, change):
    bad = next(p for p in sorted((ws / "runs").iterdir()) if p.name.startswith("erm"))
    rewrite_json(bad / "metrics.json", change)

    def refuse(constant):
        raise ValueError(constant)

    code, out, _ = cli(capsys, "runs", "--workspace", ws, "--json")
    listing = json.loads(out, parse_constant=refuse)
    assert code == 0 and [r["method"] for r in listing["runs"]] == ["dfr"]
    assert [u["run_id"] for u in listing["unreadable"]] == [bad.name] and "metrics.json" in listing["unreadable"][0]["reason"]


# -- 12. a missing workspace; a key both set and swept ------------------------------------------------

def test_12_a_sweep_of_a_missing_workspace_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "does-not-exist"
    code, _, err = cli(capsys, "sweep", "--workspace", missing, "--method", "dfr", "--grid", "n_refits=1,2")
    assert code == 2 and last_line(err).startswith("error: ") and "no such folder" in err, err
    assert not missing.exists()


@pytest.mark.parametrize("fixed", ["alpha=5e-3", "inner_lr=5e-3"])
def test_12_a_key_both_set_and_swept_is_refused(ws, capsys, fixed):
    code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "hsfm", "--grid", "alpha=1e-3,2e-3", "--set",
                       fixed, *TINY, "--seeds", "0", "--max-parallel", "1")
    assert code == 2 and "inner_lr is both fixed (--set) and swept" in last_line(err), err
    assert not (ws / "sweeps").exists() and not list((ws / "runs").glob("sweep-*"))


# -- 4. the grid's size ---------------------------------------------------------------------------------

def test_4_a_grid_over_the_cap_is_refused_with_the_number_before_anything_is_written(ws, capsys):
    values = ",".join(f"{v:.6g}" for v in np.geomspace(1e-4, 1e-1, 300))
    t0 = time.perf_counter()
    code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "hsfm", "--grid", f"alpha={values}",
                       f"eta={values}", "--seeds", "0", "1", "2")
    assert code == 2 and "300 configuration" not in err and "90000 configuration(s) × 3 seed(s) = 270000 runs" in err, err
    assert "over the limit of 500" in err and "--yes" in err and time.perf_counter() - t0 < 10
    assert not (ws / "sweeps").exists()
    jobs.set_max_sweep_runs(ws, 3)  # configurable per workspace
    request = sweeps.SweepRequest(method="erm", grid={"C": [1.0, 2.0]}, seeds=(0, 1))
    with pytest.raises(InputError, match="2 configuration\\(s\\) × 2 seed\\(s\\) = 4 runs, over the limit of 3"):
        sweeps.submit(ws, request)
    with pytest.raises(InputError, match="over the limit of 3"):
        sweeps.run(ws, request)
    assert sweeps.create(ws, request, yes=True).is_dir()


def test_4_the_cli_passes_yes(ws, capsys):
    """Needs `sweep --yes` in the CLI (hsfm_core/cli: the flag passes yes=True to sweeps.run/submit)."""
    jobs.set_max_sweep_runs(ws, 1)
    code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "erm", "--grid", "C=1,2", "--seeds", "0", "--quiet")
    assert code == 2 and "over the limit of 1" in err
    code, out, err = cli(capsys, "sweep", "--workspace", ws, "--method", "erm", "--grid", "C=1,2", "--seeds", "0",
                         "--quiet", "--json", "--yes")
    assert code == 0 and json.loads(out)["status"] == "done", err


# -- 13. a validation group with too few rows -----------------------------------------------------------

@pytest.mark.parametrize("keep", [0, 1])
def test_13_methods_that_select_on_val_groups_refuse_a_missing_group(tmp_path, capsys, keep):
    ws = store_with_val_rows(tmp_path / "ws", group=3, keep=keep)  # the last group: not found by counting up to the largest
    for method, extra in (("dfr", []), ("dfr", ["--preset", "official"]), ("afr", []), ("hsfm", ["--set", *TINY])):
        code, _, err = cli(capsys, "train", "--workspace", ws, "--method", method, *extra, "--quiet")
        assert code == 2, (method, extra, err)
        assert f"waterbird · water (group 3: {keep} row" in err and "at least 2 rows of every group 0…3" in err, err
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())  # refused before any run existed
    with pytest.raises(InputError, match="group 3"):
        sweeps.create(ws, sweeps.SweepRequest(method="dfr", grid={"n_refits": [1, 2]}, seeds=(0,)))
    with pytest.raises(InputError, match="group 3"):  # and a background job is refused at launch
        jobs.launch(ws, __import__("hsfm_core.spec", fromlist=["TrainSpec"]).TrainSpec.create("afr"))
    code, _, err = cli(capsys, "train", "--workspace", ws, "--method", "erm", "--quiet")  # ERM reads no val group
    assert code == 0, err


# -- 14. float32 overflow, a NaN head -------------------------------------------------------------------

def test_14_import_refuses_features_that_overflow_float32(tmp_path, capsys):
    from tests.test_reliability import dfr_npz

    arrays = dict(np.load(dfr_npz(tmp_path / "a.npz")))
    arrays["embeddings_val"] = (np.sign(arrays["embeddings_val"]) * 3e38).astype(np.float32)
    np.savez(tmp_path / "big.npz", **arrays)
    code, _, err = cli(capsys, "import", "--from", "dfr", "--path", tmp_path / "big.npz", "--out", tmp_path / "out")
    assert code == 2 and "[val]: row 0: a feature vector of norm 6e+38 would overflow float32" in err, err
    assert not (tmp_path / "out").exists()


def test_14_a_nan_head_ends_failed_with_its_epoch(tmp_path, capsys):
    ws = store_with_val_rows(tmp_path / "ws", keep=10_000, scale=1e38)  # extreme but finite features
    code, _, err = cli(capsys, "train", "--workspace", ws, "--method", "hsfm", "--set", *TINY, "--quiet")
    assert code == 2 and "non-finite" in last_line(err) and "at epoch 1" in err, err
    (run,) = list_runs(ws)
    why = (run["path"] / "error.txt").read_text()
    assert run["status"] == "failed" and "non-finite" in why and "epoch 1" in why and not (run["path"] / "metrics.json").exists()


def test_14_non_finite_names_the_epoch_or_the_tensor():
    from hsfm_core.methods.base import FittedHead
    from hsfm_core.train import non_finite

    finite = FittedHead(seed=3, weight=torch.ones(2, 4), bias=torch.zeros(2), history=[{"epoch": 1, "loss": 0.5}])
    assert non_finite(finite) is None
    late = FittedHead(seed=3, weight=torch.ones(2, 4), bias=torch.zeros(2),
                      history=[{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": float("nan"), "val_group_acc": [None, 1.0]}])
    assert non_finite(late) == "non-finite loss at epoch 2 (seed 3)"
    weight = FittedHead(seed=0, weight=torch.tensor([[float("inf")] * 4] * 2), bias=torch.zeros(2))
    assert "head's weight" in non_finite(weight)


# -- 2, 3. a sweep's status and lock --------------------------------------------------------------------

def dead_process_record() -> dict:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return {"pid": child.pid, "started": started, "host": socket.gethostname()}


def test_2_a_sweep_whose_process_is_gone_reads_failed(ws):
    directory = erm_sweep(ws)
    (directory / "status").write_text("running\n")
    (directory / "process.json").write_text(json.dumps(dead_process_record()))
    assert sweeps.status(ws, directory.name) == "failed"
    assert sweeps.list_sweeps(ws)[0]["status"] == "failed" and sweeps.progress(ws, directory.name)["status"] == "failed"
    (directory / "cancel").write_text("x")
    assert sweeps.status(ws, directory.name) == "cancelled"
    (directory / "process.json").write_text(json.dumps({**dead_process_record(), "pid": os.getpid(),
                                                        "started": psutil.Process().create_time()}))
    assert sweeps.status(ws, directory.name) == "running"  # this process is alive
    (directory / "process.json").unlink()  # written by an earlier version: nobody holds the lock
    assert sweeps.status(ws, directory.name) == "cancelled"
    (directory / "status").write_text("submitted\n")  # a submitted sweep with no queue and no job left
    (directory / "cancel").unlink()
    assert sweeps.status(ws, directory.name) == "failed"
    for text, message in (("weird\n", "not a sweep status"), (b"\xff\xfe", "not UTF-8")):
        (directory / "status").write_bytes(text.encode() if isinstance(text, str) else text)
        with pytest.raises(InputError, match=message):
            sweeps.status(ws, directory.name)
        assert "error" in sweeps.list_sweeps(ws)[0]


def test_3_both_ways_of_running_a_sweep_take_the_same_lock(ws):
    import fcntl

    request = sweeps.SweepRequest(method="erm", grid={"C": [1.0, 2.0]}, seeds=(0,))
    directory = sweeps.create(ws, request)
    with open(directory / ".lock", "a") as held:  # another process running this sweep, either way
        fcntl.flock(held, fcntl.LOCK_EX)
        for way in (sweeps.run, sweeps.submit):
            with pytest.raises(InputError, match="already running in another process"):
                way(ws, request)
    job = registered_job(ws)  # a background job of the sweep, still queued: the foreground refuses it too
    (directory / "jobs.json").write_text(json.dumps({"0": job.name}))
    with pytest.raises(InputError, match=f"background job\\(s\\) still queued or training \\({job.name}\\)"):
        sweeps.run(ws, request)
    assert not list((ws / "runs").glob("sweep-*"))  # nothing trained, nothing removed


def test_7_results_csv_reads_back_or_names_the_cell(ws):
    directory = erm_sweep(ws)
    request = sweeps.load_request(ws, directory.name)
    sweeps.write_results(ws, request)
    table = sweeps.read_results(ws, directory.name)
    assert table["config"].tolist() == [0, 1] and table["seeds_done"].tolist() == [0, 0]
    assert table["selected"].tolist() == [False, False] and table["val_wga_mean"].isna().all()
    text = (directory / "results.csv").read_text().splitlines()
    (directory / "results.csv").write_text("\n".join([text[0], text[1].replace(",False", ",maybe")]) + "\n")
    with pytest.raises(InputError, match="row 2, column selected: expected True or False, found 'maybe'"):
        sweeps.read_results(ws, directory.name)


# -- 1, 2, 3. processes (slow: real processes) ---------------------------------------------------------

@pytest.mark.slow
def test_1_2_3_a_foreground_sweep_excludes_submit_and_dies_whole(ws, capsys):
    """While a foreground `sweep --max-parallel 2` trains, `--submit local` of the same sweep is refused and
    touches nothing; SIGKILL of its parent leaves no process behind within 5 s, and the sweep reads failed."""
    process = start_foreground_sweep(ws)
    try:
        until(lambda: len(training_runs(ws)) >= 2 or process.poll() is not None, 240, "two configurations training")
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        running = {p: (p / "process.json").read_text() for p in training_runs(ws)}
        code, _, err = cli(capsys, "sweep", "--workspace", ws, "--method", "hsfm", "--grid", "alpha=1e-3,2e-3", "--set",
                           *ENDLESS, "--seeds", "0", "--device", "cpu", "--submit", "local")
        assert code == 2 and "already running in another process" in last_line(err), err
        assert {p: (p / "process.json").read_text() for p in training_runs(ws)} == running  # the same trainers
        assert not (ws / "jobs").exists() or not list((ws / "jobs").glob("job-*"))
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 2
        sweep_id = next((ws / "sweeps").iterdir()).name
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        gone = time.monotonic()

        def alive(p) -> bool:
            try:
                return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                return False

        until(lambda: not any(alive(c) for c in children), 5, "the workers to die with their parent")
        until(lambda: sweeps.status(ws, sweep_id) == "failed", 10, "the sweep to read failed")
        assert time.monotonic() - gone < 10 and sweeps.list_sweeps(ws)[0]["status"] == "failed"
        assert {r["status"] for r in list_runs(ws) if r["run_id"].startswith(sweep_id)} == {"failed"}
    finally:
        stop_group(process)
        kill_processes(processes_mentioning(str(ws)))


@pytest.mark.slow
def test_4_submit_local_queues_without_a_process_per_waiting_configuration(ws):
    """5 endless configurations, max_parallel 2: one queue process and 2 jobs (a controller and a worker each),
    jobs.json lists the 2 launched, the foreground refuses the running sweep, and a cancel stops all of it."""
    request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", ["alpha=1e-3,2e-3,3e-3,4e-3,5e-3"]),
                                  seeds=(0,), overrides=ENDLESS, device="cpu", max_parallel=2)
    try:
        queued = sweeps.submit(ws, request)
        assert list(queued) == ["0", "1", "2", "3", "4"] and all(v is None for v in queued.values())
        directory = sweeps.sweep_dir(ws, request.sweep_id)
        until(lambda: len(training_runs(ws)) >= 2, 240, "two configurations training")
        peak = 0
        for _ in range(10):
            peak = max(peak, len(processes_mentioning(str(ws))))
            time.sleep(0.3)
        assert peak <= 2 * 2 + 2, [p.cmdline() for p in processes_mentioning(str(ws))]
        assert len(set(json.loads((directory / "jobs.json").read_text()).values())) == 2  # a job per pass
        assert sweeps.status(ws, request.sweep_id) == "running"
        with pytest.raises(InputError, match="already running in another process"):
            sweeps.run(ws, request)
        sweeps.cancel(ws, request.sweep_id)
        until(lambda: not processes_mentioning(str(ws)), 90, "every process of the sweep to end")
        assert sweeps.status(ws, request.sweep_id) == "cancelled"
        launched = json.loads((directory / "jobs.json").read_text())
        assert len(set(launched.values())) == 2 and {jobs.get_job(ws, j)["status"] for j in launched.values()} == {"cancelled"}
    finally:
        kill_processes(processes_mentioning(str(ws)))
