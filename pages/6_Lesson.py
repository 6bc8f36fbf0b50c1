"""Lesson: a guided, step-by-step walk through spurious correlations, written for the demo world
(SynthBirds) and drawn from whatever workspace is open."""

import numpy as np
import streamlit as st

from hsfm_core.studio import ui
from hsfm_core.analysis.compare import accuracy_table, example_rows, train_correlation
from hsfm_core.studio.figures import accuracy_bars
from hsfm_core.workspace import group_count_table

ui.page_setup("Lesson")
store = ui.open_store()
ui.run_pickers(store)
runs, _hidden = ui.finished_runs(store)
# ids sort by time: the newest run of each method wins (among runs evaluated on test)
latest = {r["method"]: r for r in runs if "test" in r["metrics"]}
labels = store.groups.names
classes, attributes = store.class_names, store.attribute_names

STEPS = ["Meet the data", "A shortcut in the training set", "The usual model fails the rare groups",
         "The features were fine: retrain only the head", "HSFM: edit a few features", "Your turn"]
step = st.session_state.setdefault("lesson.step", 0)

st.title("Lesson: spurious correlations")
st.progress((step + 1) / len(STEPS), text=f"Step {step + 1} of {len(STEPS)}: {STEPS[step]}")
if not ui.is_demo(store.path):
    st.caption("This lesson is written for the bundled demo world; it is showing the open workspace instead.")


def pictures(split: str, per_group: int = 6, groups=None) -> None:
    for g, rows in example_rows(store, split, per_group, seed=1).items():
        if groups is None or g in groups:
            st.markdown(f"**{labels[g]}**")
            ui.image_grid(store, rows, [labels[g]] * len(rows), key=f"lesson.{step}.{g}",
                          page_size=per_group)


def need(method: str) -> dict | None:
    run = latest.get(method)
    if run is None:
        st.info(f"This workspace has no finished {method.upper()} run yet; train one on the Retrain page.")
    return run


def wga(run: dict) -> float:
    return run["metrics"]["test"]["wga"]


