"""Lesson: a guided, step-by-step walk through spurious correlations, written for the demo world
(SynthBirds) and drawn from whatever workspace is open, for any number of classes and attributes.

Which runs each step shows comes from the method registry: the baselines (methods that do not
edit features) in registry order, the first of them being "the usual model", then the feature
editors (`Method.edits_features`). A newly registered method joins its step by itself."""

import numpy as np
import streamlit as st

from hsfm_core import methods
from hsfm_core.studio import ui
from hsfm_core.instruments import tables
from hsfm_core.analysis.seeds import aggregate, format_mean_std, run_groups
from hsfm_core.studio.figures import accuracy_bars
from hsfm_core.workspace import group_count_table

ui.page_setup("Lesson")
store = ui.open_store()
ui.run_pickers(store)
runs, _hidden = ui.finished_runs(store)
latest = ui.latest_per_method([r for r in runs if "test" in r["metrics"]])  # newest run of each method
groups = store.groups
labels = groups.names
classes, attributes = groups.class_names, groups.attribute_names
demo = ui.is_demo(store.path)
baselines = [m for m in methods.all_methods() if not m.edits_features]  # ERM first (registry order)
editors = [m for m in methods.all_methods() if m.edits_features]
usual, others = baselines[0], baselines[1:]

STEPS = ["Meet the data", "A shortcut in the training set", "The usual model fails the rare groups",
         "The features were fine: retrain only the head", f"{ui.editor_labels()}: edit a few features", "Your turn"]
step = st.session_state.setdefault("lesson.step", 0)

st.title("Lesson: spurious correlations")
st.progress((step + 1) / len(STEPS), text=f"Step {step + 1} of {len(STEPS)}: {STEPS[step]}")
if not demo:
    st.caption("This lesson is written for the bundled demo world; it is showing the open workspace instead.")


def pictures(split: str, per_group: int = 6, groups=None) -> None:
    for g, rows in tables.example_rows(ui.workspace_of(store), split, per_group, seed=1).items():
        if groups is None or g in groups:
            st.markdown(f"**{labels[g]}**")
            ui.image_grid(store, rows, [labels[g]] * len(rows), key=f"lesson.{step}.{g}",
                          page_size=per_group)


def one_of(names) -> str:
    """'*a* or *b*', '*a*, *b* or *c*'; 'one of 12 (*a*, *b*, …)' for long lists."""
    names = [f"*{n}*" for n in names]
    if len(names) > 6:
        return f"one of {len(names)} ({', '.join(names[:3])}, …)"
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def need(method) -> dict | None:
    run = latest.get(method.name)
    if run is None:
        st.info(f"This workspace has no finished {method.label} run evaluated on test yet; train one on the "
                "Retrain page.")
    return run


def wga(run: dict) -> float:
    return run["metrics"]["test"]["wga"]


def over_seeds(shown) -> None:
    """Below a chart of single runs: test WGA mean ± std of each run group (same settings, other
    seeds) of the shown methods, since one seed can be off by a few points."""
    names = {m.name for m in shown}
    lines = []
    for group in run_groups(runs):
        agg = aggregate(group, "test")
        if group.method in names and agg["n"] > 1:
            lines.append(f"{group.name}: {format_mean_std(agg['wga']['mean'], agg['wga']['std'])} % "
                         f"over {agg['n']} seeds")
    if lines:
        st.caption("Worst-group accuracy on test, mean ± std over seeds — " + "; ".join(lines) + ".")


