"""The package's costs (docs/ARCHITECTURE.md §Package): installing the checkout, starting the `hsfm`
command, and running examples/quickstart.py.

    python -m benchmarks.bench_package [--repeats 10] [--example cold,warm] [--cache DIR] [--skip-install] [--no-index-install]

(1) `pip install -e .` into a fresh venv that already has the pinned requirements. The fresh venv is
`python -m venv`, then, as the Makefile does, pip upgraded and setuptools ≥ 70.1 (not timed); "already has the pinned
requirements" is made true without reinstalling gigabytes by a .pth file that puts this project's
.venv site-packages (where `make` installed requirements.txt) on the new venv's path. Timed: (a) the
Makefile's step, `pip install --no-deps --no-build-isolation -e .` (the venv's own setuptools builds
it; no network), and (b) a plain `pip install -e .` (pip checks every dependency — all satisfied —
and builds in an isolated environment, downloading setuptools from the package index or pip's cache;
skipped with --no-index-install). `hsfm` is then run once from the new venv as a check.
(2) `hsfm --help` and `python -m hsfm_core --help` start time: wall time of the whole process from
another folder, median and max over --repeats runs, beside `python -c pass` (the interpreter alone).
(3) examples/quickstart.py from another folder against the installed package: `cold` with an empty
HSFM_CACHE_DIR (it builds the demo workspace first), `warm` with the demo already built (each run adds
its DFR and HSFM runs to the demo workspace).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


def _timed(argv: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env or _env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed, done


def bench_install(work: Path, plain: bool) -> None:
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "pinned-requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    tools = subprocess.run([str(python), "-c", "from importlib.metadata import version as v; print(v('pip'), v('setuptools'))"],
                           capture_output=True, text=True, check=True).stdout.split()
    print(f"fresh venv {venv} (pip {tools[0]}, setuptools {tools[1]}), pinned requirements from {sysconfig.get_paths()['purelib']}")
    # What the Makefile does before its editable install (not timed): a current pip, setuptools ≥ 70.1
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools>=70.1"], check=True,
                   cwd=work, capture_output=True)
    steps = [("make's step: pip install --no-deps --no-build-isolation -e .",
              ["-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(REPO)])]
    if plain:
        steps.append(("plain: pip install -e . (dependency check + isolated build)",
                      ["-m", "pip", "install", "--quiet", "-e", str(REPO)]))
    for label, args in steps:
        subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "hsfm-studio"], cwd=work,
                       capture_output=True)
        elapsed, done = _timed([str(python), *args], work, check=False)
        result = f"{elapsed:.2f} s" if done.returncode == 0 else f"failed ({done.stderr.strip().splitlines()[-1:]})"
        print(f"  pip install -e . into the fresh venv, {label}: {result}")
    check = subprocess.run([str(venv / "bin" / "hsfm"), "--help"], cwd=work, capture_output=True, text=True, env=_env())
    print(f"  the new venv's hsfm --help: exit {check.returncode}")


def bench_help(work: Path, repeats: int) -> None:
    hsfm = BIN / "hsfm"
    if not hsfm.is_file():
        raise SystemExit(f"{hsfm} is missing: install the checkout first (make test / pip install -e .)")
    for label, argv in (("python -c pass (the interpreter alone)", [sys.executable, "-c", "pass"]),
                        ("hsfm --help", [str(hsfm), "--help"]),
                        ("python -m hsfm_core --help", [sys.executable, "-m", "hsfm_core", "--help"])):
        times = [_timed(argv, work)[0] for _ in range(repeats)]
        print(f"  {label}: median {statistics.median(times):.3f} s, max {max(times):.3f} s over {repeats} runs")


def bench_example(work: Path, kinds: list[str], cache: Path) -> None:
    for kind in ("cold", "warm"):
        if kind not in kinds:
            continue
        if kind == "warm" and not any(cache.glob("demo-workspace-v*/demo.json")):  # warm alone: build first
            _timed([sys.executable, "-m", "hsfm_core", "demo", "build", "--quiet"], work, _env(HSFM_CACHE_DIR=str(cache)))
        elapsed, done = _timed([sys.executable, str(REPO / "examples" / "quickstart.py"), "--out", str(work)], work,
                               _env(HSFM_CACHE_DIR=str(cache)))
        own = [line for line in done.stdout.splitlines() if line.startswith("quickstart done in")]
        print(f"  examples/quickstart.py, {kind} ({'builds the demo first' if kind == 'cold' else 'demo already built'}): "
              f"{elapsed:.1f} s wall ({own[-1] if own else '?'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs of each --help command")
    parser.add_argument("--example", default="cold,warm", help="cold, warm, both (cold,warm) or none")
    parser.add_argument("--cache", type=Path, help="HSFM_CACHE_DIR for the example (default: a new temporary folder; "
                        "give one whose demo is built to time `warm` alone)")
    parser.add_argument("--skip-install", action="store_true", help="skip (1)")
    parser.add_argument("--no-index-install", action="store_true",
                        help="skip the plain `pip install -e .` (it needs the package index or pip's cache)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-package-") as tmp:
        work = Path(tmp)
        if not args.skip_install:
            print("(1) install")
            bench_install(work, plain=not args.no_index_install)
        print("(2) start time, from another folder")
        bench_help(work, args.repeats)
        kinds = [k for k in args.example.split(",") if k in ("cold", "warm")]
        if kinds:
            print("(3) the example, from another folder")
            bench_example(work, kinds, args.cache or work / "cache")


if __name__ == "__main__":
    main()
