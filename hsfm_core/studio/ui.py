"""Streamlit glue shared by the app's pages: which workspace is open, which runs are picked,
cached heavy objects, thumbnail grids and in-page errors (docs/ARCHITECTURE.md §App).

Pages are views: they call these helpers and the rest of `hsfm_core`, and hold no numerics.
State shared between pages lives in `st.session_state` under the `*_KEY` names below; widget
values are copied into them, because Streamlit forgets a widget's state on pages that do not
draw that widget.

Heavy objects live in `st.cache_resource`, keyed by what they depend on: a store by its path and
content hash (`STORE_HASH`, Streamlit's `hash_funcs`), a done run by its id (done runs never change).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import streamlit as st

from hsfm_core.errors import InputError
from hsfm_core.render.background import STRIP_STEPS  # the strip the views draw: z + t·Δ at fixed t, rendered at once
from hsfm_core.studio.sessions import reap_expired_sessions

WORKSPACE_KEY = "hsfm.workspace"  # Path of the open workspace
COMPARE_KEY = "hsfm.compare_runs"  # run ids compared on Groups (and Home)
FOCUS_KEY = "hsfm.focus_run"  # the run whose edits Projection / Decode / Neighbors show
SELECTION_KEY = "hsfm.map_selection"  # {"map", "store" (content hash), "run_id", "positions" (map frame),
#                                          "rows" (store rows), "support" (support indices)}

THUMB_PX = 96

# A store is identified by where it is and what it holds; its memory-mapped arrays are never hashed.
STORE_HASH = {"hsfm_core.features.store.FeatureStore": lambda store: (str(store.path), store.content_hash)}


def page_setup(title: str | None = None) -> None:
    st.set_page_config(page_title=f"{title} · HSFM Studio" if title else "HSFM Studio", layout="wide")
    reap_expired_sessions()  # a class's closed sessions leave memory when they expire (studio/sessions.py)


def current_selection(store) -> dict | None:
    """The Projection selection, if it was made on this store (a replaced store's row numbers
    mean other images)."""
    selection = st.session_state.get(SELECTION_KEY)
    return selection if selection and selection.get("store") == store.content_hash else None


def page_header(title: str, caption: str | None = None):
    """Every analysis page's start: page config, title, caption, the open store and the sidebar's
    run pickers. → (store, compared runs, focus run or None)."""
    page_setup(title)
    st.title(title)
    if caption:
        st.caption(caption)
    store = open_store()
    compared, focus = run_pickers(store)
    return store, compared, focus


@contextmanager
def errors_shown(what: str, stop: bool = True):
    """Turn a failure inside the block into a message in the page (never a traceback); the rest of
    the app keeps working. Streamlit's own control flow (st.stop, reruns) is a BaseException and
    passes through."""
    try:
        yield
    except InputError as exc:
        st.error(f"{what}: {exc}")
        if stop:
            st.stop()
    except Exception as exc:  # a corrupt file, a library error: still a message, with its type
        st.error(f"{what}: {type(exc).__name__}: {exc}")
        if stop:
            st.stop()


# -- the workspace ---------------------------------------------------------------------------------

def default_workspace() -> Path | None:
    """`--workspace` / HSFM_WORKSPACE, else None (the bundled demo)."""
    from hsfm_core.workspace import workspace_from_args

    return workspace_from_args(sys.argv[1:])


def ensure_demo() -> Path:
    """The demo workspace, built on first launch with a progress bar (about 4–5 minutes on 2 CPU cores)."""
    from hsfm_core.demo.build import DEMO_CLIP, build_demo, default_demo_dir, is_built

    if not DEMO_CLIP.is_dir():
        st.info("No workspace given, and this checkout has no bundled demo CLIP yet (`assets/synthbirds-clip`). "
                "Start with `streamlit run app.py -- --workspace DIR` or set `HSFM_WORKSPACE`, after "
                "`python -m hsfm_core extract …` or `python -m hsfm_core import …`.")
        st.stop()
    path = default_demo_dir()
    if not is_built(path):
        with st.status("Building the demo workspace — first launch only, a few minutes…", expanded=True) as status:
            bar = st.progress(0.0)
            try:
                build_demo(path, progress=lambda message, fraction: bar.progress(min(fraction, 1.0), text=message))
            except InputError as exc:
                status.update(label="The demo workspace could not be built", state="error")
                st.error(str(exc))
                st.stop()
            status.update(label="Demo workspace ready", state="complete", expanded=False)
    return path


def workspace_path() -> Path:
    """The workspace this session has open: the one picked on Home, else the one the app was
    started with, else the demo."""
    chosen = st.session_state.get(WORKSPACE_KEY)
    if chosen is None:
        chosen = default_workspace() or ensure_demo()
        st.session_state[WORKSPACE_KEY] = chosen
    return Path(chosen)


def is_demo(path: Path) -> bool:
    """Whether the workspace is a demo build of this version, wherever it was built (`hsfm demo build
    --out /srv/class`): recognised by its own record, `demo.json`, not by its path."""
    from hsfm_core.demo.build import is_built

    return is_built(path)


# -- the server's settings (a teacher's: docs/ARCHITECTURE.md §App, README "Teaching with the Studio") ------

READ_ONLY_ENV = "HSFM_READ_ONLY"
JOBS_PER_SESSION_ENV = "HSFM_JOBS_PER_SESSION"
DEFAULT_JOBS_PER_SESSION = 3


@st.cache_resource
def server_settings() -> dict:
    """{"read_only", "jobs_per_session"} for this server: `-- --read-only --jobs-per-session N` after
    `streamlit run app.py` (what `hsfm app --read-only` passes), else $HSFM_READ_ONLY and
    $HSFM_JOBS_PER_SESSION. Read once per server: every session gets the same rules."""
    import argparse
    import os

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--jobs-per-session", type=int)
    args, _ = parser.parse_known_args(sys.argv[1:])
    read_only = args.read_only or os.environ.get(READ_ONLY_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    cap = args.jobs_per_session
    if cap is None:
        text = os.environ.get(JOBS_PER_SESSION_ENV, "").strip()
        cap = int(text) if text.isdigit() else DEFAULT_JOBS_PER_SESSION
    return {"read_only": read_only, "jobs_per_session": max(1, cap)}


SESSION_KEY = "hsfm.session"


def session_id() -> str:
    """A random id of this browser session, kept in its session state: launches are tagged with it, so
    each session sees its own jobs marked, and the per-session job cap counts them."""
    import uuid

    return st.session_state.setdefault(SESSION_KEY, uuid.uuid4().hex)


@st.cache_resource(show_spinner="Opening the feature store…", max_entries=4)
def _open_store(path: str, manifest_stamp: int):
    from hsfm_core.features import FeatureStore

    return FeatureStore.open(path)  # manifest_stamp: a replaced store is opened afresh


def open_store():
    """The open workspace's feature store (memory-mapped, shared by every session)."""
    path = workspace_path()
    with errors_shown(f"Cannot open the workspace {path}"):
        manifest = path / "manifest.json"
        return _open_store(str(path), manifest.stat().st_mtime_ns if manifest.exists() else 0)


