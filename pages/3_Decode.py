"""Decode: edit directions (per class, per example, for a Projection selection) scored against the
CLIP text embeddings of an editable concept vocabulary."""

import numpy as np
import pandas as pd
import streamlit as st

from hsfm_core.instruments.decode import DEFAULT_CONTRAST, vocabulary as checked_vocabulary
from hsfm_core.studio import ui
from hsfm_core.studio.figures import concept_bars, null_histogram

VERDICT_TEXT = {"toward_minority": "edits point to the minority attribute",
                "away_from_minority": "edits point away from the minority attribute",
                "no_consistent_direction": "no consistent direction", None: "no attribute labels: no verdict"}

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



def train_more_seeds(runs: list[dict]) -> None:
    """Launch two more seeds of the group's configuration through the job layer."""
    import dataclasses

    from hsfm_core import jobs
    from hsfm_core.spec import TrainSpec

    spec = TrainSpec.from_dict(runs[0]["config"]["request"])
    taken = {r["config"].get("seed") for r in runs} | set(spec.seeds)
    new = [s for s in range(max(taken) + 1, max(taken) + 10) if s not in taken][:2]
    job = jobs.launch(store.path, dataclasses.replace(spec, seeds=tuple(new), tags={**spec.tags,
                                                                                  "session": ui.session_id()}))
    st.toast(f"Launched {job['job_id']}: seeds {', '.join(map(str, new))}; follow it on Retrain.")


def class_reading(entry: dict) -> None:
    """One class of the group's semantics: verdict, alignment against its null, concepts, sparse reading."""
    st.subheader(entry["name"])
    st.markdown(f"**Verdict: {VERDICT_TEXT.get(entry['verdict'], entry['verdict'])}**")
    align = entry["attribute_alignment"]
    if align:
        minority = entry.get("attribute", {}).get("minority")
        st.plotly_chart(null_histogram(align), width="stretch", key=f"decode.null{entry['class']}")
        st.caption(f"Alignment of the mean edit with the direction toward *{minority}*: {align['mean']:+.3f} ± "
                   f"{align['std'] or 0:.3f} over {len(align['per_seed'])} seed(s), combined p = {align['p_value']:.2g}, "
                   f"{align['sign_agreement']:.0%} of seeds agree in sign.")
        flips = [x for x in align.get("leave_one_seed_out") or [] if x["verdict"] != entry["verdict"]]
        if align.get("leave_one_seed_out"):
            st.caption("The verdict holds with any one seed left out." if not flips else
                       "Leaving out seed " + ", ".join(str(x["seed"]) for x in flips) + " would change it to "
                       + ", ".join(VERDICT_TEXT.get(x["verdict"], x["verdict"]) for x in flips[:1]) + ".")
    agree = entry["mean_edit_agreement"]
    if agree and agree.get("mean_cosine") is not None:
        st.caption(f"The seeds' mean edits agree with each other at cosine {agree['mean_cosine']:+.2f} "
                   f"(lowest {agree['min_cosine']:+.2f}); chance in this dimension is about ±{agree['chance']:.2f}.")
    shares = entry.get("per_example") or {}
    if shares.get("share_agreeing") is not None:
        st.caption(f"{shares['share_agreeing']:.0%} of the support examples' own edits agree with the verdict.")
    if entry.get("contrast"):
        k = entry["contrast"]
        st.caption(f"“{k['positive']}” − “{k['negative']}”: {k['mean']:+.3f} ± {k['std'] or 0:.3f}, p = "
                   f"{k['p_value']:.2g}, ranks above {k['random_pair_rank']:.0%} of random concept pairs.")
    if entry.get("all_concepts"):
        table = pd.DataFrame(entry["all_concepts"]).sort_values("mean", ascending=False)
        st.dataframe(table[["concept", "mean", "std", "sign_agreement", "q_value", "significant"]]
                     .style.format({"mean": "{:+.3f}", "std": "{:.3f}", "sign_agreement": "{:.0%}",
                                    "q_value": "{:.2g}"}, na_rep="—"),
                     hide_index=True, width="stretch", height=240)
    if entry.get("sparse") and entry["sparse"]["concepts"]:
        sparse = entry["sparse"]
        st.markdown("**A few concepts that rebuild the mean edit:** " + ", ".join(
            f"{'−' if c['weight'] < 0 else '+'}{abs(c['weight']):.2f} “{c['concept']}”" for c in sparse["concepts"][:6]))
        st.caption(f"Reconstruction cosine {sparse['cosine']:+.2f} (SpLiCE reports 0.43–0.54 on whole images); the "
                   f"concept bank spans {entry['explained_share']:.0%} of the edit (a random direction: "
                   f"{entry['explained_share_chance']:.0%}); the chosen concepts overlap across seeds with Jaccard "
                   + (f"{sparse['jaccard_across_seeds']:.2f}." if sparse.get("jaccard_across_seeds") is not None
                      else "— (one seed)."))


