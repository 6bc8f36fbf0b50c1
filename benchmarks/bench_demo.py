"""Demo workspace build time and its teaching numbers, on the demo *test* split.

    python -m benchmarks.bench_demo [--out DIR]

Runs `build_demo` (SynthBirds → extract with the bundled CLIP → ERM probe, DFR, HSFM with the
waterbirds preset) into a fresh folder and prints each stage's time and every run's test
worst-group accuracy and adjusted average (train group weights).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from hsfm_core.demo.build import build_demo

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="build here (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()
    out = args.out or os.path.join(tempfile.mkdtemp(prefix="hsfm-demo-"), "demo")
    start = time.perf_counter()
    build_demo(out, force=True, progress=lambda message, fraction: print(
        f"[{time.perf_counter() - start:6.1f} s] {100 * fraction:5.1f}% {message}", flush=True))
    report = json.loads(open(os.path.join(out, "demo.json")).read())
    for method, run in report["runs"].items():
        print(f"{method:5s} test WGA {100 * run['test_wga']:.1f}  adjusted avg {100 * run['test_avg_adjusted']:.1f}")
    print(json.dumps(report["timings"]))
    if not args.out:
        shutil.rmtree(os.path.dirname(out))


if __name__ == "__main__":
    main()