def settings_story(method) -> None:
    """The editor's settings, told over seeds: each of its run groups (the paper's settings, the ones
    tuned on validation, …) beside the baselines, with how far its edits moved."""
    rows = []
    for group in run_groups(runs):
        agg = aggregate(group, "test")
        if not agg["n"] or group.method not in {method.name, *(m.name for m in others)}:
            continue
        role = (group.runs[0]["config"].get("demo_label") or group.name) if demo else group.name
        row = {"run group": role, "seeds": agg["n"], "test worst-group acc. (%)": format_mean_std(**agg["wga"])}
        if group.method == method.name:
            diagnostics = [ui.edit_diagnostics(store, r) for r in group.finished("test")]
            row["median ‖Δ‖ / ‖z‖"] = f"{np.mean([d['median_relative_edit_norm'] for d in diagnostics]):.2f}"
            row["edits off the data"] = f"{np.mean([d['off_data_share'] for d in diagnostics]):.0%}"
        rows.append((group, agg, row))
    if not rows:
        return
    st.markdown(f"**{method.label}'s settings matter.** Each row is one setting over several seeds "
                "(mean ± std; one seed can be off by a few points):")
    st.dataframe([row for _, _, row in rows], hide_index=True, width="stretch")
    by_role = {g.runs[0]["config"].get("demo_role"): agg for g, agg, _ in rows if g.method == method.name}
    baseline = next(((methods.get(g.method).label, agg) for g, agg, _ in rows if g.method != method.name), None)
    if demo and "paper" in by_role and "tuned" in by_role and baseline:
        paper, tuned = by_role["paper"]["wga"], by_role["tuned"]["wga"]
        st.markdown(f"With **the paper's settings** — chosen for ResNet-50 features, not these — {method.label} reaches "
                    f"{format_mean_std(**paper)} % worst-group accuracy, below {baseline[0]}'s "
                    f"{format_mean_std(**baseline[1]['wga'])} %, and its edits grow larger than the features themselves: "
                    f"the edited points leave the data. **Tuned on validation** (a sweep over α and η, selected on "
                    f"validation worst-group accuracy only), it reaches {format_mean_std(**tuned)} %, and its edits "
                    "stay among real features, so the words and neighbours below describe real images.")


def edits_verdict(run: dict) -> None:
    """What the edits encode, as measured over the seeds of `run`'s configuration against a null
    (the facade's `edit_semantics`), and what would overturn each reading. Nothing here is written
    for the demo: every number comes from the open workspace."""
    from hsfm_core.analysis.seeds import group_key

    group = next((g for g in ui.edited_groups(store) if g.key == group_key(run)), None)
    if group is None:
        return
    from hsfm_core.instruments.semantics import DEFAULT_CONTRAST

    result = ui.semantics(store, group.runs, DEFAULT_CONTRAST, 1000)
    seeds = len(group.runs)
    st.markdown(f"**What do the edits encode?** Measured over {seeds} seed{'s' if seeds > 1 else ''} of "
                f"*{group.name}*, each class's average edit against the direction from its usual attribute to its rare "
                "one in the training features, and against chance: the same statistic for random differences "
                "between real training features of the class, rescaled to the edits' sizes.")
    for entry in result["per_class"]:
        align = entry["attribute_alignment"]
        if not align:
            st.markdown(f"- *{entry['name']}*: this store has no attribute labels for it, so there is no verdict.")
            continue
        minority = entry["attribute"]["minority"]
        agreeing = round(align["sign_agreement"] * len(align["per_seed"]))
        numbers = (f"alignment {align['mean']:+.2f} ± {align['std'] or 0:.2f}, {agreeing} of {len(align['per_seed'])} "
                   f"seeds agree in sign, combined p = {align['p_value']:.2g}")
        flips = [x["seed"] for x in align.get("leave_one_seed_out") or [] if x["verdict"] != entry["verdict"]]
        fragile = (f" Leaving out seed {', '.join(map(str, flips))} alone would change the reading." if flips else
                   " It holds with any one seed left out." if align.get("leave_one_seed_out") else "")
        shares = entry.get("per_example") or {}
        few = (f" Only {shares['share_agreeing']:.0%} of the individual edits agree: a few examples carry the mean."
               if shares.get("share_agreeing") is not None and shares["share_agreeing"] < 0.5 else "")
        if entry["verdict"] == "no_consistent_direction":
            st.markdown(f"- *{entry['name']}*: **no consistent direction** ({numbers}). It would take every seed "
                        f"pointing the same way, with a combined p below {result['alpha']}, to say more.{fragile}")
        else:
            toward = entry["verdict"] == "toward_minority"
            st.markdown(f"- *{entry['name']}*: the edits point **{'toward' if toward else 'away from'} {minority}** "
                        f"({numbers}). One more seed pointing the other way, or a combined p above "
                        f"{result['alpha']}, would overturn this.{fragile}{few}")
    if seeds < 3:
        st.caption("Fewer than three seeds: train more (Decode offers it) before trusting any reading.")
    st.caption(f"Rule: {result['verdict_rule']}. Decode shows the null, the concepts and each seed.")


