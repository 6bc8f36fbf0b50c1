"""The first launch as a new user meets it, in headless chromium on this machine.

    python -m benchmarks.bench_first_run [--fresh-numba] [--numba-only | --no-numba] [--runs N] [--fresh-only]

1. A fresh machine: an empty HSFM_CACHE_DIR (no demo workspace) — server start → Home shown (the
   demo build included), then → Projection's map shown without a click (the build starts the map in
   a worker process; a time from server start and one from Home), and the map worker's own record
   (`<map>.job.json`: seconds and CPU seconds from its request to the map on disk). `--fresh-numba` also
   points NUMBA_CACHE_DIR at an empty folder, as on a fresh installation (numba's compiled kernels gone).
2. A later launch on the same cache: server start → Home, → Projection's map (`--fresh-only`: skipped).
`--runs N` repeats 1–2. Run from another checkout's root (`git archive <commit> | tar -x -C DIR`, then
`cd DIR && python -m benchmarks.bench_first_run`) to time that version's app side by side.
3. The map worker's numba cost: the demo-size map (11,820 points, 512-d) fitted in a new process
   twice with an empty NUMBA_CACHE_DIR: the first process compiles and caches umap's kernels, the
   second loads them (its map time is the fit alone). Also timed: the same fit with umap's own
   pynndescent graph (no FAISS), whose `nn_descent` numba cannot cache.
Prints one JSON document of labelled seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.browser import MAP_AREA as MAP, browser_page, streamlit_server, wait_until_idle


FIT = """
import time, sys, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import numpy as np
from hsfm_core.analysis import projection
x = np.random.default_rng(0).normal(size=(11820, 512)).astype(np.float32)
params = projection.ProjectionParams()
if sys.argv[1] == "faiss":
    projection.embed_jointly(x, x[:0], params)
else:
    import umap
    umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0).fit_transform(x)
t1 = time.perf_counter()
projection.embed_jointly(x, x[:0], projection.ProjectionParams(random_state=1))
print(t1 - t0, time.perf_counter() - t1)
"""


def launch(env: dict, timeout_s: float = 1200) -> dict:
    """Server start → Home shown, → Projection's map shown (seconds), and the map worker's record."""
    out = {"load average at start": round(os.getloadavg()[0], 1)}
    start = time.perf_counter()
    with streamlit_server(env=env, timeout=timeout_s) as (url, _), browser_page() as page:
        page.goto(url)
        page.get_by_text("Dataset card").wait_for(timeout=timeout_s * 1000)
        wait_until_idle(page, timeout_s * 1000)
        home = time.perf_counter()
        out["server start → Home shown"] = round(home - start, 1)
        page.locator("[data-testid='stSidebarNav'] a", has_text="Projection").first.click()
        page.locator(MAP).first.wait_for(timeout=timeout_s * 1000)
        wait_until_idle(page, timeout_s * 1000)
        shown_at = time.time()
        out["server start → the demo map shown"] = round(time.perf_counter() - start, 1)
        out["Home shown → the demo map shown (click on Projection included)"] = round(time.perf_counter() - home, 1)
    for parquet in Path(env["HSFM_CACHE_DIR"]).glob("demo-workspace-v*/cache/umap-*.parquet"):
        out["map on disk → the map shown_s"] = round(shown_at - parquet.stat().st_mtime, 1)
    out["detached workers still running afterwards, waited for_s"] = wait_for_workers(env["HSFM_CACHE_DIR"])
    for job in Path(env["HSFM_CACHE_DIR"]).glob("demo-workspace-v*/cache/umap-*.job.json"):
        record = json.loads(job.read_text())
        out["map worker: request → map on disk_s"] = round(record.get("seconds", float("nan")), 1)
        out["map worker: CPU_s"] = round(record.get("cpu_seconds", float("nan")), 1)
    return out


def wait_for_workers(cache_dir: str, timeout_s: float = 900) -> float:
    """Wait until no process started for this cache (the render views' worker outlives its server by
    design) is left, so that the next fresh launch starts on an idle machine. → seconds waited."""
    import psutil

    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        alive = []
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if any(cache_dir in part for part in process.info["cmdline"]):
                    alive.append(process)
        if not alive:
            break
        time.sleep(1)
    return round(time.perf_counter() - start, 1)


def numba_costs() -> dict:
    """Map time in a fresh process with an empty numba cache, then with the cache it left."""
    out = {}
    for graph in ("faiss", "pynndescent"):
        cache = tempfile.mkdtemp(prefix="hsfm-bench-numba-")
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for attempt in ("first process (empty numba cache)", "second process (numba cache filled)"):
            result = subprocess.run([sys.executable, "-c", FIT, graph], env=env, capture_output=True, text=True,
                                    check=True)
            first, again = map(float, result.stdout.split()[-2:])
            out[f"{graph} graph, {attempt}: import + first map_s"] = round(first, 1)
            out[f"{graph} graph, {attempt}: the same map again in-process_s"] = round(again, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh-numba", action="store_true", help="also start with an empty NUMBA_CACHE_DIR")
    parser.add_argument("--numba-only", action="store_true", help="only part 3")
    parser.add_argument("--no-numba", action="store_true", help="parts 1 and 2 only")
    parser.add_argument("--runs", type=int, default=1, help="repeat parts 1 and 2")
    parser.add_argument("--fresh-only", action="store_true", help="part 1 without part 2")
    args = parser.parse_args()
    figures: dict = {"checkout": str(Path.cwd())}
    for run in range(args.runs if not args.numba_only else 0):
        env = {"HSFM_CACHE_DIR": tempfile.mkdtemp(prefix="hsfm-bench-cache-"), "HSFM_WORKSPACE": ""}
        if args.fresh_numba:
            env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="hsfm-bench-numba-")
        os.environ.pop("HSFM_WORKSPACE", None)
        figures[f"fresh machine, run {run + 1}"] = launch(env)
        if not args.fresh_only:
            figures[f"later launch, run {run + 1}"] = launch(env)
        figures[f"env, run {run + 1}"] = env
        if run + 1 < args.runs or not args.no_numba:  # the figures so far, as soon as measured (stderr)
            print(json.dumps(figures, indent=2, ensure_ascii=False), file=sys.stderr, flush=True)
    if not args.no_numba:
        figures["map worker, numba"] = numba_costs()
    print(json.dumps(figures, indent=2, ensure_ascii=False))  # stdout: one JSON document


if __name__ == "__main__":
    main()
