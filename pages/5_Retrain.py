"""Retrain: launch any registered method as a background job (submitit: this machine or Slurm),
watch it train, cancel it, and compare a finished run with the previous one.

A view of the registries only: the methods, their presets and settings come from
`hsfm_core.methods`; the request is one `TrainSpec`; jobs and their progress come from
`hsfm_core.jobs`, which reads the runs."""

import dataclasses
import zlib

import pandas as pd
import streamlit as st

from hsfm_core import jobs, methods
from hsfm_core.errors import InputError
from hsfm_core.methods.base import parse_seeds
from hsfm_core.spec import TrainSpec
from hsfm_core.studio import ui
from hsfm_core.studio.sweep_view import sweep_section
from hsfm_core.studio.figures import training_curves

store, compared, focus = ui.page_header(
    "Retrain",
    "Runs train in background processes (submitit): the page never waits, a refresh or a restart of the "
    "app does not stop them, and a finished run appears in every page's run pickers at once.")
if ui.server_settings()["read_only"]:  # hidden from the menu; reached by its address, it still launches nothing
    st.error("This server is read-only (`hsfm app --read-only` or HSFM_READ_ONLY=1): nothing can be launched here. "
             "Train with `python -m hsfm_core train` or the Python API, or ask the teacher.")
    st.stop()
workspace = store.path
session = ui.session_id()
cap = ui.server_settings()["jobs_per_session"]
ui.start_job_warm_up()
WATCH_KEY = "retrain.watch"  # the job this session follows
CURVE_COLUMNS = ["epoch", "seed", "run_id", "outer_loss", "head_loss", "val_avg", "val_wga",  # what `training_curves` draws
                 "median_relative_edit"]

# -- the request --------------------------------------------------------------------------------------
by_name = {m.name: m for m in methods.all_methods()}
editors = [name for name, m in by_name.items() if m.edits_features]  # what this studio is about comes first
left, right = st.columns(2)
method = by_name[left.selectbox("Method", list(by_name), index=list(by_name).index((editors or list(by_name))[0]),
                                format_func=lambda n: f"{by_name[n].label}: {by_name[n].description}",
                                key="retrain.method")]
default_preset, default_why = method.default_preset(store)
presets = (list(method.presets) + (["auto"] if method.has_auto else [])) or ["default"]
preset = right.selectbox("Preset", presets, key=f"retrain.{method.name}.preset", disabled=len(presets) < 2,
                         index=presets.index(default_preset) if default_preset in presets else 0,
                         help="the settings below start from it")
with ui.errors_shown("Cannot derive the auto settings for this store"):
    if preset == "auto":
        base, why = ui.auto_settings(store, method.name)
    else:
        base, why = method.settings(preset if method.presets else None), "asked for"
st.caption(f"Preset **{preset}** — " + (f"the default for this store: {default_why}" if preset == default_preset
                                        else why) + (f". {why}" if preset == "auto" else "."))
alias_of = {field: alias for alias, field in method.aliases.items()}

