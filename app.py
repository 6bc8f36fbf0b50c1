"""HSFM Studio — Home. `streamlit run app.py [-- --workspace DIR]` (or HSFM_WORKSPACE=DIR).

Without a workspace the app opens the bundled demo workspace, building it on first launch.
The run picker and the analysis pages come with later issues.
"""

import sys

import streamlit as st

from hsfm_core.demo.build import DEMO_CLIP, build_demo, default_demo_dir, is_built
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore
from hsfm_core.workspace import group_count_table, workspace_from_args

st.set_page_config(page_title="HSFM Studio", layout="wide")
st.title("HSFM Studio")
st.caption("Hard-Set-Guided Feature-Space Meta-Learning: see what edited features encode, "
           "compare groups before and after, retrain the head live.")


@st.cache_resource(show_spinner="Opening the feature store…")
def open_store(path: str, manifest_stamp: int) -> FeatureStore:
    return FeatureStore.open(path)  # manifest_stamp: a replaced store is opened afresh


workspace = workspace_from_args(sys.argv[1:])
if workspace is None and not DEMO_CLIP.is_dir():
    st.info("No workspace given, and this checkout has no bundled demo CLIP yet (`assets/synthbirds-clip`). "
            "Start with `streamlit run app.py -- --workspace DIR` or set `HSFM_WORKSPACE`, after "
            "`python -m hsfm_core extract …` or `python -m hsfm_core import …`.")
    st.stop()
if workspace is None:
    workspace = default_demo_dir()
    if not is_built(workspace):
        with st.status("Building the demo workspace — first launch only, about a minute…", expanded=True) as status:
            bar = st.progress(0.0)
            try:
                build_demo(workspace, progress=lambda message, fraction: bar.progress(min(fraction, 1.0), text=message))
            except InputError as exc:
                status.update(label="The demo workspace could not be built", state="error")
                st.error(str(exc))
                st.stop()
            status.update(label="Demo workspace ready", state="complete", expanded=False)
    st.caption("The bundled demo: SynthBirds images encoded by a small CLIP trained on them. "
               "Open your own data with `streamlit run app.py -- --workspace DIR`.")

try:
    manifest = workspace / "manifest.json"
    store = open_store(str(workspace), manifest.stat().st_mtime_ns if manifest.exists() else 0)
except InputError as exc:
    st.error(str(exc))
    st.stop()

m = store.manifest
st.subheader(f"Workspace `{workspace}`")
cols = st.columns(4)
cols[0].metric("Rows", f"{m['n_rows']:,}")
cols[1].metric("Feature dimension", m["dim"])
cols[2].metric("Backbone", m["backbone"]["kind"])
cols[3].metric("CLIP joint space", "yes" if m["clip_space"] else "no")
st.write(f"Classes: {', '.join(store.class_names)} · attributes: {', '.join(store.attribute_names)} · "
         f"backbone id `{m['backbone']['id']}`")
st.markdown("**Group counts per split**")
st.dataframe(group_count_table(store))
