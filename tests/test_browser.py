"""The app in a real browser: `streamlit run app.py -- --workspace W` in Debian's headless
chromium, driven by playwright. Visits every page, draws a real lasso on the Projection map and
opens Neighbors. Full-page screenshots and click-to-view timings go to `test-artifacts/`
(or $HSFM_ARTIFACTS)."""

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.browser import browser_page, lasso, require_chromium, streamlit_app, wait_until_idle
from tests.test_app import small_workspace

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IMAGES = "[data-testid='stImage'] img"  # one st.image element holds a page of thumbnails
ARTIFACTS = Path(os.environ.get("HSFM_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']").first.inner_text()


def open_page(page, name: str, expect: str, timings: dict, timeout_ms: int = 60_000) -> None:
    """Click a page in the sidebar navigation; time until its content shows and the script is idle."""
    start = time.perf_counter()
    page.locator("[data-testid='stSidebarNav'] a", has_text=name).first.click()
    page.get_by_text(expect, exact=False).first.wait_for(timeout=timeout_ms)
    wait_until_idle(page, timeout_ms)
    timings[f"open {name}"] = round(time.perf_counter() - start, 3)
    no_exception(page)


def shot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main container, so the
    viewport is stretched to the content's height for the picture."""
    size = page.viewport_size
    height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
                           "[data-testid=\"stAppViewContainer\"]')].map(e => e.scrollHeight), 0)")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height), 12_000))})
    try:
        page.wait_for_timeout(300)
        page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)
    finally:
        page.set_viewport_size(size)


def test_home_page_renders_the_workspace(tmp_path):
    require_chromium()
    small_workspace(tmp_path / "ws")
    with streamlit_app("--workspace", str(tmp_path / "ws")) as url, browser_page() as page:
        page.goto(url)
        wait_until_idle(page)
        page.get_by_text("Group counts per split").wait_for(timeout=30_000)
        page.wait_for_selector("[data-testid='stDataFrame']", timeout=30_000)
        no_exception(page)
        assert page.get_by_text("landbird, waterbird").count() >= 1


def test_every_page_in_the_browser_with_a_real_lasso(app_workspace):
    require_chromium()
    timings = {}
    with streamlit_app("--workspace", str(app_workspace), timeout=120) as url, browser_page() as page:
        start = time.perf_counter()
        page.goto(url)
        page.get_by_text("Dataset card").wait_for(timeout=60_000)
        wait_until_idle(page)
        timings["first page load"] = round(time.perf_counter() - start, 3)
        no_exception(page)
        page.locator(IMAGES).nth(7).wait_for()  # example thumbnails (8 per group)
        nav = page.locator("[data-testid='stSidebarNav']").inner_text()
        assert [n for n in ("Groups", "Projection", "Decode", "Neighbors", "Retrain", "Lesson") if n not in nav] == []
        shot(page, "home")

        open_page(page, "Groups", "What changed", timings)
        page.get_by_text("images fixed", exact=False).first.wait_for(timeout=30_000)
        page.locator("[data-testid='stPlotlyChart']").first.wait_for()
        shot(page, "groups")
        timings["open Groups (first visit)"] = timings.pop("open Groups")

        open_page(page, "Projection", "Colour by", timings, timeout_ms=240_000)  # the map, with no click
        page.locator("[data-testid='stPlotlyChart'] .nsewdrag").first.wait_for(timeout=240_000)
        timings["open Projection (first visit: the map is computed without a click)"] = timings.pop("open Projection")
        no_exception(page)
        assert page.locator(IMAGES).count() == 0
        lasso(page)
        start = time.perf_counter()  # from the mouse-up that ends the lasso
        page.get_by_text("Selection:", exact=False).first.wait_for(timeout=30_000)
        wait_until_idle(page)
        timings["lasso → grid and counts"] = round(time.perf_counter() - start, 3)
        selected = page.get_by_text("Selection:", exact=False).first.inner_text()
        n_images = int(selected.split("Selection: ")[1].split(" images")[0].replace(",", ""))
        assert n_images > 0
        page.locator(IMAGES).nth(min(n_images, 32) - 1).wait_for()
        assert page.locator(IMAGES).count() == min(n_images, 32)
        assert page.locator("[data-testid='stDataFrame']").count() >= 1  # per-group counts
        shot(page, "projection")
        start = time.perf_counter()
        page.get_by_text("split", exact=True).first.click()  # re-colour: the selection stays
        wait_until_idle(page)
        timings["re-colour the map"] = round(time.perf_counter() - start, 3)
        assert page.get_by_text(selected, exact=False).count() >= 1

        open_page(page, "Decode", "Mean edit per class", timings)
        verdict = page.get_by_text("Verdict:", exact=False).first.inner_text()  # the run group's, against its null
        assert any(v in verdict for v in ("no consistent direction", "point to the minority", "point away from")), verdict
        page.get_by_text("The Projection selection").wait_for()
        page.get_by_text("selected images", exact=False).first.wait_for(timeout=30_000)
        shot(page, "decode")

        open_page(page, "Neighbors", "Nearest to the edited feature", timings)
        page.locator(IMAGES).nth(2 * 16).wait_for()  # the query image and 16 neighbours on each side
        assert page.get_by_text("cos 0.", exact=False).count() >= 16
        shot(page, "neighbors")

        open_page(page, "Lesson", "Meet the data", timings)
        for step in ("A shortcut in the training set", "The usual model fails the rare groups"):
            start = time.perf_counter()
            page.get_by_role("button", name="Next →").click()
            page.get_by_text(step).first.wait_for()
            wait_until_idle(page)
            timings[f"lesson → {step}"] = round(time.perf_counter() - start, 3)
            no_exception(page)
        shot(page, "lesson")

        open_page(page, "Groups", "What changed", timings)  # a second, warm visit
        timings["open Groups (warm)"] = timings.pop("open Groups")
    (artifacts() / "browser-timings.json").write_text(json.dumps(timings, indent=2))


