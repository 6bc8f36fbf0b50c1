"""A classroom on one server (docs/ARCHITECTURE.md §App, README "Teaching with the Studio"): the
teacher's settings (read-only, a job cap per session), shared work done once per server, launches
from many sessions at once, and a demo recognised by its own record wherever it was built."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hsfm_core import jobs
from hsfm_core.demo.build import DEMO_VERSION, MARKER
from hsfm_core.runs import list_runs
from hsfm_core.spec import TrainSpec
from hsfm_core.studio import ui

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _session(monkeypatch, workspace, page: str | None = None) -> AppTest:
    monkeypatch.setenv("HSFM_WORKSPACE", str(workspace))
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


@pytest.fixture()
def server(monkeypatch):
    """The server's settings are read once per server process: start each test as a new server."""
    ui.server_settings.clear()
    yield monkeypatch
    ui.server_settings.clear()


def test_read_only_server_hides_retrain_and_launches_nothing(server, app_workspace):
    server.setenv(ui.READ_ONLY_ENV, "1")
    home = _session(server, app_workspace)
    assert any("Read-only mode" in i.value for i in home.info)
    assert not [link for link in home.get("page_link") if "Retrain" in link.proto.label]
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # not registered: /Retrain is no page
        home.switch_page("pages/5_Retrain.py")
    page = AppTest.from_file(str(Path(APP).parent / "pages" / "5_Retrain.py"), default_timeout=180).run()
    assert any("read-only" in e.value for e in page.error)  # the page's own guard, should it ever be run
    assert not page.get("form") and not [b for b in page.button if "Launch" in b.label]
    groups = _session(server, app_workspace, "1_Groups")  # the other pages work
    assert not groups.exception and groups.get("plotly_chart")


def test_settings_come_from_the_command_line_or_the_environment(server):
    server.setattr("sys.argv", ["app.py", "--workspace", "w", "--read-only", "--jobs-per-session", "5"])
    assert ui.server_settings() == {"read_only": True, "jobs_per_session": 5}
    ui.server_settings.clear()
    server.setattr("sys.argv", ["app.py"])
    server.setenv(ui.JOBS_PER_SESSION_ENV, "2")
    server.setenv(ui.READ_ONLY_ENV, "0")
    assert ui.server_settings() == {"read_only": False, "jobs_per_session": 2}


def test_launches_are_marked_and_capped_per_session(server, app_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    server.setenv(ui.JOBS_PER_SESSION_ENV, "1")
    jobs.set_max_parallel(workspace, 1)
    first = _session(server, workspace, "5_Retrain")
    first.selectbox(key="retrain.method").set_value("erm").run()
    submit = next(b for b in first.get("button") if "Launch" in getattr(b, "label", ""))
    submit.click().run()
    assert not first.exception and any("Launched job" in s.value for s in first.success)
    launched = jobs.list_jobs(workspace)[-1]
    submit = next(b for b in first.get("button") if "Launch" in getattr(b, "label", ""))
    submit.click().run()  # a second while the first is queued or running: over this session's cap
    refused = [e.value for e in first.error if "per session" in e.value]
    if jobs.get_job(workspace, launched["job_id"])["status"] in jobs.ACTIVE:
        assert refused, [e.value for e in first.error]
    second = _session(server, workspace, "5_Retrain")  # another student: not capped by the first's job
    table = second.dataframe[-1].value
    mine = first.dataframe[-1].value
    assert (mine.loc[mine["job"] == launched["job_id"], "yours"] == "✓").all()
    assert (table.loc[table["job"] == launched["job_id"], "yours"] == "").all()
    jobs.wait(workspace, launched["job_id"], timeout_s=300)


def test_the_second_session_reuses_the_first_sessions_map(server, app_workspace, tmp_path):
    import umap

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace, ignore=shutil.ignore_patterns("cache"))  # no map on disk yet
    fits = []
    original = umap.UMAP.fit

    def counted(self, *args, **kwargs):
        fits.append(1)
        return original(self, *args, **kwargs)

    server.setattr(umap.UMAP, "fit", counted)
    _session(server, workspace, "2_Projection")
    first = len(fits)
    second = _session(server, workspace, "2_Projection")
    assert second.get("plotly_chart") and len(fits) == first, "the second session fitted its own map"


def test_simultaneous_launches_lose_and_duplicate_nothing(app_workspace, tmp_path):
    """Several sessions press Train in the same instant with the same settings (a Streamlit server
    runs sessions as threads of one process): every launch becomes its own job and runs, queued under
    the job limit, and every run finishes."""
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    jobs.set_max_parallel(workspace, 2)
    n = 4
    barrier = threading.Barrier(n)
    records, errors = [None] * n, []

    def press(i: int) -> None:
        spec = TrainSpec.create("erm", seeds=[0], tags={"session": f"student-{i}"})
        barrier.wait()
        try:
            records[i] = jobs.launch(workspace, spec)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=press, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r["job_id"] for r in records}) == n
    run_ids = [run_id for r in records for run_id in r["run_ids"]]
    assert len(set(run_ids)) == n
    for r in records:
        assert jobs.wait(workspace, r["job_id"], timeout_s=300)["status"] == "done"
    by_id = {r["run_id"]: r for r in list_runs(workspace)}
    assert all(by_id[i]["status"] == "done" for i in run_ids)
    assert sorted(by_id[r["run_ids"][0]]["config"]["session"] for r in records) == [f"student-{i}" for i in range(n)]


def test_a_demo_is_recognised_by_its_record_wherever_it_was_built(tmp_path):
    folder = tmp_path / "srv" / "class"
    folder.mkdir(parents=True)
    assert not ui.is_demo(folder)
    (folder / MARKER).write_text(json.dumps({"version": DEMO_VERSION}))
    assert ui.is_demo(folder)
    (folder / MARKER).write_text(json.dumps({"version": DEMO_VERSION - 1}))  # an older build: rebuilt, not trusted
    assert not ui.is_demo(folder)
    (folder / MARKER).write_text("{not json")
    assert not ui.is_demo(folder)
