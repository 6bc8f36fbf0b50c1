"""The Retrain page's Sweep section (docs/ARCHITECTURE.md §Sweeps): pick settings and their values and
the seeds, launch one background job per configuration, watch a live table and a heatmap of mean
val worst-group accuracy, open the configuration selected on validation in Groups, or cancel."""

from __future__ import annotations

import dataclasses

import streamlit as st

from hsfm_core import methods, sweeps
from hsfm_core.analysis.seeds import format_mean_std
from hsfm_core.methods.base import parse_seeds
from hsfm_core.studio import ui
from hsfm_core.studio.figures import sweep_heatmap

SWEEP_KEY = "hsfm.sweep"  # the sweep id the section follows
POLL_S = 2.0


def _suggested_values(value) -> str:
    """A starting grid for one setting: its preset value and values around it."""
    if isinstance(value, bool) or isinstance(value, tuple):
        return str(value)
    if isinstance(value, int):
        return ", ".join(str(v) for v in sorted({max(1, value // 4), value, value * 4}))
    return ", ".join(f"{v:.3g}" for v in (value / 4, value, value * 4))


def sweep_form(workspace, store) -> None:
    editors = [m for m in methods.all_methods() if m.edits_features]
    choices = editors + [m for m in methods.all_methods() if not m.edits_features]
    left, right = st.columns(2)
    method = left.selectbox("Method", choices, format_func=lambda m: f"{m.label} — {m.description}",
                            key="sweep.method")
    presets = list(method.presets) + (["auto"] if method.has_auto else [])
    default_preset, why = method.default_preset(store)
    preset = right.selectbox("Preset (the settings not swept)", presets or [None], key=f"sweep.preset.{method.name}",
                             index=presets.index(default_preset) if default_preset in presets else 0,
                             help=f"For this store: {default_preset} — {why}.")
    base = dataclasses.asdict(method.settings(preset if preset != "auto" else None))
    fields = [f for f, kind in method.field_types().items() if kind in (int, float)]
    symbols = {field: alias for alias, field in method.aliases.items()}
    default_fields = [f for f in ("inner_lr", "outer_lr") if f in fields] or fields[:1]
    swept = st.multiselect("Settings to sweep", fields, default=default_fields, key=f"sweep.fields.{method.name}",
                           format_func=lambda f: f"{f} · {symbols[f]}" if f in symbols else f)
    values = {}
    columns = st.columns(max(1, len(swept)))
    for column, field in zip(columns, swept):
        values[field] = column.text_input(f"{field} values", _suggested_values(base[field]),
                                          key=f"sweep.values.{method.name}.{field}", help="comma-separated")
    left, middle, right = st.columns(3)
    seeds_text = left.text_input("Seeds of each configuration", "0, 1, 2", key="sweep.seeds", help="≥ 3 seeds: one seed varies by ±2–3 points")
    fixed = middle.text_input("Fixed settings (key=value …)", "", key="sweep.fixed", help="e.g. E=20")
    parallel = right.number_input("Configurations at once", 1, 16, 2, key="sweep.parallel",
                                  help="local jobs of this workspace training at once (the job limit); the other "
                                       "configurations wait in the sweep's queue, without a process each")
    large = st.checkbox("Allow a sweep over the workspace's size limit", key="sweep.yes",
                        help="A sweep of more configurations × seeds than the limit (jobs/settings.json "
                             "max_sweep_runs, default 500) is refused unless this is ticked")
    if st.button("Launch sweep", type="primary", key="sweep.launch", disabled=not swept):
        with ui.errors_shown("Cannot launch this sweep", stop=False):
            grid = sweeps.parse_grid(method.name, [f"{f}={values[f]}" for f in swept])
            request = sweeps.SweepRequest(method=method.name, grid=grid, seeds=tuple(parse_seeds(seeds_text)),
                                          preset=preset, overrides=tuple(fixed.split()), max_parallel=int(parallel))
            launched = sweeps.submit(workspace, request, yes=large)
            st.session_state[SWEEP_KEY] = request.sweep_id
            st.toast(f"Sweep {request.sweep_id}: {len(launched)} configuration(s) queued, {int(parallel)} at a time"
                     if launched else f"Sweep {request.sweep_id} is already finished")


def open_in_groups(run_ids: list[str]) -> None:
    st.session_state[ui.COMPARE_KEY] = run_ids
    st.switch_page("pages/1_Groups.py")


def sweep_status(workspace) -> None:
    known = sweeps.list_sweeps(workspace)
    if not known:
        st.caption("No sweeps in this workspace yet.")
        return
    ids = [s["sweep_id"] for s in known]
    current = st.session_state.get(SWEEP_KEY)
    st.session_state["w.sweep"] = current if current in ids else ids[-1]
    chosen = st.selectbox("Sweep", ids, key="w.sweep",
                          format_func=lambda i: next(f"{i} · {s.get('method', '?')} · {s.get('status', s.get('error'))}"
                                                     for s in known if s["sweep_id"] == i))
    st.session_state[SWEEP_KEY] = chosen
    with ui.errors_shown("Cannot read this sweep", stop=False):
        state = sweeps.progress(workspace, chosen)
        polling = state["status"] == "running"
        live = st.fragment(run_every=POLL_S if polling else None)(_live)
        live(workspace, chosen, polling)


def _live(workspace, sweep_id: str, polling: bool = False) -> None:
    state = sweeps.progress(workspace, sweep_id)
    if polling and state["status"] != "running":
        # The sweep ended: the whole page again, which draws this view without its timer. A fragment still
        # polling when its button switches page can fire during the switch and lose the session's state
        # (streamlit#14064): the Groups page then opened blank, or without the selected configuration.
        st.rerun()
    request, table = state["request"], state["table"]
    st.markdown(f"**{state['status']}** · {state['finished']} of {state['configurations']} configurations finished "
                f"× {len(request.seeds)} seeds · selected on mean **val** worst-group accuracy (test is shown, never "
                "used to select).")
    shown = table[["config", *request.grid, "seeds_done", "seeds", "selected"]].copy()  # run ids: in results.csv
    for split in ("val", "test"):
        for key, label in (("wga", "WGA"), ("avg_adjusted", "adj. avg")):
            shown[f"{split} {label}"] = [format_mean_std(m, s) for m, s in
                                         zip(table[f"{split}_{key}_mean"], table[f"{split}_{key}_std"])]
    st.dataframe(shown, hide_index=True, width="stretch")
    names = list(request.grid)
    if len(names) >= 2:
        left, right = st.columns(2)
        x = left.selectbox("Heatmap x", names, index=0, key=f"sweep.x.{sweep_id}")
        y = right.selectbox("Heatmap y", [n for n in names if n != x], index=0, key=f"sweep.y.{sweep_id}")
        table.attrs["grid"] = names
        st.plotly_chart(sweep_heatmap(table, x, y), width="stretch", key=f"sweep.heatmap.{sweep_id}")
    elif names:
        st.bar_chart(table.set_index(names[0])["val_wga_mean"], y_label="mean val WGA")
    chosen = sweeps.select(table)
    left, right = st.columns(2)
    if chosen is not None:
        run_ids = [sweeps.run_id_of(request, chosen, s) for s in request.seeds]
        if left.button("Open the selected configuration in Groups", type="primary", key=f"sweep.open.{sweep_id}"):
            open_in_groups(run_ids)
    right.button("Cancel sweep", disabled=state["status"] != "running", key=f"sweep.cancel.{sweep_id}",
                 on_click=sweeps.cancel, args=(workspace, sweep_id))


def sweep_section(workspace, store) -> None:
    st.header("Sweep: tune on validation")
    st.caption("A grid over settings × seeds; each pair is an ordinary run. The configuration with the highest mean "
               "validation worst-group accuracy is selected — test is never read to choose.")
    with st.expander("New sweep", expanded=not sweeps.list_sweeps(workspace)):
        sweep_form(workspace, store)
    sweep_status(workspace)