with st.form("retrain.form"):
    st.markdown(f"**{method.label} settings** (the preset's values; change any)")
    values, columns = {}, st.columns(4)
    for i, field in enumerate(dataclasses.fields(method.Settings)):
        default, column = getattr(base, field.name), columns[i % 4]
        label = field.name + (f" · {alias_of[field.name]}" if field.name in alias_of else "")
        label += f": {field.metadata['help']}" if "help" in field.metadata else ""  # a field's own help, if it has one
        key = f"retrain.{method.name}.{preset}.{field.name}"
        if isinstance(default, bool):
            value = column.checkbox(label, default, key=key)
        elif isinstance(default, int):
            value = int(column.number_input(label, value=default, step=1, key=key))
        elif isinstance(default, float):
            value = column.number_input(label, value=default, format="%.3g", step=abs(default) / 2 or 0.1, key=key)
        else:  # text, or a list of numbers ("1, 0.3, 0.1"): parsed by the method when launched
            shown = ", ".join(map(str, default)) if isinstance(default, tuple) else str(default)
            value = column.text_input(label, shown, key=key)
        values[alias_of.get(field.name, field.name)] = value
    extra = st.text_input("More settings (key=value, space-separated)", key="retrain.extra",
                          help=f"{method.label}: {', '.join(method.field_types())}"
                          + (f" (aliases {', '.join(method.aliases)})" if method.aliases else ""))
    left, middle, right = st.columns(3)
    seeds_text = left.text_input("Seeds", "0", key="retrain.seeds", help="e.g. 0, 1, 2 or 0-4: one run per seed")
    # a method that never uses a device is offered neither a device nor a GPU (docs/ARCHITECTURE.md §Devices)
    no_device = f"{method.label} never uses a device: it computes on the CPU, and asks Slurm for no GPU"
    device = middle.radio("Device", ["auto", "cpu", "cuda"], horizontal=True, key="retrain.device",
                          disabled=not method.uses_device,
                          help="auto = CUDA when this machine (or the Slurm node) has it and the run is large enough "
                               "to gain from it (the run's config records which and why)" if method.uses_device
                          else no_device)
    if not method.uses_device:
        middle.caption(no_device + ".")
    where = right.radio("Run on", ["this machine", "a Slurm cluster"], horizontal=True, key="retrain.where")
    with st.expander("Slurm settings (used when running on a Slurm cluster)"):
        a, b, c, d = st.columns(4)
        partition = a.text_input("Partition", key="retrain.partition")
        time_min = b.number_input("Time limit (minutes)", 1, 7 * 24 * 60, 60, key="retrain.time")
        if method.uses_device:
            gpus = c.number_input("GPUs", 0, 16, 1, key="retrain.gpus",
                                  help="0: the job runs on the CPU (auto becomes cpu; cuda is refused)")
        else:
            gpus = c.number_input("GPUs", 0, 0, 0, key="retrain.gpus.none", disabled=True, help=no_device)
        mem_gb = d.number_input("Memory (GB, 0 = cluster default)", 0, 2048, 0, key="retrain.mem")
        sbatch = st.text_input("More sbatch options (key=value, space-separated; e.g. qos=high account=lab)",
                               key="retrain.sbatch")
    launched = st.form_submit_button("Launch run", type="primary")


def own(job: dict) -> bool:
    """Whether this browser session launched the job (its request carries the session's tag)."""
    return ((job.get("spec") or {}).get("tags") or {}).get("session") == session


def pairs(text: str, what: str) -> dict:
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InputError(f"{what} {item!r}: expected key=value")
        out[key] = value
    return out


if launched:
    try:
        typed = {k: method.coerce(method.field_name(k), v) if isinstance(v, str) else v for k, v in values.items()}
        overrides = method.overrides_from(preset if preset in method.presets else None, typed,
                                          base=base if preset == "auto" else None) + extra.split()
        slurm = None
        if where == "a Slurm cluster":
            slurm = {"partition": partition.strip(), "time_min": int(time_min), "gpus": int(gpus),
                     "mem_gb": float(mem_gb) or None, "extra": pairs(sbatch, "sbatch option")}
        spec = TrainSpec.create(method.name, preset=preset if preset in (*method.presets, "auto") else None,
                                overrides=overrides,
                                seeds=parse_seeds(seeds_text), device=device if method.uses_device else "auto",
                                executor="slurm" if slurm else "local", slurm=slurm, tags={"session": session})
        mine = [j for j in jobs.list_jobs(workspace) if j["status"] in jobs.ACTIVE and own(j)]
        if len(mine) >= cap:
            raise InputError(f"this session already has {len(mine)} job(s) queued or running, and this server allows "
                             f"{cap} per session; wait for one to end or cancel one")
        job = jobs.launch(workspace, spec)
    except InputError as exc:
        st.error(f"The run was not launched: {exc}")
    else:
        st.session_state[WATCH_KEY] = job["job_id"]  # follow the new job, in a new "Follow job" widget (below)
        st.session_state["retrain.launches"] = st.session_state.get("retrain.launches", 0) + 1
        st.success(f"Launched job `{job['job_id']}` → run(s) {', '.join(job['run_ids'])}"
                   + (f" with {' '.join(overrides)}" if overrides else "")
                   + (f". Device: {spec.device_note}" if spec.device_note else ""))


