"""Start the app with `streamlit run` and drive it in Debian's headless chromium (playwright)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """CI installs chromium (.ci/run) and must run these tests; elsewhere they skip with a reason."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI must run the browser tests")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")


def free_port() -> int:
    """A port free now, for a command that cannot bind port 0 itself (`hsfm app --port`): another process may
    take it before that command binds it, so prefer `--server.port 0` with `listening_port`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_port(pid: int) -> int | None:
    """The TCP port the process `pid` listens on, if any yet."""
    import psutil

    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return None
    return next((c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN), None)


@contextmanager
def streamlit_server(*app_args: str, env: dict | None = None, timeout: float = 60, log: Path | None = None,
                     root: Path = REPO):
    """Run `streamlit run app.py -- app_args` on a loopback port; yield (URL, process); stop it by PID.
    `root`: the checkout whose app.py runs, in its own directory (a benchmark serves a snapshot).

    The server binds a port the system picks (`--server.port 0`) and the test reads it back from the
    process's listening socket: no port is chosen first and bound later, which two pytest-xdist workers
    (or any other process) could both be handed. The server's output goes to `log` (a temporary file by
    default) — never to an unread pipe, which would block the server once full."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(root / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", "0", "--browser.gatherUsageStats", "false",
           "--", *app_args]
    log_file = open(log, "wb") if log else tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, **(env or {})}, stdout=log_file,
                            stderr=subprocess.STDOUT)
    try:
        deadline, url = time.monotonic() + timeout, None
        while True:
            if url is None and (port := listening_port(proc.pid)):
                url = f"http://127.0.0.1:{port}"
            if url is not None:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log_file.seek(0)
                raise RuntimeError(f"streamlit did not become healthy: {log_file.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield url, proc
    finally:
        stop(proc)
        log_file.close()


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process we started, by its PID: terminate, then kill if it has not ended within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def streamlit_app(*app_args: str, env: dict | None = None, timeout: float = 60):
    """`streamlit_server`, yielding only the URL."""
    with streamlit_server(*app_args, env=env, timeout=timeout) as (url, _):
        yield url


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            yield page
        finally:
            browser.close()


def wait_until_idle(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout_ms)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=timeout_ms)


MAP_AREA = "[data-testid='stPlotlyChart'] .nsewdrag"  # plotly's drag layer: where a lasso is drawn
LASSO = [(0.15, 0.15), (0.85, 0.12), (0.88, 0.85), (0.2, 0.9), (0.15, 0.15)]  # fractions of the plot area


def lasso(page, corners=LASSO) -> float:
    """Mouse down, round the polygon (fractions of the plot area), mouse up; → perf_counter() just before the
    mouse-up that closes it (plotly selects and restyles the points inside the mouse-up handler)."""
    area = page.locator(MAP_AREA).first
    area.wait_for(state="visible")
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x0 + corners[0][0] * w, y0 + corners[0][1] * h)
    page.mouse.down()
    for a, b in zip(corners, corners[1:]):
        for t in (0.25, 0.5, 0.75, 1.0):
            page.mouse.move(x0 + (a[0] + t * (b[0] - a[0])) * w, y0 + (a[1] + t * (b[1] - a[1])) * h)
    start = time.perf_counter()
    page.mouse.up()
    return start
