"""Background jobs (hsfm_core.jobs): submitit local jobs end to end, cancel, kill, bad input,
the concurrency limit, a fresh process finding the jobs, and the Slurm path (sbatch script
text, and a whole job through fake sbatch/srun/sacct/scancel commands)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hsfm_core import jobs
from hsfm_core.errors import InputError
from hsfm_core.runs import list_runs
from hsfm_core.train import TrainSpec, train
from tests.gaussian import TINY_HSFM, gaussian_workspace

ROOT = Path(__file__).resolve().parent.parent
# Many cheap epochs: a job that runs until it is cancelled or killed (thousands of epochs a minute).
ENDLESS = ["E=100000", "K_H=1", "T=1", "n=4", "K_hard=8", "alpha=1e-3"]


@pytest.fixture()
def ws(tmp_path):
    """A Gaussian workspace; every job process started in it is killed (by pid) at the end."""
    path = tmp_path / "ws"
    gaussian_workspace(path)
    yield path
    _kill_all(path)


def _kill_all(workspace: Path) -> None:
    for d in sorted((workspace / "jobs").glob("job-*")):
        record = json.loads((d / "job.json").read_text())
        for pid, start in ((record.get("worker_pid"), record.get("worker_start")),
                           (record.get("pid"), record.get("pid_start"))):
            if jobs._pid_alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def _until(condition, timeout_s: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _stages(workspace, job_id) -> list[str]:
    return [e["stage"] for e in jobs.read_progress(workspace, job_id)]


def _epochs_seen(workspace, job_id) -> int:
    return sum(1 for s in _stages(workspace, job_id) if s == "epoch")


def _run_status(workspace, run_id) -> str:
    return (workspace / "runs" / run_id / "status").read_text().strip()


@pytest.mark.slow
def test_local_job_runs_with_progress_and_finishes(ws):
    t0 = time.monotonic()
    record = jobs.launch(ws, "hsfm", overrides=[*TINY_HSFM[1:], "E=3"], seeds=[0, 1], device="cpu")
    job_id = record["job_id"]
    assert time.monotonic() - t0 < 30 and record["status"] in ("queued", "running")  # the caller did not wait
    assert record["executor"] == "local" and record["spec"]["method"] == "hsfm" and record["spec"]["seeds"] == [0, 1]
    base = record["run_id"]
    assert base.startswith("hsfm-") and record["run_ids"] == [f"{base}-s0", f"{base}-s1"]
    assert record["pid"] and record["submitit_job_id"] == str(record["pid"])

    _until(lambda: "started" in _stages(ws, job_id), 30, "the first progress line")
    done = jobs.wait(ws, job_id, 120)
    assert done["status"] == "done" and done["error"] is None and done["worker_pid"] != os.getpid()
    assert done["started_at"] and done["finished_at"]

    entries = jobs.read_progress(ws, job_id)
    stages = [e["stage"] for e in entries]
    assert stages[:3] == ["started", "loading store", "training"] and stages[-1] == "done", stages
    epochs = [e for e in entries if e["stage"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["epochs"] == 3 for e in epochs)
    assert {"outer_loss", "head_loss", "val_wga", "val_avg", "per_seed"} <= set(epochs[0])
    assert [p["seed"] for p in epochs[0]["per_seed"]] == [0, 1] and 0 <= epochs[0]["val_wga"] <= 1
    assert entries[-1]["runs"] == record["run_ids"]
    assert all(a["t"] <= b["t"] for a, b in zip(entries, entries[1:]))

    runs = {r["run_id"]: r for r in list_runs(ws)}
    assert set(runs) == set(record["run_ids"]) and {r["status"] for r in runs.values()} == {"done"}
    for rid in record["run_ids"]:
        metrics = json.loads((ws / "runs" / rid / "metrics.json").read_text())
        assert set(metrics) == {"val", "test"} and entries[-1]["metrics"][rid]["test"]["wga"] == metrics["test"]["wga"]
        history = (ws / "runs" / rid / "history.jsonl").read_text().splitlines()
        assert [json.loads(h)["epoch"] for h in history] == [1, 2, 3]

    progress = jobs.job_progress(ws, job_id)
    assert progress["status"] == "done" and progress["epoch"] == 3 and progress["epochs"] == 3
    assert progress["eta_s"] == 0.0 and 0 < progress["elapsed_s"] < 120
    logs = jobs.log_tail(ws, job_id, 50)
    assert "[job] epoch 3/3" in logs["stdout"] and "Job completed successfully" in logs["stdout"]
    assert jobs.log_tail(ws, job_id, 1)["stdout"].count("\n") == 0
    assert jobs.job_error(ws, job_id) is None
    assert jobs.cancel(ws, job_id)["status"] == "done"  # a finished job stays as it is


def _endless_job_past(ws, epochs: int):
    """An earlier finished run, and an endless HSFM job once it has trained `epochs` epochs."""
    (earlier,) = train(ws, "erm")
    record = jobs.launch(ws, "hsfm", overrides=ENDLESS, device="cpu")
    _until(lambda: _epochs_seen(ws, record["job_id"]) >= epochs, 60, f"{epochs} epochs")
    return earlier, record, record["job_id"]


@pytest.mark.slow
def test_cancel_a_running_job_keeps_partial_history(ws):
    earlier, record, job_id = _endless_job_past(ws, 3)
    progress = jobs.job_progress(ws, job_id)
    assert progress["status"] == "running" and progress["epochs"] == 100000 and progress["epoch"] >= 3
    assert progress["eta_s"] is not None and progress["eta_s"] > 0

    jobs.cancel(ws, job_id)
    final = jobs.wait(ws, job_id, 30)
    assert final["status"] == "cancelled" and final["cancel_requested"] and final["error"] is None
    assert _stages(ws, job_id)[-1] == "cancelled"
    (rid,) = record["run_ids"]
    assert _run_status(ws, rid) == "cancelled"
    history = (ws / "runs" / rid / "history.jsonl").read_text().splitlines()
    assert len(history) >= 3 and json.loads(history[-1])["epoch"] == len(history)
    _until(lambda: not jobs._pid_alive(final["worker_pid"], final["worker_start"])
           and not jobs._pid_alive(final["pid"], final["pid_start"]), 10, "the job's processes to exit")
    assert _run_status(ws, earlier.run_id) == "done"


def test_the_worker_stops_once(tmp_path, monkeypatch):
    """The cancel flag seen at an epoch end and the SIGINT `cancel` sends after it are one cancel: the
    signal must not raise again inside the cleanup (it did, under load: a cancelled job kept a run
    `running`). The same holds for a second signal."""
    directory = tmp_path / "job"
    directory.mkdir()
    (directory / "job.json").write_text(json.dumps({"cancel_requested": True}))
    previous = signal.signal(signal.SIGINT, jobs._on_interrupt)
    try:
        monkeypatch.setattr(jobs, "_stop_armed", True)
        with pytest.raises(KeyboardInterrupt, match="cancel requested"):
            jobs._check_cancel(directory)
        os.kill(os.getpid(), signal.SIGINT)  # lands in the cleanup: a no-op
        time.sleep(0.2)

        monkeypatch.setattr(jobs, "_stop_armed", True)
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal: a no-op
        time.sleep(0.2)
        with pytest.raises(KeyboardInterrupt, match="cancel requested"):  # the flag is still honoured
            jobs._check_cancel(directory)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_killed_job_is_found_failed_by_a_fresh_process(ws):
    earlier, record, job_id = _endless_job_past(ws, 2)
    worker = jobs.get_job(ws, job_id)
    assert worker["status"] == "running" and worker["worker_pid"]
    os.kill(worker["worker_pid"], signal.SIGKILL)
    _until(lambda: not jobs._pid_alive(worker["worker_pid"], worker["worker_start"]), 10, "the worker to die")

    # a new interpreter (the app after a restart) finds the job and sees that it cannot finish
    script = f"import json; from hsfm_core.jobs import list_jobs; print(json.dumps(list_jobs({str(ws)!r})))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    (found,) = json.loads(out)
    assert found["job_id"] == job_id and found["status"] == "failed"
    assert found["error"] == "the job's process ended without finishing (killed?)"
    (rid,) = record["run_ids"]
    assert _run_status(ws, rid) == "failed" and "killed?" in (ws / "runs" / rid / "error.txt").read_text()
    assert (ws / "runs" / rid / "history.jsonl").read_text().strip()  # partial history kept
    assert _run_status(ws, earlier.run_id) == "done" and not (ws / "runs" / earlier.run_id / "error.txt").exists()
    assert jobs.get_job(ws, job_id)["status"] == "failed" and _stages(ws, job_id)[-1] == "failed"
    assert jobs.job_error(ws, job_id).startswith("the job's process ended")


def test_bad_input_is_refused_at_launch(ws):
    (earlier,) = train(ws, "erm")
    for kwargs, message in [
        ({"method": "hsfm", "overrides": ["alpha=abc"]}, "alpha=abc"),
        ({"method": "hsfm", "overrides": ["depth=3"]}, "unknown key 'depth'"),
        ({"method": "hsfm", "preset": "imagenet"}, "unknown preset"),
        ({"method": "dfr", "overrides": ["E=3"]}, "unknown key 'epochs'"),
        ({"method": "erm", "overrides": ["C=-1"]}, "C > 0"),
        ({"method": "hsfm", "seeds": [-1]}, "seeds must be"),
        ({"method": "svm"}, "unknown method"),
        ({"method": "hsfm", "device": "tpu"}, "unknown device"),
        ({"method": "hsfm", "executor": "ray"}, "unknown executor"),
        ({"method": "hsfm", "executor": "slurm"}, "needs a partition"),
        ({"method": "hsfm", "max_parallel": 0}, "limit must be ≥ 1"),
    ]:
        with pytest.raises(InputError, match=message):
            jobs.launch(ws, **kwargs)
    assert jobs.list_jobs(ws) == [] and [r["run_id"] for r in list_runs(ws)] == [earlier.run_id]
    with pytest.raises(InputError, match="no job"):
        jobs.get_job(ws, "job-20000101-000000-abcd")
    with pytest.raises(InputError, match="job id"):
        jobs.get_job(ws, "../../etc")


@pytest.mark.slow
def test_bad_override_found_in_the_job_and_a_crash(ws, monkeypatch):
    """The in-job paths: the worker's own train() checks catch what launch() did not see."""
    (earlier,) = train(ws, "erm")
    import hsfm_core.train as train_module

    monkeypatch.setattr(train_module, "check_spec", lambda method, *, preset, overrides, seeds: TrainSpec(
        method, preset, list(seeds), {}, None))  # as if launch had not checked
    bad = jobs.launch(ws, "hsfm", overrides=["alpha=abc"], device="cpu")
    final = jobs.wait(ws, bad["job_id"], 60)
    assert final["status"] == "failed"
    assert final["error"] == "--set 'alpha=abc': inner_lr must be float, got 'abc'"
    assert jobs.job_progress(ws, bad["job_id"])["error"] == final["error"]
    assert "alpha=abc" in jobs.log_tail(ws, bad["job_id"])["stderr"]
    assert not (ws / "runs" / bad["run_ids"][0]).exists()
    assert [r["run_id"] for r in list_runs(ws)] == [earlier.run_id] and _run_status(ws, earlier.run_id) == "done"

    # a crash (not bad input): `runs` is a file, so the run directory cannot be created
    monkeypatch.undo()
    os.rename(ws / "runs", ws / "runs-kept")
    (ws / "runs").write_text("not a folder")
    crashed = jobs.wait(ws, jobs.launch(ws, "erm")["job_id"], 60)
    assert crashed["status"] == "failed" and crashed["error"].startswith(("FileExistsError", "NotADirectoryError"))
    assert "Traceback" in jobs.job_error(ws, crashed["job_id"])