# -- runs --------------------------------------------------------------------------------------------

def finished_runs(store) -> tuple[list[dict], dict[str, list]]:
    """Done runs trained on this store, read fresh from disk (a run finished by a job shows up at
    once), and the runs left out: {"foreign": ids trained on another store, "unreadable":
    (id, reason) for runs whose files cannot be read}."""
    from hsfm_core.runs import list_runs

    unreadable: list = []
    runs, foreign = [], []
    for run in list_runs(store.path, unreadable=unreadable):
        if run["status"] != "done" or not run["metrics"]:
            continue
        recorded = run["config"].get("store_hash")
        (foreign if recorded and recorded != store.content_hash else runs).append(run)
    return runs, {"foreign": [r["run_id"] for r in foreign], "unreadable": unreadable}


def latest_per_method(runs: list[dict]) -> dict[str, dict]:
    """The newest run of each method, in the registry's order (baselines first)."""
    from hsfm_core import methods

    latest = {}
    for run in runs:  # ids sort by method then UTC start time
        latest[run["method"]] = run
    return {m: latest[m] for m in sorted(latest, key=lambda m: (methods.order_of(m), str(m)))}


def default_compared(runs: list[dict]) -> list[str]:
    """Every seed of the newest run group of each method (registry order): comparisons are over seeds."""
    from hsfm_core.analysis.seeds import group_key

    latest = latest_per_method(runs)
    keys = {group_key(run) for run in latest.values()}
    ordered = [run["method"] for run in latest.values()]
    chosen = [r for r in runs if group_key(r) in keys]
    return [r["run_id"] for r in sorted(chosen, key=lambda r: ordered.index(r["method"]))]


