"""Launches under load, alone (issue 25; README "Teaching with the Studio"): does each launcher follow its own job?

    python -m benchmarks.bench_follow --sessions 8 --busy 3 --workspace DEMO [--finish-timeout 300]

The classroom benchmark's launch step (benchmarks/bench_classroom.py: Retrain, ERM, seeds "0", Launch run,
then wait for the followed job's end and read whether it is the session's own, marked "yours"), without the
walk before it: N sessions launch within a few seconds of each other while `--busy` processes spin on the
CPU, the load under which an N = 25 class had one launcher in five follow another session's job. Each
launch is reported with the job it followed; the jobs on disk are checked for loss and duplicates as there.
DEMO is copied to a scratch folder first; the server runs the committed code (`git archive HEAD`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_classroom import (ACTION_TIMEOUT_MS, WS_HOOK, Session, job_ids, launches_on_disk, server,
                                        snapshot, stop_jobs, warm_up)
from tests.browser import CHROMIUM, CHROMIUM_ARGS

LAUNCH_WINDOW_S = 3.0  # the launches land within this many seconds of each other


async def launch_together(url: str, n: int, finish_timeout_s: float) -> list[Session]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        await warm_up(browser, url)
        sessions = []
        for i in range(n):
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
            await context.add_init_script(WS_HOOK)
            sessions.append(Session(i, await context.new_page()))

        async def ready(session: Session) -> None:
            await session.page.goto(url)
            await session.page.get_by_text("Dataset card").first.wait_for()
            await session.prepare_launch()

        await asyncio.gather(*(ready(s) for s in sessions))

        async def launch(session: Session) -> None:
            await asyncio.sleep(random.uniform(0, LAUNCH_WINDOW_S))
            await session.press_launch(finish_timeout_s)

        await asyncio.gather(*(launch(s) for s in sessions))
        await browser.close()
    return sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--busy", type=int, default=3, help="processes spinning on the CPU while the sessions launch")
    parser.add_argument("--workspace", required=True, help="a demo workspace (copied; the copy is used)")
    parser.add_argument("--finish-timeout", type=float, default=300, help="seconds a launched run may take")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="hsfm-bench-follow-"))
    busy = []
    try:
        commit = snapshot(scratch / "code")
        workspace = scratch / "ws"
        shutil.copytree(args.workspace, workspace, symlinks=True, ignore=shutil.ignore_patterns("jobs"))
        before = job_ids(workspace) if (workspace / "jobs").is_dir() else set()
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        with server(scratch / "code", workspace, scratch / "server.log") as (url, _):
            sessions = asyncio.run(launch_together(url, args.sessions, args.finish_timeout))
            on_disk = launches_on_disk(workspace, sessions, before)
            stop_jobs(workspace)
        launches = [s.launch for s in sessions]
        result = {"commit": commit, "sessions": args.sessions, "busy": args.busy, "launches": launches,
                  "followed_own": sum(bool(x and x["yours"]) for x in launches),
                  "finished": sum(bool(x and x["finished"]) for x in launches), "on_disk": on_disk}
        print(f"Server code {commit}; {args.sessions} sessions, {args.busy} busy processes: "
              f"{result['followed_own']}/{args.sessions} followed their own job, {result['finished']} finished; "
              f"on disk: {on_disk['jobs_created']} jobs, lost {on_disk['lost']}, extra {on_disk['extra']}, "
              f"duplicate runs {on_disk['duplicate_runs']}")
        for launch in launches:
            print("   ", json.dumps(launch))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        for process in busy:
            process.kill()
            process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
