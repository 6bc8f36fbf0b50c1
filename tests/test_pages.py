"""Every page of the app, run headless with Streamlit's AppTest on a small real workspace
(tests/appdata.py): it renders, its widgets change what is shown, and bad input is a message."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from hsfm_core.studio import ui
from hsfm_core.analysis.compare import predictions, prediction_flips, run_label
from hsfm_core.analysis.decode import clip_space_map, decode_run, encode_concepts, read_concepts
from hsfm_core.features import FeatureStore
from hsfm_core.analysis.projection import project
from hsfm_core.runs import list_runs, load_support

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_page(monkeypatch, workspace, page: str | None = None) -> AppTest:
    monkeypatch.setenv("HSFM_WORKSPACE", str(workspace))
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


def runs_by_method(workspace) -> dict:
    return {r["method"]: r for r in list_runs(workspace)}


def image_captions(at) -> list[str]:
    return [caption for element in at.get("image") for caption in element.captions]


def texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info])


def test_home_shows_the_dataset_card_and_compared_runs(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace)
    counts = at.dataframe[0].value
    assert counts.loc["waterbird · land background", "train"] == 6 and counts.loc["landbird · land background", "test"] == 10
    assert "87% of train landbird examples have land background" in texts(at)
    assert len(image_captions(at)) == 4 * 8  # example thumbnails, 8 per group
    compared = at.dataframe[2].value
    assert len(compared) == 3 and {"ERM", "DFR", "HSFM"} == {i.split(" · ")[0] for i in compared.index}
    assert at.sidebar.multiselect[0].value == [runs_by_method(app_workspace)[m]["run_id"] for m in ("erm", "dfr", "hsfm")]


def test_home_switches_workspace_and_keeps_the_old_one_on_a_bad_folder(monkeypatch, app_workspace, tmp_path):
    at = open_page(monkeypatch, app_workspace)
    at.text_input[0].set_value(str(tmp_path / "nowhere"))
    at.button[0].click().run()
    assert not at.exception
    assert "Could not open that workspace" in at.error[0].value and "nowhere" in at.error[0].value
    assert at.metric[0].value == "172"  # still the app workspace
    other = tmp_path / "other"
    from tests.test_app import small_workspace

    small_workspace(other)
    at.text_input[0].set_value(str(other))
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert at.metric[0].value == "8"
    assert "No finished runs yet" in at.sidebar.info[0].value


def test_groups_page_shows_each_runs_groups_and_what_changed(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace, "1_Groups")
    runs = runs_by_method(app_workspace)
    averages = at.dataframe[0].value
    assert averages.loc[run_label(runs["hsfm"]), "worst-group accuracy"] == runs["hsfm"]["metrics"]["test"]["wga"]
    at.radio[0].set_value("val").run()
    averages = at.dataframe[0].value
    assert averages.loc[run_label(runs["erm"]), "worst-group accuracy"] == runs["erm"]["metrics"]["val"]["wga"]
    confusion = at.dataframe[2].value
    assert confusion.drop(columns="accuracy").to_numpy().sum() == 40
    # what changed, ERM → HSFM on val, against a direct computation
    store = FeatureStore.open(app_workspace)
    flips = prediction_flips(store, predictions(store, runs["erm"], "val"), predictions(store, runs["hsfm"], "val"), "val")
    counts = at.dataframe[3].value
    assert counts["fixed"].sum() == (flips["change"] == "fixed").sum()
    assert counts["broken"].sum() == (flips["change"] == "broken").sum()
    # fewer runs compared in the sidebar → fewer rows everywhere, and no flips view
    at.sidebar.multiselect[0].set_value([runs["dfr"]["run_id"]]).run()
    assert list(at.dataframe[0].value.index) == [f"DFR · val_scaler · {runs['dfr']['run_id']}"]
    assert "Compare two or more runs" in texts(at)


def test_projection_selection_drives_counts_and_grid_and_survives_recolouring(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace, "2_Projection")
    at.get("form_submit_button")[0].click().run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 1
    store = FeatureStore.open(app_workspace)
    hsfm = runs_by_method(app_workspace)["hsfm"]
    frame = pd.read_parquet(project(store, hsfm))  # the map the page drew (default parameters): a cache hit
    map_name = f"{store.content_hash}:{hsfm['run_id']}:15:0.1"
    # AppTest cannot draw a lasso: set the page's own selection state, as a lasso does
    chosen = np.flatnonzero((frame["group"] == 1).to_numpy() & (frame["kind"] != "edited").to_numpy())[:5]
    at.session_state[ui.SELECTION_KEY] = {"map": map_name, "store": store.content_hash, "positions": chosen.tolist(),
                                          "rows": sorted(frame["row"].iloc[chosen].astype(int)),
                                          "support": [], "run_id": hsfm["run_id"]}
    at.run()
    summary = at.dataframe[0].value
    assert summary.loc["landbird · water background", "points"] == 5 and summary["points"].sum() == 5
    assert "Selection: 5 images" in texts(at)
    assert len(image_captions(at)) == 5 and all(c.startswith("landbird · water background") for c in image_captions(at))
    at.get("button_group")[0].set_value("split").run()  # re-colour
    assert not at.exception and at.dataframe[0].value["points"].sum() == 5
    next(b for b in at.button if b.label == "Clear selection").click().run()
    assert ui.SELECTION_KEY not in at.session_state and not at.dataframe


def test_decode_page_scores_the_runs_edits_and_the_selection(monkeypatch, app_workspace, tmp_path):
    at = open_page(monkeypatch, app_workspace, "3_Decode")
    store = FeatureStore.open(app_workspace)
    hsfm = runs_by_method(app_workspace)["hsfm"]
    to_clip, encoder = clip_space_map(store)
    bank = encode_concepts(encoder, *read_concepts(), cache_dir=tmp_path)
    expected = decode_run(store, load_support(hsfm), bank, to_clip, store.class_names)
    assert [m.value for m in at.metric][:2] == [f"{e['contrast']:+.3f}" for e in expected["per_class"]]
    at.selectbox(key="decode.negative").set_value("duck").run()  # another contrast changes the numbers
    changed = decode_run(store, load_support(hsfm), bank, to_clip, store.class_names,
                         contrast=("water background", "duck"))
    assert [m.value for m in at.metric][:2] == [f"{e['contrast']:+.3f}" for e in changed["per_class"]]
    # a Projection selection is described too
    rows = store.rows("test", [2])[:4].tolist()
    selection = {"map": "x", "store": store.content_hash, "positions": [], "rows": rows, "support": [0, 1],
                 "run_id": hsfm["run_id"]}
    at.session_state[ui.SELECTION_KEY] = selection
    at.run()
    assert "4 selected images" in texts(at) and "Mean edit of the 2 selected support examples" in texts(at)
    at.session_state[ui.SELECTION_KEY] = {**selection, "store": "blake2b:a-replaced-store"}  # rows of other images
    at.run()
    assert "4 selected images" not in texts(at) and "Select points on the Projection page" in texts(at)


def test_decode_page_edits_its_vocabulary_and_refuses_a_bad_one(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace, "3_Decode")
    at.session_state["decode.vocabulary"] = pd.DataFrame({"concept": ["water background", "land background", "a red bird"],
                                                          "category": ["bg", "bg", "bird"]})
    at.run()
    assert not at.exception and at.selectbox(key="decode.positive").options == ["water background", "land background",
                                                                              "a red bird"]
    at.session_state["decode.vocabulary"] = pd.DataFrame({"concept": ["ocean", "ocean"], "category": ["", ""]})
    at.run()
    assert "no duplicates (repeated: ocean)" in at.error[0].value


def test_decode_page_explains_a_store_without_clip_text(monkeypatch, tmp_path):
    from tests.gaussian import gaussian_workspace, hsfm_and_erm_runs

    gaussian_workspace(tmp_path / "ws")
    hsfm_and_erm_runs(tmp_path / "ws")
    at = open_page(monkeypatch, tmp_path / "ws", "3_Decode")
    assert "not in a CLIP joint space" in at.warning[0].value
    at.text_input(key="decode.bridge").set_value(str(tmp_path / "missing")).run()
    assert not at.exception and "Cannot decode with this store" in at.error[0].value


def test_neighbors_page_compares_original_and_edited_neighbours(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace, "4_Neighbors")
    assert [h.value for h in at.subheader] == ["What the edited feature looks like", "Nearest to the original feature",
                                               "Nearest to the edited feature"]
    before, after = at.dataframe[0].value, at.dataframe[1].value
    assert before.to_numpy().sum() == 16 and after.to_numpy().sum() == 16
    neighbours = [c for c in image_captions(at) if " · cos " in c]
    assert len(neighbours) == 32
    assert len(at.metric) == 3 and "%" in at.metric[0].value
    at.slider(key="neighbors.k").set_value(8).run()
    assert at.dataframe[0].value.to_numpy().sum() == 8
    at.radio(key="neighbors.mode").set_value("Any image (store row)").run()
    at.number_input(key="neighbors.row").set_value(200).run()
    assert not at.exception and [h.value for h in at.subheader] == ["Nearest to this image's feature"]


def test_neighbors_strip_and_slider_render_the_edit_path(monkeypatch, app_workspace):
    """The render view: image | render(z) | render(z + Δ) | nearest real image, the strip along z + t·Δ with the
    chosen t marked, and the large rendering following the slider (an extrapolation past t = 1 says so)."""
    at = open_page(monkeypatch, app_workspace, "4_Neighbors")
    captions = image_captions(at)
    assert {"render(z)", "render(z + Δ)", "nearest real image to z + Δ"} <= set(captions)
    strip = [c for c in captions if c.startswith("t = ")]
    assert strip == [f"t = {s:g}" + (" ◀" if s == 1.0 else "") for s in ui.STRIP_STEPS]
    assert "render(z + 1·Δ)" in captions
    assert not any("extrapolation" in c.value for c in at.caption)

    def big(a) -> str:  # the large rendering's media URL: a content hash, so another picture has another URL
        t = a.select_slider(key="neighbors.t").value
        return next(e for e in a.get("image") if e.captions == [f"render(z + {t:g}·Δ)"]).proto.imgs[0].url

    at_one = big(at)
    at.select_slider(key="neighbors.t").set_value(1.5).run()
    assert not at.exception, at.exception
    captions = image_captions(at)
    assert "render(z + 1.5·Δ)" in captions and "t = 1.5 ◀" in captions and "t = 1" in captions
    assert any("extrapolation" in c.value for c in at.caption)
    assert big(at) != at_one  # another rendering is shown, not the same picture relabelled
    at.select_slider(key="neighbors.t").set_value(0.0).run()
    assert "render(z + 0·Δ)" in image_captions(at)


def test_lesson_walks_through_every_step(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace, "6_Lesson")
    headers = []
    for _ in range(6):
        assert not at.exception and not at.error, (at.exception, at.error)
        headers.append(at.header[0].value)
        next_button = at.button(key="lesson.next")
        if next_button.disabled:
            break
        next_button.click().run()
    assert headers == ["Meet the data", "A shortcut in the training set", "The usual model fails the rare groups",
                       "The features were fine: retrain only the head", "HSFM: edit a few features", "Your turn"]
    at.button(key="lesson.back").click().run()
    assert at.header[0].value == "HSFM: edit a few features"
    lesson = texts(at)  # the measured verdict (semantics over the run group), not a caption written by hand
    assert "What do the edits encode?" in lesson and "combined p =" in lesson
    assert "The edits mostly move along the background" not in lesson


def lesson_editors_step(monkeypatch, workspace) -> AppTest:
    at = open_page(monkeypatch, workspace, "6_Lesson")
    for _ in range(4):
        at.button(key="lesson.next").click().run()
    assert not at.exception, at.exception
    assert at.header[0].value == "HSFM: edit a few features"
    return at


def rendering_placeholder(at) -> bool:
    """Whether a render view shows its placeholder (its work runs in a worker process)."""
    return any("in the background" in (p.proto.text or "") for p in at.get("progress"))


def until_rendered(at, timeout: float = 300) -> AppTest:
    """Rerun the page, as the placeholder's fragment does each second, until the render view is drawn."""
    deadline = time.monotonic() + timeout
    while rendering_placeholder(at):
        assert time.monotonic() < deadline, "the render view was never filled in"
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception
    return at