def editor_labels() -> str:
    """'HSFM' (or 'HSFM / …'): the registered methods whose runs carry edited features."""
    from hsfm_core import methods

    return " / ".join(m.label for m in methods.all_methods() if m.edits_features) or "feature-editing"


def _persisted(widget_key: str, state_key: str) -> None:
    st.session_state[state_key] = st.session_state[widget_key]


def run_pickers(store) -> tuple[list[dict], dict | None]:
    """Sidebar pickers shared by every page: the runs to compare and the edited run to inspect.
    → (compared runs, focus run or None)."""
    from hsfm_core.analysis.compare import run_label

    runs, hidden = finished_runs(store)
    by_id = {r["run_id"]: r for r in runs}
    labels = {r["run_id"]: run_label(r) for r in runs}
    sidebar = st.sidebar
    sidebar.caption(f"Workspace `{store.path}`")
    if hidden["foreign"]:
        sidebar.caption(f"{len(hidden['foreign'])} run(s) trained on another store are hidden: "
                        f"{', '.join(hidden['foreign'])}")
    for run_id, reason in hidden["unreadable"]:
        sidebar.warning(f"Run {run_id} cannot be read and is hidden ({reason}).")
    if not runs:
        sidebar.info("No finished runs yet: train one on the Retrain page or with `python -m hsfm_core train`.")
        return [], None

    default = default_compared(runs)
    compared = [i for i in st.session_state.get(COMPARE_KEY, default) if i in by_id]
    st.session_state["w.compare"] = compared
    sidebar.multiselect("Runs to compare", list(by_id), key="w.compare", format_func=labels.get,
                        on_change=_persisted, args=("w.compare", COMPARE_KEY),
                        help="Shown side by side on Groups; every seed of each method's newest settings is picked by "
                             "default, and runs that differ only in their seed are shown as mean ± std.")
    st.session_state[COMPARE_KEY] = st.session_state["w.compare"]

    edited = [r["run_id"] for r in runs if (r["path"] / "support.safetensors").is_file()]
    focus = None
    if edited:
        current = st.session_state.get(FOCUS_KEY)
        st.session_state["w.focus"] = current if current in edited else edited[-1]
        sidebar.selectbox("Edited run to inspect", edited, key="w.focus", format_func=labels.get,
                          on_change=_persisted, args=("w.focus", FOCUS_KEY),
                          help=f"The {editor_labels()} run whose support set (original and edited features) "
                               "Projection, Decode and Neighbors show.")
        st.session_state[FOCUS_KEY] = st.session_state["w.focus"]
        focus = by_id[st.session_state[FOCUS_KEY]]
    return [by_id[i] for i in st.session_state[COMPARE_KEY]], focus


@st.cache_resource(max_entries=8)
def _support(run_dir: str):
    from hsfm_core.runs import load_support as read_support

    path = Path(run_dir)  # through the reading layer: truncated, incomplete or misshapen files are InputError
    return read_support({"path": path, "run_id": path.name, "method": None})