def save_job_limit() -> None:
    jobs.set_max_parallel(workspace, st.session_state["retrain.limit"])
    st.toast(f"Up to {st.session_state['retrain.limit']} jobs at once, from the next launch on.")


with st.expander("Jobs on this machine"), ui.errors_shown("Cannot read the job settings", stop=False):
    current_limit = jobs.job_limit(workspace)
    st.session_state["retrain.limit"] = current_limit  # the file is the truth: another session may change it
    st.number_input("How many jobs train at once (the rest wait, queued)", 1, max(16, current_limit),
                    key="retrain.limit", on_change=save_job_limit)

# -- sweeps: a grid of settings × seeds, one job per configuration, selected on validation ----------------
sweep_section(workspace, store)

# -- the jobs -------------------------------------------------------------------------------------------
unreadable_jobs: list = []
all_jobs = jobs.list_jobs(workspace, unreadable_jobs)
for bad in unreadable_jobs:  # named, not hidden
    st.warning(f"Job {bad['job_id']} cannot be read: {bad['error']}")
active = any(j["status"] in jobs.ACTIVE for j in all_jobs)
if not all_jobs:
    st.info("No jobs yet: launch one above.")
    st.stop()


def method_label(name: str) -> str:
    return by_name[name].label if name in by_name else name


def job_label(job: dict) -> str:
    """The same text for the job's whole life (its status is in the table and the Status metric): the browser
    sends a selectbox's choice back as this text, and a text that has changed since (queued → running) matches
    no option."""
    spec = job["spec"]
    return (f"{job['job_id']} · {method_label(spec['method'])} · seeds {','.join(map(str, spec['seeds']))}"
            + (" · yours" if own(job) else ""))


def previous_run(run_id: str, method_name: str) -> str | None:
    """The newest finished run of the same method before `run_id` (else the newest baseline run: the
    registry's first method)."""
    runs, _ = ui.finished_runs(store)
    earlier = [r["run_id"] for r in runs if r["method"] == method_name and r["run_id"] < run_id]
    baseline = methods.all_methods()[0].name
    fallback = [r["run_id"] for r in runs if r["method"] == baseline and r["run_id"] != run_id]
    return (earlier or fallback or [None])[-1]


def compare_with_previous(run_id: str, previous: str) -> None:
    st.session_state[ui.COMPARE_KEY] = [previous, run_id]


@st.fragment(run_every=1.0 if active else None)
def watch() -> None:
    """Polls the job and run files once a second while a job is queued or running (no busy loop)."""
    with ui.errors_shown("Cannot show the jobs", stop=False):
        show_jobs()


