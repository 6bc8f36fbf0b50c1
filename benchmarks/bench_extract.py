"""Extraction throughput and peak memory with the tiny open_clip configuration (64 px).

    python -m benchmarks.bench_extract [--images 12000] [--workers 0 1 2] [--batch-size 256]

Generates a Waterbirds-format folder of 64×64 PNGs (cached under /tmp between runs), then
runs `extract` in a fresh child process per setting so that peak RSS (VmHWM) is that of the
extraction alone. Throughput counts the `extract()` call (decode + preprocess + encode + write),
not interpreter start-up or model loading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CACHE = Path(os.environ.get("HSFM_BENCH_DIR", "/tmp/hsfm-bench"))


def make_folder(n_images: int) -> tuple[Path, str]:
    from tests.helpers import make_tiny_clip, make_waterbirds

    root = CACHE / f"waterbirds-{n_images}"
    if not (root / "metadata.csv").is_file():
        # Waterbirds proportions, scaled to n_images
        full = {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133), "test": (2255, 2255, 642, 642)}
        total = sum(map(sum, full.values()))
        counts = {s: tuple(max(1, round(c * n_images / total)) for c in v) for s, v in full.items()}
        make_waterbirds(root, counts, image_size=64)
    clip = CACHE / "tiny-clip"
    if not clip.is_dir():
        make_tiny_clip(clip)
    return root, f"local-dir:{clip}"


def child(data: str, model: str, out: str, workers: int, batch_size: int) -> None:
    import torch

    from hsfm_core.data import read_dataset
    from hsfm_core.features.encoders import load_encoder
    from hsfm_core.features.extract import extract

    table = read_dataset("waterbirds", data)
    encoder = load_encoder(model, None, torch.device("cpu"))
    t0 = time.perf_counter()
    store = extract(table, encoder, out, device=torch.device("cpu"), batch_size=batch_size, num_workers=workers,
                    overwrite=True, progress=False)
    elapsed = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"images": store.manifest["n_rows"], "seconds": elapsed,
                      "images_per_s": store.manifest["n_rows"] / elapsed, "peak_rss_mb": hwm / 1024,
                      "torch_threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--child", nargs=4, metavar=("DATA", "MODEL", "OUT", "WORKERS"))
    args = parser.parse_args()
    if args.child:
        data, model, out, workers = args.child
        return child(data, model, out, int(workers), args.batch_size)

    t0 = time.perf_counter()
    data, model = make_folder(args.images)
    print(f"dataset folder ready ({time.perf_counter() - t0:.1f} s): {data}", file=sys.stderr)
    results = []
    for workers in args.workers:
        out = CACHE / "store-bench"
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_extract", "--batch-size", str(args.batch_size),
                               "--child", str(data), model, str(out), str(workers)],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1]) | {"num_workers": workers, "batch_size": args.batch_size}
        results.append(r)
        print(f"num_workers={workers}: {r['images']} images in {r['seconds']:.2f} s = {r['images_per_s']:.0f} img/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