@pytest.mark.slow
def test_concurrency_limit_queues_the_second_job(ws):
    first = jobs.launch(ws, "hsfm", overrides=ENDLESS, device="cpu", max_parallel=1)
    second = jobs.launch(ws, "hsfm", overrides=TINY_HSFM, device="cpu", max_parallel=1)
    _until(lambda: _epochs_seen(ws, first["job_id"]) >= 1 and "queued" in _stages(ws, second["job_id"]), 60,
           "the first job training and the second waiting")
    time.sleep(1.0)
    statuses = {j["job_id"]: j["status"] for j in jobs.list_jobs(ws)}
    assert statuses == {first["job_id"]: "running", second["job_id"]: "queued"}
    assert _stages(ws, second["job_id"]) == ["started", "queued"] and not (ws / "runs" / second["run_ids"][0]).exists()

    jobs.cancel(ws, first["job_id"])
    assert jobs.wait(ws, first["job_id"], 30)["status"] == "cancelled"
    assert jobs.wait(ws, second["job_id"], 60)["status"] == "done"
    first_end = jobs.read_progress(ws, first["job_id"])[-1]["t"]
    second_start = next(e["t"] for e in jobs.read_progress(ws, second["job_id"]) if e["stage"] == "loading store")
    assert second_start >= first_end
    assert _run_status(ws, second["run_ids"][0]) == "done"


