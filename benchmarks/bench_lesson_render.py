"""The Lesson's rendering step on the demo (docs/ARCHITECTURE.md §Render, "The Lesson"): how long the
editors' step holds the page on its first visit, and how long until its pictures and flip rates (every
seed's edits and null edits rendered and re-encoded, in a worker process) fill it in, beside a warm
revisit, the step before it, and the same step as it was computed before (in the foreground).

    python -m benchmarks.bench_lesson_render [--workspace DIR]
    python -m benchmarks.bench_lesson_render --build    # the demo build with its warm step, instead

The workspace (default: the demo) is copied without its render cache into temporary folders, so the
first visit renders everything. Each visit runs the page headless (Streamlit's AppTest) in a fresh
process (a new server):
- `cold, in the foreground (before)`: nothing on disk, the worker switched off — the step computes its
  flip rates under a spinner, as it did before the background worker;
- `cold`: nothing on disk — the step shows its placeholder and starts the worker; the page is polled
  (`at.run()` every 0.5 s, as the placeholder's fragment polls each second) until the pictures are drawn;
- `restart`: the same workspace in a new process — renderings and flip rates on disk;
- `restart, without rendering`: the same step as if the store had no renderer, for comparison;
- `after the demo build's warm step`: a fresh copy warmed by `demo.build.start_render_views` (what the
  build starts once its first map is on disk), then visited in a new process;
- `drawn at once`: the render views that stay synchronous (Neighbors' strip, Decode's class means), timed
  through the facade in a fresh process with nothing rendered.
Each visit ends with a revisit in the same process (Streamlit's caches). `--build` builds the demo into a
temporary folder instead and times what follows its runs: the build's return (the map and the render worker
started), the first map on disk (its worker's own seconds) and the render worker's record; run from an older
checkout (`cd OLD && python /path/to/bench_lesson_render.py --build`) it times that version's build alike. Prints one JSON document: wall-clock
and CPU seconds (this process, all threads; the worker's own from its job file) and the load average.
Run it at `nice` on a quiet machine for the README's figures.
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
POLL_S = 0.5


def worker_records(workspace: str) -> list[dict]:
    """The render workers' job files in the workspace: their seconds and CPU seconds."""
    from hsfm_core.render.background import JOBS

    out = []
    for job in sorted((Path(workspace) / JOBS).glob("*.job.json")):
        record = json.loads(job.read_text())
        out.append({"runs": len(record.get("runs", [])), "stage": record.get("stage"),
                    "wall_s": round(record.get("seconds", float("nan")), 2),
                    "cpu_s": round(record.get("cpu_seconds", float("nan")), 2)})
    return out


