"""Projection: a UMAP map of every feature with the support set before → after editing; a lasso
or box selection drives an image grid and per-group counts."""

from functools import partial

import numpy as np
import streamlit as st

from hsfm_core.studio import ui
from hsfm_core.studio.figures import COLOUR_FIELDS, colour_values, projection_map
from hsfm_core.analysis.projection import (BACKDROP_MAX_POINTS, FOREGROUND_MAX_POINTS, ProjectionParams,
                                           backdrop_sample, map_status, points_in_region, selection_summary,
                                           start_map)

store, compared, focus = ui.page_header(
    "Projection",
    "UMAP of the original features and the edited support features, fitted together so that an edit is "
    "drawn among its real neighbours. The map shows neighbourhoods: 2-D distances have no exact meaning.")
if focus is None:
    st.info(f"No {ui.editor_labels()} run with edited features is picked, so the map shows the original features only.")

edit_notes = None  # per support example: how far its edit moved (hover), with a summary line
if focus is not None:
    with ui.errors_shown("Cannot measure the edits", stop=False):
        diagnostics = ui.edit_diagnostics(store, focus)
        per = diagnostics["per_example"]
        edit_notes = [f"‖Δ‖ {n:.3g} ({r:.0%} of ‖z‖) · {o:.2f}× typical neighbour distance from the data"
                      + (" · off the data" if off else "")
                      for n, r, o, off in zip(per["edit_norm"], per["relative_edit_norm"], per["off_data_ratio"],
                                              per["off_data"])]
        st.caption(ui.edit_summary(diagnostics))

with st.form("projection.params"):
    left, right = st.columns(2)
    n_neighbors = left.slider("Neighbours (n_neighbors)", 5, 100, 15, key="projection.n_neighbors",
                              help="Larger values keep more of the global structure.")
    min_dist = right.slider("Minimum distance (min_dist)", 0.0, 0.99, 0.1, step=0.05, key="projection.min_dist",
                            help="How tightly points may pack together.")
    submitted = st.form_submit_button("Compute map")

params = ProjectionParams(n_neighbors=n_neighbors, min_dist=min_dist)


@st.fragment(run_every=1.0)
def map_progress(params: ProjectionParams) -> None:
    """The background worker's progress, polled each second; the whole page reruns once the map is on disk."""
    status = map_status(store, focus, params=params)
    if status.state == "ready":
        st.rerun()
    if status.state == "failed":
        st.error(f"The map could not be computed: {status.stage}")
        if st.button("Try again"):
            start_map(store, focus, params=params)
            st.rerun()
        return
    if status.state == "absent":  # its worker was stopped before it finished
        status = start_map(store, focus, params=params)
    st.progress(status.fraction, text=f"Computing the map in the background ({store.manifest['n_rows']:,} points): "
                                      f"{status.stage} — {status.elapsed_s:.0f} s of about {status.estimate_s:.0f} s. "
                                      "It is cached once done; the other pages work meanwhile.")


with ui.errors_shown("Cannot draw the map"):
    status = map_status(store, focus, params=params)
    n_points = store.manifest["n_rows"]
    if status.state != "ready":
        if status.state == "absent" and params != ProjectionParams() and not submitted:
            st.info(f"This map is not computed yet. Press **Compute map**: about {status.estimate_s:.0f} s for "
                    f"this workspace, in the background (the default map is computed on the first visit).")
            st.stop()
        if n_points >= FOREGROUND_MAX_POINTS:
            if status.state == "absent" or submitted:  # a failed map waits for "Try again" or the button
                start_map(store, focus, params=params)
            map_progress(params)
            st.stop()
    with st.spinner("Fitting UMAP on the originals and the edits…"):
        frame = ui.map_frame(store, focus, n_neighbors, min_dist)
map_name = f"{store.content_hash}:{focus['run_id'] if focus else '-'}:{n_neighbors}:{min_dist}"
labels = store.groups.names
drawn = backdrop_sample(frame)
if len(drawn) < (frame["kind"] != "edited").sum():
    st.caption(f"The backdrop shows a group-stratified sample of {len(drawn):,} of "
               f"{(frame['kind'] != 'edited').sum():,} points (plotly stays fluid up to about "
               f"{BACKDROP_MAX_POINTS:,}); a selection still counts every point inside it.")


def current_selection() -> np.ndarray:
    chosen = st.session_state.get(ui.SELECTION_KEY)
    if chosen and chosen.get("map") == map_name:
        return np.asarray(chosen["positions"], dtype=np.int64)
    return np.empty(0, dtype=np.int64)


