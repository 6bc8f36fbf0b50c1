"""Two students on one server (issue 25; docs/ARCHITECTURE.md §App): two chromium contexts connected at
once are two Streamlit sessions, and one's lasso, compared runs and slider never reach the other's page."""

import pytest

from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MAP_AREA,
    lasso,
    require_chromium,
    streamlit_app,
    wait_until_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SLIDER = "Neighbours shown"  # on Neighbors; 16 by default
COMPARED = "[data-testid='stSidebar'] [data-testid='stMultiSelect'] [data-tag]"  # the "Runs to compare" picked


def nav(page, name: str, expect: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a", has_text=name).first.click()
    page.get_by_text(expect, exact=False).first.wait_for(timeout=240_000)
    wait_until_idle(page, 240_000)
    assert page.locator("[data-testid='stException']").count() == 0


def test_one_sessions_selection_runs_and_slider_stay_in_it(app_workspace):
    from playwright.sync_api import sync_playwright

    require_chromium()
    with streamlit_app("--workspace", str(app_workspace), timeout=120) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            a, b = (browser.new_context(viewport={"width": 1400, "height": 900}).new_page() for _ in range(2))
            for page in (a, b):  # both connected before A changes anything
                page.goto(url)
                page.get_by_text("Dataset card").wait_for(timeout=120_000)
                wait_until_idle(page)
            b.locator(COMPARED).nth(1).wait_for(timeout=60_000)  # the sidebar's pickers may draw after the page
            default_runs = b.locator(COMPARED).count()
            assert default_runs >= 2, b.locator("[data-testid='stSidebar']").inner_text()

            nav(a, "Projection", "Colour by")
            a.locator(MAP_AREA).first.wait_for(timeout=240_000)
            lasso(a)
            a.get_by_text("Selection:", exact=False).first.wait_for(timeout=120_000)
            a.locator(COMPARED).last.get_by_role("button").click()  # A drops its last compared run
            a.wait_for_function(f"n => document.querySelectorAll({COMPARED!r}).length === n", arg=default_runs - 1)
            wait_until_idle(a)
            nav(a, "Neighbors", "Nearest to the edited feature")
            a.get_by_role("slider", name=SLIDER).focus()
            a.keyboard.press("ArrowRight")  # 16 → 20
            a.wait_for_function("() => document.querySelector('input[type=range]').value === '20'")
            a.wait_for_timeout(500)
            wait_until_idle(a)

            nav(b, "Projection", "Colour by")  # B: the same server, its own session
            b.locator(MAP_AREA).first.wait_for(timeout=240_000)
            b.get_by_text("Draw a lasso or a box", exact=False).first.wait_for()
            assert b.get_by_text("Selection:", exact=False).count() == 0
            assert b.locator(COMPARED).count() == default_runs
            nav(b, "Neighbors", "Nearest to the edited feature")
            assert b.get_by_role("slider", name=SLIDER).input_value() == "16"
            assert a.locator(COMPARED).count() == default_runs - 1  # A kept its own choices meanwhile
            assert a.get_by_role("slider", name=SLIDER).input_value() == "20"
        finally:
            browser.close()
