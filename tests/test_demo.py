"""The demo world end to end: the bundled CLIP's card numbers, and the app's first launch, which
builds the demo workspace through the same extract → train pipeline as real data."""

import json
import os
import re
import shutil
import subprocess
import sys
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
from tests.installed import REPO, outside_env

APP = str(Path(__file__).resolve().parents[1] / "app.py")
pytestmark = pytest.mark.slow


FIRST_LAUNCH = """
import json, sys
import hsfm_core
from streamlit.testing.v1 import AppTest
assert hsfm_core.__file__.startswith(sys.argv[1]), hsfm_core.__file__
at = AppTest.from_file(sys.argv[2], default_timeout=600).run()
table = at.dataframe[0].value if len(at.dataframe) else None
print(json.dumps({"exceptions": [e.message for e in at.exception],
                  "train_counts": None if table is None else {str(k): int(v) for k, v in table["train"].items()}}))
"""


@pytest.fixture(scope="session")
def first_launch(tmp_path_factory, installed_copy):
    """Open the installed app (a regular install of this checkout, as a user gets it) with no workspace and an
    empty cache, in a process that imports only that copy: it builds the demo workspace. The suite's one demo
    build: the quickstart below runs on it too. → (what Home showed, the demo's folder)."""
    cache = tmp_path_factory.mktemp("cache")
    app = installed_copy / "hsfm_core" / "_bundled" / "app.py"
    done = subprocess.run([sys.executable, "-c", FIRST_LAUNCH, str(installed_copy), str(app)], capture_output=True,
                          text=True, cwd=cache.parent, timeout=900,
                          env=outside_env(PYTHONPATH=str(installed_copy), HSFM_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    saved = os.environ.get("HSFM_CACHE_DIR")
    os.environ["HSFM_CACHE_DIR"] = str(cache)
    try:
        workspace = default_demo_dir()
    finally:
        os.environ.pop("HSFM_CACHE_DIR") if saved is None else os.environ.__setitem__("HSFM_CACHE_DIR", saved)
    return shown, workspace


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
    shown, workspace = first_launch
    assert not shown["exceptions"], shown["exceptions"]
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
    assert shown["train_counts"]["waterbird · land background"] == 56  # Home's table of the groups


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


def test_quickstart_runs_outside_the_repository_against_an_installed_copy(first_launch, installed_copy, tmp_path):
    """The example as a new user runs it: from another folder, against the installed copy, on the demo that
    copy built at its first launch (a copy of it: the example adds its runs), trains DFR and HSFM, prints the
    tables and the decoding, and saves a figure."""
    _, workspace = first_launch
    script = tmp_path / "quickstart.py"
    shutil.copy(REPO / "examples" / "quickstart.py", script)
    cache = tmp_path / "cache"
    # not its cache/: the first launch's map and render workers may still be writing there
    shutil.copytree(workspace, cache / workspace.name,
                    ignore=lambda folder, names: ["cache"] if folder == str(workspace) else [])
    record = (workspace / MARKER).read_text()
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, cwd=tmp_path, env=outside_env(PYTHONPATH=str(installed_copy), HSFM_CACHE_DIR=str(cache)),
                          timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Test accuracy per group" in out and "What HSFM's edits point to" in out
    assert re.search(r"^\| DFR .*\| \d+\.\d ± \d+\.\d \|", out, re.M) and re.search(r"^\| HSFM .*\| 3 \|$", out, re.M)
    assert len(re.findall(r"^\s+(landbird|waterbird) \(\d+ edited features\): ", out, re.M)) == 2
    assert "plotly" in (tmp_path / "out" / "quickstart-groups.html").read_text()
    assert "building the demo workspace" not in out and (cache / workspace.name / MARKER).read_text() == record
    built_by = Path(json.loads(record)["clip"])
    assert built_by.is_relative_to(installed_copy), "the demo was not built from the installed copy"
    import psutil

    def started_here(p: psutil.Process) -> bool:  # e.g. a detached map or numba warm-up worker
        try:
            return any(str(tmp_path) in part for part in p.cmdline()) or p.cwd().startswith(str(tmp_path))
        except psutil.Error:
            return False

    assert not [p.cmdline() for p in psutil.process_iter() if started_here(p)], "the example left a process behind"
