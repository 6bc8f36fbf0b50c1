"""Large workspaces: the sampled backdrop and full-count selections at CelebA size (pure numpy), and
a smaller CelebA-proportioned workspace with ERM, DFR and HSFM runs opened page by page in chromium
(the full 202,599-row figures come from `python -m benchmarks.bench_scale`)."""

import time

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_scale import CELEBA_COUNTS, make_workspace, scaled_counts
from hsfm_core.analysis.projection import BACKDROP_MAX_POINTS, backdrop_sample, points_in_region


def celeba_size_map(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = np.concatenate([np.full(sum(CELEBA_COUNTS[s][g] for s in CELEBA_COUNTS), g) for g in range(4)])
    return pd.DataFrame({"x": rng.normal(size=len(groups)), "y": rng.normal(size=len(groups)),
                         "kind": "original", "group": groups})


def test_the_backdrop_keeps_each_groups_share_and_a_lasso_counts_every_point():
    frame = celeba_size_map()
    drawn = backdrop_sample(frame)
    assert len(drawn) == pytest.approx(BACKDROP_MAX_POINTS, abs=4)
    full = np.bincount(frame["group"], minlength=4) / len(frame)
    shown = np.bincount(frame["group"].to_numpy()[drawn], minlength=4) / len(drawn)
    np.testing.assert_allclose(shown, full, atol=2e-4)  # blond men (0.8%) keep their share
    square = {"x": [-1, 1, 1, -1], "y": [-1, -1, 1, 1]}
    start = time.perf_counter()
    inside = points_in_region(frame, lassos=[square])
    took = time.perf_counter() - start
    x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
    expected = np.flatnonzero((np.abs(x) < 1) & (np.abs(y) < 1))
    np.testing.assert_array_equal(inside, expected)  # every point, drawn or not
    assert len(np.setdiff1d(inside, drawn)) > len(inside) // 2
    assert took < 5  # 202,599 points × a 4-vertex polygon: milliseconds (a generous bound)


def test_scaled_counts_keep_celeba_proportions():
    counts = scaled_counts(20_000)
    assert sum(map(sum, counts.values())) == pytest.approx(20_000, abs=10)
    assert counts["train"][3] == round(1_387 * 20_000 / 202_599)  # blond men: 0.7% of train


@pytest.mark.slow
@pytest.mark.browser
def test_a_celeba_proportioned_workspace_opens_every_page_in_the_browser(tmp_path):
    """12,000 rows (CelebA's proportions, 128-d), ERM, DFR and a tiny HSFM: every page opens without
    an exception; Projection computes its first map in the background with progress, then a lasso."""
    from benchmarks.bench_lasso import MAP, lasso_times
    from hsfm_core.train import train
    from tests.browser import browser_page, require_chromium, streamlit_app, wait_until_idle
    from tests.gaussian import TINY_HSFM

    require_chromium()
    ws = make_workspace(tmp_path / "ws", n_rows=12_000, dim=128)
    for method, overrides in (("erm", []), ("dfr", ["n_refits=3"]), ("hsfm", TINY_HSFM)):
        train(ws, method, overrides=overrides)
    with streamlit_app("--workspace", str(ws), timeout=120) as url, browser_page() as page:
        page.goto(url)
        page.get_by_text("Dataset card").wait_for(timeout=120_000)
        wait_until_idle(page, 120_000)
        for name, expect in (("Groups", "What changed"), ("Projection", "Computing the map in the background"),
                             ("Decode", "Decode"), ("Neighbors", "Neighbors"), ("Retrain", "Launch run"),
                             ("Lesson", "Lesson")):
            page.locator("[data-testid='stSidebarNav'] a", has_text=name).first.click()
            page.get_by_text(expect, exact=False).first.wait_for(timeout=120_000)
            if name == "Projection":  # the worker's progress, then the map once it is on disk
                page.locator(MAP).first.wait_for(timeout=300_000)
                wait_until_idle(page, 120_000)
                assert len(lasso_times(page, 2)) == 2
                assert "Selection:" in page.get_by_text("Selection:", exact=False).first.inner_text()
            wait_until_idle(page, 120_000)
            assert page.locator("[data-testid='stException']").count() == 0, name