def test_neighbors_t_slider_moves_the_rendering_in_the_browser(app_workspace):
    """On Neighbors, the keyboard moves the t select_slider's thumb one step: the strip's ◀ marker follows it and
    the large rendering becomes another picture (its media URL is a hash of the image's bytes)."""
    import re

    require_chromium()
    timings = {}
    with streamlit_app("--workspace", str(app_workspace), timeout=120) as url, browser_page() as page:
        page.goto(f"{url}/Neighbors")
        page.get_by_text("What the edited feature looks like").first.wait_for(timeout=120_000)
        wait_until_idle(page, 120_000)
        no_exception(page)
        marker = page.locator("[data-testid='stImageCaption']", has_text="◀")
        large = page.locator("[data-testid='stImage']").filter(has=page.locator(
            "[data-testid='stImageCaption']", has_text=re.compile(r"^render\(z \+ [\d.]+·Δ\)$")))
        assert marker.inner_text() == "t = 1 ◀" and large.inner_text() == "render(z + 1·Δ)"
        before = large.locator("img").get_attribute("src")
        thumb = page.locator("[data-testid='stSlider']", has_text="t in z + t·Δ").locator("input[type='range']")
        thumb.focus()
        start = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.locator("[data-testid='stImageCaption']", has_text="t = 1.25 ◀").wait_for(timeout=30_000)
        wait_until_idle(page)
        timings["t slider one step → strip marker and large rendering"] = round(time.perf_counter() - start, 3)
        no_exception(page)
        assert marker.count() == 1 and large.inner_text() == "render(z + 1.25·Δ)"
        assert page.locator("[data-testid='stImageCaption']", has_text=re.compile(r"^t = 1$")).count() == 1
        after = large.locator("img").get_attribute("src")
        assert after != before
        page.get_by_text("extrapolation", exact=False).first.wait_for()  # past t = 1, the page says so
        thumb.focus()
        page.keyboard.press("Home")  # the first option, t = 0: the original feature
        page.locator("[data-testid='stImageCaption']", has_text="t = 0 ◀").wait_for(timeout=30_000)
        wait_until_idle(page)
        assert large.inner_text() == "render(z + 0·Δ)" and large.locator("img").get_attribute("src") not in (before, after)
        shot(page, "neighbors-render")
    (artifacts() / "render-timings.json").write_text(json.dumps(timings, indent=2))


@contextmanager
def retrain_in_browser(app_workspace, tmp_path):
    """A copy of the app workspace served by a fresh app, a browser page on Retrain; every job killed after."""
    from tests.test_jobs import _kill_all

    require_chromium()
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    try:
        with streamlit_app("--workspace", str(workspace), timeout=120) as url, browser_page() as page:
            page.goto(f"{url}/Retrain")
            yield workspace, page
    finally:
        _kill_all(workspace)


