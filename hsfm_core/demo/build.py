"""The demo workspace: SynthBirds → `extract` with the bundled CLIP → ERM, DFR and HSFM runs.

It goes through exactly the pipeline a user runs on real data (`read_dataset("waterbirds")`,
`extract`, `train`); nothing downstream knows it is the demo. The build writes into its target
folder and records `demo.json` last: a folder without it is an unfinished build and is rebuilt.
A file lock keeps two app sessions from building the same folder at once.

The build ends by starting the demo's default Projection map (the newest edited run, default UMAP
parameters, the fast layout of `analysis.projection`) in a separate process, so that the first visit
to Projection finds it on disk; the page shows the worker's progress until then. That worker is
started, niced, when the build starts (`projection.prepare_worker`): it spends the build importing
torch, pandas, FAISS and umap — seconds of a fresh process, longer than the fast map's fit — and then
waits for its map. Once the map is on disk, a render worker (`render.background`, started by the build,
waiting until then) computes the Lesson's render views: the flip rates of the newest edited run group
and the strips its step opens on. Nothing else runs beside the build: on 2 cores a concurrent numba warm-up, or the
map started before the last runs, slowed the build's torch work by more than it saved (measured by
benchmarks/bench_first_run.py; README "Measured"), and umap's kernels are cached on disk after the
first map anyway.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from hsfm_core import methods
from hsfm_core.analysis import projection
from hsfm_core.data import read_dataset
from hsfm_core.demo import synthbirds
from hsfm_core.errors import InputError
from hsfm_core.features.encoders import load_encoder, resolve_device
from hsfm_core.features.extract import extract
from hsfm_core.resources import assets_dir
from hsfm_core.spec import TrainSpec
from hsfm_core.train import train

ASSETS = assets_dir()  # the checkout's assets/ or an installed copy (hsfm_core/resources.py)
DEMO_CLIP = ASSETS / "synthbirds-clip"
DEMO_VERSION = 3  # 2: every method over seeds 0-2, plus HSFM's paper and validation-tuned settings; 3: AFR runs the authors' recipe (its default), the default map is built too
DEMO_SEEDS = (0, 1, 2)  # ≥ 3 seeds: one HSFM seed varies by ±2–3 points of worst-group accuracy
TUNED = ASSETS / "demo-hsfm-tuned.json"  # the validation sweep's choice, with its command and table
MARKER = "demo.json"
BUILDING = ".demo-build"  # written first: a folder with it is an unfinished demo build
DATA_DIR = "synthbirds"  # the Waterbirds-format image folder, inside the workspace

Progress = Callable[[str, float], None]  # (what is happening, fraction of the build done)


def default_demo_dir() -> Path:
    """Where the app keeps the demo workspace: the user cache directory (HSFM_CACHE_DIR overrides)."""
    from platformdirs import user_cache_dir

    root = Path(os.environ.get("HSFM_CACHE_DIR") or user_cache_dir("hsfm-studio"))
    return root / f"demo-workspace-v{DEMO_VERSION}"


def is_built(path: str | os.PathLike) -> bool:
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("version") == DEMO_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def demo_requests(device: str = "cpu") -> list[tuple[str, TrainSpec]]:
    """What the demo trains: every registered method with its default preset for the demo store, then
    the extra configurations of `assets/demo-hsfm-tuned.json` (the paper's settings and the validation
    sweep's choice), all over DEMO_SEEDS. Tags name each run's role for the Lesson."""
    requests = [(m.name, TrainSpec.create(m.name, seeds=DEMO_SEEDS, device=device, tags={"demo_role": "default"}))
                for m in methods.all_methods()]
    for extra in json.loads(TUNED.read_text(encoding="utf-8"))["runs"]:
        requests.append((f"{extra['method']}-{extra['role']}", TrainSpec.create(
            extra["method"], preset=extra["preset"], overrides=extra["overrides"], seeds=DEMO_SEEDS, device=device,
            tags={"demo_role": extra["role"], "demo_label": extra["label"]})))
    return requests


@contextmanager
def _build_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds the build done
        yield


def start_default_map(out: Path, wait: bool = False):
    """Compute the map the Projection page opens on in a background process (nothing when it is on
    disk or being computed); with `wait`, block until it is written. → its MapStatus."""
    from hsfm_core.features import FeatureStore

    store = FeatureStore.open(out)
    run = projection.default_map_run(out)
    status = projection.start_map(store, run)
    if wait:
        projection.wait_for_map(store, run)
        status = projection.map_status(store, run)
    return status


def start_render_views(out: Path, after: Path | None = None):
    """Compute the Lesson's render views — the flip rates of the newest edited run group (the Lesson's
    editors' step and Decode's default run), its class means and the strips the views open on — in a
    worker process that starts once `after` (the first map) is on disk, so that neither the build nor
    the first map waits for it (docs/ARCHITECTURE.md §Render). → its JobStatus, or None when there is
    nothing to render (no edited run, no renderer for the store)."""
    from hsfm_core.analysis.seeds import group_key
    from hsfm_core.render import background
    from hsfm_core.render.inverter import find_inverter
    from hsfm_core.workspace import open_workspace

    try:
        ws = open_workspace(out)
        newest = projection.default_map_run(out)
        if newest is None or find_inverter(ws.store) is None:
            return None
        group = next((g for g in ws.run_groups if g.key == group_key(newest)), None)
        if group is None:  # the newest run is of another store: the workspace's run groups leave it out
            return None
        runs = [r["run_id"] for r in group.runs
                if r["status"] == "done" and (r["path"] / "support.safetensors").is_file()]
    except (InputError, OSError):  # a warm-up only: the views compute it themselves, and say what is wrong
        return None
    return background.start(ws.store, runs, after=after)


def build_demo(out: str | os.PathLike | None = None, *, seed: int = 0, workers: int = 2, force: bool = False,
               progress: Progress | None = None, default_map: str = "background", device: str = "cpu") -> Path:
    """Build the demo workspace at `out` (default: `default_demo_dir()`) unless it is already built.

    `default_map`: "background" starts the default Projection map in a separate process and returns
    (the app shows Home meanwhile), "wait" returns once it is on disk, "none" leaves it to the page.
    `device`: where extraction and the runs compute — the CPU for the app's demo, whose teaching
    numbers are the CPU's; benchmarks/gpu_check.py builds it on a GPU too."""
    if default_map not in ("background", "wait", "none"):
        raise InputError(f"default_map must be background, wait or none, not {default_map!r}")
    out = Path(out) if out is not None else default_demo_dir()
    report = progress or (lambda message, fraction: None)
    if not DEMO_CLIP.is_dir():
        raise InputError(f"the bundled CLIP is missing: {DEMO_CLIP} (python -m hsfm_core demo train-clip)")
    with _build_lock(out):
        if is_built(out) and not force:
            if default_map != "none":  # e.g. a build from before maps (or render views) were built
                start_render_views(out, after=start_default_map(out, wait=default_map == "wait").path)
            return out
        if out.exists() and any(out.iterdir()):
            if not ((out / MARKER).exists() or (out / BUILDING).exists()):
                raise InputError(f"{out} is not empty and is not a demo workspace; choose an empty or new folder")
            shutil.rmtree(out)  # our own unfinished or outdated build: start again
        if default_map != "none":  # its imports overlap the build; the map's fit starts when the build ends
            projection.prepare_worker()
        try:
            _build(out, seed, workers, report, device)
        except BaseException:
            projection.discard_prepared_worker()
            raise
        if default_map != "none":
            report("Demo workspace ready; computing its map in the background", 1.0)
            start_render_views(out, after=start_default_map(out, wait=default_map == "wait").path)
        report("Demo workspace ready", 1.0)
    return out


