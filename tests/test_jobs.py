"""Background jobs (hsfm_core.jobs): submitit local jobs end to end, cancel, kill, bad input,
the concurrency limit, a fresh process finding the jobs, a damaged job record, and what a real Slurm
here cannot show (tests/test_slurm.py runs the Slurm path against a real single-node cluster): the
sbatch script of a GPU/QOS/memory request, through fake sbatch/sinfo/squeue commands. Progress and
liveness are read from the run directories (history.jsonl, process.json); the job record holds
the request and the scheduler's handle."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from hsfm_core import jobs, slurm
from hsfm_core.errors import InputError
from hsfm_core.runs import list_runs, process_alive, read_process
from hsfm_core.spec import SlurmOptions, TrainSpec
from hsfm_core.train import train
from tests.gaussian import TINY_HSFM, gaussian_workspace
from tests.helpers import until

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


def _launch(workspace, method: str, **request) -> dict:
    return jobs.launch(workspace, TrainSpec.create(method, **request))


def _processes(workspace: Path, record: dict) -> list[dict]:
    """The job's processes as process records: submitit's controller, and the worker once it writes runs."""
    writers = [p for rid in record["run_ids"] if (p := read_process(workspace / "runs" / rid))]
    return [p for p in (record.get("controller"), *writers[:1]) if p]


def _kill_all(workspace: Path) -> None:
    """SIGKILL every live process of the workspace's jobs, by pid (the controllers' children too)."""
    for d in sorted((workspace / "jobs").glob("job-*")):
        try:
            record = json.loads((d / "job.json").read_text())
        except (OSError, ValueError):  # a test's damaged record
            continue
        for info in _processes(workspace, record):
            if process_alive(info):
                process = psutil.Process(info["pid"])
                for p in [*process.children(recursive=True), process]:
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass


_until = until  # other test files import it from here


def _epochs_seen(workspace, job_id) -> int:
    return jobs.job_progress(workspace, job_id)["epoch"]


def _run_status(workspace, run_id) -> str:
    return (workspace / "runs" / run_id / "status").read_text().strip()


def _worker(workspace, record) -> dict:
    """The process record of the job's worker (the process that writes its runs), once training."""
    return _until(lambda: read_process(workspace / "runs" / record["run_ids"][0]), 60, "the worker's process.json")