def load_support(run: dict) -> dict:
    """A done run's support tensors (immutable once done, so cached by path); InputError when the
    file cannot be read."""
    return _support(str(run["path"]))


# -- heavy shared objects ------------------------------------------------------------------------------

def workspace_of(store):
    """The facade's `Workspace` over the cached store (docs/ARCHITECTURE.md §Instruments): pages call the
    instruments through the caches below, never the analysis modules."""
    from hsfm_core.workspace import Workspace

    return Workspace(Path(store.path), store)


@st.cache_data(max_entries=16, show_spinner="Measuring how far the edits moved…", hash_funcs=STORE_HASH)
def _edit_diagnostics(store, run_id: str, _run) -> dict:
    from hsfm_core.instruments.retrieval import edit_diagnostics as diagnose

    return diagnose(workspace_of(store), _run)


def edit_diagnostics(store, run: dict) -> dict:
    """The facade's `edit_diagnostics` of a run's edits, cached per (store, run)."""
    return _edit_diagnostics(store, run["run_id"], run)


def edit_summary(diagnostics: dict) -> str:
    """One line: the median edit, relative to a feature, and how many edited points left the data."""
    return (f"Median edit ‖Δ‖ = {diagnostics['median_edit_norm']:.3g} ({diagnostics['median_relative_edit_norm']:.0%} "
            f"of its feature's norm); median distance to the nearest real feature {diagnostics['median_off_data_ratio']:.2f}× "
            f"the store's typical nearest-neighbour distance; {diagnostics['off_data_share']:.0%} of the edited points "
            f"are off the data (beyond {diagnostics['off_data_threshold']:.2f}×, where 99% of real features stay).")


def warn_if_off_data(store, run: dict) -> None:
    """The visible warning Decode and Neighbors show when the median edited feature has left the data."""
    with errors_shown("Cannot measure the edits", stop=False):
        diagnostics = edit_diagnostics(store, run)
        text = diagnostics["warning"]
        if text:
            st.warning(f"**The edits are off the data.** {text} Try a run tuned on validation (Retrain → Sweep).",
                       icon=":material/warning:")
        else:
            st.caption(edit_summary(diagnostics))


@st.cache_data(max_entries=8, show_spinner="Deriving settings from the store's scale…", hash_funcs=STORE_HASH)
def auto_settings(store, method_name: str):
    """(settings, why) of a method's `auto` preset for this store, cached per store."""
    from hsfm_core import methods

    return methods.get(method_name).auto_settings(store)


def _bridge_stamp(bridge: str | None) -> int:
    """A bridge store replaced at the same path is read afresh."""
    manifest = Path(bridge) / "manifest.json" if bridge else None
    return manifest.stat().st_mtime_ns if manifest is not None and manifest.exists() else 0


@st.cache_resource(show_spinner="Encoding the concepts with the CLIP text tower…", max_entries=8,
                   hash_funcs=STORE_HASH)
def _concept_bank(store, words: tuple, bridge: str | None, bridge_stamp: int):
    from hsfm_core.instruments.decode import concept_bank as build

    return build(workspace_of(store), words=words, bridge=bridge)


def concept_bank(store, words: tuple[tuple, tuple], bridge: str | None = None):
    """The facade's (ConceptBank, map into CLIP space, text encoder) for the store; InputError when it
    cannot decode (a page checks this before it offers anything to decode)."""
    return _concept_bank(store, tuple(map(tuple, words)), bridge, _bridge_stamp(bridge))


@st.cache_data(max_entries=64, show_spinner="Reading the edits in CLIP words…", hash_funcs=STORE_HASH)
def _decode(store, run_id: str, words: tuple, top: int, contrast: tuple, bridge: str | None, bridge_stamp: int,
            support: tuple | None, _run) -> dict:
    from hsfm_core.instruments.decode import decode as decode_run

    return decode_run(workspace_of(store), _run, words=words, top=top, contrast=contrast, bridge=bridge,
                      support=list(support) if support is not None else None, diagnostics=False)