def rendered_edit(run: dict) -> None:
    """One support example's feature drawn along its edit z + t·Δ by the store's renderer, beside the measured
    flip rate of its run group's edits against the null (docs/ARCHITECTURE.md §Render). The class and the
    example are picked by the rule stated under the pictures (`ui.lesson_rendered_example`); every number
    comes from the open workspace."""
    from hsfm_core.analysis.seeds import group_key

    st.markdown("**What would an edited feature look like?**")
    missing = ui.renderer_missing(store)
    if missing:
        st.caption(f"No pictures for this workspace: {missing}")
        return
    group = next((g for g in ui.edited_groups(store) if g.key == group_key(run)), None)
    seeds = group.runs if group else [run]
    # the first visit renders and re-encodes every seed's edits and their null edits (seconds): a worker process
    # does it while a placeholder polls the render cache on disk, which every later visit, and server, reads
    if not ui.flip_rates_ready(store, seeds) and ui.rendered_in_background(store, seeds):
        return
    with st.spinner(f"Rendering the edits of {len(seeds)} seed{'s' if len(seeds) > 1 else ''} and reading the "
                    "pictures back (the first visit only)…", show_time=True):  # only when no worker could
        flips = ui.flip_rates_over_seeds(store, seeds)
    usual_run = latest.get(usual.name)
    worst = usual_run["metrics"]["test"]["worst_group"] if usual_run else None
    chosen = ui.lesson_rendered_example(store, seeds, flips, worst)
    if chosen is None:
        st.caption("This run's support examples are not rows of this store, so there is nothing to draw.")
        return
    name = classes[chosen["class"]]
    strip = ui.render_strip(store, chosen["run"], [chosen["support"]])[0]  # the Neighbors strip, cached
    seed = f" of seed {chosen['seed']}" if len(seeds) > 1 and chosen["seed"] is not None else ""
    row = chosen["row"]  # -1: an imported run's example, not a row of this store
    what = f"a *{labels[store.meta['g'].iat[row]]}* training image" if row >= 0 else f"a *{name}* example"
    st.markdown(f"A **renderer** — a small network trained to turn this backbone's features back into images — "
                f"draws support example #{chosen['support']}{seed}, {what}, at z + t·Δ: t = 0 is its original "
                f"feature z, t = 1 its edited feature z + Δ, and beyond 1 the edit is carried further than "
                f"{methods.get(run['method']).label} took it.")
    real = ui.thumbnail(str(store.image_path(row)), 96) if row >= 0 and store.image_root else None
    reads = {0.0: chosen["before"], 1.0: chosen["after"]}
    tiles = ([(real, "the image")] if real else []) + [
        (ui.picture(image, 96), f"t = {t:g}" + (f" · reads {reads[t]}" if t in reads else ""))
        for t, image in zip(ui.STRIP_STEPS, strip)]
    st.image([p for p, _ in tiles], caption=[c for _, c in tiles], width=96)
    st.caption("Beyond t = 1 the rendering is an extrapolation past the edit, and likely past the data.")
    st.markdown(f"Read back, the rendering of z shows *{chosen['before']}* and that of z + Δ *{chosen['after']}*"
                + (": under its edit, this image's attribute flips." if chosen["flipped"] else
                   ": this example's rendered attribute does not flip."))
    classifier = flips["per_run"][0]["classifier"]
    over = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    st.markdown(f"**Does the picture change?** Each rendering is encoded again by the same backbone and its "
                f"attribute classified by the store's {classifier} classifier. The **flip rate** of a class is the "
                "share of its support examples whose rendering shows the class's usual training attribute before the "
                "edit and another one after it. "
                "Random edits of the same sizes — differences between two real training features of the class — "
                f"give the rate to expect by chance ({over}):")
    for entry in flips["per_class"]:
        mark = "**" if entry["class"] == chosen["class"] else ""
        st.markdown(f"- {mark}*{entry['name']}*{mark}: *{entry['majority']}* → *{entry['minority']}* for "
                    f"**{format_mean_std(entry['rate_mean'], entry['rate_std'] if len(seeds) > 1 else None)} %** of "
                    f"{entry['n']} support examples; random edits: "
                    f"{format_mean_std(entry['null_mean'], entry['null_std'] if len(seeds) > 1 else None)} %. "
                    f"Above chance in {entry['seeds_above_null']} of {len(seeds)} seed{'s' if len(seeds) > 1 else ''}.")
    mine = next(e for e in flips["per_class"] if e["class"] == chosen["class"])
    above, total = mine["seeds_above_null"], len(seeds)
    st.markdown(f"So for *{name}*, " + (
        "the edits flip the rendered attribute more often than random edits of their size in every seed: the "
        "pictures show the attribute the edits move." if above == total else
        f"the edits flip the rendered attribute more often than chance in only {above} of {total} seeds: the "
        "pictures do not show a consistent change of attribute." if above else
        "the edits flip the rendered attribute no more often than random edits of their size: whatever the edits "
        "encode, these renderings do not show it as a change of attribute.")
        + (" One seed is not enough to tell: train more." if total < 3 else ""))
    rule = (f"the class of {usual.label}'s worst test group (*{labels[worst]}*)" if chosen["by"] == "worst group" else
            "the class whose edits flip the rendered attribute most often above chance")
    st.caption(f"Shown by rule: {rule}; its first support example whose rendering flips, in seed order; when none "
               "does, its first support example. The rates count every support example, whatever is shown.")


