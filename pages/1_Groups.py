"""Groups: per-group accuracy of the compared runs, with intervals, averages, confusion and flips."""

import streamlit as st

from hsfm_core.analysis.compare import AVERAGE_LABELS, run_label
from hsfm_core.analysis.seeds import run_groups
from hsfm_core.instruments import tables
from hsfm_core.studio import ui
from hsfm_core.studio.figures import accuracy_bars, seed_accuracy_bars

store, compared, focus = ui.page_header(
    "Groups",
    "Accuracy on each group (class · attribute) before and after retraining the head. "
    "Bars show 95% Wilson intervals; the hatched bar is each run's worst group.")
if not compared:
    st.info("Pick runs to compare in the sidebar (none are selected or finished yet).")
    st.stop()

splits = [s for s in ("val", "test") if store.has_split(s)]
if not splits:
    st.info("This store has neither a val nor a test split, so there is nothing to evaluate.")
    st.stop()
left, right = st.columns(2)
split = left.radio("Split", splits, index=len(splits) - 1, horizontal=True)
groups_of_seeds = run_groups(compared)
several = any(len(g.finished(split)) > 1 for g in groups_of_seeds)
view = right.radio("Show", ["mean ± std over seeds", "single runs"], index=0 if several else 1, horizontal=True,
                   key="groups.view", help="Runs that differ only in their seed form a run group; one seed of HSFM "
                                           "varies by ±2–3 points, so compare means over seeds.")
workspace = ui.workspace_of(store)
table = tables.accuracy_table(workspace, compared, split)
if view == "single runs":
    st.plotly_chart(accuracy_bars(table), width="stretch")
else:
    st.plotly_chart(seed_accuracy_bars(tables.group_table(workspace, split, compared)), width="stretch")
    st.caption("Bars at the mean over each run group's finished seeds; error bars ± one sample standard deviation "
               "(none for a single seed). Hatched: the run group's worst group (of the means).")

st.markdown(f"**Averages on {split}** — each one labelled; papers mean different things by “average”.")
if view == "single runs":
    averages = tables.averages_table(workspace, compared, split, over_seeds=False)
    st.dataframe(averages.style.format(lambda v: f"{v:.1%}" if isinstance(v, float) else ("—" if v is None else v)),
                 width="stretch")
else:
    st.dataframe(tables.averages_table(workspace, compared, split), width="stretch")
downloads = st.columns(3)
for column, (fmt, suffix, mime) in zip(downloads, (("markdown", "md", "text/markdown"), ("latex", "tex", "text/x-tex"),
                                                   ("csv", "csv", "text/csv"))):
    column.download_button(f"Table as {fmt}", tables.summary_table(workspace, split, compared, fmt),
                           file_name=f"hsfm-{split}-comparison.{suffix}", mime=mime, key=f"groups.download.{fmt}",
                           help="The compared run groups as a paper's table: worst-group accuracy and adjusted "
                                "average, mean ± std, and the number of seeds.")
st.caption(" · ".join(f"**{label}**" for label in AVERAGE_LABELS.values()) +
           ". The adjusted average is what the Waterbirds papers call average accuracy.")
with st.expander("Per-group numbers"):
    st.dataframe(table.drop(columns=["run_id", "g"]).style.format(
        {"accuracy": "{:.1%}", "ci_low": "{:.1%}", "ci_high": "{:.1%}"}, na_rep="—"), hide_index=True)

st.header("Confusion per group")
labels = {r["run_id"]: run_label(r) for r in compared}
chosen = st.selectbox("Run", list(labels), format_func=labels.get, key="groups.confusion_run")
with ui.errors_shown("Cannot evaluate that run", stop=False):
    predicted = ui.run_predictions(store, next(r for r in compared if r["run_id"] == chosen), split)
    st.dataframe(tables.confusion(workspace, predicted, split).style.format({"accuracy": "{:.1%}"}, na_rep="—"))


@st.fragment
def what_changed() -> None:
    st.header("What changed")
    if len(compared) < 2:
        st.info("Compare two or more runs (sidebar) to see which images changed prediction.")
        return
    ids = list(labels)
    left, right = st.columns(2)
    before = left.selectbox("Before", ids, index=0, format_func=labels.get, key="groups.before")
    after = right.selectbox("After", ids, index=len(ids) - 1, format_func=labels.get, key="groups.after")
    if before == after:
        st.info("Pick two different runs.")
        return
    runs = {r["run_id"]: r for r in compared}
    with ui.errors_shown("Cannot compare those runs", stop=False):
        flips, counts = tables.prediction_flips(workspace, ui.run_predictions(store, runs[before], split),
                                                ui.run_predictions(store, runs[after], split), split)
        st.markdown(f"**{(flips['change'] == 'fixed').sum():,} {split} images fixed, "
                    f"{(flips['change'] == 'broken').sum():,} broken** going from {labels[before]} to {labels[after]}.")
        st.dataframe(counts)
        which = st.segmented_control("Show", ["fixed", "broken"], default="fixed", key="groups.which")
        groups = st.multiselect("Groups", list(counts.index), default=list(counts.index), key="groups.flip_groups")
        shown = flips[(flips["change"] == (which or "fixed")) & flips["group"].isin(groups)]
        ui.image_grid(store, shown["row"].to_numpy(),
                      [f"{g}: {b} → {a}" for g, b, a in zip(shown["group"], shown["before"], shown["after"])],
                      key="groups.flips")


what_changed()
