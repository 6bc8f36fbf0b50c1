"""The Retrain page (AppTest): a form read from the method registry; launch a short run, watch it,
compare it; refuse bad settings; cancel; show a job killed from outside as failed. Real submitit jobs
on this machine."""

import dataclasses
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hsfm_core import jobs, methods
from hsfm_core.features import FeatureStore
from hsfm_core.runs import list_runs
from hsfm_core.spec import TrainSpec
from hsfm_core.studio import ui
from tests.test_jobs import _kill_all, _until, _worker
from tests.test_pages import APP

pytestmark = pytest.mark.slow


@pytest.fixture()
def workspace(app_workspace, tmp_path):
    """A copy of the app workspace (jobs add runs); every job process is killed at the end."""
    path = tmp_path / "ws"
    shutil.copytree(app_workspace, path)
    yield path
    _kill_all(path)


def retrain_page(monkeypatch, workspace) -> AppTest:
    monkeypatch.setenv("HSFM_WORKSPACE", str(workspace))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/5_Retrain.py").run()
    assert not at.exception, at.exception
    return at


def set_hsfm(at, **values) -> None:
    """Choose HSFM and set its settings boxes (waterbirds preset) by alias, e.g. n=4."""
    if at.selectbox(key="retrain.method").value != "hsfm":
        at.selectbox(key="retrain.method").set_value("hsfm").run()
    if at.selectbox(key="retrain.hsfm.preset").value != "waterbirds":  # generated features default to `auto`
        at.selectbox(key="retrain.hsfm.preset").set_value("waterbirds").run()
    for alias, value in values.items():
        field = methods.get("hsfm").aliases[alias]
        at.number_input(key=f"retrain.hsfm.waterbirds.{field}").set_value(value)


def launch(at) -> None:
    next(b for b in at.get("form_submit_button") if b.label == "Launch run").click().run()
    assert not at.exception, at.exception