with ui.errors_shown("This step cannot be shown for this workspace", stop=False):
    if step == 0:
        st.header("Meet the data")
        if store.has_split("train"):
            pictures("train", groups=range(store.n_groups))
        st.markdown(f"Every image has a **class** — what we want to predict: *{classes[0]}* or *{classes[1]}* — and an "
                    f"**attribute** that should not matter: *{attributes[0]}* or *{attributes[1]}*. "
                    "A class and an attribute together make a **group**. The bird is small; the background is big.")
    elif step == 1:
        st.header("A shortcut in the training set")
        correlation = train_correlation(store)
        if correlation is not None:
            for _, r in correlation.iterrows():
                st.markdown(f"- **{r['share with usual attribute']:.0%}** of training *{r['class']}* images show "
                            f"*{r['usual attribute']}*.")
        st.dataframe(group_count_table(store))
        st.markdown("So in training, the background predicts the class almost as well as the bird does — and it is much "
                    "easier to see. A model that learns “background → class” is right 95% of the time in training. "
                    "The groups where background and class disagree are rare: these are the **minority groups**. "
                    "Validation and test sets are balanced, so there the shortcut fails.")
    elif step == 2:
        st.header("The usual model fails the rare groups")
        erm = need("erm")
        if erm:
            st.plotly_chart(accuracy_bars(accuracy_table(store, [erm], "test")), width="stretch")
            worst = erm["metrics"]["test"]["worst_group"]
            st.markdown(f"Trained the usual way (ERM), the model is right on **{erm['metrics']['test']['avg_adjusted']:.0%}** "
                        "of test images when groups are weighted as in training — but only on "
                        f"**{wga(erm):.0%}** of *{labels[worst]}* images, its worst group. It learned the shortcut. "
                        "Some of the images it gets wrong:")
            predicted = ui.run_predictions(store, erm, "test")
            sel = store.select("test")
            wrong = sel.rows[(sel.g == worst) & (predicted != sel.y)][:12]
            ui.image_grid(store, wrong, [f"called {classes[1 - worst // len(attributes)]}"] * len(wrong),
                          key="lesson.wrong", page_size=12)
    elif step == 3:
        st.header("The features were fine: retrain only the head")
        erm, dfr = need("erm"), need("dfr")
        if erm and dfr:
            st.plotly_chart(accuracy_bars(accuracy_table(store, [erm, dfr], "test")), width="stretch")
            st.markdown("The image encoder (the backbone) turns each image into a feature vector; a small linear **head** "
                        "on top makes the decision. DFR keeps the features and refits only the head, on a small "
                        "*group-balanced* validation set. Worst-group accuracy goes from "
                        f"**{wga(erm):.0%}** to **{wga(dfr):.0%}**: the features already described the bird — the head "
                        "had learned to ignore it.")
    elif step == 4:
        st.header("HSFM: edit a few features")
        hsfm = need("hsfm")
        if hsfm:
            baselines = [r for r in (latest.get("erm"), latest.get("dfr")) if r]
            st.plotly_chart(accuracy_bars(accuracy_table(store, baselines + [hsfm], "test")), width="stretch")
            support = ui.load_support(hsfm)
            before = f" (ERM: {wga(latest['erm']):.0%})" if "erm" in latest else ""
            st.markdown(f"HSFM also keeps the backbone and retrains the head — on just **{len(support['indices'])}** "
                        "training features, which it *edits*: it nudges each one so that the head trained on them does "
                        f"well on the hardest validation images. Worst-group accuracy: **{wga(hsfm):.0%}**{before}.")
            if store.manifest.get("clip_space"):
                from hsfm_core.analysis.decode import decode_run, read_concepts

                with ui.errors_shown("Cannot decode the edits", stop=False):
                    bank, to_clip = ui.concept_bank(store, *read_concepts())
                    decoded = decode_run(store, support, bank, to_clip, classes, top=3)
                    st.markdown("**What do the edits say?** Comparing each class's average edit with CLIP's words:")
                    for entry in decoded["per_class"]:
                        words = ", ".join(f"“{t['concept']}”" for t in entry["top"])
                        st.markdown(f"- edits of *{entry['name']}* point toward {words} "
                                    f"(water − land contrast {entry['contrast']:+.2f})")
                    st.caption("The edits mostly move along the background — the attribute the head must learn to ignore.")
            known = np.flatnonzero(support["indices"].numpy() >= 0)  # none for an imported reference run
            if len(known):
                first = int(known[0])
                row = int(support["indices"][first])
                st.markdown("One edited training image, and the real images nearest to its feature before and "
                            "after the edit:")
                index = ui.feature_index(store)
                columns = st.columns(2)
                for column, (title, vector) in zip(columns, [("before", support["before"][first]),
                                                             ("after", support["after"][first])]):
                    ids, _ = index.search(vector.numpy()[None, :], 7)
                    ids = [i for i in ids[0] if i != row][:6]
                    with column:
                        st.markdown(f"**{title} the edit**")
                        ui.image_grid(store, ids, [labels[store.meta['g'].iat[i]] for i in ids],
                                      key=f"lesson.nn.{title}", page_size=6)
    else:
        st.header("Your turn")
        st.markdown("- **Retrain**: launch HSFM with another step size α (try `alpha=5e-4`) or more epochs, and watch "
                    "the validation worst-group accuracy climb.\n"
                    "- **Groups**: compare your run with ERM and DFR, and see which test images it fixed.\n"
                    "- **Projection**: lasso the edited points and look at the images around them.\n"
                    "- **Decode**: add your own words to the vocabulary and see which ones the edits point to.")
        st.page_link("pages/5_Retrain.py", label="Open the Retrain page", icon=":material/rocket_launch:")

back, forward = st.columns(2)
if back.button("← Back", disabled=step == 0, key="lesson.back"):
    st.session_state["lesson.step"] = step - 1
    st.rerun()
if forward.button("Next →", disabled=step == len(STEPS) - 1, key="lesson.next", type="primary"):
    st.session_state["lesson.step"] = step + 1
    st.rerun()
