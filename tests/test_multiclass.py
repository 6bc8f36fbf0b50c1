"""Any number of classes end to end (docs/ARCHITECTURE.md §Groups), on a generated MultiNLI-shaped
world of 3 classes × 2 attributes with a spurious attribute (tests/gaussian.py):

- the same world written with `write_store`, imported from a DFR `.npz` and from reference `.pt`
  files, and a 3 × 2 image dataset read from a generic CSV and extracted;
- every registered method trained on it with 3 seeds (small settings), metrics over 6 groups;
- every page of the app rendered for a 3 × 2 workspace.

`benchmarks/bench_multiclass.py` runs the same world with the methods' full settings.
"""

import json

import numpy as np
import pytest
import torch

from hsfm_core import methods
from hsfm_core.features import FeatureStore
from hsfm_core.features.importers import import_dfr, import_reference
from hsfm_core.runs import list_runs, load_head, load_support
from hsfm_core.train import summarize, train
from tests.test_pages import open_page, texts
from tests.gaussian import (MULTICLASS_ATTRIBUTES, MULTICLASS_CLASSES, USUAL_ATTRIBUTE, multiclass_problem,
                            multiclass_workspace)

SIZES = (1500, 600, 600)
SEEDS = [0, 1, 2]
# Small settings per method, so that the whole module trains in seconds; a method registered later
# (not listed here) trains with its defaults.
FAST = {"erm": [], "dfr": ["n_refits=5"], "hsfm": ["E=5", "K_H=3", "T=10", "n=8", "K_hard=32", "alpha=1e-2"],
        "afr": ["steps=100", "gamma_grid=0,2,4", "lambda_grid=0,0.1"]}
MINORITY = [2 * c + a for c in range(3) for a in range(2) if a != USUAL_ATTRIBUTE[c]]  # groups 1, 3, 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The 3 × 2 store with every registered method trained on it (3 seeds each): (store, {method: runs})."""
    path = tmp_path_factory.mktemp("multiclass") / "ws"
    store = multiclass_workspace(path, sizes=SIZES)
    trained = {m.name: train(path, m.name, seeds=SEEDS, overrides=FAST.get(m.name, [])) for m in methods.all_methods()}
    return store, trained


def test_the_world_has_six_groups_named_class_by_attribute(world):
    store, _ = world
    groups = store.groups
    assert (groups.n_classes, groups.n_attributes, groups.n_groups) == (3, 2, 6)
    assert groups.names == [f"{c} · {a}" for c in MULTICLASS_CLASSES for a in MULTICLASS_ATTRIBUTES]
    g = np.arange(6)
    np.testing.assert_array_equal(groups.group_of(groups.class_of(g), groups.attribute_of(g)), g)
    np.testing.assert_array_equal(store.meta["g"], groups.group_of(store.meta["y"], store.meta["a"]))
    train_counts = np.asarray(groups.train_counts)
    assert train_counts[MINORITY].max() < 0.1 * train_counts.min(where=~np.isin(g, MINORITY), initial=10**9)


def test_every_method_trains_on_three_classes_and_reports_six_groups(world, record_property, capsys):
    store, trained = world
    assert set(trained) == set(methods.names())
    lines = []
    for name, runs in trained.items():
        assert [r.seed for r in runs] == SEEDS
        for run in runs:
            for split in ("val", "test"):
                m = run.metrics[split]
                assert len(m["group_acc"]) == len(m["group_n"]) == len(m["group_ci"]) == 6
                assert m["group_n"] == store.manifest["group_counts"][split]
                assert m["wga"] == min(a for a in m["group_acc"] if a is not None)
        record = next(r for r in list_runs(store.path) if r["run_id"] == runs[0].run_id)
        assert tuple(load_head(record)["weight"].shape) == (3, store.dim)
        if methods.get(name).edits_features:
            settings = json.loads((runs[0].path / "config.json").read_text())["hyperparameters"]
            labels = load_support(record)["labels"].numpy()
            assert np.bincount(labels).tolist() == [settings["n_support"]] * 3  # n per class, 3 classes
        summary = summarize(runs)["wga"]
        record_property(f"wga_{name}", f"{summary['mean']:.3f} ± {summary['std']:.3f}")
        lines.append(f"{methods.get(name).label:5} test WGA {summary['mean']:.1%} ± {summary['std']:.1%}")
    with capsys.disabled():
        print("\n3 classes × 2 attributes (small settings):\n  " + "\n  ".join(lines))
    # the spurious attribute hurts the plain probe on a minority group; group-balanced DFR recovers it
    erm = trained["erm"][0].metrics["test"]
    assert erm["worst_group"] in MINORITY
    assert np.mean([r.metrics["test"]["wga"] for r in trained["dfr"]]) > erm["wga"] + 0.15


