"""The Lesson's rendering step on the demo (docs/ARCHITECTURE.md §Render, "The Lesson"): how long the
editors' step takes on its first visit, when its flip rates (every seed's edits and null edits rendered and
re-encoded) and its strip are computed, beside a warm revisit and the step before it.

    python -m benchmarks.bench_lesson_render [--workspace DIR]

The workspace (default: the demo) is copied without its render cache into a temporary folder, so the first
visit renders everything. Each measurement runs the page headless (Streamlit's AppTest) in a fresh process:
`cold` (no render cache on disk, nothing loaded), `restart` (a new server process: the renderings are on
disk, the backbone and the re-encoding are not) and `restart, without rendering` (the same step as if the
store had no renderer, for comparison); each is followed by a revisit in the same process (Streamlit's
caches). Prints one JSON document: wall-clock and CPU seconds (all threads) per measurement and the load
average. Run it at `nice` on a quiet machine for the README's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
EDITORS_STEP = 4  # pages/6_Lesson.py: STEPS[4], "<editors>: edit a few features"


def visit(workspace: str, render: bool = True) -> dict:
    """In this process: open the Lesson, go to the step before the editors' (timed), then to the editors' step
    (timed: its first visit), then revisit it (timed: warm). `render=False`: as if the store had no renderer
    (the step without its pictures and flip rates, for comparison)."""
    from streamlit.testing.v1 import AppTest

    if not render:
        import hsfm_core.render.inverter

        hsfm_core.render.inverter.find_inverter = lambda *args, **kwargs: None

    os.environ["HSFM_WORKSPACE"] = workspace
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=900).run()
    at.switch_page("pages/6_Lesson.py").run()
    out = {}

    def timed(name: str, action) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        out[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])

    for _ in range(EDITORS_STEP - 1):
        at.button(key="lesson.next").click().run()
    at.button(key="lesson.back").click().run()
    timed(f"step {EDITORS_STEP} (the step before, warm)", lambda: at.button(key="lesson.next").click().run())
    timed(f"step {EDITORS_STEP + 1}: first visit", lambda: at.button(key="lesson.next").click().run())
    timed(f"step {EDITORS_STEP + 1}: revisit", lambda: at.run())
    captions = [c for e in at.get("image") for c in e.captions]
    out["rendered"] = any(c.startswith("t = 1 · reads") for c in captions)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", help="a workspace with edited runs (default: the demo, built if absent)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-render", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(visit(args.child, render=not args.no_render)))
        return
    if args.workspace:
        source = Path(args.workspace).expanduser()
    else:
        from hsfm_core.demo.build import build_demo, default_demo_dir, is_built

        source = default_demo_dir()
        if not is_built(source):
            build_demo(source)
    with tempfile.TemporaryDirectory(prefix="bench-lesson-") as tmp:
        workspace = Path(tmp) / "ws"
        # everything but the images (linked), the jobs and the render cache is copied
        shutil.copytree(source, workspace, ignore=lambda folder, names: [
            n for n in names if (Path(folder) == source and n in ("synthbirds", "jobs", "sweeps"))
            or (Path(folder) == source / "cache" and n == "render")])
        if (source / "synthbirds").is_dir():  # a relative image_root finds the images too
            (workspace / "synthbirds").symlink_to(source / "synthbirds")
        result = {"workspace": str(source)}
        # last, in a fresh process like `restart`: the same step without its pictures, for comparison
        for name, flags in (("cold", []), ("restart", []), ("restart, without rendering", ["--no-render"])):
            child = subprocess.run([sys.executable, "-m", "benchmarks.bench_lesson_render", "--child", str(workspace),
                                    *flags], cwd=REPO, capture_output=True, text=True, check=False)
            if child.returncode:
                raise SystemExit(child.stderr[-4000:])
            result[name] = json.loads(child.stdout.strip().splitlines()[-1])
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
