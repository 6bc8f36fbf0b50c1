"""Demo workspace build time and its teaching numbers, on the demo *test* split.

    python -m benchmarks.bench_demo [--out DIR]

Runs `build_demo` (SynthBirds → extract with the bundled CLIP → every registered method over seeds
0–2, plus HSFM with the paper's settings and the validation-tuned ones) into a fresh folder and
prints each stage's time and each role's test worst-group accuracy, mean ± std over the seeds.
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
    from hsfm_core.analysis.seeds import format_mean_std, mean_std

    for role, runs in report["runs"].items():
        print(f"{role:11s} ({runs['preset']}) test WGA {format_mean_std(*mean_std(runs['test_wga']))} "
              f"over {len(runs['test_wga'])} seeds")
    print(json.dumps(report["timings"]))
    if not args.out:
        shutil.rmtree(os.path.dirname(out))


if __name__ == "__main__":
    main()