@pytest.mark.slow
def test_cancel_a_queued_job(ws):
    jobs.set_max_parallel(ws, 1)
    first = jobs.launch(ws, "hsfm", overrides=ENDLESS, device="cpu")
    second = jobs.launch(ws, "erm")
    assert first["max_parallel"] == second["max_parallel"] == 1
    _until(lambda: "queued" in _stages(ws, second["job_id"]) and _epochs_seen(ws, first["job_id"]) >= 1, 60,
           "the second job waiting")
    jobs.cancel(ws, second["job_id"])
    assert jobs.wait(ws, second["job_id"], 30)["status"] == "cancelled"
    assert not (ws / "runs" / second["run_ids"][0]).exists()
    assert jobs.get_job(ws, first["job_id"])["status"] == "running"  # the other job goes on
    jobs.cancel(ws, first["job_id"])
    assert jobs.wait(ws, first["job_id"], 30)["status"] == "cancelled"


# -- Slurm -------------------------------------------------------------------------------------
OPTIONS = jobs.SlurmOptions(partition="gpu", time_min=90, gpus=1, cpus=8, mem_gb=32, extra={"qos": "high"},
                            setup=["module load cuda"])


def test_slurm_submission_parameters(ws, monkeypatch):
    import submitit

    job_id = "job-20250101-120000-abcd"
    script = jobs.slurm_script(ws, OPTIONS, job_id)
    lines = script.splitlines()
    for flag in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--qos=high", f"--job-name=hsfm-{job_id}", "--signal=USR2@90", "--nodes=1", "--ntasks-per-node=1"):
        assert f"#SBATCH {flag}" in lines, (flag, script)
    folder = (ws / "jobs" / job_id / "submitit").resolve()
    assert f"#SBATCH --output={folder}/%j_0_log.out" in lines and f"#SBATCH --error={folder}/%j_0_log.err" in lines
    assert lines.index("module load cuda") < next(i for i, l in enumerate(lines) if l.startswith("export PYTHONPATH="))
    assert f"export PYTHONPATH={ROOT}" in script
    (srun,) = [l for l in lines if l.startswith("srun ")]
    assert srun.endswith(f"-u -m submitit.core._submit {folder}") and "--unbuffered" in srun

    # the same parameters through a real SlurmExecutor (its `srun` check faked) render the same script
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(**jobs.slurm_parameters(OPTIONS, job_id))
    command = executor._submitit_command_str
    assert executor._make_submission_file_text(command, "uid") == script

    assert "--mem=1536MB" in jobs.slurm_script(ws, {"partition": "cpu", "mem_gb": 1.5})
    assert "--gpus-per-node" not in jobs.slurm_script(ws, {"partition": "cpu"})
    for bad, message in [({"partition": ""}, "needs a partition"), ({"partition": "a b"}, "partition"),
                         ({"partition": "p", "time_min": 0}, "time limit"),
                         ({"partition": "p", "extra": {"x; rm": 1}}, "sbatch option"),
                         ({"partition": "p", "gpu": 1}, "unexpected keyword")]:
        with pytest.raises(InputError, match=message):
            jobs.slurm_script(ws, bad)