def poll(at, until, timeout_s: float = 120, what: str = "the page"):
    """Rerun the page (as its polling fragment would) until `until(at)` holds."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception, at.exception
        seen.append(at.metric[0].value if at.metric else None)
        if until(at):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; statuses seen {seen[-5:]}")


def test_the_form_is_read_from_the_registry(monkeypatch, workspace):
    """Every registered method is offered (label and description), its presets, and one box per setting
    with the alias beside the field name; the page names no method."""
    source = (Path(__file__).resolve().parent.parent / "pages" / "5_Retrain.py").read_text()
    for m in methods.all_methods():
        assert f'"{m.name}"' not in source and f"'{m.name}'" not in source
    at = retrain_page(monkeypatch, workspace)
    choice = at.selectbox(key="retrain.method")
    assert choice.options == [f"{m.label}: {m.description}" for m in methods.all_methods()]
    assert methods.get(choice.value).edits_features  # a feature editor is chosen first
    for m in methods.all_methods():
        choice.set_value(m.name).run()
        assert not at.exception, at.exception
        labels = {w.label.split(":")[0] for kind in ("number_input", "text_input", "checkbox") for w in at.get(kind)
                  if w.key and w.key.startswith(f"retrain.{m.name}.")}
        alias_of = {f: a for a, f in m.aliases.items()}
        assert labels == {f.name + (f" · {alias_of[f.name]}" if f.name in alias_of else "")
                          for f in dataclasses.fields(m.Settings)}, (m.name, labels)
        preset = at.selectbox(key=f"retrain.{m.name}.preset")
        options = (list(m.presets) + (["auto"] if m.has_auto else [])) or ["default"]
        assert preset.options == options and preset.disabled == (len(options) < 2)
        assert preset.value == m.default_preset(FeatureStore.open(workspace))[0] or not m.presets  # the store's default
    choice.set_value("hsfm").run()
    store = FeatureStore.open(workspace)
    auto, why = methods.get("hsfm").auto_settings(store)  # the default here: the store's own scale
    assert at.number_input(key="retrain.hsfm.auto.inner_lr").value == auto.inner_lr
    assert any("Preset **auto**" in c.value and "ResNet-50" in c.value for c in at.caption)
    at.selectbox(key="retrain.hsfm.preset").set_value("celeba").run()  # another preset: its values in the boxes
    assert at.number_input(key="retrain.hsfm.celeba.n_support").value == methods.get("hsfm").presets["celeba"].n_support


def test_launch_watch_finish_and_compare(monkeypatch, workspace):
    before = {r["run_id"] for r in list_runs(workspace)}
    at = retrain_page(monkeypatch, workspace)
    assert "No jobs yet" in at.info[0].value
    # E = 2,000: about 2 s of training here (0.2 s at E = 60), so the page's polls see it running
    set_hsfm(at, n=4, K_hard=8, K_H=2, T=2, E=2000)
    launch(at)
    assert "Launched job" in at.success[0].value and "with n=4 T=2 K_H=2 K_hard=8 E=2000" in at.success[0].value
    (job,) = jobs.list_jobs(workspace)
    assert job["spec"]["overrides"] == ["n=4", "T=2", "K_H=2", "K_hard=8", "E=2000"]
    label = following(at).format_func(job["job_id"])  # what the browser sends back for the choice
    spec = TrainSpec.from_dict(job["spec"])
    assert set(spec.tags) == {"session"}  # the launching session's mark (its own jobs are shown as "yours")
    assert dataclasses.replace(spec, tags={}) == TrainSpec.create("hsfm", preset="waterbirds", seeds=[0],
                                                                  overrides=["n=4", "T=2", "K_H=2", "K_hard=8", "E=2000"])
    statuses = poll(at, lambda a: any("Done" in s.value for s in a.success), what="the job to finish")
    assert "running" in statuses  # progress was shown while it trained
    assert following(at).format_func(job["job_id"]) == label and label.endswith("· yours")  # unchanged by its end
    assert at.metric[0].value == "done" and at.metric[3].value.endswith("%")  # val WGA of the last epoch
    assert len(at.get("plotly_chart")) == 1  # the training curves
    (new,) = {r["run_id"] for r in list_runs(workspace)} - before
    assert f"HSFM · waterbirds · {new}" in at.sidebar.multiselect[0].options  # in the pickers at once
    compare = at.button(key="retrain.compare")
    assert "Compare with the previous run (hsfm-" in compare.label
    compare.click().run()
    assert at.session_state[ui.COMPARE_KEY][-1] == new and at.session_state[ui.COMPARE_KEY][0].startswith("hsfm-")
    at.switch_page("pages/1_Groups.py").run()
    assert [i.split(" · ")[-1] for i in at.dataframe[0].value.index] == at.session_state[ui.COMPARE_KEY]


def test_bad_settings_are_refused_and_nothing_is_started(monkeypatch, workspace):
    runs = sorted(p.name for p in (workspace / "runs").iterdir())
    at = retrain_page(monkeypatch, workspace)
    set_hsfm(at)
    at.text_input(key="retrain.extra").set_value("alpha=abc")
    launch(at)
    assert "The run was not launched" in at.error[0].value and "alpha" in at.error[0].value
    at.text_input(key="retrain.extra").set_value("")
    at.selectbox(key="retrain.method").set_value("dfr").run()
    at.text_input(key="retrain.dfr.val_scaler.c_grid").set_value("1, x")  # a list setting, parsed by the method
    launch(at)
    assert "The run was not launched" in at.error[0].value and "c_grid" in at.error[0].value
    at.selectbox(key="retrain.method").set_value("hsfm").run()
    at.text_input(key="retrain.extra").set_value("")
    at.text_input(key="retrain.seeds").set_value("0, x")
    launch(at)
    assert "seeds '0, x'" in at.error[0].value
    at.text_input(key="retrain.seeds").set_value("0")
    at.radio(key="retrain.where").set_value("a Slurm cluster")
    launch(at)
    assert "a Slurm job needs a partition" in at.error[0].value
    assert jobs.list_jobs(workspace) == [] and sorted(p.name for p in (workspace / "runs").iterdir()) == runs


def test_cancel_from_the_page(monkeypatch, workspace):
    at = retrain_page(monkeypatch, workspace)
    set_hsfm(at, n=4, K_hard=8, K_H=1, T=1, E=100000)
    launch(at)
    poll(at, lambda a: a.metric and a.metric[0].value == "running" and a.metric[3].value.endswith("%"),
         what="training epochs")  # the val WGA of a finished epoch is shown
    at.button(key="retrain.cancel").click().run()
    poll(at, lambda a: bool(a.warning) and "cancelled" in a.warning[0].value, what="the cancel")
    (job,) = jobs.list_jobs(workspace)
    (run_id,) = job["run_ids"]
    assert (workspace / "runs" / run_id / "status").read_text().strip() == "cancelled"
    assert (workspace / "runs" / run_id / "history.jsonl").read_text().strip()  # the partial history stays


def test_a_job_killed_from_outside_shows_as_failed(monkeypatch, workspace):
    at = retrain_page(monkeypatch, workspace)
    set_hsfm(at, n=4, K_hard=8, K_H=1, T=1, E=100000)
    launch(at)
    (job,) = jobs.list_jobs(workspace)
    worker = _worker(workspace, job)["pid"]  # the process that writes the run (its process.json)
    _until(lambda: jobs.job_progress(workspace, job["job_id"])["epoch"] >= 1, 60, "an epoch")
    os.kill(worker, signal.SIGKILL)
    poll(at, lambda a: bool(a.error), what="the failure")
    assert "The job failed: the job's process ended without finishing (killed?)" in at.error[0].value
    assert at.metric[0].value == "failed"


def test_follow_any_job(monkeypatch, workspace):
    first = jobs.launch(workspace, TrainSpec.create("erm"))
    second = jobs.launch(workspace, TrainSpec.create("dfr", overrides=["n_refits=2"]))
    for job in (first, second):
        jobs.wait(workspace, job["job_id"], 120)
    at = retrain_page(monkeypatch, workspace)
    follow = following(at)
    assert follow.value == second["job_id"]  # the newest by default
    follow.set_value(first["job_id"]).run()
    at.run()  # and it stays on the user's choice
    assert following(at).value == first["job_id"]
    assert f"Done: {first['run_ids'][0]}" in at.success[0].value
    set_hsfm(at, n=4, K_hard=8, K_H=2, T=2, E=2)  # a launch of this session: followed, whatever was chosen before
    launch(at)
    (mine,) = [j for j in jobs.list_jobs(workspace) if j["job_id"] not in (first["job_id"], second["job_id"])]
    assert following(at).value == mine["job_id"] and "yours" in following(at).format_func(mine["job_id"])
    # Another session's launch puts its job first in the list: a new widget, still on this session's job (the
    # browser keeps a choice by position, bench_classroom N = 25), whose index the page sets from its record.
    before = following(at).key
    other = jobs.launch(workspace, TrainSpec.create("erm", tags={"session": "another"}))
    at.run()
    assert following(at).options[0].startswith(other["job_id"]) and following(at).key != before
    assert following(at).value == mine["job_id"]
    # A browser that redraws the widget without its state takes the index the page sent: this session's job, not
    # the first option (the newest job, another session's), which the page followed under load before.
    assert following(at).proto.default == 1 and following(at).options[1].startswith(mine["job_id"])
    del at.session_state["retrain.watch"]  # no record, and a new widget: this session's own newest job, not the newest
    third = jobs.launch(workspace, TrainSpec.create("erm", tags={"session": "another"}))
    at.run()
    assert following(at).options[0].startswith(third["job_id"]) and following(at).value == mine["job_id"]
    for job in (other, third):
        jobs.wait(workspace, job["job_id"], 120)


def following(at):
    """The "Follow job" selectbox (its key changes with each launch of the session)."""
    (box,) = [b for b in at.selectbox if b.label == "Follow job"]
    return box


def test_sweep_view_launches_watches_and_opens_the_selection(monkeypatch, workspace):
    """Retrain's Sweep section: a 2 × 2 grid over two seeds as background jobs, a live table and heatmap,
    the configuration selected on validation opened in Groups."""
    from hsfm_core import sweeps

    at = retrain_page(monkeypatch, workspace)
    at.selectbox(key="sweep.method").set_value(methods.get("hsfm")).run()
    at.selectbox(key="sweep.preset.hsfm").set_value("waterbirds").run()
    at.text_input(key="sweep.values.hsfm.inner_lr").set_value("1e-3, 1e-2")
    at.text_input(key="sweep.values.hsfm.outer_lr").set_value("0.1, 1")
    at.text_input(key="sweep.seeds").set_value("0, 1")
    at.text_input(key="sweep.fixed").set_value("E=2 K_H=2 T=2 n=4 K_hard=8")
    at.button(key="sweep.launch").click().run()
    assert not at.exception, at.exception
    (sweep,) = sweeps.list_sweeps(workspace)
    assert sweep["configurations"] == 4 and sweep["seeds"] == [0, 1]

    def finished(a) -> bool:
        return any(m.value.startswith("**done**") for m in a.markdown)

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not finished(at):
        at.run()
        assert not at.exception, at.exception
        time.sleep(1)
    assert finished(at), [m.value for m in at.markdown][-3:]
    table = next(d.value for d in at.dataframe if "selected" in d.value.columns)
    assert len(table) == 4 and table["selected"].sum() == 1 and (table["seeds_done"] == 2).all()
    assert any(c.key and c.key.startswith("sweep.heatmap") for c in at.get("plotly_chart"))
    request = sweeps.load_request(workspace, sweep["sweep_id"])
    chosen = sweeps.select(sweeps.results(workspace, request))
    at.button(key=f"sweep.open.{sweep['sweep_id']}").click().run()
    assert not at.exception, at.exception
    assert at.session_state[ui.COMPARE_KEY] == [sweeps.run_id_of(request, chosen, s) for s in (0, 1)]
    assert at.radio(key="groups.view").value == "mean ± std over seeds"  # on Groups, over the two seeds