def problem_arrays():
    return multiclass_problem(sizes=SIZES)


def test_dfr_npz_import_of_the_same_world_trains_the_same_erm(world, tmp_path):
    store, trained = world
    arrays = {}
    for split, (x, y, a) in problem_arrays().items():
        arrays |= {f"embeddings_{split}": x, f"y_{split}": y, f"g_{split}": 2 * y + a, f"p_{split}": a}
    np.savez(tmp_path / "world.npz", **arrays)
    imported = import_dfr(tmp_path / "world.npz", tmp_path / "ws", class_names=list(MULTICLASS_CLASSES),
                          attribute_names=list(MULTICLASS_ATTRIBUTES))
    assert imported.groups == store.groups
    np.testing.assert_array_equal(imported.features, store.features)
    np.testing.assert_array_equal(imported.meta["g"], store.meta["g"])
    (erm,) = train(tmp_path / "ws", "erm")
    assert erm.metrics == trained["erm"][0].metrics  # same features and labels → the same probe
    unnamed = import_dfr(tmp_path / "world.npz", tmp_path / "unnamed")
    assert unnamed.class_names == ["class 0", "class 1", "class 2"] and unnamed.n_groups == 6


def test_reference_import_of_the_same_world(world, tmp_path):
    store, _ = world
    folder = tmp_path / "ref"
    folder.mkdir()
    for split, (x, y, a) in problem_arrays().items():
        torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y),
                    "envs": torch.from_numpy(2 * y + a)}, folder / f"{split}_features.pt")
    imported = import_reference(folder, tmp_path / "ws", class_names=list(MULTICLASS_CLASSES))
    assert imported.n_groups == 6 and imported.attribute_names == ["attribute 0", "attribute 1"]  # A inferred
    np.testing.assert_array_equal(imported.meta["a"], store.meta["a"])
    (dfr,) = train(tmp_path / "ws", "dfr", overrides=FAST["dfr"])
    assert len(dfr.metrics["test"]["group_acc"]) == 6


# -- a 3 × 2 image dataset through the generic CSV, extraction and the app ------------------------------

CSV_COUNTS = {"train": (16, 4, 16, 4, 4, 16), "val": (8,) * 6, "test": (8,) * 6}
APP_FAST = {"erm": [], "dfr": ["n_refits=3"], "hsfm": ["E=2", "K_H=2", "T=2", "n=4", "K_hard=8", "alpha=1e-3"],
            "afr": ["steps=50", "gamma_grid=0,2", "lambda_grid=0"]}


@pytest.fixture(scope="module")
def csv_workspace(tmp_path_factory):
    """A 3 × 2 CSV dataset of PNGs, extracted with the demo CLIP, one run of every registered method."""
    from hsfm_core.data import read_dataset
    from hsfm_core.demo.build import DEMO_CLIP
    from hsfm_core.features.encoders import load_encoder
    from hsfm_core.features.extract import extract
    from tests.helpers import make_generic_csv

    root = tmp_path_factory.mktemp("csv3x2")
    csv_path = make_generic_csv(root / "data", CSV_COUNTS, image_size=64)
    table = read_dataset("csv", root / "data", csv_path, class_names=list(MULTICLASS_CLASSES),
                         attribute_names=list(MULTICLASS_ATTRIBUTES))
    encoder = load_encoder(f"local-dir:{DEMO_CLIP}", None, torch.device("cpu"))
    extract(table, encoder, root / "ws", device=torch.device("cpu"), progress=False)
    for method in methods.all_methods():
        train(root / "ws", method.name, overrides=APP_FAST.get(method.name, []))
    return root / "ws"


def test_generic_csv_three_classes_extract_to_a_six_group_store(csv_workspace):
    store = FeatureStore.open(csv_workspace)
    assert store.groups.names[4] == "contradiction · no negation" and store.n_groups == 6
    assert store.manifest["group_counts"] == {s: list(c) for s, c in CSV_COUNTS.items()}
    assert store.manifest["clip_space"] is True
    runs = list_runs(csv_workspace)
    assert {r["method"] for r in runs} == set(methods.names()) and all(r["status"] == "done" for r in runs)


