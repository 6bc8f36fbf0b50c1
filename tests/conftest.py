"""Fixtures shared by the suite, and how it runs in parallel.

`make test` runs the suite on every core with pytest-xdist (Makefile: `-n auto --dist loadgroup`).
Three rules keep that safe and free of repeated work:

- **Shared, built once.** Session fixtures that build something (the app workspace, the tiny CLIP) build
  it once for *all* workers, in a folder of this run that every worker sees (`shared_once`: a file
  lock, the first worker builds, the others wait and reuse). `HSFM_CACHE_DIR` points every worker, and
  every app or CLI process a test starts, at one cache of this run: the demo workspace is built at most
  once there (its build takes its own lock, hsfm_core/demo/build.py), and never in the user's cache.
- **One worker per resource.** A test that uses a module- or session-scoped fixture defined in its own
  test file runs on the same worker as the others that use it (an `xdist_group` per file), so that fixture
  is built once; the real-Slurm tests (one cluster, whose accounting mode they switch) are one such
  group. Browser tests run one at a time (group `browser`): each holds a Streamlit server and a chromium.
- **Long work first.** xdist hands out the groups first (most tests first), then the single tests: the `slow`
  ones before the others, so that no long test starts when the other workers are running out of work.

Without xdist (`-p no:xdist`, or `-n 0`) the same fixtures run in one process, as before.

Groups reach xdist's scheduler through a file, not through the test ids: pytest 9.2 builds a test's id from a
structured field, so xdist 3.8's loadgroup (which appends `@group` to the old one) silently stops grouping
(pytest-dev/pytest-xdist#1386, open). Each worker writes {test id: group} for the tests it collected
(`xdist_group` marks, ours and any written in a test file) beside the workers' temp folders; the controller's
scheduler, xdist's own LoadGroupScheduling, reads its scopes from it.
"""

import os

# Threads: each of N workers gets cores/N (OMP_NUM_THREADS before torch is imported, here and in the
# processes the tests start); N workers × all cores each oversubscribes them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Tests never touch the network: open_clip / huggingface_hub must work from local files only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import make_tiny_clip, make_waterbirds  # noqa: E402

BROWSER_GROUP = "browser"
DONE = ".built"  # written last into a shared folder: a folder without it is an unfinished build
GROUPS_FILE = "xdist-groups.json"  # {test id: xdist group}, written by the workers for the controller


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory) -> Path:
    """A folder of this run seen by every xdist worker (their base temp folders sit in it); the session's own
    base temp folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_once(root: Path, name: str, build: Callable[[Path], object]) -> Path:
    """`root/name`, built by `build(root/name)` once for all workers: the first to take the lock builds it and
    marks it done; the others wait for the lock and reuse it. A build that failed is started again."""
    target = root / name
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / DONE).exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            build(target)
            (target / DONE).touch()
    return target


@pytest.fixture(scope="session", autouse=True)
def background_workers_stopped():
    """Map and render workers this test process started (pages open the app workspace and start them; they run
    in their own session) are stopped when it ends, by their process group: none outlives the suite."""
    yield
    import signal

    from hsfm_core.analysis import projection
    from hsfm_core.render import background

    prepared = [(w, None) for w in [projection._prepared.get("worker")] if w is not None]  # a map worker waiting
    for worker, _ in [*projection._spawned.values(), *background._spawned.values(), *prepared]:
        if worker.poll() is None:
            try:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)


@pytest.fixture(scope="session", autouse=True)
def hsfm_cache(shared_tmp) -> Path:
    """HSFM_CACHE_DIR for this run, shared by every worker: the demo workspace, if a test needs it, is
    built once here (a test that wants a fresh cache sets its own)."""
    cache = shared_tmp / "hsfm-cache"
    cache.mkdir(exist_ok=True)
    saved = os.environ.get("HSFM_CACHE_DIR")
    os.environ["HSFM_CACHE_DIR"] = str(cache)
    yield cache
    if saved is None:
        os.environ.pop("HSFM_CACHE_DIR", None)
    else:
        os.environ["HSFM_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def tiny_clip(shared_tmp) -> str:
    """`local-dir:` spec of a randomly initialised 64-px open_clip bundle (read-only)."""
    folder = shared_once(shared_tmp, "clip", lambda path: make_tiny_clip(path / "tiny-clip"))
    return f"local-dir:{folder / 'tiny-clip'}"


@pytest.fixture()
def waterbirds_dir(tmp_path):
    return make_waterbirds(tmp_path / "waterbirds")


@pytest.fixture(scope="session")
def app_workspace(shared_tmp):
    """A small workspace with images, CLIP features and ERM, DFR and HSFM runs, shared by every worker
    (read-only: copy it before adding runs; the app's own caches in it are written atomically)."""
    from tests.appdata import make_app_workspace

    return shared_once(shared_tmp, "app", make_app_workspace) / "ws"


def _own_shared_fixture(item: pytest.Item) -> bool:
    """Does the test use a module- or session-scoped fixture defined in its own file?"""
    module = item.nodeid.split("::", 1)[0]
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for fixturedef in defs:
            if fixturedef.scope in ("module", "session") and fixturedef.baseid.split("::", 1)[0] == module:
                return True
    return False


def _group(item: pytest.Item) -> str | None:
    if item.get_closest_marker("browser"):
        return BROWSER_GROUP
    if _own_shared_fixture(item):
        return item.nodeid.split("::", 1)[0]
    return None


def pytest_itemcollected(item):
    """Mark the test's xdist group as it is collected (xdist reads the marks when collection ends)."""
    if item.config.pluginmanager.hasplugin("xdist") and not item.get_closest_marker("xdist_group"):
        if group := _group(item):  # the mark is xdist's (an unknown mark without it)
            item.add_marker(pytest.mark.xdist_group(group))


def _group_names(item: pytest.Item) -> str | None:
    """The test's xdist group, as xdist names it (several marks: their names, sorted, joined by _)."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return "_".join(sorted(names)) or None


@pytest.hookimpl(trylast=True)  # after pytest has ordered the tests by their fixtures
def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    # the order xdist hands out single tests (stable: groups keep theirs)
    items.sort(key=lambda item: not (item.get_closest_marker("xdist_group") or item.get_closest_marker("slow")))
    groups = {item.nodeid: group for item in items if (group := _group_names(item))}
    shared = config._tmp_path_factory.getbasetemp().parent  # the controller's base temp folder
    partial = shared / f".{GROUPS_FILE}.{os.environ['PYTEST_XDIST_WORKER']}"
    partial.write_text(json.dumps(groups))
    partial.replace(shared / GROUPS_FILE)  # atomic: every worker collects the same tests, and writes the same


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the groups the workers wrote (see the top of this file)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FileGroupScheduling(LoadGroupScheduling):
        groups: dict | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first asked once every worker has finished collecting
                path = config._tmp_path_factory.getbasetemp() / GROUPS_FILE
                self.groups = json.loads(path.read_text()) if path.exists() else {}
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return FileGroupScheduling(config, log)
