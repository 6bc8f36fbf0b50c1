"""The Slurm path against a real single-node Slurm (Debian's slurmctld/slurmd 22.05, started by
.ci/slurm-up.sh): submit → progress → done, cancel from the project, `scancel` from outside, a SIGKILLed
worker, a pending job with its reason, a job the controller has forgotten, a time limit reached — each
without accounting (sacct: "Slurm accounting storage is disabled", the main path) and with slurmdbd, where
sacct works (slow). stdout of the `jobs`/`train`/`cancel` commands must stay machine-readable.

Where Slurm runs: `.ci/run` brings the cluster up and sets HSFM_SLURM_TESTS=required, which lets these
tests switch the accounting mode (by calling .ci/slurm-up.sh again) and turns a missing Slurm into a
failure. Elsewhere they use a Slurm that already answers here, in the mode it runs, and skip otherwise.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsfm_core import jobs, slurm
from hsfm_core.errors import InputError
from hsfm_core.runs import read_process
from hsfm_core.spec import TrainSpec
from tests.gaussian import TINY_HSFM, gaussian_workspace

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("HSFM_SLURM_TESTS") == "required"
ENDLESS = ["E=100000", "K_H=1", "T=1", "n=4", "K_hard=8", "alpha=1e-3"]  # thousands of cheap epochs a minute


def _accounting_here() -> str | None:
    """none | slurmdbd for a Slurm controller that answers here, else None."""
    if shutil.which("scontrol") is None:
        return None
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "is UP" not in ping.stdout:
        return None
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    return "slurmdbd" if "accounting_storage/slurmdbd" in config else "none"


@pytest.fixture(scope="module", params=["none", pytest.param("slurmdbd", marks=pytest.mark.slow)])
def cluster(request):
    """A real Slurm in the wanted accounting mode: {accounting, partition, cpus}."""
    mode = request.param
    if REQUIRED:  # CI: (re)configure the local cluster for this mode (idempotent, ~1 s when nothing changes)
        up = subprocess.run([str(ROOT / ".ci" / "slurm-up.sh")], env={**os.environ, "SLURM_ACCOUNTING": mode},
                            capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, f".ci/slurm-up.sh failed:\n{up.stderr[-3000:]}"
    here = _accounting_here()
    if here != mode:
        why = ("no Slurm controller answers here (`scontrol ping`); .ci/run brings one up" if here is None else
               f"the Slurm here runs with accounting {here}; this set-up ({mode}) runs in CI (.ci/run)")
        (pytest.fail if REQUIRED else pytest.skip)(why)
    info = subprocess.run(["sinfo", "--noheader", "--format=%P|%c"], capture_output=True, text=True, timeout=30)
    partition, cpus = info.stdout.split()[0].split("|")
    return {"accounting": mode, "partition": partition.rstrip("*"), "cpus": int(cpus)}


@pytest.fixture()
def ws(tmp_path, cluster, monkeypatch):
    """A Gaussian workspace; every Slurm job launched in it is scancelled at the end."""
    monkeypatch.setattr(slurm, "STATE_TTL_S", 0.0)  # these tests follow state changes second by second
    path = tmp_path / "ws"
    gaussian_workspace(path)
    yield path
    for d in (path / "jobs").glob("job-*"):
        with open(d / "job.json") as fh:
            slurm_id = json.load(fh).get("submitit_job_id")
        if slurm_id:
            subprocess.run(["scancel", str(slurm_id)], capture_output=True, timeout=30)


@pytest.fixture(scope="module", autouse=True)
def time_limited(cluster, tmp_path_factory):
    """A `--time 1` job launched when a set-up's tests begin, so that its minute runs beside the other tests
    (`test_a_time_limit_reached` reads its end); scancelled at the end if still there."""
    path = tmp_path_factory.mktemp(f"time-limited-{cluster['accounting']}") / "ws"
    gaussian_workspace(path)
    record = _launch(path, cluster, ENDLESS, time_min=1)
    yield path, record
    subprocess.run(["scancel", record["submitit_job_id"]], capture_output=True, timeout=30)


def _launch(ws, cluster, overrides, **slurm) -> dict:
    spec = TrainSpec.create("hsfm", overrides=overrides, device="cpu", executor="slurm",
                            slurm={"partition": cluster["partition"], "time_min": 10, **slurm})
    return jobs.launch(ws, spec)


def _until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _epochs(ws, job_id) -> int:
    return jobs.job_progress(ws, job_id)["epoch"]


def _run_status(ws, run_id) -> str:
    return (ws / "runs" / run_id / "status").read_text().strip()


def _cli(*args) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a script would call it."""
    return subprocess.run([sys.executable, "-m", "hsfm_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)


def _ended(ws, job_id, timeout_s: float = 45) -> dict:
    return _until(lambda: (j := jobs.get_job(ws, job_id))["status"] not in jobs.ACTIVE and j, timeout_s, "the end")


def test_submit_progress_done_with_quiet_machine_readable_output(ws, cluster):
    """Submitted from the CLI (stdout: one JSON line; stderr: nothing with --quiet), queued → running → done,
    the worker's progress in its log, its runs written on the node with Slurm's job id."""
    out = _cli("train", "--workspace", str(ws), "--method", "hsfm", "--set", *TINY_HSFM, "--device", "cpu",
               "--submit", "slurm", "--partition", cluster["partition"], "--time", "5", "--quiet")
    assert out.returncode == 0 and out.stderr == "", out
    submitted = json.loads(out.stdout)  # the whole of stdout is the one JSON line
    job_id, slurm_id = submitted["job_id"], submitted["submitit_job_id"]
    assert submitted["executor"] == "slurm" and slurm_id.isdigit()
    seen = set()
    final = _until(lambda: seen.add((j := jobs.get_job(ws, job_id))["status"]) or
                   (j["status"] not in jobs.ACTIVE and j), 120, "the job to end")
    assert final["status"] == "done", jobs.log_tail(ws, job_id)
    assert seen <= {"queued", "running", "done"}
    log = jobs.log_tail(ws, job_id)["stdout"]
    assert f"[job] {job_id} started" in log and "[job] epoch 2/2" in log and "[job] done" in log
    (rid,) = submitted["runs"]
    assert _run_status(ws, rid) == "done" and read_process(ws / "runs" / rid)["slurm_job_id"] == slurm_id
    record = json.loads((ws / "jobs" / job_id / "job.json").read_text())
    assert record["worker"]["slurm_job_id"] == slurm_id and record["worker"]["t"] >= record["created_t"]
    progress = jobs.job_progress(ws, job_id)
    assert progress["epoch"] == progress["epochs"] == 2 and progress["eta_s"] == 0.0 and 0 < progress["elapsed_s"] < 120
    listing = _cli("jobs", "--workspace", str(ws), "--json")
    assert listing.returncode == 0 and listing.stderr == "", listing
    (row,) = json.loads(listing.stdout)
    assert row["status"] == "done" and row["job_id"] == job_id and row["pending"] is None


def test_cancel_from_the_project(ws, cluster):
    record = _launch(ws, cluster, ENDLESS)
    _until(lambda: _epochs(ws, record["job_id"]) >= 2, 120, "two epochs")
    out = _cli("cancel", "--workspace", str(ws), record["job_id"], "--wait", "60")
    assert out.returncode == 0 and out.stderr == "", out
    assert json.loads(out.stdout)["status"] == "cancelled"
    final = jobs.get_job(ws, record["job_id"])
    assert final["cancel_requested"] and final["error"] is None
    (rid,) = record["run_ids"]
    assert _run_status(ws, rid) == "cancelled" and len((ws / "runs" / rid / "history.jsonl").read_text().splitlines()) >= 2
    _until(lambda: "[job] cancelled" in jobs.log_tail(ws, record["job_id"])["stdout"], 30, "the worker's own ending")


def test_scancel_from_outside(ws, cluster):
    """SIGTERM from `scancel`: the worker ends its job and runs `cancelled` itself, and `jobs` shows it."""
    record = _launch(ws, cluster, ENDLESS)
    _until(lambda: _epochs(ws, record["job_id"]) >= 1, 120, "an epoch")
    subprocess.run(["scancel", record["submitit_job_id"]], check=True, timeout=30)
    final = _ended(ws, record["job_id"], 30)
    assert final["status"] == "cancelled"
    assert _run_status(ws, record["run_ids"][0]) == "cancelled"


def test_a_sigkilled_worker_is_found_failed_dated_by_its_records(ws, cluster):
    record = _launch(ws, cluster, ENDLESS)
    _until(lambda: _epochs(ws, record["job_id"]) >= 2, 120, "two epochs")
    (rid,) = record["run_ids"]
    worker = read_process(ws / "runs" / rid)
    os.kill(worker["pid"], signal.SIGKILL)
    killed_t = time.time()
    time.sleep(6)  # found late: the end is still dated by the run's own records, not by the moment it was found
    found = _ended(ws, record["job_id"], 30)
    assert found["status"] == "failed" and found["error"].startswith(jobs.KILLED), found["error"]
    assert "Slurm says FAILED" in found["error"] or "no longer lists" in found["error"]
    assert _run_status(ws, rid) == "failed" and "Slurm" in (ws / "runs" / rid / "error.txt").read_text()
    assert found["ended"]["t"] <= killed_t + 0.5 < found["ended"]["detected_t"] - 5
    assert jobs.job_progress(ws, record["job_id"])["elapsed_s"] < found["ended"]["detected_t"] - record["created_t"] - 5
    assert jobs.cancel(ws, record["job_id"])["status"] == "failed"  # an ended job stays as it is


def test_a_pending_job_shows_its_reason_and_outside_scancel_ends_it(ws, cluster):
    """More CPUs than the partition's node has: Slurm accepts the job and never starts it (PartitionConfig)."""
    record = _launch(ws, cluster, TINY_HSFM, cpus=cluster["cpus"] * 32)
    queued = _until(lambda: (j := jobs.get_job(ws, record["job_id"]))["pending"] and j, 30, "the pending reason")
    assert queued["status"] == "queued" and queued["pending"]["reason"] == "PartitionConfig"
    assert "partition" in queued["pending"]["never_starts"]
    progress = jobs.job_progress(ws, record["job_id"])
    assert progress["pending"] == queued["pending"] and progress["eta_s"] is None
    listing = _cli("jobs", "--workspace", str(ws))
    assert "pending: PartitionConfig — Slurm will not start it" in listing.stdout and listing.stderr == "", listing

    subprocess.run(["scancel", record["submitit_job_id"]], check=True, timeout=30)
    final = _ended(ws, record["job_id"], 30)
    assert final["status"] == "cancelled" and "outside the project" in final["error"]
    assert not (ws / "runs" / record["run_ids"][0]).exists()

    other = _launch(ws, cluster, TINY_HSFM, cpus=cluster["cpus"] * 32)  # the project's cancel: cleared at once
    assert jobs.cancel(ws, other["job_id"])["status"] == "cancelled"


def test_a_job_the_controller_forgot_is_failed_and_quiet(ws, cluster):
    """squeue forgets a job MinJobAge (300 s) after it ends; without accounting nothing else knows it. Waiting
    300 s is too long for a test, so the record is pointed at a job id this controller never had: squeue gives
    the same answer ("Invalid job id"), and sacct is disabled (or has no record). A run left `running` by the
    lost worker ends failed with the reason, and no scheduler message reaches stdout or stderr."""
    record = _launch(ws, cluster, TINY_HSFM, cpus=cluster["cpus"] * 32)  # never starts: nothing to race with
    subprocess.run(["scancel", record["submitit_job_id"]], check=True, timeout=30)
    directory = ws / "jobs" / record["job_id"]
    stored = json.loads((directory / "job.json").read_text())
    (directory / "job.json").write_text(json.dumps({**stored, "submitit_job_id": "9999999"}))
    run = ws / "runs" / record["run_ids"][0]  # as a worker that died without a word would have left it
    run.mkdir(parents=True)
    (run / "status").write_text("running\n")
    listing = _cli("jobs", "--workspace", str(ws), "--json")
    assert listing.returncode == 0 and listing.stderr == "", listing
    (row,) = json.loads(listing.stdout)
    why = "accounting is disabled" if cluster["accounting"] == "none" else "sacct has no record of it"
    assert row["status"] == "failed" and row["error"] == f"{jobs.KILLED} — Slurm no longer lists job 9999999 and {why}"
    assert _run_status(ws, run.name) == "failed" and why in (run / "error.txt").read_text()


def test_a_bad_partition_is_refused_before_anything_is_registered(ws, cluster):
    with pytest.raises(InputError, match=f"partition nope does not exist here; partitions: .*{cluster['partition']}"):
        _launch(ws, cluster, TINY_HSFM, partition="nope")
    assert jobs.list_jobs(ws) == []


def test_a_time_limit_reached(time_limited, monkeypatch):
    """--time 1: the margin is 6 s (not 90 s: the whole minute); the worker trains until 6 s before the job's
    end, then ends its job and run `failed` with the reason, having trained most of its minute."""
    ws, record = time_limited
    monkeypatch.setattr(slurm, "STATE_TTL_S", 0.0)
    script = (Path(record["submitit_folder"]) / f"{record['submitit_job_id']}_submission.sh").read_text()
    assert "#SBATCH --signal=USR2@6" in script and "#SBATCH --time=1" in script
    final = _ended(ws, record["job_id"], 150)
    assert final["status"] == "failed" and final["error"] == "the job reached its time limit (1 min)", final
    (rid,) = record["run_ids"]
    assert _run_status(ws, rid) == "failed"
    trained_s = (ws / "runs" / rid / "history.jsonl").stat().st_mtime - final["worker"]["started"]
    assert trained_s > 45, trained_s  # with USR2@90 the job was told to stop at its first check (~26 s)


def test_a_sweep_is_one_job_array_every_run_done_and_cancel_cancels_every_task(ws, cluster):
    """4 configurations × 2 seeds on Slurm: one sbatch (a submitit job array, one task per configuration), every
    run done; a second sweep cancelled while its tasks run or wait: every task ends cancelled."""
    from hsfm_core import sweeps

    if cluster["accounting"] != "none":
        pytest.skip("the array path is the same with accounting; it runs once, in the main set-up")

    def request(overrides) -> sweeps.SweepRequest:
        return sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", ["alpha=1e-3,2e-3", "T=1,2"]),
                                   seeds=(0, 1), overrides=tuple(overrides), device="cpu", executor="slurm",
                                   slurm={"partition": cluster["partition"], "time_min": 10})

    finite = request(["E=2", "K_H=1", "n=4", "K_hard=8"])
    launched = sweeps.submit(ws, finite)
    records = [jobs.get_job(ws, launched[str(k)]) for k in range(4)]
    array_id = records[0]["submitit_job_id"].split("_")[0]
    assert [r["submitit_job_id"] for r in records] == [f"{array_id}_{k}" for k in range(4)]
    script = (Path(records[0]["submitit_folder"]) / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-3" in script  # one submission for the four configurations
    state = _until(lambda: (p := sweeps.progress(ws, finite.sweep_id))["status"] not in ("running", "new") and p,
                   240, "the sweep to end")
    assert state["status"] == "done" and state["finished"] == 4, [jobs.get_job(ws, j)["error"] for j in launched.values()]
    assert all(jobs.get_job(ws, j)["status"] == "done" for j in launched.values())
    assert {_run_status(ws, sweeps.run_id_of(finite, k, s)) for k in range(4) for s in (0, 1)} == {"done"}

    endless = request(ENDLESS[:1] + ["K_H=1", "n=4", "K_hard=8"])
    launched = sweeps.submit(ws, endless)
    _until(lambda: any(_epochs(ws, j) >= 1 for j in launched.values()), 120, "a task training")
    sweeps.cancel(ws, endless.sweep_id)
    finals = [_ended(ws, j, 60) for j in launched.values()]
    assert [f["status"] for f in finals] == ["cancelled"] * 4
    assert sweeps.progress(ws, endless.sweep_id)["status"] == "cancelled"
    array_id = finals[0]["submitit_job_id"].split("_")[0]
    queue = subprocess.run(["squeue", "--noheader", f"--jobs={array_id}", "--format=%T"], capture_output=True,
                           text=True, timeout=30).stdout.split()
    assert not set(queue) & {"PENDING", "RUNNING"}, queue