def test_retrain_in_the_browser(app_workspace, tmp_path):
    """Launch a short HSFM run from the Retrain page, watch its progress, find it on Groups."""
    from hsfm_core import jobs

    timings = {}
    with retrain_in_browser(app_workspace, tmp_path) as (workspace, page):
        page.get_by_text("Launch run").first.wait_for(timeout=60_000)
        wait_until_idle(page)
        for label, value in (("n_support · n", "4"), ("inner_steps · T", "2"), ("outer_steps · K_H", "2"),
                             ("hard_per_class · K_hard", "8"), ("epochs · E", "6")):
            page.get_by_label(label, exact=True).fill(value)
        start = time.perf_counter()
        page.get_by_role("button", name="Launch run").click()
        page.get_by_text("Launched job").first.wait_for(timeout=30_000)
        status = page.locator("[data-testid='stMetric']", has_text="Status").first  # running: train() made its runs (a rerunning fragment may briefly hold two)
        while "running" not in status.inner_text() and "done" not in status.inner_text():
            assert time.perf_counter() - start < 60, "no progress within a minute"
            page.wait_for_timeout(50)
        timings["click Launch run → first progress shown"] = round(time.perf_counter() - start, 3)
        page.get_by_text("Done:", exact=False).first.wait_for(timeout=180_000)
        timings["click Launch run → done shown"] = round(time.perf_counter() - start, 3)
        wait_until_idle(page)
        no_exception(page)
        page.locator("[data-testid='stPlotlyChart']").first.wait_for(timeout=30_000)  # the training curves,
        assert page.locator("[data-testid='stPlotlyChart']").count() == 1  # drawn after the app-wide rerun
        shot(page, "retrain")
        (job,) = jobs.list_jobs(workspace)
        assert job["status"] == "done" and job["spec"]["overrides"] == ["n=4", "T=2", "K_H=2", "K_hard=8", "E=6"]
        start = time.perf_counter()
        page.get_by_role("button", name="Compare with the previous run", exact=False).click()
        page.get_by_text("What changed").first.wait_for(timeout=30_000)
        wait_until_idle(page)
        timings["compare with the previous run → Groups"] = round(time.perf_counter() - start, 3)
        assert "/Groups" in page.url
        page.get_by_text(job["run_ids"][0], exact=False).first.wait_for(timeout=30_000)  # in the chart legend
    (artifacts() / "retrain-timings.json").write_text(json.dumps(timings, indent=2))


def test_sweep_in_the_browser(app_workspace, tmp_path):
    """Launch a tiny sweep from Retrain, watch it finish, open the configuration selected on validation in Groups."""
    from hsfm_core import sweeps

    timings = {}
    with retrain_in_browser(app_workspace, tmp_path) as (workspace, page):
        page.get_by_role("button", name="Launch sweep").wait_for(timeout=60_000)
        wait_until_idle(page)
        for label, value in (("inner_lr values", "1e-3, 1e-2"), ("outer_lr values", "0.1, 1"), ("Seeds of each configuration", "0, 1"),
                             ("Fixed settings (key=value …)", "E=2 K_H=2 T=2 n=4 K_hard=8")):
            field = page.get_by_label(label, exact=True).first
            field.fill(value)
            field.press("Enter")
            wait_until_idle(page)
        start = time.perf_counter()
        page.get_by_role("button", name="Launch sweep").click()
        page.get_by_text("configurations finished", exact=False).first.wait_for(timeout=60_000)
        # every configuration finished: a job's "done" alone is one pass of several, and the selection would move
        page.get_by_text("4 of 4 configurations finished", exact=False).first.wait_for(timeout=240_000)
        page.get_by_role("button", name="Open the selected configuration in Groups").wait_for(timeout=60_000)
        timings["click Launch sweep → done, selection offered"] = round(time.perf_counter() - start, 3)
        wait_until_idle(page)
        no_exception(page)
        shot(page, "sweep")
        (sweep,) = sweeps.list_sweeps(workspace)
        request = sweeps.load_request(workspace, sweep["sweep_id"])
        chosen = sweeps.select(sweeps.results(workspace, request))
        page.get_by_role("button", name="Open the selected configuration in Groups").click()
        page.get_by_text("What changed").first.wait_for(timeout=30_000)
        wait_until_idle(page)
        assert "/Groups" in page.url
        try:  # the selection's run group (120 s: on a busy fresh-clone run the earlier 30 s once ran out)
            page.get_by_text(f"c{chosen:02d}", exact=False).first.wait_for(timeout=120_000)
        except Exception as exc:  # say what the page compared instead
            shot(page, "sweep-groups-failed")
            compared = page.locator("[data-testid='stSidebar']").first.inner_text()
            raise AssertionError(f"c{chosen:02d} not shown in Groups; the sidebar: {compared[:1500]}") from exc
        no_exception(page)
    (artifacts() / "sweep-timings.json").write_text(json.dumps(timings, indent=2))
