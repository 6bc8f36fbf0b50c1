"""Decode: edit directions (per class, per example, for a Projection selection) scored against the
CLIP text embeddings of an editable concept vocabulary."""

import numpy as np
import pandas as pd
import streamlit as st

from hsfm_core.instruments.decode import DEFAULT_CONTRAST, vocabulary as checked_vocabulary
from hsfm_core.studio import ui
from hsfm_core.studio.figures import concept_bars

store, compared, focus = ui.page_header(
    "Decode",
    "Each direction (edited − original feature, or a selection's mean − its class mean) is compared with "
    "CLIP text embeddings of the concepts below, averaged over prompt templates. A positive cosine means the "
    "direction points toward the concept.")
labels = store.groups.names

bridge = None
if not store.manifest.get("clip_space"):
    st.warning("This store's features are not in a CLIP joint space, so text similarities need a bridge: a CLIP "
               "store of the same images, mapped by ridge regression.")
    bridge = st.text_input("Bridge store (a CLIP extraction of the same images)", key="decode.bridge") or None
    if bridge is None:
        st.stop()

with st.expander("Concept vocabulary (editable)", expanded=False):
    if "decode.vocabulary" not in st.session_state:
        concepts, categories = checked_vocabulary()
        st.session_state["decode.vocabulary"] = pd.DataFrame({"concept": concepts, "category": categories})
    elif "decode.editor" not in st.session_state and "decode.edited" in st.session_state:
        # Streamlit forgot the editor's edits while another page was shown: start again from the edited list
        st.session_state["decode.vocabulary"] = st.session_state["decode.edited"]
    vocabulary = st.data_editor(st.session_state["decode.vocabulary"], num_rows="dynamic", key="decode.editor",
                                width="stretch", hide_index=True)
    st.session_state["decode.edited"] = vocabulary
    st.caption("Add, edit or delete rows; the embeddings are recomputed (and cached) for the new list.")

with ui.errors_shown("Cannot use this vocabulary"):
    words = checked_vocabulary(words=(vocabulary["concept"].fillna("").astype(str).tolist(),
                                      vocabulary["category"].fillna("").astype(str).tolist()))
concepts = words[0]
with ui.errors_shown("Cannot decode with this store"):
    ui.concept_bank(store, words, bridge)

left, right, third = st.columns(3)
positive = left.selectbox("Contrast: toward", concepts, key="decode.positive",
                          index=concepts.index(DEFAULT_CONTRAST[0]) if DEFAULT_CONTRAST[0] in concepts else 0)
negative = right.selectbox("… minus toward", concepts, key="decode.negative",
                           index=concepts.index(DEFAULT_CONTRAST[1]) if DEFAULT_CONTRAST[1] in concepts else 1)
top = third.slider("Concepts shown", 3, 30, 10, key="decode.top")
contrast = (positive, negative)

if focus is None:
    st.info(f"No {ui.editor_labels()} run with edits is picked (sidebar): only a Projection selection can be decoded.")
else:
    ui.warn_if_off_data(store, focus)
    with ui.errors_shown("Cannot decode this run", stop=False):
        support = ui.load_support(focus)
        decoded = ui.decode(store, focus, words, top, contrast, bridge)
        st.header("Mean edit per class")
        columns = st.columns(len(decoded["per_class"]))
        for column, entry in zip(columns, decoded["per_class"]):
            with column:
                st.metric(f"{entry['name']} ({entry['n']} edited)", f"{entry['contrast']:+.3f}",
                          help=f"cos(mean edit, “{positive}”) − cos(mean edit, “{negative}”)")
                st.plotly_chart(concept_bars(entry["top"]), width="stretch", key=f"decode.class{entry['class']}")

        st.header("One support example")
        indices = support["indices"].numpy()
        group_of = store.meta["g"].to_numpy()

        def group_label(i: int) -> str:
            row = int(indices[i])
            return labels[group_of[row]] if row >= 0 else store.class_names[int(support["labels"][i])]

        def describe(i: int) -> str:
            return f"#{i} · {group_label(i)} · row {int(indices[i])}"

        example = st.selectbox("Support example", range(len(indices)), format_func=describe, key="decode.example")
        picture, bars = st.columns([1, 3])
        if indices[example] >= 0:
            with picture:
                ui.image_grid(store, [indices[example]], [describe(example)], key="decode.picture", size=160)
        chosen = ui.decode(store, focus, words, top, contrast, bridge, support=[example])["selection"]
        bars.metric("Contrast", f"{chosen['contrast']:+.3f}")
        bars.plotly_chart(concept_bars(chosen["top"]), width="stretch", key="decode.example_bars")
        table = pd.DataFrame(decoded["per_example"])
        table["group"] = [group_label(i) for i in table["support"]]
        table["top concepts"] = [", ".join(t["concept"] for t in entry) for entry in table.pop("top")]
        with st.expander(f"All {len(table)} support examples"):
            st.dataframe(table.drop(columns=["class"]).style.format({"contrast": "{:+.3f}"}), hide_index=True,
                         width="stretch")

st.header("The Projection selection")
selection = ui.current_selection(store)
if not selection or not selection["rows"] and not selection["support"]:
    st.caption("Select points on the Projection page to describe them here.")
else:
    with ui.errors_shown("Cannot decode the selection", stop=False):
        rows = np.asarray(selection["rows"], dtype=np.int64)
        if len(rows):
            st.markdown(f"**{len(rows):,} selected images: their mean − their class mean** (what sets them apart)")
            described = ui.describe_selection(store, rows, words, top, bridge)
            columns = st.columns(len(described["per_class"]))
            for column, entry in zip(columns, described["per_class"]):
                column.plotly_chart(concept_bars(entry["top"], f"{entry['name']} ({entry['n']})"),
                                    width="stretch", key=f"decode.selection{entry['class']}")
        if selection["support"] and focus is not None and selection.get("run_id") == focus["run_id"]:
            st.markdown(f"**Mean edit of the {len(selection['support'])} selected support examples**")
            chosen = ui.decode(store, focus, words, top, contrast, bridge, support=selection["support"])["selection"]
            st.metric("Contrast", f"{chosen['contrast']:+.3f}")
            st.plotly_chart(concept_bars(chosen["top"]), width="stretch", key="decode.selection_edits")
