"""Opening a 200k × 512 float16 store and selecting one split: time and resident memory; and what
the commit lock and the checks on open add to opening the demo store (issue 12, target ≤ 10 ms).

    python -m benchmarks.bench_store_open [--rows 200000] [--dim 512]
    python -m benchmarks.bench_store_open --overhead [--workspace DIR] [--repeats 50]

`--overhead` opens the demo workspace (built by `python -m hsfm_core demo build`) or, when it is not
built, a store of the demo's shape (SynthBirds: 11,788 rows × 64 float32, image paths); it times,
interleaved, `FeatureStore.open`, the bare reads it does (manifest JSON, features memory-mapped,
meta parquet) and the lock plus every check alone (what open adds), and prints the medians.

Writes a CelebA-sized store of random features once (cached under /tmp), then measures in a
fresh child process: `FeatureStore.open` + `select("train")` (a memory-mapped view), and
separately materialising that split as an in-memory array. RSS is read from /proc before and
after, so the interpreter's import baseline is reported apart from what opening costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("HSFM_BENCH_DIR", "/tmp/hsfm-bench"))


def rss_mb() -> tuple[float, float]:
    status = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))}
    return status["VmRSS"] / 1024, status["VmHWM"] / 1024


def build(path: Path, rows: int, dim: int) -> None:
    import numpy as np
    import pandas as pd

    from hsfm_core.features import StoreWriter

    # CelebA proportions: train 162,770 / val 19,867 / test 19,962
    n_train, n_val = round(rows * 0.8015), round(rows * 0.0978)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (rows - n_train - n_val))
    rng = np.random.default_rng(0)
    y, a = rng.integers(0, 2, rows), rng.integers(0, 2, rows)
    meta = pd.DataFrame({"row_id": np.arange(rows), "sample_id": [f"{i + 1:06d}.jpg" for i in range(rows)],
                         "split": split, "y": y, "a": a, "g": 2 * y + a,
                         "image_path": [f"{i + 1:06d}.jpg" for i in range(rows)]})
    manifest = {"dataset": {"format": "celeba", "source": "synthetic", "options": {}}, "image_root": "/data",
                "class_names": ["not Blond_Hair", "Blond_Hair"], "attribute_names": ["not Male", "Male"],
                "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": "bench"},
                "clip_space": False, "text_encoder": None, "shard": None}
    with StoreWriter(path, rows, dim, "float16", overwrite=True) as w:
        for start in range(0, rows, 20000):
            n = min(20000, rows - start)
            w.features[start : start + n] = rng.normal(size=(n, dim)).astype(np.float16)
        w.commit(meta, manifest)


def child(path: str) -> None:
    import numpy as np  # noqa: F401  (imports are part of the baseline, not of opening)
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from hsfm_core.features import FeatureStore

    base_rss, _ = rss_mb()
    t0 = time.perf_counter()
    store = FeatureStore.open(path)
    sel = store.select("train")
    t_open = time.perf_counter() - t0
    rss_open, hwm_open = rss_mb()
    t1 = time.perf_counter()
    dense = np.array(sel.features)
    t_dense = time.perf_counter() - t1
    rss_dense, hwm_dense = rss_mb()
    print(json.dumps({"rows": store.manifest["n_rows"], "dim": store.dim, "dtype": store.manifest["dtype"],
                      "train_rows": len(sel.rows), "open_select_s": t_open, "import_baseline_rss_mb": base_rss,
                      "rss_after_open_select_mb": rss_open, "peak_rss_after_open_select_mb": hwm_open,
                      "materialise_train_s": t_dense, "train_array_mb": dense.nbytes / 2**20,
                      "rss_after_materialise_mb": rss_dense, "peak_rss_mb": hwm_dense}))


def demo_shaped_store(path: Path) -> Path:
    """A store with the demo's counts, dimension and image paths (when the demo is not built)."""
    import numpy as np
    import pandas as pd

    from hsfm_core.demo.synthbirds import WATERBIRDS_COUNTS
    from hsfm_core.features import write_store

    split, y, a = [], [], []
    for name, counts in WATERBIRDS_COUNTS.items():
        for g, count in enumerate(counts):
            split += [name] * count
            y += [g // 2] * count
            a += [g % 2] * count
    n = len(split)
    y, a = np.array(y), np.array(a)
    meta = pd.DataFrame({"row_id": np.arange(n), "sample_id": [str(i + 1) for i in range(n)], "split": split,
                         "y": y, "a": a, "g": 2 * y + a,
                         "image_path": [f"{'water' if c else 'land'}bird/{i:05d}.png" for i, c in enumerate(y)]})
    manifest = {"dataset": {"format": "waterbirds", "source": "synthetic", "options": {}}, "image_root": str(path),
                "class_names": ["landbird", "waterbird"], "attribute_names": ["land background", "water background"],
                "backbone": {"kind": "open_clip", "model": None, "pretrained": None, "id": "bench"},
                "clip_space": True, "text_encoder": None, "shard": None}
    features = np.random.default_rng(0).normal(size=(n, 64)).astype(np.float32)
    write_store(path, features, meta, manifest, overwrite=True)
    return path


def overhead(workspace: str | None, repeats: int) -> None:
    """Median time of FeatureStore.open vs. its bare reads, in one warm process."""
    import statistics

    from hsfm_core.demo.build import default_demo_dir, is_built
    from hsfm_core.features import FeatureStore
    from hsfm_core.features.store import _check_manifest, _check_meta, _commit_lock
    from hsfm_core.safe_io import read_json, read_npy, read_parquet

    if workspace:
        path, what = Path(workspace), "given workspace"
    elif is_built(default_demo_dir()):
        path, what = default_demo_dir(), "the built demo workspace"
    else:
        path, what = demo_shaped_store(CACHE / "demo-shaped"), "a store of the demo's shape (demo not built)"

    def bare():
        read_json(path / "manifest.json")
        read_npy(path / "features.npy", mmap=True)
        read_parquet(path / "meta.parquet")

    store = FeatureStore.open(path)
    manifest, meta = store.manifest, store.meta

    def checks():  # exactly what open adds to the bare reads
        with _commit_lock(path, shared=True):
            pass
        _check_manifest(manifest, path / "manifest.json")
        _check_meta(meta, manifest, path / "meta.parquet")

    samples = {"bare reads": [], "FeatureStore.open": [], "lock + checks": []}
    work = {"bare reads": bare, "FeatureStore.open": lambda: FeatureStore.open(path), "lock + checks": checks}
    for name in work:
        work[name]()  # warm: imports and page cache
    for _ in range(repeats):  # interleaved, so that load from other processes hits all three alike
        for name, call in work.items():
            t0 = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - t0)
    ms = {name: 1000 * statistics.median(values) for name, values in samples.items()}
    print(f"{what}: {path} ({manifest['n_rows']:,} rows × {store.dim} {manifest['dtype']})")
    print(f"bare reads (manifest, features mmap, meta parquet): {ms['bare reads']:.2f} ms median of {repeats}")
    print(f"FeatureStore.open: {ms['FeatureStore.open']:.2f} ms median of {repeats} "
          f"(difference {ms['FeatureStore.open'] - ms['bare reads']:.2f} ms)")
    print(f"added by the commit lock and the manifest, meta and count checks (timed alone): "
          f"{ms['lock + checks']:.2f} ms median of {repeats} (target ≤ 10 ms)")
    print(json.dumps({"store": str(path), "rows": manifest["n_rows"], "bare_ms": ms["bare reads"],
                      "open_ms": ms["FeatureStore.open"], "added_ms": ms["lock + checks"]}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--overhead", action="store_true", help="what the lock and checks add to opening the demo store")
    parser.add_argument("--workspace", help="with --overhead: this store instead of the demo")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--child")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.overhead:
        return overhead(args.workspace, max(args.repeats, 50) if args.repeats == 3 else args.repeats)
    path = CACHE / f"store-{args.rows}x{args.dim}-f16"
    if not (path / "manifest.json").is_file():
        t0 = time.perf_counter()
        build(path, args.rows, args.dim)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for _ in range(args.repeats):  # page cache warm after the first: report every run
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_store_open", "--child", str(path)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"open+select train: {r['open_select_s']:.3f} s, RSS {r['rss_after_open_select_mb']:.0f} MB "
              f"(imports alone {r['import_baseline_rss_mb']:.0f} MB); materialise {r['train_rows']} × {r['dim']} "
              f"{r['dtype']}: {r['materialise_train_s']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
        print(json.dumps(r))


if __name__ == "__main__":
    main()