def _build(out: Path, seed: int, workers: int, report: Progress, device: str = "cpu") -> None:
    """Images → store → runs, then `demo.json` last (the marker of a finished build)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILDING).touch()
    timings = {}
    t0 = time.perf_counter()

    report("Drawing SynthBirds images (11,788 PNGs)", 0.0)
    total = sum(map(sum, synthbirds.WATERBIRDS_COUNTS.values()))
    synthbirds.write_dataset(out / DATA_DIR, seed=seed, workers=workers,
                             progress=lambda done, n: report("Drawing SynthBirds images", 0.4 * done / n))
    timings["images_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    report("Encoding the images with the bundled CLIP", 0.4)
    table = read_dataset("waterbirds", out / DATA_DIR)
    where = resolve_device(device)
    encoder = load_encoder(f"local-dir:{DEMO_CLIP}", None, where)
    extract(table, encoder, out, device=where, batch_size=256, progress=False, overwrite=True)
    timings["extract_s"] = time.perf_counter() - t1

    runs = {}
    requests = demo_requests(device)
    for k, (role, spec) in enumerate(requests):
        t2 = time.perf_counter()
        report(f"Training {spec.method.upper()} ({role}), seeds {', '.join(map(str, spec.seeds))}",
               0.6 + 0.4 * k / len(requests))
        trained = train(out, spec)
        runs[role] = {"run_ids": [r.run_id for r in trained], "preset": trained[0].preset,
                      "test_wga": [r.metrics["test"]["wga"] for r in trained]}
        timings[f"{role}_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    (out / MARKER).write_text(json.dumps({"version": DEMO_VERSION, "seed": seed, "images": total,
                                          "clip": str(DEMO_CLIP), "runs": runs, "timings": timings}, indent=2))
    (out / BUILDING).unlink()