FAKE_SLURM = {
    # sbatch: run the script in the background in its own session as job $id, with Slurm's variables
    "sbatch": r"""
        id=$(( 10000 + RANDOM ))
        script="${@: -1}"
        SLURM_JOB_ID=$id SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 \
          SLURM_JOB_NODELIST=localhost setsid bash "$script" </dev/null >/dev/null 2>&1 &
        echo $! > "$FAKE_SLURM_DIR/$id.pid"
        echo "Submitted batch job $id"
    """,
    # srun --unbuffered --output OUT --error ERR CMD…: %j/%t substituted as Slurm does
    "srun": r"""
        while [[ "$1" == --* ]]; do
          case "$1" in --output) out=$2; shift 2;; --error) err=$2; shift 2;; *) shift;; esac
        done
        out=${out//%j/$SLURM_JOB_ID}; out=${out//%t/0}; err=${err//%j/$SLURM_JOB_ID}; err=${err//%t/0}
        "$@" >>"$out" 2>>"$err"
    """,
    "sacct": r"""
        while [ $# -gt 0 ]; do [ "$1" = -j ] && id=$2; shift; done
        pid=$(cat "$FAKE_SLURM_DIR/$id.pid")
        if kill -0 "$pid" 2>/dev/null; then state=RUNNING; else state=COMPLETED; fi
        printf 'JobID|State|NodeList\n%s|%s|localhost\n' "$id" "$state"
    """,
    "scancel": r"""
        pid=$(cat "$FAKE_SLURM_DIR/$1.pid")
        kill -TERM -- -"$pid"
    """,
}


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + textwrap.dedent(body))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(bin_dir))
    monkeypatch.setattr(jobs, "SLURM_STATE_TTL_S", 0.0)  # these tests follow state changes second by second
    yield bin_dir
    for pid_file in bin_dir.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_slurm_job_through_fake_slurm_commands(ws, fake_slurm):
    record = jobs.launch(ws, "hsfm", overrides=TINY_HSFM, device="cpu", executor="slurm", slurm=OPTIONS)
    job_id = record["job_id"]
    assert record["executor"] == "slurm" and record["max_parallel"] is None and record["slurm"]["partition"] == "gpu"
    assert record["submitit_job_id"].isdigit() and record["pid"] is None
    submission = Path(record["submitit_folder"]) / f"{record['submitit_job_id']}_submission.sh"
    assert "#SBATCH --partition=gpu" in submission.read_text() and "module load cuda" in submission.read_text()
    final = jobs.wait(ws, job_id, 90)
    assert final["status"] == "done", jobs.log_tail(ws, job_id)
    assert _stages(ws, job_id)[0] == "started" and _stages(ws, job_id)[-1] == "done"
    assert "queued" not in _stages(ws, job_id)  # no local slots: Slurm queues
    assert _run_status(ws, record["run_ids"][0]) == "done"
    assert "[job] epoch 2/2" in jobs.log_tail(ws, job_id)["stdout"]

    # cancel through scancel (SIGTERM → a clean cancel)
    endless = jobs.launch(ws, "hsfm", overrides=ENDLESS, device="cpu", executor="slurm", slurm=OPTIONS)
    _until(lambda: _epochs_seen(ws, endless["job_id"]) >= 2, 60, "two epochs")
    jobs.cancel(ws, endless["job_id"])
    assert jobs.wait(ws, endless["job_id"], 30)["status"] == "cancelled"
    assert _run_status(ws, endless["run_ids"][0]) == "cancelled"

    # a job whose process vanished: sacct says COMPLETED, the job never said done → failed
    lost = jobs.launch(ws, "hsfm", overrides=ENDLESS, device="cpu", executor="slurm", slurm=OPTIONS)
    _until(lambda: _epochs_seen(ws, lost["job_id"]) >= 1, 60, "one epoch")
    os.killpg(int((fake_slurm / f"{lost['submitit_job_id']}.pid").read_text()), signal.SIGKILL)
    failed = _until(lambda: (j := jobs.get_job(ws, lost["job_id"]))["status"] != "running" and j, 30, "failure")
    assert failed["status"] == "failed" and "killed?" in failed["error"] and "COMPLETED" in failed["error"]
    assert _run_status(ws, lost["run_ids"][0]) == "failed"