def private_copy(app_workspace, tmp_path) -> Path:
    """The app's workspace without its caches: nothing rendered yet."""
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace, ignore=shutil.ignore_patterns("cache"))
    return workspace


def test_lesson_renders_an_edit_beside_its_measured_flip_rate(monkeypatch, app_workspace):
    """The editors' step draws one support example along z + t·Δ (the Neighbors strip, read back at t = 0 and 1)
    and gives every class's flip rate beside its null exactly as the facade measures them; the example is the
    one the stated rule picks (the class of ERM's worst test group, its first example whose rendering flips)."""
    at = until_rendered(lesson_editors_step(monkeypatch, app_workspace))
    assert not at.error, [e.value for e in at.error]
    check_lesson_rendering(at, app_workspace)


def check_lesson_rendering(at, workspace) -> None:
    from hsfm_core.instruments.render import flip_rate

    runs = runs_by_method(workspace)
    measured = flip_rate(workspace, runs["hsfm"])  # the run group holds this one seed
    lesson = texts(at)
    for entry in measured["per_class"]:
        assert (f"*{entry['majority']}* → *{entry['minority']}* for **{100 * entry['rate']:.1f} %** of {entry['n']} "
                f"support examples; random edits: {100 * entry['null_rate']:.1f} %. Above chance in "
                f"{int(entry['rate'] > entry['null_rate'])} of 1 seed.") in lesson
    store = FeatureStore.open(workspace)
    worst = runs["erm"]["metrics"]["test"]["worst_group"]
    examples = [e for e in measured["per_example"] if e["class"] == store.groups.class_of(worst)]
    chosen = next((e for e in examples if e["flipped"]), examples[0])
    group = store.groups.names[store.meta["g"].iat[chosen["row"]]]
    assert f"draws support example #{chosen['support']}, a *{group}* training image" in lesson
    assert f"the class of ERM's worst test group (*{store.groups.names[worst]}*)" in lesson
    assert "One seed is not enough to tell" in lesson

    (strip,) = [e for e in at.get("image") if "the image" in e.captions]
    reads = {0.0: f" · reads {chosen['before']}", 1.0: f" · reads {chosen['after']}"}
    assert strip.captions == ["the image"] + [f"t = {t:g}" + reads.get(t, "") for t in ui.STRIP_STEPS]
    urls = [image.url for image in strip.proto.imgs]  # media URLs are content hashes
    assert len(set(urls[1:])) > 1  # the picture changes along the edit
    at.run()  # a revisit: the same pictures, from the caches
    (again,) = [e for e in at.get("image") if "the image" in e.captions]
    assert [image.url for image in again.proto.imgs] == urls


