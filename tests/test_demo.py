"""The demo world end to end: the bundled CLIP's card numbers, and the app's first launch, which
builds the demo workspace through the same extract → train pipeline as real data."""

import json
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
from streamlit.testing.v1 import AppTest

from hsfm_core import methods
from hsfm_core.demo import clip
from hsfm_core.demo.build import DEMO_CLIP, MARKER, default_demo_dir, is_built
from hsfm_core.features import FeatureStore
from hsfm_core.runs import list_runs

APP = str(Path(__file__).resolve().parents[1] / "app.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def first_launch(tmp_path_factory):
    """Open the app with no workspace and an empty cache: it builds the demo workspace."""
    cache = tmp_path_factory.mktemp("cache")
    saved = {k: os.environ.get(k) for k in ("HSFM_CACHE_DIR", "HSFM_WORKSPACE")}
    os.environ["HSFM_CACHE_DIR"] = str(cache)
    os.environ.pop("HSFM_WORKSPACE", None)
    try:
        at = AppTest.from_file(APP, default_timeout=600).run()
        workspace = default_demo_dir()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return at, workspace


def test_bundled_clip_meets_its_card():
    spec = f"local-dir:{DEMO_CLIP}"
    model, _, _ = open_clip.create_model_and_transforms(spec)
    model.eval()
    numbers = clip.evaluate(model, open_clip.get_tokenizer(spec))
    assert numbers["zero_shot_background_accuracy"] >= 0.95
    assert numbers["zero_shot_bird_accuracy"] >= 0.80
    r = numbers["retrieval"]
    assert r["recall@5"] >= 5 * r["chance@5"]
    card = json.loads((DEMO_CLIP / "training.json").read_text())["metrics"]
    assert card["zero_shot_bird_accuracy"] == pytest.approx(numbers["zero_shot_bird_accuracy"], abs=0.005)
    assert sum(f.stat().st_size for f in DEMO_CLIP.iterdir()) <= 15 * 2**20


def test_first_launch_builds_and_opens_the_demo(first_launch):
    at, workspace = first_launch
    assert not at.exception, at.exception
    assert is_built(workspace)
    store = FeatureStore.open(workspace)
    assert store.manifest["backbone"]["kind"] == "open_clip" and store.manifest["clip_space"]
    assert store.manifest["group_counts"]["train"] == [3498, 184, 56, 1057]
    assert store.manifest["dataset"]["format"] == "waterbirds"  # the real reader, nothing special-cased
    by_method = {}
    for r in list_runs(workspace):
        by_method.setdefault(r["method"], []).append(r)
    assert sorted(by_method) == sorted(methods.names())  # every registered method, each over seeds 0–2
    assert all(len(runs) % 3 == 0 for runs in by_method.values()) and len(by_method["hsfm"]) == 9
    assert all(r["status"] == "done" for r in list_runs(workspace))
    table = at.dataframe[0].value
    assert table.loc["waterbird · land background", "train"] == 56


def test_demo_teaches_the_spurious_correlation(first_launch):
    _, workspace = first_launch
    runs = json.loads((workspace / MARKER).read_text())["runs"]
    mean = {role: float(np.mean(r["test_wga"])) for role, r in runs.items()}
    assert mean["erm"] <= 0.70 and mean["dfr"] >= 0.85
    assert runs["hsfm-paper"]["preset"] == "waterbirds" and runs["hsfm"]["preset"] == "auto"
    # the validation-tuned HSFM within 2 points of DFR (the paper's settings are far below it here)
    assert mean["hsfm-tuned"] >= mean["dfr"] - 0.02 and mean["hsfm-paper"] < mean["hsfm-tuned"]


def test_second_launch_reuses_the_demo(first_launch, monkeypatch):
    _, workspace = first_launch
    stamp = (workspace / MARKER).stat().st_mtime_ns
    monkeypatch.setenv("HSFM_CACHE_DIR", str(workspace.parent))
    monkeypatch.delenv("HSFM_WORKSPACE", raising=False)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and (workspace / MARKER).stat().st_mtime_ns == stamp


def test_first_projection_visit_finds_the_demo_map_without_a_click(first_launch, monkeypatch):
    """The build started the default map in a worker process: once it is on disk, Projection draws
    it on the first visit, with no Compute map click (docs/ARCHITECTURE.md §Demo)."""
    from hsfm_core.analysis.projection import ProjectionParams, default_map_run, map_status, wait_for_map

    _, workspace = first_launch
    store = FeatureStore.open(workspace)
    run = default_map_run(workspace)
    assert run is not None and run["method"] == "hsfm"
    assert map_status(store, run).state in ("running", "ready")  # started by the build, not by a page
    path = wait_for_map(store, run, timeout=600)
    assert map_status(store, run, params=ProjectionParams()).path == path
    monkeypatch.setenv("HSFM_CACHE_DIR", str(workspace.parent))
    monkeypatch.delenv("HSFM_WORKSPACE", raising=False)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/2_Projection.py").run()
    assert not at.exception, at.exception
    assert at.session_state["hsfm.focus_run"] == run["run_id"]  # the sidebar's default is the map's run
    assert len(at.get("plotly_chart")) == 1 and not at.get("progress")


def test_the_fast_first_map_meets_its_quality_floor(first_launch):
    """The demo's default map — the fast layout (docs/ARCHITECTURE.md §Demo) — against the full fit of
    the same points: trustworthiness ≥ 0.95 (k = 15, on a 3,000-point sample: sklearn's exact computation
    is n² in memory), at least half of each point's 15 nearest map neighbours kept (measured 0.61; another
    seed of the full fit keeps 0.68), and feature-space neighbourhoods shown within 10 % of the full fit's."""
    import pandas as pd
    from sklearn.manifold import trustworthiness

    from hsfm_core.analysis.projection import (ProjectionParams, default_map_run, embed_jointly,
                                               neighbour_agreement, wait_for_map)
    from hsfm_core.runs import load_support

    _, workspace = first_launch
    store = FeatureStore.open(workspace)
    run = default_map_run(workspace)
    frame = pd.read_parquet(wait_for_map(store, run, timeout=600))
    fast = frame[["x", "y"]].to_numpy(np.float32)  # originals in row order, then the edits: the fit's order
    originals = np.asarray(store.features, dtype=np.float32)
    edits = load_support(run, store)["after"].numpy()
    assert len(fast) == len(originals) + len(edits) and (frame["kind"] == "edited").sum() == len(edits)
    full = embed_jointly(originals, edits, ProjectionParams(layout="full"))
    features = np.concatenate([originals, edits])
    every = np.arange(len(features))
    sample = np.sort(np.random.default_rng(0).choice(len(features), size=3000, replace=False))
    assert trustworthiness(full[sample], fast[sample], n_neighbors=15) >= 0.95
    assert neighbour_agreement(full, fast, every, k=15, metric="euclidean") >= 0.5
    shown = {name: neighbour_agreement(features, layout, every, k=15) for name, layout in (("fast", fast), ("full", full))}
    assert shown["fast"] >= 0.9 * shown["full"], shown