def decode(store, run: dict, words: tuple[tuple, tuple], top: int, contrast: tuple[str, str],
           bridge: str | None = None, support: list[int] | None = None) -> dict:
    """The facade's `decode` (what `hsfm decode --json` prints, less the edit diagnostics, which pages
    show through `warn_if_off_data`), cached per (store, run, vocabulary, top, contrast, bridge, selection)."""
    return _decode(store, run["run_id"], tuple(map(tuple, words)), top, tuple(contrast), bridge,
                   _bridge_stamp(bridge), tuple(support) if support is not None else None, run)


@st.cache_data(max_entries=32, show_spinner="Reading the selection in CLIP words…", hash_funcs=STORE_HASH)
def _describe_selection(store, rows: tuple, words: tuple, top: int, bridge: str | None, bridge_stamp: int) -> dict:
    from hsfm_core.instruments.decode import describe_selection as describe

    return describe(workspace_of(store), list(rows), words=words, top=top, bridge=bridge)


def describe_selection(store, rows, words: tuple[tuple, tuple], top: int, bridge: str | None = None) -> dict:
    """The facade's `describe_selection` of store rows, cached per (store, rows, vocabulary, top, bridge)."""
    return _describe_selection(store, tuple(int(r) for r in rows), tuple(map(tuple, words)), top, bridge,
                               _bridge_stamp(bridge))


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs=STORE_HASH)
def _neighbors(store, run_id: str | None, support: int | None, row: int | None, edited: bool, k: int, _run) -> dict:
    from hsfm_core.instruments.retrieval import neighbors as search

    return search(workspace_of(store), _run, support, row=row, edited=edited, k=k, exclude_query=True)


def neighbors(store, run: dict | None, *, support: int | None = None, row: int | None = None, edited: bool = False,
              k: int = 16) -> dict:
    """The facade's `neighbors` (the query's own row left out), cached per (store, run, query, k)."""
    return _neighbors(store, run["run_id"] if run else None, support, row, edited, k, run)


@st.cache_data(max_entries=16, show_spinner="Testing the edits of every seed against the null…", hash_funcs=STORE_HASH)
def _semantics(store, run_ids: tuple, words: tuple | None, contrast: tuple, null_draws: int, scoring: str,
               bridge: str | None, bridge_stamp: int, _runs) -> dict:
    from hsfm_core.instruments.semantics import edit_semantics

    return edit_semantics(workspace_of(store), list(_runs), words=words, contrast=contrast, null_draws=null_draws,
                          scoring=scoring, bridge=bridge)


def semantics(store, runs: list[dict], contrast: tuple[str, str], null_draws: int = 1000, scoring: str = "centred",
              bridge: str | None = None, words: tuple[tuple, tuple] | None = None) -> dict:
    """The facade's `edit_semantics` of a run group (what `hsfm semantics --json` prints), cached per
    (store, runs, vocabulary, contrast, null draws, scoring, bridge): done runs never change."""
    return _semantics(store, tuple(r["run_id"] for r in runs), tuple(map(tuple, words)) if words else None,
                      tuple(contrast), null_draws, scoring, bridge, _bridge_stamp(bridge), runs)


def edited_groups(store) -> list:
    """The run groups with finished edited runs, oldest configuration first (the facade's)."""
    from hsfm_core.instruments.semantics import edited_groups as groups

    return groups(workspace_of(store))


@st.cache_data(max_entries=8, show_spinner=False, hash_funcs=STORE_HASH, ttl=60)
def renderer_missing(store) -> str | None:
    """None when the store has an inverter renderer (its own or a bundled one that fits its backbone),
    else what to do — pages say it as information, not as an error. Re-checked every minute (one may
    be trained meanwhile)."""
    from hsfm_core.render.inverter import find_inverter

    if find_inverter(store) is not None:
        return None
    return (f"No renderer inverts this store's backbone yet: `python -m hsfm_core train-renderer --workspace "
            f"{store.path}` trains one on its images (the demo's is bundled).")