def test_lesson_step_shows_a_placeholder_then_fills_in_its_rendering(monkeypatch, app_workspace, tmp_path):
    """Rendering never blocks the page: on a workspace with nothing rendered, the editors' step shows the rest
    of the step, Back / Next and a placeholder while a worker process renders and reads back the edits; rerun
    (as the placeholder's fragment does), it fills in the same pictures and rates as the facade measures. Another
    session, later, draws them at once from the render cache on disk."""
    from hsfm_core.render.background import JOBS

    workspace = private_copy(app_workspace, tmp_path)
    at = lesson_editors_step(monkeypatch, workspace)
    assert rendering_placeholder(at) and not at.error, [e.value for e in at.error]
    assert not [e for e in at.get("image") if any(c.startswith("t = ") for c in e.captions)]
    assert "Does the picture change?" not in texts(at) and "What do the edits encode?" in texts(at)
    assert not at.button(key="lesson.back").disabled and not at.button(key="lesson.next").disabled
    assert list((workspace / JOBS).glob("*.job.json")) or list((workspace / JOBS).glob("*.log"))  # a worker started
    until_rendered(at)
    assert not at.error, [e.value for e in at.error]
    check_lesson_rendering(at, workspace)
    again = lesson_editors_step(monkeypatch, workspace)  # another session: no placeholder, the pictures at once
    assert not rendering_placeholder(again) and any(c.startswith("t = 1 · reads") for c in image_captions(again))