body = st.container()  # the step; drawn after the buttons below it, so a step still rendering can be left
back, forward = st.columns(2)
if back.button("← Back", disabled=step == 0, key="lesson.back"):
    st.session_state["lesson.step"] = step - 1
    st.rerun()
if forward.button("Next →", disabled=step == len(STEPS) - 1, key="lesson.next", type="primary"):
    st.session_state["lesson.step"] = step + 1
    st.rerun()

with body, ui.errors_shown("This step cannot be shown for this workspace", stop=False):
    if step == 0:
        st.header("Meet the data")
        if store.has_split("train"):
            pictures("train", groups=range(groups.n_groups))
        st.markdown(f"Every image has a **class** — what we want to predict: {one_of(classes)} — and an "
                    f"**attribute** that should not matter: {one_of(attributes)}. "
                    f"A class and an attribute together make a **group**: {groups.n_classes} classes × "
                    f"{groups.n_attributes} attributes = {groups.n_groups} groups."
                    + (" The bird is small; the background is big." if demo else ""))
    elif step == 1:
        st.header("A shortcut in the training set")
        correlation = tables.train_correlation(ui.workspace_of(store))
        if correlation is not None:
            for _, r in correlation.iterrows():
                st.markdown(f"- **{r['share with usual attribute']:.0%}** of training *{r['class']}* images show "
                            f"*{r['usual attribute']}*.")
        st.dataframe(group_count_table(store))
        if demo:
            st.markdown("So in training, the background predicts the class almost as well as the bird does — and it "
                        "is much easier to see. A model that learns “background → class” is right 95% of the time in "
                        "training. The groups where background and class disagree are rare: these are the "
                        "**minority groups**. Validation and test sets are balanced, so there the shortcut fails.")
        else:
            st.markdown("When most training images of a class share one attribute, the attribute alone goes a long "
                        "way toward the class — and it may be easier to see than the class itself. The groups that "
                        "break the pattern are rare: these are the **minority groups**. Where they are less rare "
                        "(validation and test, when balanced), the shortcut fails.")
    elif step == 2:
        st.header("The usual model fails the rare groups")
        first = need(usual)
        if first:
            st.plotly_chart(accuracy_bars(tables.accuracy_table(ui.workspace_of(store), [first], "test")), width="stretch")
            over_seeds([usual])
            worst = first["metrics"]["test"]["worst_group"]
            st.markdown(f"Trained the usual way ({usual.label}), the model is right on "
                        f"**{first['metrics']['test']['avg_adjusted']:.0%}** of test images when groups are weighted "
                        f"as in training — but only on **{wga(first):.0%}** of *{labels[worst]}* images, its worst "
                        "group. It learned the shortcut. Some of the images it gets wrong:"
                        if first["metrics"]["test"]["avg_adjusted"] is not None else
                        f"Trained the usual way ({usual.label}), the model is right on only **{wga(first):.0%}** of "
                        f"*{labels[worst]}* test images, its worst group. Some of the images it gets wrong:")
            predicted = ui.run_predictions(store, first, "test")
            sel = store.select("test")
            wrong = np.flatnonzero((sel.g == worst) & (predicted != sel.y))[:12]
            ui.image_grid(store, sel.rows[wrong], [f"called {classes[p]}" for p in predicted[wrong]],
                          key="lesson.wrong", page_size=12)
    elif step == 3:
        st.header("The features were fine: retrain only the head")
        first = need(usual)
        retrained = [(m, latest[m.name]) for m in others if m.name in latest]
        if first and not retrained:
            st.info(f"This workspace has no finished {' or '.join(m.label for m in others)} run evaluated on test "
                    "yet; train one on the Retrain page.")
        if first and retrained:
            st.plotly_chart(accuracy_bars(tables.accuracy_table(ui.workspace_of(store), [first] + [r for _, r in retrained], "test")),
                            width="stretch")
            over_seeds([usual] + [m for m, _ in retrained])
            st.markdown("The image encoder (the backbone) turns each image into a feature vector; a small linear "
                        "**head** on top makes the decision. These methods keep the features and refit only the head:\n"
                        + "\n".join(f"- **{m.label}** — {m.description}." for m, _ in retrained))
            st.markdown(f"Worst-group accuracy goes from **{wga(first):.0%}** ({usual.label}) to "
                        + ", ".join(f"**{wga(r):.0%}** ({m.label})" for m, r in retrained)
                        + ": the features already described the class — the head had learned to ignore it.")
    elif step == 4:
        st.header(STEPS[4])
        edited = [(m, latest[m.name]) for m in editors if m.name in latest]
        if not edited:
            need(editors[0])
        for method, run in edited:
            settings_story(method)
            baseline_runs = [latest[m.name] for m in baselines if m.name in latest]
            st.plotly_chart(accuracy_bars(tables.accuracy_table(ui.workspace_of(store), baseline_runs + [run], "test")), width="stretch",
                            key=f"lesson.bars.{method.name}")
            over_seeds([method])
            support = ui.load_support(run)
            before = f" ({usual.label}: {wga(latest[usual.name]):.0%})" if usual.name in latest else ""
            st.markdown(f"{method.label} also keeps the backbone and retrains the head — on just "
                        f"**{len(support['indices'])}** training features, which it *edits* ({method.description}). "
                        f"Worst-group accuracy: **{wga(run):.0%}**{before}.")
            with ui.errors_shown("Cannot test what the edits encode", stop=False):
                edits_verdict(run)
            known = np.flatnonzero(support["indices"].numpy() >= 0)  # none for an imported reference run
            if len(known):
                first = int(known[0])
                row = int(support["indices"][first])
                st.markdown("One edited training image, and the real images nearest to its feature before and "
                            "after the edit:")
                columns = st.columns(2)
                for column, title in zip(columns, ("before", "after")):
                    found = ui.neighbors(store, run, support=first, edited=title == "after", k=6)["neighbors"]
                    ids = [n["row"] for n in found]
                    with column:
                        st.markdown(f"**{title} the edit**")
                        ui.image_grid(store, ids, [labels[store.meta['g'].iat[i]] for i in ids],
                                      key=f"lesson.nn.{method.name}.{title}", page_size=6)
            with ui.errors_shown("Cannot render the edits", stop=False):
                rendered_edit(run)
    else:
        st.header("Your turn")
        st.markdown(f"- **Retrain**: launch {ui.editor_labels()} with other settings (the form lists each one) or "
                    "more epochs, and watch the validation worst-group accuracy climb.\n"
                    f"- **Groups**: compare your run with {', '.join(m.label for m in baselines)}, and see which test "
                    "images it fixed.\n"
                    "- **Projection**: lasso the edited points and look at the images around them.\n"
                    "- **Decode**: add your own words to the vocabulary and see which ones the edits point to.")
        st.page_link("pages/5_Retrain.py", label="Open the Retrain page", icon=":material/rocket_launch:")
