"""The package as users install it (docs/ARCHITECTURE.md §Package): pyproject.toml's metadata, the
`hsfm` command from any folder, a regular (non-editable) install that finds its bundled assets and
app, the public API's surface, and examples/quickstart.py run from outside the repository against an
installed copy.

`make test` installs this checkout into .venv in editable mode first, which puts `hsfm` beside the
interpreter running these tests.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.browser import free_port, stop

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
HSFM = Path(sys.executable).parent / "hsfm"
HEAVY = ("torch", "streamlit", "umap", "numba", "pandas", "numpy", "sklearn", "open_clip", "faiss")


def _env(**extra: str) -> dict:
    """This environment without PYTHONPATH (nothing from the checkout leaks in), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), **extra)
    return env


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("declared, pinned", [("dependencies", "requirements.txt"), ("test", "requirements-test.txt")])
def test_pyproject_ranges_hold_the_exact_pins(declared, pinned):
    project = PYPROJECT["project"]
    requirements = project["dependencies"] if declared == "dependencies" else project["optional-dependencies"][declared]
    ranges = {canonicalize_name(r.name): r.specifier for r in map(Requirement, requirements)}
    pins = _pins(REPO / pinned)
    assert set(ranges) == set(pins), f"{pinned} and pyproject.toml [{declared}] name different packages"
    outside = {name: (pins[name], str(spec)) for name, spec in ranges.items() if pins[name] not in spec}
    assert not outside, f"pins outside pyproject.toml's ranges: {outside}"
    assert all(str(spec) for spec in ranges.values()), "every dependency has a range"


def test_pyproject_metadata_and_package_list():
    from setuptools import find_packages

    project, setup = PYPROJECT["project"], PYPROJECT["tool"]["setuptools"]
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"] == {"hsfm": "hsfm_core.cli:console_main"}
    listed = set(setup["packages"])
    bundled = {name for name in listed if name.startswith("hsfm_core._bundled")}
    assert listed - bundled == set(find_packages(str(REPO), include=["hsfm_core", "hsfm_core.*"])), \
        "a package of hsfm_core/ is missing from pyproject.toml's [tool.setuptools] packages (or listed but gone)"
    for name in bundled:
        assert (REPO / setup["package-dir"][name]).is_dir()


def test_public_api_is_exactly_all_and_documented():
    import hsfm_core

    code = "import sys, hsfm_core; print(sorted(m for m in sys.modules if m.split('.')[0] in {})) ".format(set(HEAVY))
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=_env(),
                            check=True).stdout
    assert loaded.strip() == "[]", f"`import hsfm_core` imported {loaded}"
    assert hsfm_core.__all__ == sorted(hsfm_core.__all__) and len(set(hsfm_core.__all__)) == len(hsfm_core.__all__)
    for name in hsfm_core.__all__:
        obj = getattr(hsfm_core, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj) or ""
            assert "Returns:" in doc and "Example:" in doc and ("Args:" in doc), f"{name}: docstring incomplete"
    assert not [n for n in dir(hsfm_core) if not n.startswith("_") and n not in hsfm_core.__all__
                and not inspect.ismodule(getattr(hsfm_core, n))], "the package exports names outside __all__"
    with pytest.raises(AttributeError):
        hsfm_core.not_an_api_name  # noqa: B018


