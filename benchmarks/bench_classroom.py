"""A classroom on one Studio server (issue 25; README "Teaching with the Studio"): N browser sessions at once.

    python -m benchmarks.bench_classroom --sessions 25 --workspace DEMO [--train-share 0.2] [--curve 1,5,10,25]
        [--browsers 1] [--cold-map] [--settle 130] [--client-nice 19] [--json OUT]

`--client-nice 19` runs the browsers at the lowest CPU priority: on one machine they otherwise take most of its
cores, which the students' own computers would give them in a class.

DEMO is a demo workspace (`python -m hsfm_core demo build --out DIR`). It is copied to a scratch folder
first: the launched runs and the maps land in the copy, never in DEMO.

For each N of the curve (`--curve`, default just `--sessions`), one Streamlit server (`streamlit run app.py
-- --workspace COPY`, as tests/browser.py starts it) and N headless chromium contexts, spread over
`--browsers` browser processes (default one: a context is one renderer process, the browser process is
shared). Every session walks: Home; each Lesson step (Next →); Projection and two lassos; Decode;
Neighbors; Groups. A share of them (`--train-share`, default 20 %, at least one) then opens Retrain,
picks ERM (seeds "0") and presses Launch run, all within the same ten seconds; each waits for its job
to end and checks that the job is marked "yours" in its own page. Reported per N:

- per-action latency, from the action (click, Enter, a lasso's mouse-up) until the page's expected
  element shows and the script is idle: p50 / p90 / max;
- the part of each latency that is the client's: the page records when its websocket sent the
  action's first message and received the last message before the element showed (Date.now(), on
  the browser's event loop); the time outside that window is the browser's own (and playwright's
  polling). A browser busy rendering answers its event loop late, so the client share is a lower bound,
  and the window's own p50 / p90 (printed) an upper bound of the server's part of the latency;
- exceptions shown on any page (Streamlit's `stException`) and error boxes (`stAlertContentError`);
- server RSS (the server process and its children: map and job workers) and CPU seconds, and the
  browsers' CPU seconds (chromium, playwright's driver and this script) as a share of the machine;
- launches: pressed, accepted, finished, shown as "yours", and lost or duplicated (checked on disk);
- UMAP fits: map worker processes that took the map's lock and wrote its stage (`<map>.job.json`, one
  pid per fit; hsfm_core/analysis/projection.py), and new map files.

With `--cold-map`, the largest N starts with the class arriving on a map not yet computed: the copy's
map files are removed and all N sessions open Projection at once; one fit must serve them all.
After the largest N's walk, a second identical walk on the same server (fresh sessions, after
`--settle` seconds, longer than Streamlit's 120 s TTL of disconnected sessions, so that the first
walk's sessions are gone): RSS growth between the two walks' ends (target ≤ 5 %).

The machine is shared: the 1-minute load average is printed beside every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LASSO,
    MAP_AREA,
    REPO,
    streamlit_server,
)

ACTION_TIMEOUT_MS = 900_000  # a 25-session class on 2 shared cores: waits are long, failures are recorded
SECOND_LASSO = [(0.02, 0.05), (0.12, 0.05), (0.12, 0.95), (0.02, 0.95), (0.02, 0.05)]  # starts outside LASSO
LAUNCH_WINDOW_S = 10.0
SETTLE_QUIET_S = 3.0  # a page counts as done running after this long without a script run (polls are 1 s apart)
SETTLE_TIMEOUT_S = 300.0
EXCEPTION = "[data-testid='stException']"
LOST_LASSO_S = 45  # no message to the server this long after a lasso's mouse-up: the gesture was lost

# Timestamps of every websocket message the page sends and receives (Date.now(), ms since the epoch).
WS_HOOK = """(() => {
  const Native = window.WebSocket;
  window.__ws = {sent: [], recv: []};
  function Hooked(...args) {
    const ws = new Native(...args);
    const send = ws.send.bind(ws);
    ws.send = data => { window.__ws.sent.push(Date.now()); return send(data); };
    ws.addEventListener('message', () => window.__ws.recv.push(Date.now()));
    return ws;
  }
  Hooked.prototype = Native.prototype;
  Object.assign(Hooked, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
  window.WebSocket = Hooked;
})();"""


def load1() -> float:
    return round(os.getloadavg()[0], 1)


# -- the machine, sampled in a thread ------------------------------------------------------------------

class Monitor(threading.Thread):
    """Samples, every `period` s: the server's process tree (RSS, CPU seconds per pid), the client's
    (this process and its descendants outside the server: playwright's driver, chromium), and the pids
    of map workers that fitted a map (`<map>.job.json` names its worker's pid)."""

    def __init__(self, server_pid: int, workspace: Path, period: float = 1.0):
        super().__init__(daemon=True)
        self.server_pid, self.cache, self.period = server_pid, workspace / "cache", period
        self.workspace = str(workspace)
        self.cpu = {"server": {}, "client": {}, "jobs": {}}  # pid → latest user+system seconds
        self.fit_pids: set[tuple[str, int]] = set()
        self.map_workers: set[int] = set()
        self.peak_rss = 0
        self.min_available = psutil.virtual_memory().available  # the machine's memory left, at its lowest
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.sample()

    def trees(self) -> tuple[list[psutil.Process], list[psutil.Process], list[psutil.Process]]:
        """(server and its children, this script and its children, the launched jobs). Local jobs are
        detached from the server (hsfm_core/jobs.py: _submit_detached): found by the workspace in their
        command line (submitit's folder lies inside it)."""
        try:
            root = psutil.Process(self.server_pid)
            server = [root] + root.children(recursive=True)
        except psutil.Error:
            server = []
        me = psutil.Process()
        client = [me] + [p for p in me.children(recursive=True) if p.pid not in {q.pid for q in server}]
        known = {p.pid for p in server + client}
        jobs = []
        for p in psutil.process_iter():
            try:
                if p.pid not in known and self.workspace in " ".join(p.cmdline()):
                    jobs.append(p)
            except psutil.Error:
                pass
        return server, client, jobs

    def sample(self) -> None:
        server, client, jobs = self.trees()
        rss = 0
        with self.lock:
            for side, procs in (("server", server), ("client", client), ("jobs", jobs)):
                for p in procs:
                    try:
                        t = p.cpu_times()
                        self.cpu[side][p.pid] = t.user + t.system
                        if side == "server":
                            rss += p.memory_info().rss
                            if "hsfm_core.analysis.projection" in " ".join(p.cmdline()):
                                self.map_workers.add(p.pid)
                    except psutil.Error:
                        pass
            self.peak_rss = max(self.peak_rss, rss)
            self.min_available = min(self.min_available, psutil.virtual_memory().available)
            for job in self.cache.glob("umap-*.job.json"):
                try:
                    self.fit_pids.add((job.name, int(json.loads(job.read_text())["pid"])))
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # being replaced (atomic write) or unreadable: the next sample sees it

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sample()

    def snapshot(self) -> dict:
        with self.lock:
            return {"cpu": {side: dict(v) for side, v in self.cpu.items()}, "fits": set(self.fit_pids),
                    "map_workers": set(self.map_workers), "maps": set(self.cache.glob("umap-*.parquet")),
                    "machine": psutil.cpu_times(), "t": time.monotonic(), "load1": load1()}

    def rss_mb(self) -> dict:
        """RSS of the server process, of its children (map workers), of the launched jobs' processes."""
        server, client, jobs = self.trees()
        own, kids, work = 0, 0, 0
        browsers = 0  # summed RSS of the client's processes (shared pages counted in each: an upper bound)
        for p in client:
            with contextlib.suppress(psutil.Error):
                browsers += p.memory_info().rss
        for p in server + jobs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            if p.pid == self.server_pid:
                own = rss
            elif p in jobs:
                work += rss
            else:
                kids += rss
        return {"server_mb": round(own / 2**20), "children_mb": round(kids / 2**20), "jobs_mb": round(work / 2**20),
                "total_mb": round((own + kids) / 2**20), "client_mb": round(browsers / 2**20)}


def usage(before: dict, after: dict) -> dict:
    """CPU seconds of the server and the client between two snapshots, and their share of the machine."""
    seconds = {side: sum(max(0.0, v - before["cpu"][side].get(pid, 0.0)) for pid, v in after["cpu"][side].items())
               for side in ("server", "client", "jobs")}
    wall = after["t"] - before["t"]
    busy = lambda t: t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0)
    machine_busy = busy(after["machine"]) - busy(before["machine"])
    capacity = wall * (psutil.cpu_count() or 1)
    return {"wall_s": round(wall, 1), "server_cpu_s": round(seconds["server"], 1),
            "client_cpu_s": round(seconds["client"], 1), "jobs_cpu_s": round(seconds["jobs"], 1),
            "server_share_of_machine": round(seconds["server"] / capacity, 3),
            "client_share_of_machine": round(seconds["client"] / capacity, 3),
            "jobs_share_of_machine": round(seconds["jobs"] / capacity, 3),
            "others_share_of_machine": round(max(0.0, machine_busy - sum(seconds.values())) / capacity, 3),
            "load1_start": before["load1"], "load1_end": after["load1"],
            "umap_fits": len(after["fits"] - before["fits"]),
            "map_workers_started": len(after["map_workers"] - before["map_workers"]),
            "new_map_files": len(after["maps"] - before["maps"])}


# -- one session's walk ----------------------------------------------------------------------------------

class Session:
    """One browser context = one Streamlit session; records each action's latency and what the page showed."""

    def __init__(self, index: int, page):
        self.index, self.page = index, page
        self.actions: list[dict] = []
        self.exceptions: list[str] = []
        self.errors: list[str] = []
        self.failed: str | None = None
        self.launch: dict | None = None
        self.lost_lassos = 0

    async def idle(self) -> None:  # tests/browser.py: wait_until_idle
        await self.page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']",
                                          timeout=ACTION_TIMEOUT_MS)
        await self.page.wait_for_selector("[data-test-script-state='notRunning']", timeout=ACTION_TIMEOUT_MS)

    async def settled(self, quiet_s: float = SETTLE_QUIET_S, timeout_s: float = SETTLE_TIMEOUT_S) -> float | None:
        """Wait until this page has run no script (whole page or fragment) for `quiet_s` in a row: the reruns an
        action sets off after its expected element showed (Retrain's job view reruns the page when the job ends)
        have finished. → the seconds waited, or None when the page was still rerunning after `timeout_s`."""
        start = time.time()
        quiet_since = None
        while time.time() - start < timeout_s:
            state = await self.page.evaluate(
                "() => { const e = document.querySelector('[data-test-script-state]'); "
                "return e ? e.getAttribute('data-test-script-state') : null; }")
            now = time.time()
            if state == "notRunning":
                quiet_since = quiet_since or now
                if now - quiet_since >= quiet_s:
                    return round(quiet_since - start, 2)
            else:
                quiet_since = None
            await asyncio.sleep(0.25)
        return None

    async def timed(self, name: str, action, ready) -> None:
        """`await action()`, then `await ready()` and an idle script; records the latency and the
        websocket window inside it, then what the page shows (exceptions, error boxes). An exception
        shown before the expected element ends the wait (the action is recorded as failed)."""
        page = self.page
        await page.evaluate("() => { window.__ws.sent = []; window.__ws.recv = []; }")
        shown_before = await page.locator(EXCEPTION).count()
        start = time.time()
        mark = await action()
        start = mark or start  # a lasso's mouse-up, not the drawing before it
        failed = not await self.ready_or_exception(ready, shown_before)
        await self.idle()
        end = time.time()
        ws = await page.evaluate("() => window.__ws")
        sent = [t for t in ws["sent"] if t >= start * 1000 - 5]
        recv = [t for t in ws["recv"] if sent and sent[0] <= t <= end * 1000]
        window = (recv[-1] - sent[0]) / 1000 if sent and recv else 0.0
        latency = end - start
        self.actions.append({"action": name, "s": round(latency, 3), "server_window_s": round(min(window, latency), 3),
                             "load1": load1(), **({"failed": True} if failed else {})})
        for selector, out in ((EXCEPTION, self.exceptions), ("[data-testid='stAlertContentError']", self.errors)):
            found = page.locator(selector)
            for i in range(await found.count()):
                text = (await found.nth(i).inner_text())[:300]
                if f"{name}: {text}" not in out:
                    out.append(f"{name}: {text}")

    async def ready_or_exception(self, ready, shown_before: int) -> bool:
        """True when `ready()` finished, False when an exception was shown first (a page that failed never
        shows its expected element)."""
        if shown_before:
            await ready()
            return True
        ok = asyncio.ensure_future(ready())
        shown = asyncio.ensure_future(self.page.locator(EXCEPTION).first.wait_for(timeout=ACTION_TIMEOUT_MS))
        done, pending = await asyncio.wait({ok, shown}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if ok in done:
            ok.result()  # its timeout, if that is what ended it
            return True
        return False

    async def nav(self, name: str, expect: str, also: str | None = None) -> None:
        """Click a page in the sidebar; ready when `expect` (text) and `also` (a selector) show."""
        page = self.page

        async def click():
            await page.locator("[data-testid='stSidebarNav'] a", has_text=name).first.click()

        async def ready():
            await page.get_by_text(expect, exact=False).first.wait_for(timeout=ACTION_TIMEOUT_MS)
            if also:
                await page.locator(also).first.wait_for(timeout=ACTION_TIMEOUT_MS)

        await self.timed(f"open {name}", click, ready)

    async def lasso(self, corners) -> float:
        """The lasso gesture of tests/browser.py; → time.time() just before the closing mouse-up."""
        page = self.page
        area = page.locator(MAP_AREA).first
        await area.wait_for(state="visible", timeout=ACTION_TIMEOUT_MS)
        await area.scroll_into_view_if_needed()
        box = await area.bounding_box()
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        await page.mouse.move(x0 + corners[0][0] * w, y0 + corners[0][1] * h)
        await page.mouse.down()
        for a, b in itertools.pairwise(corners):
            for t in (0.25, 0.5, 0.75, 1.0):
                await page.mouse.move(x0 + (a[0] + t * (b[0] - a[0])) * w, y0 + (a[1] + t * (b[1] - a[1])) * h)
        start = time.time()
        await page.mouse.up()
        return start

    async def sent_lasso(self, corners, tries: int = 3) -> float:
        """`lasso`, drawn again when the page has sent the server nothing LOST_LASSO_S after the mouse-up (the
        gesture never reached plotly: its handlers not attached yet, or dropped by a starved browser);
        counted in `lost_lassos`. → the time of the mouse-up that counted."""
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        for _ in range(tries):
            sent = await self.page.evaluate("() => window.__ws.sent.length")
            start = await self.lasso(corners)
            try:
                await self.page.wait_for_function("n => window.__ws.sent.length > n", arg=sent,
                                                  timeout=LOST_LASSO_S * 1000)
                return start
            except PlaywrightTimeout:
                self.lost_lassos += 1
        return start

    async def selection_text(self) -> str:
        found = self.page.get_by_text("Selection:", exact=False)
        return await found.first.inner_text() if await found.count() else ""

    async def walk(self, url: str) -> None:
        page = self.page

        async def home():
            await page.goto(url)

        await self.timed("open Home (new session)", home,
                         lambda: page.get_by_text("Dataset card").first.wait_for(timeout=ACTION_TIMEOUT_MS))
        await self.nav("Lesson", "Step 1 of")
        steps = int(re.search(r"Step 1 of (\d+)", await page.get_by_text("Step 1 of").first.inner_text()).group(1))
        for step in range(2, steps + 1):
            await self.timed(f"Lesson: Next → step {step}",
                             lambda: page.get_by_role("button", name="Next →").click(),
                             lambda s=step: page.get_by_text(f"Step {s} of").first.wait_for(timeout=ACTION_TIMEOUT_MS))
        await self.nav("Projection", "Colour by", also=MAP_AREA)  # the map drawn
        await page.wait_for_timeout(1000)  # plotly attaches its drag handlers after the first paint
        await self.timed("Projection: lasso", lambda: self.sent_lasso(LASSO),
                         lambda: page.get_by_text("Selection:", exact=False).first.wait_for(timeout=ACTION_TIMEOUT_MS))
        before = await self.selection_text()
        await self.timed("Projection: another lasso", lambda: self.sent_lasso(SECOND_LASSO),
                         lambda: page.wait_for_function(
                             "t => { const e = [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')]"
                             ".find(e => e.innerText.includes('Selection:')); return e && e.innerText !== t; }",
                             arg=before, timeout=ACTION_TIMEOUT_MS))
        await self.nav("Decode", "Mean edit per class")
        await self.nav("Neighbors", "Nearest to the edited feature")
        await self.nav("Groups", "What changed")

    async def prepare_launch(self) -> None:
        """Retrain, ERM picked, seeds "0": ready to press Launch run."""
        page = self.page
        await self.nav("Retrain", "Launch run")
        method = page.get_by_role("combobox", name="Method").first

        async def pick():  # open the list, click ERM's option (typing into a list still opening can be lost)
            await method.click()
            await page.get_by_role("option", name=re.compile(r"^ERM\b")).first.click(timeout=120_000)

        await self.timed("Retrain: pick ERM", pick,
                         lambda: page.get_by_text("ERM settings", exact=False).first.wait_for(timeout=ACTION_TIMEOUT_MS))
        await page.get_by_label("Seeds", exact=True).fill("0")

    async def press_launch(self, finish_timeout_s: float) -> None:
        page = self.page
        self.launch = {"pressed_at": time.time(), "accepted": False, "job_id": None, "finished": False, "yours": False}
        answer = {}

        async def answered():  # the success or the refusal, read at once: a job ending elsewhere reruns the page
            handle = await page.wait_for_function(
                "() => { const a = [...document.querySelectorAll('[data-testid=\"stAlert\"]')].find(e => "
                "/Launched job|was not launched/.test(e.innerText)); return a ? a.innerText : false; }",
                timeout=ACTION_TIMEOUT_MS)
            answer["text"] = await handle.json_value()

        await self.timed("Retrain: Launch run → launched", lambda: page.get_by_role("button", name="Launch run").click(),
                         answered)
        found = re.search(r"Launched job\s+`?([^`\s]+)", answer["text"])
        if not found:
            self.launch["refused"] = answer["text"][:300]
            return
        self.launch.update(accepted=True, job_id=found.group(1))
        job = self.launch["job_id"]
        # The job's end: the Status metric of the followed job (the "Follow job" label names the job, not its
        # status). Both read from one look at the page (a rerun may briefly show the old and the new selectbox).
        look = ("j => { const f = [...document.querySelectorAll('input[aria-label=\"Follow job\"]')]"
                ".find(e => e.value.includes(j)); const m = [...document.querySelectorAll('[data-testid=\"stMetric\"]')]"
                ".find(e => e.innerText.startsWith('Status')); "
                "return f && m && /done|failed|cancelled/.test(m.innerText) ? [f.value, m.innerText] : false; }")
        try:
            handle = await page.wait_for_function(look, arg=job, timeout=finish_timeout_s * 1000, polling=1000)
        except Exception:  # noqa: BLE001 - recorded as not finished, with what the page showed
            self.launch["label_at_timeout"] = await page.evaluate(
                "() => [...document.querySelectorAll('input[aria-label=\"Follow job\"]')].map(e => e.value)")
            return
        label, status = await handle.json_value()
        status = status.split()[-1]
        self.launch.update(finished=status == "done", yours=job in label and "yours" in label,
                           label=label,
                           finished_after_s=round(time.time() - self.launch["pressed_at"], 1))


async def run_sessions(browsers, url: str, n: int, launchers: set[int], finish_timeout_s: float, ramp_s: float,
                       cold_map: bool = False) -> tuple[list[Session], list]:
    """N contexts, round-robin over the browsers; each walks, the launchers then launch together."""
    contexts = []
    for i in range(n):
        context = await browsers[i % len(browsers)].new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(ACTION_TIMEOUT_MS)  # goto's own 30 s default failed 17 of 25 loads at once
        context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
        await context.add_init_script(WS_HOOK)
        contexts.append(context)
    sessions = [Session(i, await c.new_page()) for i, c in enumerate(contexts)]
    ready = asyncio.Barrier(len(launchers)) if launchers else None
    try:
        if cold_map:  # the class arrives on Projection at once; the map is not on disk yet
            async def arrive(s: Session):
                async def go():
                    await s.page.goto(f"{url}/Projection")
                await s.timed("cold map: open Projection until the map is drawn", go,
                              lambda: s.page.locator(MAP_AREA).first.wait_for(timeout=ACTION_TIMEOUT_MS))
            await asyncio.gather(*(arrive(s) for s in sessions))

        async def one(s: Session):
            await asyncio.sleep(random.uniform(0, ramp_s))  # a class does not click in the same millisecond
            try:
                await s.walk(url)
                if s.index in launchers:
                    await s.prepare_launch()
            except Exception as exc:  # noqa: BLE001 - a failed walk is a result
                s.failed = f"{type(exc).__name__}: {str(exc)[:300]}"
            if s.index in launchers:
                await ready.wait()  # every launcher on Retrain (or failed): press within the same ten seconds
                if s.failed is None:
                    await asyncio.sleep(random.uniform(0, LAUNCH_WINDOW_S))
                    try:
                        await s.press_launch(finish_timeout_s)
                    except Exception as exc:  # noqa: BLE001
                        s.failed = f"launch: {type(exc).__name__}: {str(exc)[:300]}"

        await asyncio.gather(*(one(s) for s in sessions))
    except BaseException:
        for c in contexts:
            await c.close()
        raise
    return sessions, contexts


def latency_table(sessions: list[Session]) -> dict:
    actions = [a for s in sessions for a in s.actions if not a["action"].startswith("cold map")]
    times = np.array([a["s"] for a in actions]) if actions else np.zeros(1)
    share = [1 - a["server_window_s"] / a["s"] for a in actions if a["s"] > 0]
    per_action: dict[str, list] = {}
    for a in actions:
        per_action.setdefault(re.sub(r" → step \d+", "", a["action"]), []).append(a)
    windows = np.array([a["server_window_s"] for a in actions]) if actions else np.zeros(1)
    return {"actions": len(actions), "p50_s": round(float(np.percentile(times, 50)), 2),
            "p90_s": round(float(np.percentile(times, 90)), 2), "max_s": round(float(times.max()), 2),
            # the websocket window alone (first message sent → last received): the latency without the client's part
            "server_window_p50_s": round(float(np.percentile(windows, 50)), 2),
            "server_window_p90_s": round(float(np.percentile(windows, 90)), 2),
            "client_share_p50": round(float(np.median(share)), 2) if share else None,
            "per_action": {k: {"n": len(v), "p50_s": round(float(np.median([a["s"] for a in v])), 2),
                               "p90_s": round(float(np.percentile([a["s"] for a in v], 90)), 2),
                               "client_share_p50": round(float(np.median(
                                   [1 - a["server_window_s"] / a["s"] for a in v if a["s"] > 0] or [0])), 2)}
                           for k, v in per_action.items()}}


def job_ids(workspace: Path) -> set[str]:
    from hsfm_core import jobs

    return {j["job_id"] for j in jobs.list_jobs(workspace)}


def launches_on_disk(workspace: Path, sessions: list[Session], before: set[str]) -> dict:
    """Every accepted launch is one job on disk with one run per seed, none lost, none extra."""
    from hsfm_core import jobs

    created = [jobs.get_job(workspace, i) for i in sorted(job_ids(workspace) - before)]
    accepted = [s.launch["job_id"] for s in sessions if s.launch and s.launch["accepted"]]
    ids = {j["job_id"] for j in created}
    runs = [r for j in created for r in j["run_ids"]]
    took = [(j.get("ended") or {}).get("t") and j["ended"]["t"] - j["created_t"] for j in created]
    return {"jobs_created": len(created), "statuses": [j["status"] for j in created],
            "created_to_ended_s": [round(t, 1) if t else None for t in took], "lost": sorted(set(accepted) - ids), "extra": sorted(ids - set(accepted)),
            "runs": len(runs), "duplicate_runs": len(runs) - len(set(runs)),
            "sessions_tagged": len({(j["spec"].get("tags") or {}).get("session") for j in created}),
            "done_on_disk": sum(j["status"] == "done" for j in created)}


async def phase(browsers, url, workspace: Path, monitor: Monitor, n: int, share: float, finish_timeout_s: float,
                ramp_s: float, cold_map: bool = False) -> dict:
    launchers = set(random.Random(n).sample(range(n), max(1, round(share * n)))) if share > 0 else set()
    before, jobs_before = monitor.snapshot(), job_ids(workspace)
    sessions, contexts = await run_sessions(browsers, url, n, launchers, finish_timeout_s, ramp_s, cold_map)
    after = monitor.snapshot()
    # The reading at the instant the last expected element showed counts the page runs still in flight then
    # (a launcher's Retrain rerunning once its job ended): transient working memory, not memory kept. The
    # walk's end is when every page has finished running; both readings are reported.
    rss_at_last_element = monitor.rss_mb()
    waits = await asyncio.gather(*(s.settled() for s in sessions))
    rss = monitor.rss_mb()  # with the N sessions still connected, every page done running
    probed = probe_memory(monitor.server_pid)
    for c in contexts:
        await c.close()
    out = {"sessions": n, "walks_completed": sum(s.failed is None for s in sessions),
           "failed": {s.index: s.failed for s in sessions if s.failed},
           "latency": latency_table(sessions), "exceptions": [e for s in sessions for e in s.exceptions],
           "error_boxes": [e for s in sessions for e in s.errors], "rss_end": rss,
           "rss_at_last_element": rss_at_last_element,
           "settle": {"max_wait_s": max((w for w in waits if w is not None), default=0.0),
                      "sessions_still_running": sum(w is None for w in waits)},
           "peak_rss_mb": round(monitor.peak_rss / 2**20),
           "machine_memory_available_min_mb": round(monitor.min_available / 2**20), "machine": usage(before, after),
           "launched": sum(bool(s.launch) for s in sessions),
           "accepted": sum(bool(s.launch and s.launch["accepted"]) for s in sessions),
           "finished": sum(bool(s.launch and s.launch["finished"]) for s in sessions),
           "shown_as_yours": sum(bool(s.launch and s.launch["yours"]) for s in sessions),
           "lost_lassos_redrawn": sum(s.lost_lassos for s in sessions), "memory_probe": probed,
           "launches": [s.launch for s in sessions if s.launch],
           "on_disk": launches_on_disk(workspace, sessions, jobs_before) if launchers else {}}
    cold = [a["s"] for s in sessions for a in s.actions if a["action"].startswith("cold map")]
    if cold:
        out["cold_map"] = {"sessions": len(cold), "p50_s": round(float(np.median(cold)), 1),
                           "max_s": round(max(cold), 1)}
    return out


async def warm_up(browser, url: str) -> float:
    """The teacher opens Home once before the class comes in (the server's imports and first run);
    → seconds until Home showed. Not part of the class's figures."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        start = time.time()
        await page.goto(url)
        await page.get_by_text("Dataset card").first.wait_for(timeout=ACTION_TIMEOUT_MS)
        return round(time.time() - start, 1)
    finally:
        await context.close()


PROBE_DIR = REPO / "benchmarks" / "memory_probe"


def probe_memory(pid: int, timeout_s: float = 900) -> dict | None:
    """With `--probe-memory`: signal the server (benchmarks/memory_probe/sitecustomize.py) and read what its
    handler wrote: heap in use against held free, Python objects per type, tracemalloc growth. Else None.
    Under tracemalloc a snapshot of the whole heap takes minutes: the wait is long."""
    out = os.environ.get("HSFM_MEMORY_PROBE_DIR")
    if not out:
        return None
    before = set(Path(out).glob(f"probe-{pid}-*.json"))
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = set(Path(out).glob(f"probe-{pid}-*.json")) - before
        if new:  # written whole (renamed into place)
            return json.loads(new.pop().read_text())
        time.sleep(0.5)
    return {"error": "no probe answer"}


def remove_maps(workspace: Path) -> None:
    """The copy's maps (and their worker records), so that the class triggers the fit."""
    from hsfm_core.analysis import projection
    from hsfm_core.features import FeatureStore

    store = FeatureStore.open(workspace)
    status = projection.map_status(store, projection.default_map_run(workspace))
    if status.state == "running":  # the demo build's own worker: let it end first
        projection.wait_for_map(store, projection.default_map_run(workspace))
    for f in (workspace / "cache").glob("umap-*"):
        f.unlink()


def stop_jobs(workspace: Path) -> None:
    """Cancel the launched jobs still queued or running (the scratch copy is removed next)."""
    from hsfm_core import jobs

    for job in jobs.list_jobs(workspace) if (workspace / "jobs").is_dir() else []:
        if job["status"] in jobs.ACTIVE:
            jobs.cancel(workspace, job["job_id"])
            jobs.wait(workspace, job["job_id"], timeout_s=60)


def snapshot(into: Path) -> str:
    """The checkout's committed files at HEAD (`git archive`) in `into`: the server runs from them, so that
    edits made to the shared working tree during a long run cannot change the code under measurement."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


@contextmanager
def server(code: Path, workspace: Path, log: Path, timeout: float = 300, probe: dict | None = None):
    """`streamlit run app.py -- --workspace W`, started as the browser tests start it (tests/browser.py's
    `streamlit_server`: a port the system picks, health checked, stopped by PID), but from `code`: its
    directory is the working directory and PYTHONPATH, so the map workers and jobs it starts import the same
    code. `probe`: extra environment for the memory probe (`--probe-memory`). → (URL, process)."""
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code), **(probe or {})}
    with streamlit_server("--workspace", str(workspace), env=env,
                          timeout=timeout, log=log, root=code) as (url, proc):
        yield url, proc


async def point(args, code: Path, workspace: Path, n: int, last: bool) -> dict:
    from playwright.async_api import async_playwright

    log = Path(tempfile.mkstemp(prefix=f"classroom-server-{n}-", suffix=".log")[1])
    result = {}
    probe = None
    if args.probe_memory:
        Path(args.probe_memory).mkdir(parents=True, exist_ok=True)
        os.environ["HSFM_MEMORY_PROBE_DIR"] = str(Path(args.probe_memory).resolve())
        probe = {"PYTHONPATH": f"{PROBE_DIR}:{code}", "HSFM_MEMORY_PROBE_DIR": os.environ["HSFM_MEMORY_PROBE_DIR"],
                 **({"PYTHONTRACEMALLOC": str(args.trace_frames)} if args.trace_frames else {}),
                 **({"HSFM_MEMORY_PROBE_HOLDERS": args.probe_holders} if args.probe_holders else {})}
    with server(code, workspace, log, probe=probe) as (url, proc):
        monitor = Monitor(proc.pid, workspace)
        monitor.start()
        try:
            if args.client_nice:  # after the server started (it keeps its priority): the browsers, its driver and this script
                os.setpriority(os.PRIO_PROCESS, 0, args.client_nice)
            async with async_playwright() as pw:
                browsers = [await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                            for _ in range(min(args.browsers, n))]
                try:
                    teacher = await warm_up(browsers[0], url)
                    cold = last and args.cold_map
                    if cold:
                        remove_maps(workspace)
                    result = await phase(browsers, url, workspace, monitor, n, args.train_share,
                                         args.finish_timeout, args.ramp, cold_map=cold)
                    result["teacher_first_home_s"] = teacher
                    if last and args.second_walk:
                        await asyncio.sleep(args.settle)  # the first walk's sessions expire (TTL 120 s)
                        idle = monitor.rss_mb()
                        result["memory_probe_idle"] = probe_memory(proc.pid)
                        second = await phase(browsers, url, workspace, monitor, n, args.train_share,
                                             args.finish_timeout, args.ramp)
                        result["second_walk"] = second
                        result["rss_idle_between_walks"] = idle
                        a, b = result["rss_end"]["total_mb"], second["rss_end"]["total_mb"]
                        result["rss_growth"] = round((b - a) / a, 3)
                        a, b = result["rss_end"]["server_mb"], second["rss_end"]["server_mb"]
                        result["server_rss_growth"] = round((b - a) / a, 3)
                        a = result["rss_at_last_element"]["server_mb"]
                        b = second["rss_at_last_element"]["server_mb"]
                        result["server_rss_growth_at_last_element"] = round((b - a) / a, 3)
                finally:
                    for b in browsers:
                        await b.close()
        finally:
            monitor.halt.set()
            monitor.join()
    text = log.read_text(errors="replace")
    result["server_log_tracebacks"] = text.count("Traceback")
    result["server_log"] = str(log)
    return result


def row(n: int, r: dict) -> str:
    lat, m = r["latency"], r["machine"]
    return (f"{n:>3} | {r['walks_completed']:>3}/{n:<3} | {m['wall_s']:>6.0f} | {lat['p50_s']:>6.2f} | {lat['p90_s']:>6.2f} | {lat['max_s']:>6.1f} | "
            f"{len(r['exceptions']):>3} | {len(r['error_boxes']):>3} | {r['rss_end']['total_mb']:>6} "
            f"({r['rss_end']['server_mb']}) | {r['accepted']}/{r['launched']} → {r['finished']} done, "
            f"{r['shown_as_yours']} yours | {m['umap_fits']} | {m['server_share_of_machine']:.0%} / "
            f"{m['client_share_of_machine']:.0%} / {m['others_share_of_machine']:.0%} | "
            f"{lat['client_share_p50'] if lat['client_share_p50'] is not None else '—'} | "
            f"{lat['server_window_p50_s']:.2f} / {lat['server_window_p90_s']:.2f} | "
            f"{m['load1_start']}→{m['load1_end']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=25, help="the largest N (the curve's last point)")
    parser.add_argument("--workspace", required=True, help="a demo workspace (copied; the copy is used)")
    parser.add_argument("--train-share", type=float, default=0.2)
    parser.add_argument("--curve", default=None, help="comma-separated N (default: just --sessions)")
    parser.add_argument("--browsers", type=int, default=1, help="browser processes the contexts are spread over")
    parser.add_argument("--cold-map", action="store_true", help="the largest N starts on a map not yet computed")
    parser.add_argument("--no-second-walk", dest="second_walk", action="store_false")
    parser.add_argument("--settle", type=float, default=130, help="seconds between the two walks of the largest N")
    parser.add_argument("--ramp", type=float, default=5, help="sessions start within this many seconds")
    parser.add_argument("--finish-timeout", type=float, default=900, help="seconds a launched run may take")
    parser.add_argument("--live-code", action="store_true",
                        help="serve the working tree itself (default: a snapshot of HEAD, immune to concurrent edits)")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="run the browsers at this niceness (19: the lowest priority), so that the server's "
                             "share of the cores is what it would be with the students' browsers on their own machines")
    parser.add_argument("--probe-memory", metavar="DIR",
                        help="signal the server at each walk's end to write a memory probe into DIR "
                             "(benchmarks/memory_probe: heap in use vs held free, objects per type)")
    parser.add_argument("--probe-holders", metavar="TYPE,TYPE",
                        help="with --probe-memory: for two objects of each type, the referrers that keep it alive")
    parser.add_argument("--trace-frames", type=int, default=0,
                        help="with --probe-memory: run the server under tracemalloc with this many frames "
                             "(slows it: for finding a leak, not for latency)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit("Debian chromium is needed: apt-get install chromium")
    curve = sorted({int(x) for x in args.curve.split(",")} if args.curve else {args.sessions})
    scratch = Path(tempfile.mkdtemp(prefix="hsfm-classroom-"))
    workspace, code = scratch / "ws", scratch / "code"
    shutil.copytree(Path(args.workspace).expanduser(), workspace, symlinks=True)
    commit = "the working tree (live)" if args.live_code else snapshot(code)
    code = REPO if args.live_code else code
    print(f"Server code: {commit}; workspace: a copy of {args.workspace}; cores: {psutil.cpu_count()}; "
          f"load average now {os.getloadavg()}", flush=True)
    results = {"commit": commit}
    try:
        print("  N | walks   | wall s |  p50 s |  p90 s |  max s | exc | err | RSS MB (server) | launches | UMAP fits | "
              "CPU server / browsers / others | client share of latency (p50) | websocket window p50 / p90 s | "
              "load avg 1 min", flush=True)
        for n in curve:
            results[n] = asyncio.run(point(args, code, workspace, n, last=n == curve[-1]))
            print(row(n, results[n]) + f"   (teacher's first Home {results[n]['teacher_first_home_s']} s)", flush=True)
            if "second_walk" in results[n]:
                print(row(n, results[n]["second_walk"]) + "   (second walk, same server)", flush=True)
                print(f"    RSS after the first walk {results[n]['rss_end']}, idle between walks "
                      f"{results[n]['rss_idle_between_walks']}, after the second {results[n]['second_walk']['rss_end']}: "
                      f"growth {results[n]['rss_growth']:+.1%} (server process alone "
                      f"{results[n]['server_rss_growth']:+.1%}; read at the last expected element instead, before "
                      f"the pages finished running: {results[n]['server_rss_growth_at_last_element']:+.1%}); "
                      f"pages settled within {results[n]['settle']['max_wait_s']} / "
                      f"{results[n]['second_walk']['settle']['max_wait_s']} s", flush=True)
            if "cold_map" in results[n]:
                print(f"    cold map, {n} sessions open Projection at once: {results[n]['cold_map']}", flush=True)
    finally:
        stop_jobs(workspace)
        shutil.rmtree(scratch, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    walks = [(f"N = {n}", r) for n, r in results.items() if n != "commit"]
    walks += [(f"N = {n}, second walk", r["second_walk"]) for n, r in results.items() if n != "commit" and "second_walk" in r]
    for n, r in walks:
        print(f"\n{n}: per action (p50 / p90 s, client share p50)")
        for name, v in r["latency"]["per_action"].items():
            print(f"    {name:<52} {v['n']:>4}  {v['p50_s']:>6.2f} / {v['p90_s']:>6.2f}  {v['client_share_p50']:.2f}")
        for what in ("failed", "exceptions", "error_boxes"):
            if r[what]:
                print(f"    {what}: {json.dumps(r[what], default=str)[:2000]}")
        if r.get("on_disk"):
            print(f"    launches on disk: {r['on_disk']}")


if __name__ == "__main__":
    main()
