"""An installed copy of this checkout, as a wheel installs it, and the environment of a process that must
see only that copy: shared by tests/test_package.py and the demo's first launch in tests/test_demo.py
(docs/ARCHITECTURE.md §Package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIPPED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "test-artifacts", ".hypothesis", "results")


def outside_env(**extra: str) -> dict:
    """This environment without PYTHONPATH (nothing from the checkout leaks in), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), **extra)
    return env


def install_copy(root: Path) -> Path:
    """A regular (non-editable) install of a copy of this checkout into `root/site` → that folder."""
    source = root / "source"  # built from a copy: no build/ or *.egg-info left in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*SKIPPED))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=root, env=outside_env(), timeout=600)
    return target
