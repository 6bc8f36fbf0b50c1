"""Neighbors: the nearest real images (FAISS, cosine) to a feature before and after its edit —
the retrieval counterpart of decoding an edited feature into an image."""

import pandas as pd
import streamlit as st

from hsfm_core.studio import ui

store, compared, focus = ui.page_header(
    "Neighbors",
    "Nearest real images by cosine similarity of features. For a support example, the left column answers "
    "“what does the original feature look like?” and the right one “what does the edited feature look like?”.")
labels = store.groups.names
group_of = store.meta["g"].to_numpy()
modes = (["A support example", "Any image (store row)"] if focus is not None else ["Any image (store row)"])
mode = st.radio("Query", modes, horizontal=True, key="neighbors.mode")
k = st.slider("Neighbours shown", 4, 48, 16, step=4, key="neighbors.k")

with ui.errors_shown("Cannot read the run's edits"):
    support = ui.load_support(focus) if focus is not None else None
queries = {}  # title → the query, as the facade's `neighbors` takes it
if mode == "A support example":
    ui.warn_if_off_data(store, focus)
    indices = support["indices"].numpy()
    selection = ui.current_selection(store) or {}
    preferred = [i for i in selection.get("support", []) if selection.get("run_id") == focus["run_id"]]
    options = preferred + [i for i in range(len(indices)) if i not in preferred]

    def describe(i: int) -> str:
        row = int(indices[i])
        return f"#{i} · {labels[group_of[row]] if row >= 0 else '?'} · row {row}" + (
            " (in the Projection selection)" if i in preferred else "")

    chosen = st.selectbox("Support example", options, format_func=describe, key="neighbors.support")
    row = int(indices[chosen])
    queries["Nearest to the original feature"] = {"support": chosen, "edited": False}
    queries["Nearest to the edited feature"] = {"support": chosen, "edited": True}
else:
    row = st.number_input("Store row", 0, store.manifest["n_rows"] - 1, 0, key="neighbors.row")
    queries["Nearest to this image's feature"] = {"row": row, "edited": False}
    if support is not None and row in support["indices"].tolist():
        queries["Nearest to its edited feature"] = {"row": row, "edited": True}

def rendered_edit(example: int) -> None:
    """Original image | render(z) | render(z + Δ) | the nearest real image to z + Δ, and the strip along
    z + t·Δ: what the edited feature would look like, drawn by the store's inverter."""
    st.subheader("What the edited feature looks like")
    strip = ui.render_strip(store, focus, [example])[0]  # steps × H × W × 3, every t at once (cached)
    nearest = ui.neighbors(store, focus, support=example, edited=True, k=1)["neighbors"]
    tiles = [(ui.thumbnail(str(store.image_path(row)), 128) if row >= 0 and store.image_root else None, "the image"),
             (ui.picture(strip[ui.STRIP_STEPS.index(0.0)], 128), "render(z)"),
             (ui.picture(strip[ui.STRIP_STEPS.index(1.0)], 128), "render(z + Δ)"),
             (ui.thumbnail(str(store.image_path(nearest[0]["row"])), 128) if nearest and store.image_root else None,
              "nearest real image to z + Δ")]
    st.image([t for t, _ in tiles if t is not None], caption=[c for t, c in tiles if t is not None], width=128)
    t = st.select_slider("t in z + t·Δ", options=list(ui.STRIP_STEPS), value=1.0, key="neighbors.t",
                         help="0 is the original feature, 1 the edited one; beyond 1 the edit is extrapolated")
    st.image([ui.picture(image, 96) for image in strip],
             caption=[f"t = {s:g}" + (" ◀" if s == t else "") for s in ui.STRIP_STEPS], width=96)
    st.image(ui.picture(strip[ui.STRIP_STEPS.index(t)], 192), caption=f"render(z + {t:g}·Δ)", width=192)
    if t > 1:
        st.caption("Beyond t = 1 the rendering is an extrapolation past the edit, and likely past the data.")


if mode == "A support example":
    if ui.renderer_missing(store):
        st.caption(ui.renderer_missing(store))
    else:
        with ui.errors_shown("Cannot render this edit", stop=False):
            rendered_edit(chosen)

if row >= 0:
    st.markdown(f"**Query: row {row} · {labels[group_of[row]]} · {store.meta['split'].iat[row]}**")
    ui.image_grid(store, [row], ["the query image"], key="neighbors.query", size=128)

columns = st.columns(len(queries))
for column, (title, query) in zip(columns, queries.items()):
    with column, ui.errors_shown("Cannot search the neighbours", stop=False):
        st.subheader(title)
        found = ui.neighbors(store, focus if support is not None else None, k=k, **query)["neighbors"]
        ids = [n["row"] for n in found]
        counts = pd.Series([labels[n["g"]] for n in found]).value_counts().reindex(labels, fill_value=0)
        st.dataframe(counts.rename("neighbours").to_frame().T, width="stretch")
        ui.image_grid(store, ids, [f"{labels[n['g']]} · cos {n['cosine']:.3f}" for n in found],
                      key=f"neighbors.{title}", page_size=k)

if support is not None:
    st.header("Edit shift for the whole run")

    if not (support["indices"].numpy() >= 0).any():
        st.caption("This run's support examples are not rows of this store (an imported reference run), "
                   "so their own attribute is unknown and the edit shift cannot be computed.")
        st.stop()
    with ui.errors_shown("Cannot compute the edit shift"):
        result = ui.edit_shift(store, focus, 16)
    st.caption(f"Share of each support example's {result['k']} nearest real images whose spurious attribute differs "
               "from its own: a rise from the original to the edited feature means the edits moved the examples "
               "toward the other attribute.")
    columns = st.columns(1 + len(store.class_names))
    for column, (name, title) in zip(columns, [("overall", "all support examples")] + [
            (f"class_{c}", store.class_names[c]) for c in range(len(store.class_names))]):
        if name in result:
            column.metric(title, f"{result[name]['after']:.1%}", f"{result[name]['change']:+.1%} from "
                          f"{result[name]['before']:.1%}")