def test_lesson_step_computes_in_the_foreground_when_no_worker_can_start(monkeypatch, app_workspace, tmp_path):
    """Where the render worker cannot start (its jobs folder cannot be made: here a file stands in its place),
    the step computes its flip rates in the foreground, as it did before, and shows them at once."""
    from hsfm_core.render.background import JOBS

    workspace = private_copy(app_workspace, tmp_path)
    (workspace / JOBS).parent.mkdir(parents=True)
    (workspace / JOBS).write_text("not a folder")
    at = lesson_editors_step(monkeypatch, workspace)
    assert not rendering_placeholder(at) and not at.error, [e.value for e in at.error]
    check_lesson_rendering(at, workspace)


def test_decode_draws_the_class_means_at_once_and_fills_in_their_flip_rate(monkeypatch, app_workspace, tmp_path):
    """Decode's one-run render view: the class means' pictures (a few renderings) at once, the flip rate below
    them filled in by a worker process (a placeholder meanwhile), as the facade measures it."""
    from hsfm_core.instruments.render import flip_rate

    workspace = private_copy(app_workspace, tmp_path)
    at = open_page(monkeypatch, workspace, "3_Decode")
    assert rendering_placeholder(at) and not at.error, [e.value for e in at.error]
    assert image_captions(at).count("before") == 2 and "the rendered attribute flips" not in texts(at)
    until_rendered(at)
    measured = flip_rate(workspace, runs_by_method(workspace)["hsfm"])
    for f in measured["per_class"]:
        assert (f"{f['name']}: the rendered attribute flips from {f['majority']} to {f['minority']} for "
                f"{f['rate']:.0%} of {f['n']} support examples (random within-class edits of the same sizes: "
                f"{f['null_rate']:.0%}).") in texts(at)