@st.cache_data(max_entries=64, show_spinner="Rendering the features…", hash_funcs=STORE_HASH)
def _render_strip(store, run_id: str, support: tuple, steps: tuple, _run) -> np.ndarray:
    from hsfm_core.instruments.render import strip

    return strip(workspace_of(store), _run, list(support), list(steps))


def render_strip(store, run: dict, support: list[int], steps=STRIP_STEPS) -> np.ndarray:
    """The facade's rendering of z + t·Δ for support examples (the store's inverter), cached per
    (store, run, examples, steps): uint8 examples × steps × H × W × 3."""
    return _render_strip(store, run["run_id"], tuple(int(i) for i in support), tuple(float(t) for t in steps), run)


@st.cache_data(max_entries=16, show_spinner="Rendering each class's mean before and after its mean edit…",
               hash_funcs=STORE_HASH)
def _render_class_means(store, run_id: str, _run):
    from hsfm_core.instruments.render import class_means

    return class_means(workspace_of(store), _run)


def render_class_means(store, run: dict):
    """(classes, uint8 classes × 2 × H × W × 3): each class's mean support feature before / after."""
    return _render_class_means(store, run["run_id"], run)


@st.cache_data(max_entries=16, show_spinner="Re-encoding the renderings to measure the attribute flip…",
               hash_funcs=STORE_HASH)
def _flip_rate(store, run_id: str, _run) -> dict:
    from hsfm_core.instruments.render import flip_rate as measure

    return measure(workspace_of(store), _run)


def flip_rate(store, run: dict) -> dict:
    """The facade's flip rate of a run's edits (rendered, re-encoded, attribute classified) with its null."""
    return _flip_rate(store, run["run_id"], run)


def flip_rates_ready(store, runs: list[dict]) -> bool:
    """Whether every run's flip rate is in the workspace's render cache on disk (a file read per run; nothing
    is rendered), so that `flip_rates_over_seeds` takes no longer than a page should wait."""
    from hsfm_core.instruments.render import flip_rate_cached

    ws = workspace_of(store)
    return all(flip_rate_cached(ws, run) is not None for run in runs)


def rendered_in_background(store, runs: list[dict]) -> bool:
    """When the runs' flip rates are not on disk: start the worker process that computes their render views
    (unless it runs now) and show its placeholder, which fills the view in once they are; → True. False
    when the worker failed or cannot be started (e.g. a read-only workspace): the caller computes in the
    foreground, as it would without a worker (docs/ARCHITECTURE.md §Render, §App)."""
    from hsfm_core.instruments.render import render_in_background

    ws = workspace_of(store)
    status = render_in_background(ws, runs, start=False)
    if status.state == "failed":
        return False
    if status.state != "running":
        status = render_in_background(ws, runs)
        if status.state == "failed":
            return False
    _render_progress(store, runs)
    return True


@st.fragment(run_every=1.0)
def _render_progress(store, runs: list[dict]) -> None:
    """The placeholder of a render view computed in the background, polled each second; the page reruns
    (and draws the view) once the flip rates are on disk, or computes them itself if the worker failed.
    A fragment's rerun runs this function alone, outside its caller's `errors_shown`: it has its own."""
    with errors_shown("Cannot follow the rendering", stop=False):
        _poll_rendering(store, runs)


