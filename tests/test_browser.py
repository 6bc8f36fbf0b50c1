"""The app in a real browser: `streamlit run app.py -- --workspace W` in headless chromium."""

import os

import pytest

from tests.browser import browser_page, require_chromium, streamlit_app, wait_until_idle
from tests.test_app import small_workspace

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_home_page_renders_the_workspace(tmp_path):
    require_chromium()
    small_workspace(tmp_path / "ws")
    with streamlit_app("--workspace", str(tmp_path / "ws")) as url, browser_page() as page:
        page.goto(url)
        wait_until_idle(page)
        page.get_by_text("Group counts per split").wait_for(timeout=30_000)
        page.wait_for_selector("[data-testid='stDataFrame']", timeout=30_000)
        assert page.locator("[data-testid='stException']").count() == 0
        assert page.get_by_text("landbird, waterbird").count() >= 1
        shot = os.environ.get("HSFM_SCREENSHOT_DIR")
        if shot:
            page.screenshot(path=os.path.join(shot, "home.png"), full_page=True)