@pytest.mark.slow
def test_local_job_runs_with_progress_and_finishes(ws):
    t0 = time.monotonic()
    record = _launch(ws, "hsfm", overrides=[*TINY_HSFM[1:], "E=3"], seeds=[0, 1], device="cpu")
    job_id = record["job_id"]
    assert time.monotonic() - t0 < 30 and record["status"] in ("queued", "running")  # the caller did not wait
    assert record["executor"] == "local" and record["spec"]["method"] == "hsfm" and record["spec"]["seeds"] == [0, 1]
    assert TrainSpec.from_dict(record["spec"]) == TrainSpec.create("hsfm", overrides=[*TINY_HSFM[1:], "E=3"],
                                                                    seeds=[0, 1], device="cpu")  # the request, unchanged
    base = record["run_id"]
    assert base.startswith("hsfm-") and record["run_ids"] == [f"{base}-s0", f"{base}-s1"]
    controller = record["controller"]  # the scheduler's handle: submitit's local job id is its controller's pid
    assert record["submitit_job_id"] == str(controller["pid"]) and controller["host"] and controller["started"] > 0
    on_disk = json.loads((ws / "jobs" / job_id / "job.json").read_text())
    assert not {"status", "progress", "epoch", "worker_pid"} & set(on_disk)  # the runs hold those
    assert not (ws / "jobs" / job_id / "progress.jsonl").exists()

    done = jobs.wait(ws, job_id, 120)
    assert done["status"] == "done" and done["error"] is None and done["ended"]["t"] > record["created_t"]
    for rid in record["run_ids"]:  # the run directories say who trained them: the worker, not this process
        writer = read_process(ws / "runs" / rid)
        assert writer["pid"] not in (os.getpid(), controller["pid"]) and writer["host"] and writer["started"] > 0
        assert writer["slurm_job_id"] is None

    runs = {r["run_id"]: r for r in list_runs(ws)}
    assert set(runs) == set(record["run_ids"]) and {r["status"] for r in runs.values()} == {"done"}
    for rid in record["run_ids"]:
        metrics = json.loads((ws / "runs" / rid / "metrics.json").read_text())
        assert set(metrics) == {"val", "test"}
        history = (ws / "runs" / rid / "history.jsonl").read_text().splitlines()
        assert [json.loads(h)["epoch"] for h in history] == [1, 2, 3]  # every epoch written once

    progress = jobs.job_progress(ws, job_id)
    assert progress["status"] == "done" and progress["epoch"] == 3 and progress["epochs"] == 3
    assert progress["eta_s"] == 0.0 and 0 < progress["elapsed_s"] < 120
    rows = progress["history"]  # one row per (epoch, seed), straight from the runs' history.jsonl
    assert [(r["epoch"], r["seed"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (3, 1)]
    assert {"outer_loss", "head_loss", "val_wga", "val_avg"} <= set(rows[0]) and 0 <= rows[0]["val_wga"] <= 1
    logs = jobs.log_tail(ws, job_id, 50)
    assert "[job] epoch 3/3" in logs["stdout"] and "Job completed successfully" in logs["stdout"]
    assert jobs.log_tail(ws, job_id, 1)["stdout"].count("\n") == 0
    assert done["traceback"] is None
    assert jobs.cancel(ws, job_id)["status"] == "done"  # a finished job stays as it is
    _until(lambda: not any(process_alive(p) for p in _processes(ws, record)), 10, "the job's processes to exit")


def test_a_run_records_its_process_and_liveness(tmp_path):
    """process.json: pid, start time and host of the process writing a run (psutil), read back as alive; a
    vanished process, a reused pid (another start time) and another host read as dead / unknown."""
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    (run,) = train(ws, "erm")
    info = read_process(run.path)
    assert info["pid"] == os.getpid() and info["host"] and process_alive(info) is True
    assert process_alive({**info, "started": info["started"] - 5}) is False  # the pid of another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_alive({**info, "pid": child.pid, "started": 0}) is False
    assert process_alive({**info, "host": "elsewhere"}) is None and process_alive(None) is None


def _endless_job_past(ws, epochs: int):
    """An earlier finished run, and an endless HSFM job once it has trained `epochs` epochs."""
    (earlier,) = train(ws, "erm")
    record = _launch(ws, "hsfm", overrides=ENDLESS, device="cpu")
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
    assert "[job] cancelled" in jobs.log_tail(ws, job_id)["stdout"]  # the worker's own clean ending
    (rid,) = record["run_ids"]
    assert _run_status(ws, rid) == "cancelled"
    history = (ws / "runs" / rid / "history.jsonl").read_text().splitlines()
    assert len(history) >= 3 and json.loads(history[-1])["epoch"] == len(history)
    _until(lambda: not any(process_alive(p) for p in _processes(ws, final)), 10, "the job's processes to exit")
    assert _run_status(ws, earlier.run_id) == "done"


def test_the_worker_stops_once(tmp_path):
    """The cancel flag seen at an epoch end and the SIGINT `cancel` sends after it are one cancel: the
    signal must not raise again inside the cleanup (it did, under load: a cancelled job kept a run
    `running`). The same holds for a second signal. The stop is the worker's own object, not module state."""
    directory = tmp_path / "job-20260101-000000-abcd"
    directory.mkdir()
    (directory / "job.json").write_text(json.dumps({
        "job_id": directory.name, "spec": {"method": "erm", "seeds": [0], "executor": "local"}, "run_ids": [],
        "created_t": time.time(), "submitit_folder": str(directory / "submitit"), "cancel_requested": True}))
    stop = jobs._Worker(directory)
    previous = signal.signal(signal.SIGINT, stop.on_signal)
    try:
        with pytest.raises(KeyboardInterrupt, match="cancel requested"):
            stop.check()
        os.kill(os.getpid(), signal.SIGINT)  # lands in the cleanup: a no-op
        time.sleep(0.2)

        stop.armed = True  # a fresh stop
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal: a no-op
        time.sleep(0.2)
        with pytest.raises(KeyboardInterrupt, match="cancel requested"):  # the flag is still honoured
            stop.check()
        assert jobs._Worker(directory).armed  # each worker has its own
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_killed_job_is_found_failed_by_a_fresh_process(ws):
    earlier, record, job_id = _endless_job_past(ws, 2)
    assert jobs.get_job(ws, job_id)["status"] == "running"
    worker = _worker(ws, record)
    assert process_alive(worker) is True
    os.kill(worker["pid"], signal.SIGKILL)
    _until(lambda: process_alive(worker) is False, 10, "the worker to die")

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
    assert jobs.get_job(ws, job_id)["status"] == "failed" and jobs.job_progress(ws, job_id)["epoch"] >= 2
    assert jobs.get_job(ws, job_id)["traceback"] is None  # killed: no traceback, only the reason


@pytest.mark.slow
def test_a_job_killed_while_queued_is_found_failed(ws):
    first = _launch(ws, "hsfm", overrides=ENDLESS, device="cpu", max_parallel=1)
    second = _launch(ws, "erm", max_parallel=1)
    _until(lambda: _epochs_seen(ws, first["job_id"]) >= 1 and _waiting(ws, second["job_id"]), 60,
           "the first job training and the second waiting")
    controller = psutil.Process(second["controller"]["pid"])
    for p in [*controller.children(), controller]:  # the whole job: no runs were written yet
        p.kill()
    found = _until(lambda: (j := jobs.get_job(ws, second["job_id"]))["status"] != "queued" and j, 10, "failure")
    assert found["status"] == "failed" and found["error"] == jobs.KILLED
    assert not (ws / "runs" / second["run_ids"][0]).exists() and jobs.get_job(ws, first["job_id"])["status"] == "running"
    jobs.cancel(ws, first["job_id"])
    assert jobs.wait(ws, first["job_id"], 30)["status"] == "cancelled"


def test_bad_input_is_refused_at_launch(ws):
    (earlier,) = train(ws, "erm")
    for kwargs, message in [
        ({"method": "hsfm", "overrides": ["alpha=abc"]}, "alpha=abc"),
        ({"method": "hsfm", "overrides": ["depth=3"]}, "unknown key 'depth'"),
        ({"method": "hsfm", "preset": "imagenet"}, "unknown hsfm preset"),
        ({"method": "dfr", "overrides": ["E=3"]}, "unknown key 'E'"),
        ({"method": "erm", "overrides": ["C=-1"]}, "C must be a finite number > 0"),
        ({"method": "hsfm", "seeds": [-1]}, "seeds must be"),
        ({"method": "svm"}, "unknown method"),
        ({"method": "hsfm", "device": "tpu"}, "unknown device"),
        ({"method": "hsfm", "executor": "ray"}, "unknown executor"),
        ({"method": "hsfm", "executor": "slurm"}, "needs a partition"),
        ({"method": "hsfm", "max_parallel": 0}, "limit must be ≥ 1"),
    ]:
        with pytest.raises(InputError, match=message):
            _launch(ws, **kwargs)
    with pytest.raises(InputError, match="unknown device"):  # a Slurm job's device: its name is checked here
        _launch(ws, "hsfm", device="tpu", executor="slurm", slurm={"partition": "gpu"})
    with pytest.raises(InputError, match="unknown method"):  # a request that skipped create() is checked again
        jobs.launch(ws, TrainSpec("svm"))
    assert jobs.list_jobs(ws) == [] and [r["run_id"] for r in list_runs(ws)] == [earlier.run_id]
    with pytest.raises(InputError, match="no job"):
        jobs.get_job(ws, "job-20000101-000000-abcd")
    with pytest.raises(InputError, match="job id"):
        jobs.get_job(ws, "../../etc")


@pytest.mark.slow
def test_bad_override_found_in_the_job_and_a_crash(ws, monkeypatch):
    """The in-job paths: the worker's own checks of the request catch what launch() did not see."""
    (earlier,) = train(ws, "erm")
    monkeypatch.setattr(TrainSpec, "check", lambda self: self)  # as if launch had not checked (this process only)
    bad = jobs.launch(ws, TrainSpec("hsfm", overrides=("alpha=abc",), device="cpu"))
    final = jobs.wait(ws, bad["job_id"], 60)
    assert final["status"] == "failed"
    assert final["error"] == "hsfm setting 'alpha=abc': inner_lr must be float, got 'abc'"
    assert jobs.job_progress(ws, bad["job_id"])["error"] == final["error"]
    assert "alpha=abc" in jobs.log_tail(ws, bad["job_id"])["stderr"]
    assert not (ws / "runs" / bad["run_ids"][0]).exists()
    assert [r["run_id"] for r in list_runs(ws)] == [earlier.run_id] and _run_status(ws, earlier.run_id) == "done"

    # a crash (not bad input): `runs` is a file, so the run directory cannot be created
    monkeypatch.undo()
    os.rename(ws / "runs", ws / "runs-kept")
    (ws / "runs").write_text("not a folder")
    crashed = jobs.wait(ws, _launch(ws, "erm")["job_id"], 60)
    assert crashed["status"] == "failed" and crashed["error"].startswith(("FileExistsError", "NotADirectoryError"))
    assert crashed["traceback"].startswith("Traceback") and "FileExistsError" in crashed["traceback"]


def _waiting(workspace, job_id) -> bool:
    return "[job] waiting for one of" in jobs.log_tail(workspace, job_id)["stdout"]


@pytest.mark.slow
def test_concurrency_limit_queues_the_second_job(ws):
    first = _launch(ws, "hsfm", overrides=ENDLESS, device="cpu", max_parallel=1)
    second = _launch(ws, "hsfm", overrides=TINY_HSFM, device="cpu", max_parallel=1)
    _until(lambda: _epochs_seen(ws, first["job_id"]) >= 1 and _waiting(ws, second["job_id"]), 60,
           "the first job training and the second waiting")
    time.sleep(1.0)
    statuses = {j["job_id"]: j["status"] for j in jobs.list_jobs(ws)}
    assert statuses == {first["job_id"]: "running", second["job_id"]: "queued"}
    assert "[job] holding slot" not in jobs.log_tail(ws, second["job_id"])["stdout"]
    assert not (ws / "runs" / second["run_ids"][0]).exists()

    jobs.cancel(ws, first["job_id"])
    first_final = jobs.wait(ws, first["job_id"], 30)
    assert first_final["status"] == "cancelled"
    assert jobs.wait(ws, second["job_id"], 60)["status"] == "done"
    second_start = read_process(ws / "runs" / second["run_ids"][0])["at"]  # when its worker created the run
    assert second_start >= first_final["ended"]["t"]
    assert _run_status(ws, second["run_ids"][0]) == "done"


@pytest.mark.slow
def test_slots_go_first_come_first_served(ws):
    """With one slot busy, the job launched earlier takes the slot first, whatever order the workers poll in."""
    busy = _launch(ws, "hsfm", overrides=ENDLESS, device="cpu", max_parallel=1)
    _until(lambda: _epochs_seen(ws, busy["job_id"]) >= 1, 60, "the first job training")
    earlier = _launch(ws, "erm", max_parallel=1)
    later = _launch(ws, "erm", max_parallel=1)
    _until(lambda: _waiting(ws, earlier["job_id"]) and _waiting(ws, later["job_id"]), 60, "both waiting")
    jobs.cancel(ws, busy["job_id"])
    finals = [jobs.wait(ws, j["job_id"], 60) for j in (earlier, later)]
    assert [f["status"] for f in finals] == ["done", "done"]
    starts = [read_process(ws / "runs" / j["run_ids"][0])["at"] for j in (earlier, later)]
    assert starts[0] < starts[1] and starts[1] >= finals[0]["ended"]["t"]


@pytest.mark.slow
def test_cancel_a_queued_job(ws):
    jobs.set_max_parallel(ws, 1)
    first = _launch(ws, "hsfm", overrides=ENDLESS, device="cpu")
    second = _launch(ws, "erm")
    assert first["max_parallel"] == second["max_parallel"] == 1
    _until(lambda: _waiting(ws, second["job_id"]) and _epochs_seen(ws, first["job_id"]) >= 1, 60,
           "the second job waiting")
    jobs.cancel(ws, second["job_id"])
    assert jobs.wait(ws, second["job_id"], 30)["status"] == "cancelled"
    assert not (ws / "runs" / second["run_ids"][0]).exists()
    assert jobs.get_job(ws, first["job_id"])["status"] == "running"  # the other job goes on
    jobs.cancel(ws, first["job_id"])
    assert jobs.wait(ws, first["job_id"], 30)["status"] == "cancelled"


# -- Slurm -------------------------------------------------------------------------------------
OPTIONS = SlurmOptions(partition="gpu", time_min=90, gpus=1, cpus=8, mem_gb=32, extra={"qos": "high"},
                       setup=("module load cuda",))


def _fake_commands(bin_dir: Path, commands: dict, monkeypatch) -> None:
    bin_dir.mkdir()
    for name, body in commands.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + textwrap.dedent(body))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_slurm_submission_script(ws, tmp_path, monkeypatch):
    """The sbatch script submitit submits for a job (public API only: the submission file it wrote), with
    sbatch and srun faked: sbatch records its arguments and answers with a job id, nothing runs."""
    _fake_commands(tmp_path / "bin", {"sbatch": 'echo "$@" > "$FAKE_SLURM_ARGS"; echo "Submitted batch job 4242"',
                                      "srun": "exit 0", "sinfo": "echo gpu; echo cpu",
                                      "squeue": "echo 'PENDING|Priority'"}, monkeypatch)
    monkeypatch.setenv("FAKE_SLURM_ARGS", str(tmp_path / "sbatch-args"))
    record = _launch(ws, "hsfm", device="cuda", executor="slurm", slurm=OPTIONS)
    job_id, folder = record["job_id"], Path(record["submitit_folder"])
    assert record["submitit_job_id"] == "4242" and record["spec"]["slurm"]["partition"] == "gpu"
    script = (folder / "4242_submission.sh").read_text()
    assert Path((tmp_path / "sbatch-args").read_text().split()[-1]).resolve() == (folder / "4242_submission.sh").resolve()
    lines = script.splitlines()
    for flag in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--qos=high", f"--job-name=hsfm-{job_id}", "--signal=USR2@90", "--nodes=1", "--ntasks-per-node=1",
                 f"--chdir={ws.resolve()}"):
        assert f"#SBATCH {flag}" in lines, (flag, script)
    assert f"#SBATCH --output={folder}/%j_0_log.out" in lines and f"#SBATCH --error={folder}/%j_0_log.err" in lines
    assert lines.index("module load cuda") < next(i for i, l in enumerate(lines) if l.startswith("export PYTHONPATH="))
    assert f"export PYTHONPATH={ROOT}" in script
    (srun,) = [l for l in lines if l.startswith("srun ")]
    assert srun.endswith(f"-u -m submitit.core._submit {folder}") and "--unbuffered" in srun
    queued = jobs.get_job(ws, job_id)
    assert queued["status"] == "queued" and queued["pending"] == {"reason": "Priority", "never_starts": None}

    for options, present, absent in [({"partition": "cpu", "mem_gb": 1.5}, {"mem": "1536MB"}, "gpus_per_node"),
                                     ({"partition": "cpu"}, {"time": 60, "signal_delay_s": 90}, "mem"),
                                     ({"partition": "cpu", "time_min": 1}, {"signal_delay_s": 6}, "mem")]:
        params = slurm.sbatch_parameters(SlurmOptions.from_value(options), job_id)
        assert present.items() <= params.items() and absent not in params
    for bad, message in [({"partition": ""}, "needs a partition"), ({"partition": "a b"}, "partition"),
                         ({"partition": "p", "time_min": 0}, "time limit"),
                         ({"partition": "p", "extra": {"x; rm": 1}}, "sbatch option"),
                         ({"partition": "p", "gpu": 1}, "unexpected keyword"),
                         ({"partition": "nope"}, "partition nope does not exist here; partitions: cpu, gpu")]:
        with pytest.raises(InputError, match=message):
            _launch(ws, "hsfm", executor="slurm", slurm=bad)
    assert len(jobs.list_jobs(ws)) == 1