def _poll_rendering(store, runs: list[dict]) -> None:
    from hsfm_core.instruments.render import render_in_background

    status = render_in_background(workspace_of(store), runs, start=False)
    if status.state != "running" or flip_rates_ready(store, runs):
        st.rerun()  # ready, failed, or stopped: the page decides again
    seeds = f"{len(runs)} seeds" if len(runs) > 1 else "one run"
    st.progress(status.fraction, text=f"Rendering the edits of {seeds} and reading the pictures back, in the "
                                      f"background: {status.stage} — {status.elapsed_s:.0f} s of about "
                                      f"{status.estimate_s:.0f} s (the first visit only). The rest of the page "
                                      "works meanwhile.")


def flip_rates_over_seeds(store, runs: list[dict]) -> dict:
    """The flip rate of every run of a run group (the facade's, cached per run) and per class its mean ± std
    over the seeds beside the null's (`render.flip.summarize`): {"per_run": [one flip_rate per run],
    "per_class": [{class, name, n, majority, minority, rate_mean, rate_std, null_mean, null_std, rates,
    null_rates, seeds_above_null}]}, where `seeds_above_null` counts the seeds whose rate exceeds their null
    rate and `n` is the class's support examples per run (docs/ARCHITECTURE.md §Render)."""
    from hsfm_core.render.flip import summarize

    per_run = [flip_rate(store, run) for run in runs]
    first = {}
    for result in per_run:
        for entry in result["per_class"]:
            first.setdefault(entry["class"], entry)
    per_class = [{**entry, "n": first[entry["class"]]["n"], "majority": first[entry["class"]]["majority"],
                  "minority": first[entry["class"]]["minority"],
                  "seeds_above_null": int(sum(r > n for r, n in zip(entry["rates"], entry["null_rates"])))}
                 for entry in summarize(per_run)["per_class"]]
    return {"per_run": per_run, "per_class": per_class}


def lesson_rendered_example(store, runs: list[dict], flips: dict, worst_group: int | None) -> dict | None:
    """Which support example the Lesson renders, by a rule stated on the page, never by hand:
    the class is the one of the usual model's worst test group (`worst_group`; the class the lesson has shown
    failing), else — without that run, or when the class has no support examples — the class whose mean flip
    rate exceeds its null's by most (ties: the lower class). The example is that class's first support example
    whose rendering flips under its edit, over the runs in seed order, then in support order; when none flips,
    the class's first support example in the first run.
    → {"class", "by": "worst group" | "flip rate", "run", "seed", "support", "row", "before", "after", "flipped"}
    or None when no run has support examples."""
    present = {e["class"] for result in flips["per_run"] for e in result["per_example"]}
    if not present:
        return None
    by = "worst group"
    chosen = store.groups.class_of(worst_group) if worst_group is not None else None
    if chosen not in present:
        by = "flip rate"
        chosen = max((e for e in flips["per_class"] if e["class"] in present),
                     key=lambda e: (e["rate_mean"] - e["null_mean"], -e["class"]))["class"]
    candidates = [(run, example) for run, result in zip(runs, flips["per_run"])
                  for example in result["per_example"] if example["class"] == chosen]
    run, example = next((c for c in candidates if c[1]["flipped"]), candidates[0])
    return {"class": int(chosen), "by": by, "run": run, "seed": run.get("config", {}).get("seed"), **example}


