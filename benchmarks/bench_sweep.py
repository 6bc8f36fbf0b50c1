"""A 12-configuration × 3-seed HSFM sweep on the demo workspace, locally, and what it selects.

    python -m benchmarks.bench_sweep --demo DEMO_WORKSPACE [--max-parallel 2]

Copies the demo store (features, no images, no runs) into a fresh workspace so that nothing is
resumed, then runs the issue's grid (α ∈ {5e-5, 2e-4, 5e-4} × η ∈ {0.1, 1} × K_hard ∈ {16, 64}, seeds
0–2) through `sweeps.run` with spawned worker processes. Reports wall time (target ≤ 3 min on 2
cores), the configuration selected on validation, its test WGA beside DFR's on the same seeds, and
the edit diagnostics (median ‖Δ‖/‖z‖, median off-data ratio) of the paper preset and the selection.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from hsfm_core import sweeps
from hsfm_core.analysis.diagnostics import run_diagnostics
from hsfm_core.analysis.seeds import format_mean_std, mean_std
from hsfm_core.features import FeatureStore
from hsfm_core.runs import find_run, load_support
from hsfm_core.spec import TrainSpec
from hsfm_core.train import train

GRID = ["alpha=5e-5,2e-4,5e-4", "eta=0.1,1", "K_hard=16,64"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hsfm-bench-sweep"))
    parser.add_argument("--max-parallel", type=int, default=2)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    for name in ("manifest.json", "features.npy", "meta.parquet"):
        shutil.copy(args.demo / name, args.out / name)
    FeatureStore.open(args.out)

    request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", GRID), seeds=(0, 1, 2),
                                  preset="waterbirds", device="cpu", max_parallel=args.max_parallel)
    t0 = time.perf_counter()
    table = sweeps.run(args.out, request)
    wall = time.perf_counter() - t0
    chosen = int(table[table["selected"]]["config"].iloc[0])
    row = table.iloc[chosen]
    print(f"sweep: {len(table)} configurations × 3 seeds in {wall:.1f} s (max parallel {args.max_parallel})")
    print(f"selected on val: config {chosen} ({', '.join(f'{n}={row[n]}' for n in request.grid)}): val WGA "
          f"{format_mean_std(row['val_wga_mean'], row['val_wga_std'])}, test WGA "
          f"{format_mean_std(row['test_wga_mean'], row['test_wga_std'])}")

    dfr = train(args.out, TrainSpec.create("dfr", seeds=[0, 1, 2]))
    paper = train(args.out, TrainSpec.create("hsfm", preset="waterbirds", seeds=[0, 1, 2], device="cpu"))
    dfr_wga, paper_wga = mean_std([r.metrics["test"]["wga"] for r in dfr]), mean_std([r.metrics["test"]["wga"] for r in paper])
    print(f"DFR test WGA {format_mean_std(*dfr_wga)}; HSFM paper preset {format_mean_std(*paper_wga)}; "
          f"tuned − DFR = {100 * (row['test_wga_mean'] - dfr_wga[0]):+.1f} points")
    store = FeatureStore.open(args.out)
    diagnostics = {}
    for label, run_ids in (("paper", [r.run_id for r in paper]),
                           ("tuned", [sweeps.run_id_of(request, chosen, s) for s in (0, 1, 2)])):
        per_seed = [run_diagnostics(store, load_support(find_run(args.out, rid))) for rid in run_ids]
        diagnostics[label] = {k: mean_std([d[k] for d in per_seed])
                              for k in ("median_relative_edit_norm", "median_off_data_ratio", "off_data_share")}
        d = diagnostics[label]
        print(f"{label}: median ‖Δ‖/‖z‖ {format_mean_std(*d['median_relative_edit_norm'], percent=False, digits=2)}, "
              f"median off-data ratio {format_mean_std(*d['median_off_data_ratio'], percent=False, digits=2)} "
              f"(off the data above {per_seed[0]['off_data_threshold']:.2f}), share off the data "
              f"{format_mean_std(*d['off_data_share'])} %")
    print(json.dumps({"wall_s": wall, "selected": chosen, "table": json.loads(table.to_json(orient="records")),
                      "dfr_test_wga": dfr_wga, "paper_test_wga": paper_wga, "diagnostics": diagnostics}))


if __name__ == "__main__":
    main()