@pytest.mark.slow
def test_cli_submit_list_and_cancel(ws, capsys):
    from hsfm_core.cli import main

    assert main(["train", "--workspace", str(ws), "--method", "hsfm", "--set", "alpha=abc", "--submit", "local"]) == 2
    assert "alpha=abc" in capsys.readouterr().err and jobs.list_jobs(ws) == []
    assert main(["train", "--workspace", str(ws), "--method", "hsfm", "--submit", "slurm"]) == 2
    assert "needs --partition" in capsys.readouterr().err

    assert main(["train", "--workspace", str(ws), "--method", "hsfm", "--set", *ENDLESS, "--device", "cpu",
                 "--submit", "local", "--quiet"]) == 0
    submitted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    job_id = submitted["job_id"]
    assert submitted["status"] in ("queued", "running") and submitted["runs"] == jobs.get_job(ws, job_id)["run_ids"]
    _until(lambda: _epochs_seen(ws, job_id) >= 1, 60, "an epoch")

    assert main(["runs", "--workspace", str(ws)]) == 0
    listing = capsys.readouterr().out
    assert "1 job(s) queued or running" in listing and job_id in listing and "running" in listing
    assert main(["jobs", "--workspace", str(ws), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["job_id"] == job_id and row["status"] == "running" and row["epochs"] == 100000 and row["epoch"] >= 1

    assert main(["cancel", "--workspace", str(ws), job_id, "--wait", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"
    assert main(["jobs", "--workspace", str(ws), "--log", job_id, "--lines", "5"]) == 0
    assert "[job] cancelled" in capsys.readouterr().out
    assert main(["cancel", "--workspace", str(ws), "job-20000101-000000-abcd"]) == 2


def test_slurm_state_is_asked_at_most_once_per_ttl(monkeypatch):
    calls = []
    monkeypatch.setattr(jobs, "_ask_sacct", lambda record: calls.append(record["job_id"]) or "RUNNING")
    record = {"job_id": "job-20000101-000000-abcd"}
    assert jobs._slurm_state(record) == jobs._slurm_state(record) == "RUNNING"
    assert calls == [record["job_id"]]  # a page polling every second does not run sacct every second
    monkeypatch.setattr(jobs, "SLURM_STATE_TTL_S", 0.0)
    jobs._slurm_state(record)
    assert len(calls) == 2