def show_jobs() -> None:
    current = jobs.list_jobs(workspace)
    now_active = {j["job_id"] for j in current if j["status"] in jobs.ACTIVE}
    ended = st.session_state.get("retrain.active", set()) - now_active
    st.session_state["retrain.active"] = now_active
    if ended:
        st.rerun(scope="app")  # a job has ended: refresh the run pickers (and stop polling if none is left)
    ids = [j["job_id"] for j in current]
    by_id = {j["job_id"]: j for j in current}
    table = pd.DataFrame([{"yours": "✓" if own(j) else "", "job": j["job_id"],
                           "method": method_label(j["spec"]["method"]), "status": j["status"],
                           "where": j["executor"], "seeds": ", ".join(map(str, j["spec"]["seeds"])),
                           "settings": " ".join(j["spec"]["overrides"]) or "preset", "runs": ", ".join(j["run_ids"]),
                           "created": j["created_at"]} for j in reversed(current)])
    st.dataframe(table, hide_index=True, width="stretch")
    # The choice comes from WATCH_KEY, the session's own record, as the widget's `index`, never by setting the
    # widget's state: a browser that redraws the widget without its state (a full rerun after a job ends, under
    # load) falls back to the index it was sent, and took the first option, the newest job, when that index was
    # 0 (bench_classroom, N = 25). A widget per launch and per list of jobs: the browser may send a widget's value
    # from before the launch, or keep its choice by position when another session's job is put first.
    watched = st.session_state.get(WATCH_KEY)
    if watched not in by_id:  # the newest of this session's own jobs, else the newest job
        watched = ([j["job_id"] for j in current if own(j)] or ids)[-1]
    options = list(reversed(ids))
    widget = f"retrain.watch_widget.{st.session_state.get('retrain.launches', 0)}.{zlib.crc32(' '.join(ids).encode())}"
    chosen = st.selectbox("Follow job", options, index=options.index(watched),
                          format_func=lambda i: job_label(by_id[i]), key=widget)
    st.session_state[WATCH_KEY] = chosen
    job = jobs.get_job(workspace, chosen)  # fresh: the table above may be a moment older
    if job["status"] not in jobs.ACTIVE and chosen in now_active:  # it ended since the table's read: the
        st.session_state["retrain.active"] = now_active - {chosen}  # sidebar's pickers were drawn without its runs
        st.rerun(scope="app")
    progress = jobs.job_progress(workspace, chosen)
    status = job["status"]  # status, error and traceback from one read

    epochs, epoch = progress["epochs"], progress["epoch"]
    if epochs:
        st.progress(min(epoch / epochs, 1.0), text=f"epoch {epoch} of {epochs}")
    cols = st.columns(4)
    cols[0].metric("Status", status)
    cols[1].metric("Elapsed", f"{progress['elapsed_s']:.0f} s" if progress["elapsed_s"] is not None else "—",
                   help="since the launch")
    cols[2].metric("Time left (estimate)", f"{progress['eta_s']:.0f} s" if progress["eta_s"] is not None else "—",
                   help="the epochs still to train at the pace so far, bounded by the job's time limit")
    if progress["ends_at_time_limit"]:
        st.warning(f"The time limit comes first: {progress['time_left_s']:.0f} s left, not enough for the remaining "
                   "epochs. The job will end `failed` (time limit) with its partial history.")
    if job.get("pending"):  # Slurm's reason for not starting it yet
        never = job["pending"]["never_starts"]
        (st.error if never else st.info)(f"Slurm has not started it: {job['pending']['reason']}"
                                         + (f" — {never}; it will never start. Cancel it and submit with less." if never else ""))
    history = pd.DataFrame(progress["history"]).reindex(columns=CURVE_COLUMNS)  # the runs' history.jsonl
    latest = history[history["epoch"] == history["epoch"].max()]["val_wga"].dropna()
    cols[3].metric("Val worst-group accuracy", f"{latest.mean():.1%}" if len(latest) else "—")
    if len(history):
        st.plotly_chart(training_curves(history), width="stretch", key="retrain.curves")
    if status in jobs.ACTIVE:
        if st.button("Cancel this job", key="retrain.cancel"):
            jobs.cancel(workspace, chosen)
            st.toast(f"Cancelling {chosen}…")
    elif status == "failed":
        st.error(f"The job failed: {job.get('error') or 'see the log'}")
        if job.get("traceback"):
            with st.expander("Traceback"):
                st.code(job["traceback"])
    elif status == "cancelled":
        st.warning("The job was cancelled; its runs keep their partial history (status cancelled).")
    else:
        st.success(f"Done: {', '.join(progress['run_ids'])}. The run(s) are in every page's pickers now.")
        run_id = progress["run_ids"][0]
        previous = previous_run(run_id, job["spec"]["method"])
        if previous:
            if st.button(f"Compare with the previous run ({previous})", key="retrain.compare",
                         on_click=compare_with_previous, args=(run_id, previous)):
                st.switch_page("pages/1_Groups.py")
    with st.expander("Log (last 40 lines)"):
        tail = jobs.log_tail(workspace, chosen, 40)
        st.code((tail["stdout"] + ("\n--- stderr ---\n" + tail["stderr"] if tail["stderr"].strip() else "")) or "(empty)")


watch()
