"""HSFM Studio — Home. `streamlit run app.py [-- --workspace DIR]` (or HSFM_WORKSPACE=DIR).

Without a workspace the app opens the bundled demo workspace, building it on first launch.
Home picks the workspace and the runs to compare and shows the dataset card; the pages in
`pages/` are the analyses. This script is also the router: `st.navigation` lists Home and them.
"""

from pathlib import Path

import plotly.express as px
import streamlit as st

from hsfm_core import methods
from hsfm_core.studio import ui
from hsfm_core.studio.figures import palette
from hsfm_core.instruments import tables
from hsfm_core.workspace import group_count_table

PAGES = [
    ("pages/1_Groups.py", "Groups", "How accurate is each run on each group, and which test images changed?"),
    ("pages/2_Projection.py", "Projection",
     f"Where do the edits of a {ui.editor_labels()} run move the support features on a UMAP map?"),
    ("pages/3_Decode.py", "Decode", "Which words (CLIP text concepts) do the edit directions point to?"),
    ("pages/4_Neighbors.py", "Neighbors", "Which real images are nearest to a feature before and after its edit?"),
    ("pages/5_Retrain.py", "Retrain",
     f"Launch a new {' / '.join(m.label for m in methods.all_methods())} run and watch it train."),
    ("pages/6_Lesson.py", "Lesson", "A guided walk through spurious correlations on the demo world."),
]


def open_workspace(path: str) -> None:
    """Switch this session to another workspace (kept only if its store opens)."""
    from hsfm_core.errors import InputError
    from hsfm_core.features import FeatureStore

    try:
        FeatureStore.open(Path(path).expanduser())
    except InputError as exc:
        st.session_state["hsfm.workspace_error"] = str(exc)
        return
    st.session_state.pop("hsfm.workspace_error", None)
    for key in (ui.WORKSPACE_KEY, ui.COMPARE_KEY, ui.FOCUS_KEY, ui.SELECTION_KEY):
        st.session_state.pop(key, None)
    st.session_state[ui.WORKSPACE_KEY] = Path(path).expanduser()


def home() -> None:
    """The Home page: workspace and runs, the dataset card, and what each page answers."""
    ui.page_setup()
    st.title("HSFM Studio")
    st.caption("Hard-Set-Guided Feature-Space Meta-Learning: see what edited features encode, "
               "compare groups before and after, retrain the head live.")
    read_only_banner()

    current = ui.workspace_path()
    with st.expander(f"Workspace: `{current}`" + (" (the bundled demo)" if ui.is_demo(current) else ""),
                     expanded="hsfm.workspace_error" in st.session_state):
        typed = st.text_input("Workspace folder (a feature store with its runs/)", value=str(current))
        left, right = st.columns(2)
        if left.button("Open this workspace"):
            open_workspace(typed)
            st.rerun()
        if right.button("Open the bundled demo"):
            open_workspace(str(ui.ensure_demo()))
            st.rerun()
        if "hsfm.workspace_error" in st.session_state:
            st.error(f"Could not open that workspace; still showing `{current}`. "
                     f"{st.session_state['hsfm.workspace_error']}")

    store = ui.open_store()
    compared, focus = ui.run_pickers(store)

    m = store.manifest
    cols = st.columns(4)
    cols[0].metric("Rows", f"{m['n_rows']:,}")
    cols[1].metric("Feature dimension", m["dim"])
    cols[2].metric("Backbone", m["backbone"]["kind"])
    cols[3].metric("CLIP joint space", "yes" if m["clip_space"] else "no")
    st.write(f"Classes: {', '.join(store.class_names)} · attributes: {', '.join(store.attribute_names)} · "
             f"backbone id `{m['backbone']['id']}`")

    st.header("Dataset card")
    counts = group_count_table(store)
    left, right = st.columns([2, 3])
    with left:
        st.markdown("**Group counts per split**")
        st.dataframe(counts)
    with right:
        long = counts.reset_index().melt(id_vars="group", var_name="split", value_name="examples")
        st.plotly_chart(px.bar(long, x="split", y="examples", color="group", barmode="group", height=300,
                               color_discrete_sequence=palette(store.n_groups)), width="stretch")

    correlation = tables.train_correlation(ui.workspace_of(store))
    if correlation is not None and len(correlation):
        st.markdown("**The train correlation** — what a head can learn instead of the class")
        st.write(" · ".join(f"{r['share with usual attribute']:.0%} of train {r['class']} examples have "
                            f"{r['usual attribute']}" for _, r in correlation.iterrows()))
        st.dataframe(correlation.style.format({"share with usual attribute": "{:.1%}"}), hide_index=True)

    if store.image_root is not None:
        split = st.radio("Example images from", store.splits, horizontal=True,
                         index=store.splits.index("test") if "test" in store.splits else 0)
        names = store.groups.names
        for g, rows in tables.example_rows(ui.workspace_of(store), split, per_group=8).items():
            st.markdown(f"**{names[g]}** ({len(store.rows(split, [g])):,} in {split})")
            ui.image_grid(store, rows, [f"row {r}" for r in rows], key=f"home.g{g}", page_size=8)
    else:
        st.caption("This store was imported without images, so there are no example pictures.")

    if compared:
        st.header("Runs compared")
        split = "test" if store.has_split("test") else "val"
        st.markdown(f"**Run groups on {split}**: runs that differ only in their seed, mean ± sample std (%)")
        st.dataframe(tables.averages_table(ui.workspace_of(store), compared, split), width="stretch")
        with st.expander("Each run"):
            st.dataframe(tables.averages_table(ui.workspace_of(store), compared, split, over_seeds=False).style.format(
                lambda v: f"{v:.1%}" if isinstance(v, float) else v), width="stretch")
        st.caption("Change the runs in the sidebar; every page uses the same choice.")

    st.header("What each page answers")
    for path, title, question in shown_pages():
        st.page_link(path, label=f"**{title}** — {question}")


def shown_pages() -> list[tuple[str, str, str]]:
    """Every page, less Retrain on a read-only server (a class watching, not launching)."""
    read_only = ui.server_settings()["read_only"]
    return [page for page in PAGES if not (read_only and page[1] == "Retrain")]


def read_only_banner() -> None:
    if ui.server_settings()["read_only"]:
        st.info("**Read-only mode**: this server shows the workspace but launches nothing (Retrain is hidden). "
                "The command line and the Python API still train.", icon=":material/lock:")


# st.navigation (rather than the pages/ folder's automatic menu) so that the menu reads Home, Groups, …
navigation = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True)]
                           + [st.Page(path, title=title, url_path=title) for path, title, _ in shown_pages()])
navigation.run()