def visit(workspace: str, mode: str = "background") -> dict:
    """In this process: open the Lesson, go to the step before the editors' (timed), then to the editors' step
    (timed: its first visit; when it shows the placeholder, polled until the pictures are drawn), then revisit
    it (timed: warm). `mode`: "background" (the app as it is), "foreground" (no worker: the flip rates computed
    under a spinner, as before), "no-render" (as if the store had no renderer)."""
    from streamlit.testing.v1 import AppTest

    if mode == "no-render":
        import hsfm_core.render.inverter

        hsfm_core.render.inverter.find_inverter = lambda *args, **kwargs: None
    if mode == "foreground":
        from hsfm_core.studio import ui

        ui.rendered_in_background = lambda *args, **kwargs: False

    os.environ["HSFM_WORKSPACE"] = workspace
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=900).run()
    at.switch_page("pages/6_Lesson.py").run()
    out = {}

    def check() -> None:
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])

    def timed(name: str, action) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        out[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
        check()

    def drawn() -> bool:
        return any(c.startswith("t = 1 · reads") for e in at.get("image") for c in e.captions)

    def placeholder() -> bool:
        return any("in the background" in (p.proto.text or "") for p in at.get("progress"))

    for _ in range(EDITORS_STEP - 1):
        at.button(key="lesson.next").click().run()
    at.button(key="lesson.back").click().run()
    timed(f"step {EDITORS_STEP} (the step before, warm)", lambda: at.button(key="lesson.next").click().run())
    clicked, cpu = time.perf_counter(), time.process_time()
    timed(f"step {EDITORS_STEP + 1}: first visit", lambda: at.button(key="lesson.next").click().run())
    out["placeholder shown"] = placeholder()
    if out["placeholder shown"]:
        polls = 0
        while not drawn() and time.perf_counter() - clicked < 600:
            time.sleep(POLL_S)
            at.run()
            check()
            polls += 1
        out[f"step {EDITORS_STEP + 1}: filled in, from the click"] = {
            "wall_s": round(time.perf_counter() - clicked, 2), "cpu_s (this process)": round(time.process_time() - cpu, 2),
            "polls": polls}
    timed(f"step {EDITORS_STEP + 1}: revisit", lambda: at.run())
    out["rendered"] = drawn()
    out["workers"] = worker_records(workspace)
    return out


def build() -> dict:
    """Build the demo into a temporary folder; time its return, the first map and the render worker."""
    import hsfm_core
    from hsfm_core.analysis import projection
    from hsfm_core.demo.build import build_demo
    from hsfm_core.features import FeatureStore

    marks = {}
    start = time.perf_counter()

    def progress(message: str, fraction: float) -> None:
        marks.setdefault(message, round(time.perf_counter() - start, 2))

    with tempfile.TemporaryDirectory(prefix="bench-lesson-build-") as tmp:
        out = Path(tmp) / "demo"
        cpu = time.process_time()
        build_demo(out, force=True, progress=progress)
        returned = time.perf_counter() - start
        result = {"hsfm_core": str(Path(hsfm_core.__file__).parent), "build returned, s": round(returned, 2),
                  "build, CPU-s (this process)": round(time.process_time() - cpu, 2),
                  "runs done → returned, s": round(returned - marks.get(
                      "Demo workspace ready; computing its map in the background", returned), 3)}
        store = FeatureStore.open(out)
        run = projection.default_map_run(out)
        path = projection.wait_for_map(store, run, timeout=600)
        result["map on disk, s after the build returned"] = round(time.perf_counter() - start - returned, 2)
        job = json.loads(path.with_suffix(".job.json").read_text())
        result["map worker"] = {"wall_s": round(job["seconds"], 2), "cpu_s": round(job["cpu_seconds"], 2)}
        try:
            from hsfm_core.render.background import JOBS  # noqa: F401  (absent before the render worker)
        except ImportError:
            return result
        while not any(j["stage"] in ("done", "failed") for j in worker_records(str(out))):
            if time.perf_counter() - start - returned > 600:
                break
            time.sleep(0.2)
        result["render views done, s after the build returned"] = round(time.perf_counter() - start - returned, 2)
        result["render worker"] = worker_records(str(out))
        from hsfm_core.render.background import JOBS

        jobs = sorted((out / JOBS).glob("*.job.json"))
        if jobs:  # its record starts after its imports, which start once the map is on disk (`--after`)
            started = json.loads(jobs[0].read_text())["started"]
            result["render worker's record started, s after the map was on disk"] = round(
                started - path.stat().st_mtime, 2)
    return result


def synchronous_views(workspace: str) -> dict:
    """In this fresh process, nothing rendered: the render views still drawn at once — Neighbors' strip of
    one support example along z + t·Δ and Decode's class means (the facade's calls, the inverter loaded by
    the first) — then the same again warm."""
    from hsfm_core.analysis.projection import default_map_run
    from hsfm_core.instruments import render

    run = default_map_run(workspace)
    out = {}
    wall, cpu = time.perf_counter(), time.process_time()
    import hsfm_core.render.base  # noqa: F401  torch and the render modules: a server has imported torch already
    import hsfm_core.render.inverter  # noqa: F401

    out["imports (torch, the render modules)"] = {"wall_s": round(time.perf_counter() - wall, 3),
                                                  "cpu_s": round(time.process_time() - cpu, 3)}
    for name, call in (("Neighbors' strip (1 example × 7 steps)", lambda: render.strip(workspace, run, [0], render.STRIP_STEPS)),
                       ("Decode's class means", lambda: render.class_means(workspace, run)),
                       ("Neighbors' strip, another example", lambda: render.strip(workspace, run, [1], render.STRIP_STEPS)),
                       ("the 16-example strip", lambda: render.strip(workspace, run, list(range(16)), render.STRIP_STEPS))):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        out[f"{name}, cold"] = {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3)}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", help="a workspace with edited runs (default: the demo, built if absent)")
    parser.add_argument("--build", action="store_true", help="time the demo build's warm step instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="background", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(synchronous_views(args.child) if args.mode == "views" else visit(args.child, args.mode)))
        return
    if args.build:
        print(json.dumps({**build(), "load_average": os.getloadavg()}, indent=2))
        return
    if args.workspace:
        source = Path(args.workspace).expanduser()
    else:
        from hsfm_core.demo.build import build_demo, default_demo_dir, is_built

        source = default_demo_dir()
        if not is_built(source):
            build_demo(source)

    def fresh_copy(tmp: str, name: str) -> Path:
        """Everything but the images (linked), the jobs and the render cache."""
        workspace = Path(tmp) / name
        shutil.copytree(source, workspace, ignore=lambda folder, names: [
            n for n in names if (Path(folder) == source and n in ("synthbirds", "jobs", "sweeps"))
            or (Path(folder) == source / "cache" and n == "render")])
        if (source / "synthbirds").is_dir():  # a relative image_root finds the images too
            (workspace / "synthbirds").symlink_to(source / "synthbirds")
        return workspace

    def child(workspace: Path, mode: str = "background") -> dict:
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_lesson_render", "--child", str(workspace),
                               "--mode", mode], cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(done.stderr[-4000:])
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = {"workspace": str(source), "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-lesson-") as tmp:
        result["drawn at once (a fresh process, nothing rendered)"] = child(fresh_copy(tmp, "views"), "views")
        result["cold, in the foreground (before)"] = child(fresh_copy(tmp, "before"), "foreground")
        workspace = fresh_copy(tmp, "ws")
        result["cold"] = child(workspace)
        result["restart"] = child(workspace)
        result["restart, without rendering"] = child(workspace, "no-render")

        from hsfm_core.demo.build import start_render_views

        warmed = fresh_copy(tmp, "warmed")
        wall = time.perf_counter()
        status = start_render_views(warmed)  # the map is on disk already: the worker starts at once
        started = time.perf_counter() - wall
        while status is not None and time.perf_counter() - wall < 600 and not any(
                j["stage"] in ("done", "failed") for j in worker_records(str(warmed))):
            time.sleep(POLL_S / 5)
        result["the demo build's warm step"] = {"start_s": round(started, 3), "state": status.state if status else None,
                                                "until done, wall_s": round(time.perf_counter() - wall, 2),
                                                "workers": worker_records(str(warmed))}
        result["after the demo build's warm step"] = child(warmed)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