def remember_selection(positions: np.ndarray) -> None:
    picked = frame.iloc[positions]
    st.session_state[ui.SELECTION_KEY] = {
        "map": map_name, "store": store.content_hash, "positions": positions.tolist(),
        "rows": sorted(set(picked.loc[picked["kind"] != "edited", "row"].astype(int))),
        "support": sorted(set(picked.loc[picked["support"] >= 0, "support"].astype(int))),
        "run_id": focus["run_id"] if focus else None}


def chart_key() -> str:
    """The map's widget key; a new one after "Clear selection", so that plotly forgets its own
    selection too and the same lasso drawn again still registers."""
    return f"projection.chart.{st.session_state.setdefault('projection.chart_version', 0)}"


def on_map_select(key: str) -> None:
    """Runs before the rerun a lasso / box / click triggers. An empty event (plotly clears its
    selection when the figure changes, e.g. on re-colouring) keeps the remembered selection."""
    picked = st.session_state[key].selection
    if picked["points"] or picked["box"] or picked["lasso"]:
        ids = {int(np.ravel([p["customdata"]])[0]) for p in picked["points"] if "customdata" in p}
        ids |= set(points_in_region(frame, picked["box"], picked["lasso"]).tolist())
        remember_selection(np.array(sorted(ids), dtype=np.int64))


def clear_selection() -> None:
    st.session_state.pop(ui.SELECTION_KEY, None)
    st.session_state["projection.chart_version"] = st.session_state.get("projection.chart_version", 0) + 1


@st.cache_resource(max_entries=16, show_spinner=False)
def map_figure(name: str, colour: str, _frame, _drawn):
    """The map's figure per (map, colour): built once, then the same figure is sent again, so
    that the browser does not redraw the map when only the selection changed."""
    shown = with_verdicts(_frame) if colour == "verdict" else _frame
    colours = colour_values(shown, colour, store.class_names, store.attribute_names, labels)
    return projection_map(shown, colours, _drawn, edit_notes=edit_notes)


def with_verdicts(frame):
    """The map with an `agrees` column: whether each support point's own edit agrees with its class's
    verdict over the seeds of the focus run's configuration (Decode's reading); None without a verdict."""
    from hsfm_core.analysis.seeds import group_key
    from hsfm_core.instruments.semantics import DEFAULT_CONTRAST

    if focus is None:
        return frame
    group = next((g for g in ui.edited_groups(store) if g.key == group_key(focus)), None)
    if group is None:
        return frame
    result = ui.semantics(store, group.runs, DEFAULT_CONTRAST, 1000)
    mine = next((e for e in result["per_example"] if e["run"] == focus["run_id"]), None)
    if mine is None:
        return frame
    shown = frame.copy()
    agrees = dict(enumerate(mine["agrees"]))
    shown["agrees"] = [agrees.get(int(i)) if i >= 0 else np.nan for i in shown["support"]]
    shown.loc[shown["support"] < 0, "agrees"] = np.nan
    return shown



@st.fragment
def map_and_selection() -> None:
    colour = st.segmented_control("Colour by", COLOUR_FIELDS, default="group", key="projection.colour") or "group"
    selected = current_selection()
    key = chart_key()
    st.plotly_chart(map_figure(map_name, colour, frame, drawn), key=key, on_select=partial(on_map_select, key),
                    selection_mode=("lasso", "box", "points"), width="stretch", config={"scrollZoom": True})
    left, right = st.columns([1, 4])
    left.button("Clear selection", disabled=len(selected) == 0, on_click=clear_selection)
    if len(selected) == 0:
        right.caption("Draw a lasso or a box on the map (the toolbar switches between them) to see the images inside.")
        return
    chosen = st.session_state[ui.SELECTION_KEY]
    right.markdown(f"**Selection: {len(chosen['rows']):,} images, {len(chosen['support'])} support examples.** "
                   "The grid and counts stay when you re-colour; Decode and Neighbors use it too.")
    summary = selection_summary(frame, selected, labels)
    st.dataframe(summary, width="stretch", column_config={"accuracy": st.column_config.NumberColumn(format="percent")})
    if "accuracy" in summary:
        st.caption(f"Accuracy of {focus['run_id'] if focus else 'the run'}'s head on the selected originals.")
    rows = np.asarray(chosen["rows"], dtype=np.int64)
    meta = store.meta
    ui.image_grid(store, rows, [f"{labels[g]} · row {r}" for r, g in zip(rows, meta["g"].to_numpy()[rows])],
                  key="projection.grid")
    st.download_button("Export the selection (CSV)", lambda: frame.iloc[selected].to_csv(index=False),
                       file_name="selection.csv", mime="text/csv")  # written on click: a lasso stays quick


map_and_selection()
