"""Lasso → view on the Projection map, in headless chromium (software WebGL) on this machine.

    python -m benchmarks.bench_lasso [--workspace DIR] [--lassos 7]

Serves `app.py` on DIR (default: the demo workspace of $HSFM_CACHE_DIR / the user cache, built if
missing), opens Projection, waits for the map (computed in the background on a first visit), then
draws `--lassos` lassos, each a vertical strip of the plot area left of the previous one's (a new
lasso must start outside the last selection: plotly drags a selection grabbed inside it). A time
runs from the mouse-up that closes the lasso until the selection's text has changed, the script is
idle and the first page of thumbnails has loaded. Prints each time and p50 / p90 (s).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tests.browser import MAP_AREA as MAP, browser_page, lasso, streamlit_server, wait_until_idle
from tests.test_browser import IMAGES



def strip(i: int, n: int) -> list[tuple[float, float]]:
    """The i-th of n non-overlapping vertical strips of the plot area (fractions), right to left."""
    width = 0.9 / n
    x1 = 0.95 - i * width
    x0 = x1 - 0.8 * width
    return [(x0, 0.03), (x1, 0.03), (x1, 0.97), (x0, 0.97), (x0, 0.03)]


def open_map(page, url: str, timeout_ms: int = 600_000) -> float:
    """Go to Projection and wait until the map is drawn; → seconds."""
    start = time.perf_counter()
    page.goto(f"{url}/Projection")
    page.locator(MAP).first.wait_for(timeout=timeout_ms)
    wait_until_idle(page, timeout_ms)
    return time.perf_counter() - start


def selection_text(page) -> str:
    found = page.get_by_text("Selection:", exact=False)
    return found.first.inner_text() if found.count() else ""


# Records, from now on, every moment the script goes idle and every image that finishes loading.
WATCH = """() => { window.__lasso = {idle: [], running: [], images: []};
  const state = () => { const s = document.querySelector('[data-test-script-state]'); return s && s.getAttribute('data-test-script-state'); };
  let last = state();
  window.__lasso.observer = new MutationObserver(() => { const now = state(); if (now !== last) {
      (now === 'notRunning' ? window.__lasso.idle : window.__lasso.running).push(performance.now()); last = now; } });
  window.__lasso.observer.observe(document.querySelector('[data-testid="stApp"]'),
      {attributes: true, subtree: true, attributeFilter: ['data-test-script-state']});
  window.__lasso.onload = e => { if (e.target.tagName === 'IMG') window.__lasso.images.push(performance.now()); };
  document.addEventListener('load', window.__lasso.onload, true); }"""
SETTLE_MS = 2500  # after the mouse-up, how long the view must stay unchanged to count as final

# the new selection's text is shown, the script is idle, and the grid's first thumbnail has loaded
DONE = f"""t => {{ const e = [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
    .find(e => e.innerText.includes('Selection:'));
  const s = document.querySelector('[data-test-script-state]');
  if (!e || e.innerText === t || !s || s.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (e.innerText.includes('Selection: 0 images')) return true;
  const i = document.querySelector({json.dumps(IMAGES)});
  if (i) return i.complete && i.naturalWidth > 0;
  return document.body.innerText.includes('imported without images'); }}"""  # a store without images: row numbers


def lasso_times(page, n: int, phases: list | None = None) -> list[float]:
    """n lassos on the drawn map; → seconds from each mouse-up until the view is final: the selection's
    text has changed, and the last rerun it caused has ended and its thumbnails have loaded. (Streamlit
    may rerun while the lasso is still being drawn, on a partial selection: only the last update counts.)
    With `phases` (a list), each lasso's figures are appended."""
    times = []
    for i in range(n):
        before = selection_text(page)
        page.evaluate(WATCH)
        start = lasso(page, strip(i, n))
        mouse_up_s = time.perf_counter() - start  # the browser's own selection work, before any rerun
        up = page.evaluate("() => performance.now()") - 1000 * (time.perf_counter() - start)
        page.wait_for_function(DONE, arg=before, timeout=60_000, polling=25)
        page.wait_for_timeout(SETTLE_MS)
        wait_until_idle(page)
        marks = page.evaluate("() => { window.__lasso.observer.disconnect(); "
                              "document.removeEventListener('load', window.__lasso.onload, true); return window.__lasso; }")
        end = max(marks["idle"] + marks["images"], default=up)
        times.append(max(0.0, (end - up) / 1000))
        if phases is not None:
            phases.append({"mouse-up handler (plotly's selection)_s": round(mouse_up_s, 3),
                           "reruns during the drag": sum(t < up for t in marks["running"]),
                           "reruns after the mouse-up": sum(t >= up for t in marks["running"]),
                           "last rerun ended, after the mouse-up_s": round((max(marks["idle"], default=up) - up) / 1000, 3)})
        assert page.locator("[data-testid='stException']").count() == 0
    return times


def summary(times: list[float]) -> dict:
    return {"n": len(times), "each_s": [round(t, 3) for t in times],
            "p50_s": round(float(np.percentile(times, 50)), 3), "p90_s": round(float(np.percentile(times, 90)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", help="default: the demo workspace (built if missing)")
    parser.add_argument("--lassos", type=int, default=7)
    args = parser.parse_args()
    if args.workspace is None:
        from hsfm_core.demo.build import build_demo

        args.workspace = str(build_demo(default_map="wait"))
    with streamlit_server("--workspace", args.workspace, timeout=120) as (url, _), browser_page() as page:
        first = open_map(page, url)
        phases: list = []
        times = lasso_times(page, args.lassos, phases)
    print(json.dumps({"workspace": args.workspace, "open Projection until the map shows_s": round(first, 3),
                      "lasso → counts, accuracy and first thumbnails": summary(times), "phases": phases}, indent=2))


if __name__ == "__main__":
    main()