def test_lesson_says_why_it_has_no_pictures_for_a_store_without_a_renderer(monkeypatch, tmp_path):
    from tests.gaussian import gaussian_workspace, hsfm_and_erm_runs

    gaussian_workspace(tmp_path / "ws")
    hsfm_and_erm_runs(tmp_path / "ws")
    at = lesson_editors_step(monkeypatch, tmp_path / "ws")
    assert any(c.value.startswith("No pictures for this workspace: No renderer inverts this store's backbone yet")
               and "train-renderer" in c.value for c in at.caption)
    assert not [e for e in at.get("image") if any(c.startswith("t = ") for c in e.captions)]
    assert "flip rate" not in texts(at)


@pytest.mark.parametrize("page", ["1_Groups", "2_Projection", "3_Decode", "4_Neighbors", "6_Lesson"])
def test_every_page_reports_a_broken_workspace(monkeypatch, tmp_path, page):
    (tmp_path / "ws").mkdir()
    monkeypatch.setenv("HSFM_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception
    assert "Cannot open the workspace" in at.error[0].value and "no manifest.json" in at.error[0].value


def test_runs_from_another_store_are_hidden_and_a_corrupt_run_is_a_message(monkeypatch, app_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    runs = runs_by_method(workspace)
    config = json.loads((runs["erm"]["path"] / "config.json").read_text())
    (runs["erm"]["path"] / "config.json").write_text(json.dumps({**config, "store_hash": "blake2b:other"}))
    (runs["dfr"]["path"] / "head.safetensors").write_bytes(b"not a safetensors file")
    at = open_page(monkeypatch, workspace, "1_Groups")
    assert f"1 run(s) trained on another store are hidden: {runs['erm']['run_id']}" in "\n".join(
        c.value for c in at.sidebar.caption)
    at.selectbox(key="groups.confusion_run").set_value(runs["dfr"]["run_id"]).run()
    assert not at.exception and "Cannot evaluate that run" in at.error[0].value


def test_damaged_runs_are_messages_and_the_pages_keep_working(monkeypatch, app_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    runs = runs_by_method(workspace)
    (runs["hsfm"]["path"] / "support.safetensors").write_bytes(b"truncated")
    (runs["dfr"]["path"] / "metrics.json").write_text("{not json")
    at = open_page(monkeypatch, workspace, "3_Decode")
    errors = [e.value for e in at.error]  # the edit diagnostics say so too, each part of the page on its own
    assert any("Cannot decode this run" in e and "support.safetensors cannot be read" in e for e in errors)
    assert any(f"Run {runs['dfr']['run_id']} cannot be read" in w.value for w in at.sidebar.warning)
    at.switch_page("pages/4_Neighbors.py").run()
    assert not at.exception and any("Cannot read the run's edits" in e.value for e in at.error)
    at.session_state["lesson.step"] = 4
    at.switch_page("pages/6_Lesson.py").run()
    assert not at.exception and any("This step cannot be shown" in e.value for e in at.error)
    at.button(key="lesson.next").click().run()  # the walk-through goes on
    assert at.header[0].value == "Your turn"
    at.switch_page("pages/1_Groups.py").run()
    assert not at.exception and len(at.dataframe[0].value) == 2  # ERM and HSFM; DFR is hidden


def test_an_imported_run_without_store_rows_still_works(monkeypatch, app_workspace, tmp_path):
    """Reference imports keep support indices −1 (their rows are not in the store)."""
    from safetensors.torch import load_file, save_file

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    path = runs_by_method(workspace)["hsfm"]["path"] / "support.safetensors"
    support = load_file(path)
    save_file({**support, "indices": support["indices"] * 0 - 1}, path)
    at = open_page(monkeypatch, workspace, "4_Neighbors")
    assert not at.exception and not at.error
    assert "not rows of this store" in texts(at)
    at.session_state["lesson.step"] = 4
    at.switch_page("pages/6_Lesson.py").run()
    assert not at.exception and not at.error and at.header[0].value == "HSFM: edit a few features"
    at.switch_page("pages/3_Decode.py").run()
    assert not at.exception and not at.error


def test_decode_vocabulary_edits_survive_a_visit_to_another_page(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace, "3_Decode")
    edited = pd.DataFrame({"concept": ["water background", "land background", "a tiny bird"],
                           "category": ["bg", "bg", "bird"]})
    at.session_state["decode.edited"] = edited  # what the editor returned after the user's edits
    at.switch_page("pages/1_Groups.py").run()  # Streamlit drops the editor's own state here
    at.switch_page("pages/3_Decode.py").run()
    assert not at.exception
    assert at.selectbox(key="decode.positive").options == list(edited["concept"])


def test_groups_shows_seed_statistics_and_exports_the_table(monkeypatch, app_workspace, tmp_path):
    from hsfm_core.analysis.seeds import aggregate, format_mean_std, run_groups
    from hsfm_core.train import train

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    train(workspace, "dfr", overrides=["n_refits=3"], seeds=[1, 2])  # with the workspace's seed 0: one group of 3
    at = open_page(monkeypatch, workspace, "1_Groups")
    dfr = [r for r in list_runs(workspace) if r["method"] == "dfr"]
    assert sorted(at.sidebar.multiselect[0].value) == sorted(
        [runs_by_method(workspace)[m]["run_id"] for m in ("erm", "hsfm")] + [r["run_id"] for r in dfr])
    assert at.radio(key="groups.view").value == "mean ± std over seeds"
    averages = at.dataframe[0].value
    expected = format_mean_std(**aggregate(next(g for g in run_groups(dfr)), "test")["wga"])
    assert "±" in expected and averages.loc[averages.index.str.startswith("DFR"), "worst-group accuracy"].item() == expected
    assert averages.loc[averages.index.str.startswith("DFR"), "seeds"].item() == 3
    downloads = [d for d in at.get("download_button")]
    assert len(downloads) >= 3
    at.radio(key="groups.view").set_value("single runs").run()
    assert not at.exception and len(at.dataframe[0].value) == 5  # ERM, HSFM and the three DFR seeds


def test_edits_off_the_data_are_flagged(monkeypatch, app_workspace, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    run = runs_by_method(workspace)["hsfm"]
    support = load_file(run["path"] / "support.safetensors")
    at = open_page(monkeypatch, workspace, "3_Decode")
    assert not [w for w in at.warning if "off the data" in w.value] and "Median edit" in texts(at)  # tiny settings
    support["after"] = support["before"] + 50 * torch.randn_like(support["before"])  # far from every real feature
    save_file(support, run["path"] / "support.safetensors")
    ui._support.clear()
    ui._edit_diagnostics.clear()
    at = open_page(monkeypatch, workspace, "3_Decode")
    assert any("The edits are off the data" in w.value and "extrapolations" in w.value for w in at.warning)
    at.switch_page("pages/4_Neighbors.py").run()
    assert any("The edits are off the data" in w.value for w in at.warning)
    at.switch_page("pages/2_Projection.py").run()
    assert not at.exception and "are off the data" in texts(at)


def test_decode_page_reads_a_run_group_against_its_null(monkeypatch, app_workspace):
    """Decode opens on the newest edited configuration's run group: a verdict per class, the alignment's
    null drawn with the observed value, the concept table; one seed says the agreement is unknown."""
    at = open_page(monkeypatch, app_workspace, "3_Decode")
    headers = [h.value for h in at.header]
    assert "What the edits encode, over seeds" in headers and "One run" in headers
    verdicts = [m.value for m in at.markdown if m.value.startswith("**Verdict:")]
    assert len(verdicts) == 2  # landbird, waterbird
    assert any("Only one seed" in w.value for w in at.warning)
    assert [b for b in at.button if b.label == "Train two more seeds"]
    assert any("Rule:" in c.value and "Fisher" in c.value for c in at.caption)


def test_projection_colours_support_points_by_the_verdict(monkeypatch, app_workspace):
    at = open_page(monkeypatch, app_workspace, "2_Projection")
    at.get("button_group")[0].set_value("verdict").run()
    assert not at.exception
    legend = {trace.get("name") for trace in at.get("plotly_chart")[0].proto.spec and
              __import__("json").loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert legend & {"edit agrees with the verdict", "edit disagrees", "no verdict"}, legend