def _subcommands() -> list[str]:
    from hsfm_core.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_help_from_another_folder_lists_every_command_without_heavy_imports(tmp_path):
    assert HSFM.is_file(), f"{HSFM} is missing: install the checkout (`make test` does: pip install -e .)"
    commands = _subcommands()
    assert "app" in commands and "train" in commands and "sweep" in commands
    for argv, prog in (([str(HSFM), "--help"], "hsfm"), ([sys.executable, "-m", "hsfm_core", "--help"], "python -m hsfm_core")):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: {prog} ")
        for command in commands:
            assert re.search(rf"^\s+{re.escape(command)}\s", done.stdout, re.M), f"{prog} --help lacks {command}"
    timed = subprocess.run([sys.executable, "-X", "importtime", "-m", "hsfm_core", "--help"], capture_output=True,
                           text=True, cwd=tmp_path, env=_env(), timeout=120)
    imported = {line.rsplit("|", 1)[1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}, "--help imported heavy packages"
    train_help = subprocess.run([str(HSFM), "train", "--help"], capture_output=True, text=True, cwd=tmp_path,
                                env=_env(), timeout=120)
    from hsfm_core import methods

    assert train_help.returncode == 0 and all(f"  {name} " in train_help.stdout for name in methods.names())
    wrong = subprocess.run([str(HSFM), "train", "--workspace", str(tmp_path), "--method", "nope"], capture_output=True,
                           text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert wrong.returncode == 2 and "invalid choice: 'nope'" in wrong.stderr


def test_hsfm_works_on_a_workspace_from_another_folder(app_workspace, tmp_path):
    done = subprocess.run([str(HSFM), "runs", "--workspace", str(app_workspace), "--json"], capture_output=True,
                          text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert {r["method"] for r in json.loads(done.stdout)["runs"]} >= {"erm", "dfr", "hsfm"}
    missing = subprocess.run([str(HSFM), "app", "--workspace", str(tmp_path / "none")], capture_output=True, text=True,
                             cwd=tmp_path, env=_env(), timeout=120)
    assert missing.returncode == 2 and "no such folder" in missing.stderr


@pytest.fixture(scope="module")
def installed_copy(tmp_path_factory) -> Path:
    """A regular (non-editable) install of a copy of this checkout into a folder, as a wheel installs it."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"  # built from a copy: no build/ or *.egg-info left in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                "__pycache__", "test-artifacts", ".hypothesis",
                                                                "results"))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=root, env=_env(), timeout=600)
    return target


def test_installed_copy_finds_its_assets_and_app(installed_copy, tmp_path):
    code = ("import json, hsfm_core, hsfm_core.resources as r; from hsfm_core.demo.build import DEMO_CLIP, TUNED; "
            "from hsfm_core.analysis.decode import DEFAULT_CONCEPTS; print(json.dumps({'package': hsfm_core.__file__, "
            "'assets': str(r.assets_dir()), 'app': str(r.app_script()), 'clip': str(DEMO_CLIP), 'tuned': str(TUNED), "
            "'concepts': str(DEFAULT_CONCEPTS)}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=_env(PYTHONPATH=str(installed_copy)), timeout=300)
    assert done.returncode == 0, done.stderr
    found = {k: Path(v) for k, v in json.loads(done.stdout).items()}
    bundled = installed_copy / "hsfm_core" / "_bundled"
    assert found["package"] == installed_copy / "hsfm_core" / "__init__.py"
    assert found["assets"] == bundled / "assets" and found["app"] == bundled / "app.py"
    assert found["clip"] == bundled / "assets" / "synthbirds-clip"
    for key in ("tuned", "concepts"):
        assert found[key].is_file() and found[key].is_relative_to(bundled)

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    expected = ({f"assets/{f}" for f in files(REPO / "assets")} | {f"pages/{f}" for f in files(REPO / "pages")}
                | {"app.py"})
    assert files(bundled) == expected, "the wheel's bundled files differ from assets/, pages/ and app.py"


def test_installed_app_and_its_pages_run_from_the_installed_copy(installed_copy, app_workspace, tmp_path):
    """Home and every page of the installed app.py (pages/ beside it), in a fresh process that imports
    the installed hsfm_core: Streamlit's AppTest, headless."""
    pages = sorted(p.name for p in (installed_copy / "hsfm_core" / "_bundled" / "pages").glob("*.py"))
    code = f"""
import hsfm_core
from streamlit.testing.v1 import AppTest
assert hsfm_core.__file__.startswith({str(installed_copy)!r}), hsfm_core.__file__
at = AppTest.from_file({str(installed_copy / "hsfm_core" / "_bundled" / "app.py")!r}, default_timeout=300).run()
assert not at.exception, at.exception
for page in {pages!r}:
    at.switch_page("pages/" + page).run()
    assert not at.exception, (page, at.exception)
    print("ran", page)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=580,
                          env=_env(PYTHONPATH=str(installed_copy), HSFM_WORKSPACE=str(app_workspace)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.split() == [word for page in pages for word in ("ran", page)]


def test_installed_hsfm_app_serves_its_bundled_app_from_another_folder(installed_copy, app_workspace, tmp_path):
    import psutil

    port = free_port()
    proc = subprocess.Popen([str(installed_copy / "bin" / "hsfm"), "app", "--headless", "--port", str(port),
                             "--workspace", str(app_workspace)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=_env(PYTHONPATH=str(installed_copy)))
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                    health = reply.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None and health == "ok", f"the app did not start: {health!r}"
        cmdline = psutil.Process(proc.pid).cmdline()  # `hsfm app` became the Streamlit server (same pid)
        assert str(installed_copy / "hsfm_core" / "_bundled" / "app.py") in cmdline
        assert cmdline[-2:] == ["--workspace", str(app_workspace.resolve())]
    finally:
        stop(proc, timeout=20)
        proc.stdout.close()


@pytest.mark.slow
def test_quickstart_runs_outside_the_repository_against_an_installed_copy(installed_copy, tmp_path):
    """The example as a new user runs it: from another folder, with a fresh cache (it builds the demo
    from the installed copy's bundled CLIP), trains DFR and HSFM, prints the tables and the decoding,
    and saves a figure."""
    script = tmp_path / "quickstart.py"
    shutil.copy(REPO / "examples" / "quickstart.py", script)
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, cwd=tmp_path, env=_env(PYTHONPATH=str(installed_copy), HSFM_CACHE_DIR=str(cache)),
                          timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Test accuracy per group" in out and "What HSFM's edits point to" in out
    assert re.search(r"^\| DFR .*\| \d+\.\d ± \d+\.\d \|", out, re.M) and re.search(r"^\| HSFM .*\| 3 \|$", out, re.M)
    assert len(re.findall(r"^\s+(landbird|waterbird) \(\d+ edited features\): ", out, re.M)) == 2
    assert "plotly" in (tmp_path / "out" / "quickstart-groups.html").read_text()
    demo = json.loads(next(cache.glob("demo-workspace-v*/demo.json")).read_text())
    assert Path(demo["clip"]).is_relative_to(installed_copy), "the demo was not built from the installed copy"
    import psutil

    def started_here(p: psutil.Process) -> bool:  # e.g. a detached map or numba warm-up worker
        try:
            return any(str(tmp_path) in part for part in p.cmdline()) or p.cwd().startswith(str(tmp_path))
        except psutil.Error:
            return False

    assert not [p.cmdline() for p in psutil.process_iter() if started_here(p)], "the example left a process behind"
