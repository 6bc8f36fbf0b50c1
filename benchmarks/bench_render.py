"""Rendering on the demo (docs/ARCHITECTURE.md §Render): the bundled inverter's quality on every test
feature beside the nearest real image, its load and strip times, and the flip rates of the demo's tuned
HSFM over seeds against the null.

    python -m benchmarks.bench_render [--workspace DIR] [--seeds 0 1 2 3 4] [--null-draws 8] [--threads 2]
        [--skip-quality] [--skip-flips]

The demo workspace is located (and built when absent, without its map); the flip rates train the tuned
HSFM (`assets/demo-hsfm-tuned.json`) into a temporary COPY of its store, never into the workspace itself.
Timings are wall-clock on this machine: run it at `nice` on a quiet machine for the README's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def timings(store, repeats: int = 20) -> dict:
    """Inverter load (first, in this process) and a warm 16-example strip."""
    import numpy as np

    from hsfm_core.render import inverter

    t0 = time.perf_counter()
    renderer = inverter.load_inverter(store)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    inverter.load_folder(renderer.folder)
    reload_s = time.perf_counter() - t1
    strip = np.asarray(store.features[store.rows("test")[:16]], dtype=np.float32)
    renderer.render(strip)  # warm
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        renderer.render(strip)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    # wall time on a busy machine measures the other processes too; CPU time (all threads) is this work's own
    return {"load_first_s": load_s, "load_again_s": reload_s, "strip16_median_s": statistics.median(times),
            "strip16_max_s": max(times), "strip16_cpu_median_s": statistics.median(cpu),
            "load_average": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}


def quality(store) -> dict:
    import numpy as np

    from hsfm_core.render import inverter
    from hsfm_core.render.quality import inverter_quality

    renderer = inverter.load_inverter(store)
    test = store.rows("test")
    reference = np.concatenate([store.rows("train"), store.rows("val")])  # what the inverter was trained on
    t0 = time.perf_counter()
    result = inverter_quality(store, renderer, test, reference_rows=reference)
    result["seconds"] = time.perf_counter() - t0
    result["rows"] = "every test row"
    return result


def flip_rates(workspace: Path, seeds: list[int], null_draws: int) -> dict:
    from hsfm_core.demo.build import TUNED
    from hsfm_core.features import FeatureStore
    from hsfm_core.render import flip, inverter
    from hsfm_core.runs import find_run
    from hsfm_core.spec import TrainSpec
    from hsfm_core.train import train

    tuned = next(r for r in json.loads(TUNED.read_text())["runs"] if r["role"] == "tuned")
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        copy = Path(tmp) / "ws"
        copy.mkdir()
        for name in ("manifest.json", "features.npy", "meta.parquet"):  # the store only: its images stay where they are
            shutil.copy2(workspace / name, copy / name)
        t0 = time.perf_counter()
        trained = train(copy, TrainSpec.create(tuned["method"], preset=tuned["preset"], overrides=tuned["overrides"],
                                               seeds=seeds, device="cpu"))
        train_s = time.perf_counter() - t0
        store = FeatureStore.open(copy)
        renderer = inverter.load_inverter(store)
        t1 = time.perf_counter()
        results = [flip.flip_rates(store, find_run(copy, r.run_id), renderer, null_draws=null_draws, cache=False)
                   for r in trained]
        flip_s = time.perf_counter() - t1
    summary = flip.summarize(results)
    summary.update({"settings": f"{tuned['preset']} + {' '.join(tuned['overrides'])}", "seeds": seeds,
                    "null_draws": null_draws, "train_s": train_s, "flip_s": flip_s,
                    "test_wga": [r.metrics["test"]["wga"] for r in trained],
                    "per_seed": [{"seed": s, "per_class": [{k: c[k] for k in ("name", "rate", "null_rate", "n",
                                                                              "start_majority")}
                                                           for c in r["per_class"]]}
                                 for s, r in zip(seeds, results)],
                    "classifier": results[0]["classifier"]})
    return summary


def main(argv=None) -> None:
    import torch

    from hsfm_core.demo.build import build_demo, default_demo_dir
    from hsfm_core.features import FeatureStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--null-draws", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-flips", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workspace = Path(build_demo(args.workspace or default_demo_dir(), default_map="none"))
    store = FeatureStore.open(workspace)
    out = {"workspace": str(workspace), "torch_threads": torch.get_num_threads()}

    out["time"] = timings(store)
    t = out["time"]
    print(f"inverter load {t['load_first_s']:.3f} s (first in this process; again {t['load_again_s']:.3f} s); "
          f"16-example strip {t['strip16_median_s'] * 1000:.0f} ms median (max {t['strip16_max_s'] * 1000:.0f} ms; "
          f"CPU time {t['strip16_cpu_median_s'] * 1000:.0f} ms), {args.threads} threads, load average "
          f"{t['load_average']} on {t['cpus']} CPUs", flush=True)

    if not args.skip_quality:
        q = out["quality"] = quality(store)
        r, n, real = q["rendered"], q["nearest_real"], q["real"]
        print(f"quality on {q['n']} test features ({q['classifier']}; {q['seconds']:.0f} s):")
        print(f"  median cosine (re-encoded vs feature): rendering {r['median_cosine']:.3f}, nearest real "
              f"{n['median_cosine']:.3f}")
        print(f"  background agrees with the real image's: rendering {_pct(r['attribute_agreement'])}, nearest real "
              f"{_pct(n['attribute_agreement'])} (accuracy {_pct(r['attribute_accuracy'])} / {_pct(n['attribute_accuracy'])}"
              f" / real {_pct(real['attribute_accuracy'])})")
        print(f"  bird agrees with the real image's: rendering {_pct(r['class_agreement'])}, nearest real "
              f"{_pct(n['class_agreement'])}; bird accuracy: rendering {_pct(r['class_accuracy'])}, nearest real "
              f"{_pct(n['class_accuracy'])}, real {_pct(real['class_accuracy'])}", flush=True)

    if not args.skip_flips:
        f = out["flips"] = flip_rates(workspace, args.seeds, args.null_draws)
        print(f"flip rates, tuned HSFM ({f['settings']}), seeds {f['seeds']}, {f['null_draws']} null draws per "
              f"example, {f['classifier']} (train {f['train_s']:.0f} s, flips {f['flip_s']:.0f} s):")
        for c in f["per_class"]:
            print(f"  {c['name']}: edit {_pct(c['rate_mean'])} ± {_pct(c['rate_std'])}, null {_pct(c['null_mean'])} ± "
                  f"{_pct(c['null_std'])} (per seed: {', '.join(_pct(x) for x in c['rates'])})")

    card = json.loads((Path(__file__).resolve().parents[1] / "assets" / "synthbirds-inverter" / "card.json").read_text())
    out["bundled_training"] = {k: card["training"][k] for k in ("epochs", "steps", "train_seconds", "cpu_seconds",
                                                                 "torch_threads", "load_seconds")}
    print(f"bundled inverter training (its card): {card['training']['steps']} steps, "
          f"{card['training']['train_seconds']:.0f} s wall, {card['training']['cpu_seconds']:.0f} s CPU, "
          f"{card['training']['torch_threads']} threads")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