def group_semantics() -> None:
    """What the edits encode over every seed of one configuration, tested against a null."""
    st.header("What the edits encode, over seeds")
    groups = ui.edited_groups(store)
    if not groups:
        st.info(f"No finished {ui.editor_labels()} run yet: train one on Retrain.")
        return
    names = [g.name for g in groups]
    left, right = st.columns([3, 1])
    chosen = left.selectbox("Run group (every seed of one configuration; the newest first)", names[::-1],
                            key="decode.group")
    scoring = right.radio("Scoring", ["centred", "raw"], horizontal=True, key="decode.scoring",
                          help="centred: the concept bank's mean removed and the class names projected out")
    group = groups[names.index(chosen)]
    result = ui.semantics(store, group.runs, contrast, 1000, scoring, bridge, words)
    if len(group.runs) < 2:
        st.warning("Only one seed of this configuration has finished, so whether the reading survives another seed "
                   "is unknown.")
        if not ui.server_settings()["read_only"]:
            st.button("Train two more seeds", key="decode.more_seeds", on_click=train_more_seeds, args=(group.runs,))
    columns = st.columns(len(result["per_class"]))
    for column, entry in zip(columns, result["per_class"]):
        with column:
            class_reading(entry)
    st.caption(f"Rule: {result['verdict_rule']}. Null: {result['null']}. {result['combine']}. Scoring: "
               f"{result['scoring']}" + ("" if result["text"]["available"] else f"; no text reading: {result['text']['reason']}")
               + ".")
    with st.expander("Each seed's readings"):
        st.dataframe(pd.DataFrame([{"class": e["name"], "run": run, "seed": seed, "alignment": a, "p": p,
                                    "contrast": (e["contrast"] or {}).get("per_seed", [None] * len(e["runs"]))[i]}
                                   for e in result["per_class"] if e["attribute_alignment"]
                                   for i, (run, seed, a, p) in enumerate(zip(
                                       e["runs"], e["seeds"], e["attribute_alignment"]["per_seed"],
                                       e["attribute_alignment"]["p_per_seed"]))]), hide_index=True, width="stretch")


def rendered_means(run: dict) -> None:
    """Each class's mean support feature before and after its mean edit, drawn by the store's inverter,
    with the flip rate that makes the picture evidence (renderings re-encoded, attribute classified)."""
    classes, images = ui.render_class_means(store, run)  # a few renderings: drawn at once
    st.markdown("**The mean edit as a picture** (each class's mean support feature, before → after):")
    columns = st.columns(len(classes))
    # the flip rate renders and re-encodes every edit and null edit (seconds on a first visit): in a worker
    # process, with a placeholder below the pictures, unless it is on disk (docs/ARCHITECTURE.md §Render)
    waiting = not ui.flip_rates_ready(store, [run]) and ui.rendered_in_background(store, [run])
    flips = {} if waiting else {c["class"]: c for c in ui.flip_rate(store, run)["per_class"]}
    for column, c, pair in zip(columns, classes, images):
        column.image([ui.picture(pair[0], 128), ui.picture(pair[1], 128)], caption=["before", "after"], width=128)
        if c in flips:
            f = flips[c]
            column.caption(f"{store.class_names[c]}: the rendered attribute flips from {f['majority']} to "
                           f"{f['minority']} for {f['rate']:.0%} of {f['n']} support examples (random within-class "
                           f"edits of the same sizes: {f['null_rate']:.0%}).")


with ui.errors_shown("Cannot test what the edits encode", stop=False):
    group_semantics()

st.header("One run")
if focus is None:
    st.info(f"No {ui.editor_labels()} run with edits is picked (sidebar): only a Projection selection can be decoded.")
else:
    ui.warn_if_off_data(store, focus)
    with ui.errors_shown("Cannot decode this run", stop=False):
        support = ui.load_support(focus)
        decoded = ui.decode(store, focus, words, top, contrast, bridge)
        st.subheader(f"Mean edit per class: {focus['run_id']}")
        columns = st.columns(len(decoded["per_class"]))
        for column, entry in zip(columns, decoded["per_class"]):
            with column:
                st.metric(f"{entry['name']} ({entry['n']} edited)", f"{entry['contrast']:+.3f}",
                          help=f"cos(mean edit, “{positive}”) − cos(mean edit, “{negative}”)")
                st.plotly_chart(concept_bars(entry["top"]), width="stretch", key=f"decode.class{entry['class']}")
        if ui.renderer_missing(store):
            st.caption(ui.renderer_missing(store))
        else:
            with ui.errors_shown("Cannot render the edits", stop=False):
                rendered_means(focus)

        st.subheader("One support example")
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