def picture(image: np.ndarray, size: int = THUMB_PX) -> bytes:
    """A rendered uint8 image as a PNG, enlarged without blurring (the inverter renders 64 px)."""
    import io

    from PIL import Image

    picture = Image.fromarray(image)
    if max(picture.size) < size:
        scale = size / max(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@st.cache_data(max_entries=16, show_spinner="Searching neighbours of every support example…", hash_funcs=STORE_HASH)
def _edit_shift(store, run_id: str, k: int, _run) -> dict:
    from hsfm_core.instruments.retrieval import edit_shift as shift

    return shift(workspace_of(store), _run, k=k)


def edit_shift(store, run: dict, k: int = 16) -> dict:
    """The facade's `edit_shift` of a run, cached per (store, run, k)."""
    return _edit_shift(store, run["run_id"], k, run)


@st.cache_resource(max_entries=8, show_spinner=False, hash_funcs=STORE_HASH)
def _map_frame(store, run_id: str | None, n_neighbors: int, min_dist: float, _run):
    from hsfm_core.instruments.projection import project

    return project(workspace_of(store), _run, n_neighbors=n_neighbors, min_dist=min_dist)


def map_frame(store, run: dict | None, n_neighbors: int, min_dist: float):
    """The UMAP map (read-only DataFrame shared by sessions): computed once, then from disk."""
    return _map_frame(store, run["run_id"] if run else None, n_neighbors, min_dist, run)


@st.cache_resource
def _warm_up_in_background(name: str, _work) -> None:
    """Run `_work` once per server process in a daemon thread (first-use costs off the request path)."""
    import threading

    threading.Thread(target=_work, name=f"warm-up-{name}", daemon=True).start()


def start_job_warm_up() -> None:
    """Import what `jobs.launch` checks a request with (the trainer, sklearn, submitit) and ask
    torch about CUDA once, in the background, so that the first Launch run is as quick as later ones."""
    def work() -> None:
        import submitit  # noqa: F401
        import torch

        import hsfm_core.train  # noqa: F401

        torch.cuda.is_available()

    _warm_up_in_background("jobs", work)


# -- pictures --------------------------------------------------------------------------------------------

@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(path: str, size: int = THUMB_PX) -> bytes | None:
    """A PNG thumbnail (longest side `size`), or None when the image cannot be read."""
    import io

    from PIL import Image

    from hsfm_core.safe_io import open_image

    try:
        image = open_image(path)  # bombs and broken files: None, shown blank
    except InputError:
        return None
    image.thumbnail((size, size))
    if max(image.size) < size:  # small images (the 64-px demo) are shown enlarged, not blurred
        scale = size / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_grid(store, rows, captions: list[str], key: str, page_size: int = 32, size: int = THUMB_PX) -> None:
    """Thumbnails of store rows with captions, paged; they wrap to the width of the container."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        st.caption("No images to show.")
        return
    if store.image_root is None:
        st.caption("This store was imported without images; showing row numbers only.")
        st.write(", ".join(f"{r} ({c})" for r, c in zip(rows[:200], captions[:200])))
        return
    pages = (len(rows) + page_size - 1) // page_size
    page = 1
    if pages > 1:
        page = st.number_input(f"Page (of {pages}, {page_size} images each)", 1, pages, 1, key=f"{key}.page")
    start = (page - 1) * page_size
    shown_rows, shown_captions = rows[start:start + page_size], captions[start:start + page_size]
    pictures = [thumbnail(str(path), size) if (path := _image_inside_root(store, int(row))) else None
                for row in shown_rows]
    missing = [str(row) for row, data in zip(shown_rows, pictures) if data is None]
    if missing:
        st.caption(f"{len(missing)} image(s) could not be read (rows {', '.join(missing[:10])}); shown blank.")
    # one image element for the whole page of thumbnails: far cheaper than one element per picture
    st.image([data if data is not None else _blank(size) for data in pictures], caption=list(shown_captions),
             width=size)


def _image_inside_root(store, row: int) -> Path | None:
    """The row's image, resolved by the reading layer's one rule (symlinks followed, nothing outside the
    image root is read); None when it leaves the root."""
    try:
        return store.image_path(row)
    except InputError:
        return None


@st.cache_data(show_spinner=False, max_entries=8)
def _blank(size: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (220, 220, 220)).save(buffer, format="PNG")
    return buffer.getvalue()


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs=STORE_HASH)
def _predictions(store, run_id: str, split: str, _run) -> np.ndarray:
    from hsfm_core.instruments.tables import predictions

    return predictions(workspace_of(store), _run, split)


def run_predictions(store, run: dict, split: str) -> np.ndarray:
    """A done run's predicted classes on `split` (cached: done runs never change)."""
    return _predictions(store, run["run_id"], split, run)