def open_app(monkeypatch, workspace, page: str | None = None):
    """`test_pages.open_page`, and no error message either."""
    at = open_page(monkeypatch, workspace, page)
    assert not at.error, [e.value for e in at.error]
    return at


def test_home_and_groups_pages_show_six_groups_and_every_method(monkeypatch, csv_workspace):
    at = open_app(monkeypatch, csv_workspace)
    counts = at.dataframe[0].value
    assert len(counts) == 6 and counts.loc["contradiction · negation", "train"] == 16
    assert "entailment, neutral, contradiction" in texts(at)
    runs = sorted(list_runs(csv_workspace), key=lambda r: methods.order_of(r["method"]))
    assert at.sidebar.multiselect[0].value == [r["run_id"] for r in runs]  # registry order, every method
    at.switch_page("pages/1_Groups.py").run()
    assert not at.exception and not at.error
    averages = at.dataframe[0].value
    assert [i.split(" · ")[0] for i in averages.index] == [m.label for m in methods.all_methods()]
    confusion = at.dataframe[2].value
    assert list(confusion.columns) == [f"predicted {c}" for c in MULTICLASS_CLASSES] + ["accuracy"]
    assert len(confusion) == 6 and confusion.drop(columns="accuracy").to_numpy().sum() == 48


def test_projection_decode_and_neighbors_render_for_three_classes(monkeypatch, csv_workspace):
    at = open_app(monkeypatch, csv_workspace, "2_Projection")
    at.get("form_submit_button")[0].click().run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) == 1
    for colour in ("class", "attribute", "group"):
        at.get("button_group")[0].set_value(colour).run()
        assert not at.exception
    at.switch_page("pages/3_Decode.py").run()
    assert not at.exception and not at.error
    assert [h.value for h in at.header][:2] == ["What the edits encode, over seeds", "One run"]
    assert len([m for m in at.markdown if m.value.startswith("**Verdict:")]) == 3  # the run group's, one per class
    assert len([m for m in at.metric if "edited" in m.label]) == 3  # one per class
    at.switch_page("pages/4_Neighbors.py").run()
    assert not at.exception and not at.error
    assert len(at.metric) == 4  # all support examples, then one per class


def test_lesson_walks_through_every_step_for_three_classes(monkeypatch, csv_workspace):
    at = open_app(monkeypatch, csv_workspace, "6_Lesson")
    shown, headers = [], []
    for _ in range(6):
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
        shown.append(texts(at))
        headers.append(at.header[0].value)
        if at.button(key="lesson.next").disabled:
            break
        at.button(key="lesson.next").click().run()
    assert "*entailment*, *neutral* or *contradiction*" in shown[0] and "3 classes × 2 attributes = 6 groups" in shown[0]
    baselines = [m for m in methods.all_methods() if not m.edits_features]
    assert f"Trained the usual way ({baselines[0].label})" in shown[2]
    assert all(f"**{m.label}** — " in shown[3] for m in baselines[1:])  # every other baseline, from the registry
    editors = [m.label for m in methods.all_methods() if m.edits_features]
    assert headers[4] == f"{' / '.join(editors)}: edit a few features" and len(headers) == 6
    assert all(f"{label} also keeps the backbone" in shown[4] for label in editors)


@pytest.mark.parametrize("page", [None, "1_Groups", "2_Projection", "3_Decode", "4_Neighbors"])
def test_every_page_renders_for_the_generated_store_without_images(monkeypatch, world, page):
    store, _ = world
    at = open_app(monkeypatch, store.path, page)
    if page == "3_Decode":
        assert "not in a CLIP joint space" in at.warning[0].value
    if page is None:
        assert "imported without images" in texts(at)


def test_lesson_gives_each_method_over_its_seeds(monkeypatch, world):
    store, trained = world
    at = open_app(monkeypatch, store.path, "6_Lesson")
    for _ in range(2):
        at.button(key="lesson.next").click().run()
    assert not at.exception and not at.error and at.header[0].value == "The usual model fails the rare groups"
    erm = summarize(trained["erm"])["wga"]
    assert f"ERM: {100 * erm['mean']:.1f} ± {100 * erm['std']:.1f} % over 3 seeds" in texts(at)
    at.button(key="lesson.next").click().run()
    assert "over 3 seeds" in texts(at) and all(f"**{m.label}** — " in texts(at) for m in methods.all_methods()
                                                if not m.edits_features and m.name != "erm")
