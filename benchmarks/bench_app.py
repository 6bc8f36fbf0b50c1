"""The app as a user meets it, in headless chromium on this machine (2 cores shared with the browser).

    python -m benchmarks.bench_app [--cache DIR]

1. First launch on a fresh machine: an empty cache folder, no workspace — server start until the
   Home page shows, demo build included. Then a later launch (the demo is reused).
2. Click-to-view times on every page of the demo workspace: the first visit (cold caches) and a
   second visit (warm), plus one interaction per page — Groups' split, a lasso and a re-colour on
   Projection, Decode's contrast, Neighbors' query mode, Lesson's Next, and a short HSFM job launched
   on Retrain (until its first progress shows). A time runs from the click (or the lasso's
   mouse-up) until the new content shows and the script is idle.
3. Resident memory of the server (process + children) after every page has been used.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from tests.browser import browser_page, streamlit_server, wait_until_idle
from tests.test_browser import IMAGES, lasso


def rss_mb(pid: int) -> dict:
    """VmRSS / VmHWM of a process and the summed VmRSS of its descendants, in MB."""
    def status(p: int) -> dict:
        fields = {}
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields

    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").iterdir():
            kids = (task / "children").read_text().split()
            out += [int(k) for k in kids]
        return out + [g for k in out for g in children(k)]

    own = status(pid)
    kids = children(pid)
    return {"server_rss_mb": round(own["VmRSS"]), "server_peak_rss_mb": round(own["VmHWM"]),
            "children": len(kids), "children_rss_mb": round(sum(status(k).get("VmRSS", 0) for k in kids))}


def timed(timings: dict, name: str, page, action, expect: str, timeout_ms: int = 600_000) -> None:
    start = time.perf_counter()
    action()
    page.get_by_text(expect, exact=False).first.wait_for(timeout=timeout_ms)
    wait_until_idle(page, timeout_ms)
    timings[name] = round(time.perf_counter() - start, 3)
    assert page.locator("[data-testid='stException']").count() == 0, name


def nav(page, name: str):
    return lambda: page.locator("[data-testid='stSidebarNav'] a", has_text=name).first.click()


def pick(page, selector: str, index: int, text: str) -> None:
    """Choose `text` in the index-th selectbox: click it, type, Enter."""
    page.locator(selector).nth(index).click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def launch(env: dict, timings: dict, name: str) -> None:
    start = time.perf_counter()
    with streamlit_server(env=env, timeout=120) as (url, _), browser_page() as page:
        page.goto(url)
        page.get_by_text("Dataset card").wait_for(timeout=600_000)
        wait_until_idle(page, 600_000)
        timings[name] = round(time.perf_counter() - start, 3)


def pages_and_memory(env: dict) -> tuple[dict, dict, dict]:
    cold, warm = {}, {}
    with streamlit_server(env=env, timeout=120) as (url, proc), browser_page() as page:
        page.goto(url)
        page.get_by_text("Dataset card").wait_for(timeout=120_000)
        wait_until_idle(page)
        for visit, timings in (("first", cold), ("second", warm)):
            timed(timings, "open Groups", page, nav(page, "Groups"), "What changed")
            timed(timings, "Groups: switch to val", page, lambda: page.get_by_text("val", exact=True).first.click(),
                  "Averages on val")
            page.get_by_text("test", exact=True).first.click()
            wait_until_idle(page)

            # the demo build computed the default map in the background: the first visit reads it
            timed(timings, "open Projection (the map drawn, no click)", page, nav(page, "Projection"), "Colour by")
            page.locator("[data-testid='stPlotlyChart'] .nsewdrag").first.wait_for()
            if page.get_by_role("button", name="Clear selection").is_enabled():
                page.get_by_role("button", name="Clear selection").click()
                wait_until_idle(page)
                page.get_by_text("Selection:").first.wait_for(state="detached")
                page.wait_for_timeout(1500)  # the map is mounted afresh after a clear; a lasso before that is lost
            timed(timings, "Projection: lasso → grid and counts", page, lambda: lasso(page), "Selection:")
            page.locator(IMAGES).first.wait_for()
            before = page.get_by_text("Selection:").first.inner_text()
            start = time.perf_counter()  # another lasso on the same drawn map
            # a new lasso must start outside the last one: plotly drags a selection that is grabbed inside
            lasso(page, [(0.02, 0.05), (0.12, 0.05), (0.12, 0.95), (0.02, 0.95), (0.02, 0.05)])
            page.wait_for_function("t => !document.body.innerText.includes(t)", arg=before, timeout=60_000)
            wait_until_idle(page)
            timings["Projection: another lasso on the same map"] = round(time.perf_counter() - start, 3)
            colour = "split" if visit == "first" else "class"
            timed(timings, "Projection: re-colour", page, lambda: page.get_by_text(colour, exact=True).first.click(),
                  "Selection:")

            timed(timings, "open Decode", page, nav(page, "Decode"), "Mean edit per class")
            page.get_by_text("selected images", exact=False).first.wait_for()
            word = "duck" if visit == "first" else "forest"
            timed(timings, "Decode: contrast against another concept", page,
                  lambda: pick(page, "[data-testid='stMain'] [data-testid='stSelectbox']", 1, word), f"{word}")

            timed(timings, "open Neighbors", page, nav(page, "Neighbors"), "Nearest to the edited feature")
            timed(timings, "Neighbors: any image", page,
                  lambda: page.get_by_text("Any image (store row)").first.click(), "Nearest to this image's feature")
            page.get_by_text("A support example").first.click()
            wait_until_idle(page)

            timed(timings, "open Lesson", page, nav(page, "Lesson"), "Step ")
            timed(timings, "Lesson: next step", page, lambda: page.get_by_role("button", name="Next →").click(),
                  "Step ")
            timed(timings, "open Home", page, nav(page, "Home"), "Dataset card")

            # Retrain: a short HSFM job; from the click on Launch run until the worker's first progress shows
            timed(timings, "open Retrain", page, nav(page, "Retrain"), "Launch run")
            for label, value in (("n_support · n", "4"), ("epochs · E", "3")):
                page.get_by_label(label, exact=True).fill(value)
            start = time.perf_counter()
            page.get_by_role("button", name="Launch run").click()
            page.get_by_text("Launched job").first.wait_for(timeout=60_000)
            status = page.locator("[data-testid='stMetric']", has_text="Status")  # running: the runs exist
            while "running" not in status.inner_text() and "done" not in status.inner_text():
                page.wait_for_timeout(20)
            timings["Retrain: Launch run → first progress shown"] = round(time.perf_counter() - start, 3)
            page.get_by_text("Done:", exact=False).first.wait_for(timeout=600_000)
            wait_until_idle(page)
        memory = rss_mb(proc.pid)
    return cold, warm, memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", help="cache folder to use (default: a new empty one = a fresh machine)")
    args = parser.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="hsfm-bench-cache-")
    env = {"HSFM_CACHE_DIR": cache, "HSFM_WORKSPACE": ""}
    os.environ.pop("HSFM_WORKSPACE", None)
    launches = {}
    launch(env, launches, "first launch until Home shows (demo build included)")
    launch(env, launches, "later launch until Home shows")
    cold, warm, memory = pages_and_memory(env)
    print(json.dumps({"launch_s": launches, "first_visit_s": cold, "warm_s": warm,
                      "warm_over_1.5_s": {k: v for k, v in warm.items() if v > 1.5}, "memory": memory,
                      "cache": cache}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