def test_the_time_limit_warning_scales_with_the_limit():
    """SIGUSR2 comes 10 % of the limit before it (5 s to 90 s): a fixed 90 s told a 1-minute job at once."""
    assert [slurm.time_limit_warning_s(m) for m in (1, 2, 10, 15, 60, 600)] == [6, 12, 60, 90, 90, 90]
    assert slurm.time_limit_warning_s(0.5) == 5


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
    monkeypatch.setattr(slurm, "ask", lambda slurm_id: calls.append(slurm_id) or {
        "state": "CANCELLED", "reason": None, "source": "squeue"})
    key = "job-20000101-000000-abcd"
    assert slurm.state(key, "7") == slurm.state(key, "7") == slurm.last_state(key) and calls == ["7"]
    # a page polling every second does not run squeue every second; a cancel asks afresh
    slurm.state(key, "7", fresh=True)
    monkeypatch.setattr(slurm, "STATE_TTL_S", 0.0)
    slurm.state(key, "7")
    assert calls == ["7", "7", "7"]


def test_slurm_commands_missing_is_an_input_error(ws, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InputError, match="sbatch/squeue not found on PATH"):
        _launch(ws, "erm", executor="slurm", slurm={"partition": "debug"})
    assert jobs.list_jobs(ws) == []


def test_a_damaged_job_record_is_named_not_hidden(ws):
    """A job.json that cannot be read is listed as unreadable, with its file and the reason (the CLI shows it)."""
    bad = ws / "jobs" / "job-20000101-000000-abcd"
    bad.mkdir(parents=True)
    (bad / "job.json").write_text('{"job_id": "job-20000101-000000-abcd", "spec": ')
    unreadable = []
    assert jobs.list_jobs(ws, unreadable) == [] and jobs.list_jobs(ws) == []
    (entry,) = unreadable
    assert entry["job_id"] == bad.name and entry["path"] == str(bad / "job.json")
    assert "the job record is not valid JSON (line 1" in entry["error"] and str(bad / "job.json") in entry["error"]
    with pytest.raises(InputError, match="job record is not valid JSON"):
        jobs.get_job(ws, bad.name)
    out = subprocess.run([sys.executable, "-m", "hsfm_core", "jobs", "--workspace", str(ws), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    (row,) = json.loads(out.stdout)
    assert row["status"] == "unreadable" and row["job_id"] == bad.name and "not valid JSON" in row["error"]
    out = subprocess.run([sys.executable, "-m", "hsfm_core", "jobs", "--workspace", str(ws)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert f"unreadable: {bad / 'job.json'}" in out.stdout, out


def test_a_death_found_late_is_dated_by_the_runs_own_records(ws):
    """A killed job's end is its last sign of life (newest history line, run start, worker start), not the
    moment a reader noticed (a real scheduler's late detection showed 876 s for a job that ran 24 s)."""
    long_ago = time.time() - 600
    run = ws / "runs" / "erm-20000101-000000-dead-s0"  # a run whose writer died 10 minutes ago, after 24 s
    run.mkdir(parents=True)
    (run / "status").write_text("running\n")
    (run / "history.jsonl").write_text('{"epoch": 1}\n')
    os.utime(run / "history.jsonl", (long_ago, long_ago))
    (run / "process.json").write_text(json.dumps({"pid": 1, "started": 1.0, "host": socket.gethostname(),
                                                 "at": long_ago - 24}))
    job_id = "job-20000101-000000-dead"
    (ws / "jobs" / job_id).mkdir(parents=True)
    (ws / "jobs" / job_id / "job.json").write_text(json.dumps({
        "job_id": job_id, "workspace": str(ws), "spec": TrainSpec.create("erm").to_dict(), "run_id": run.name[:-3],
        "run_ids": [run.name], "max_parallel": 1, "created_at": "2000-01-01T00:00:00+00:00",
        "created_t": long_ago - 30, "submitit_folder": str(ws), "submitit_job_id": "1", "cancel_requested": False,
        "controller": {"pid": 1, "started": 1.0, "host": socket.gethostname()}}))  # pid 1, another start: gone
    found = jobs.job_progress(ws, job_id)
    assert found["status"] == "failed" and found["error"] == jobs.KILLED
    assert 29 <= found["elapsed_s"] <= 31, found["elapsed_s"]  # from the launch to the last history line, not ~630 s
    ended = json.loads((ws / "jobs" / job_id / "job.json").read_text())["ended"]
    assert ended["detected_t"] - ended["t"] > 590
    assert (run / "status").read_text().strip() == "failed"
