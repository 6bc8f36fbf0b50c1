"""A CelebA-size workspace in the app: 202,599 rows of generated features with CelebA's group
proportions, ERM / DFR / HSFM runs, every page opened in headless chromium.

    python -m benchmarks.bench_scale [--rows 202599] [--dim 512] [--seeds 5] [--out DIR] [--keep]

1. Builds the workspace (features: a weak class direction, a strong attribute direction, noise, in
   CelebA's Blond_Hair × Male split sizes scaled to --rows) and trains ERM, DFR and HSFM over
   --seeds seeds (the seeds are the "5 runs × 5 seeds" of Groups when --seeds 5). Times each step.
2. Neighbors' index: builds the store's FAISS index (IVF above `retrieval.EXACT_MAX_ROWS` rows),
   reports recall@16 against exact search on 500 queries and a single query's time.
3. Serves the app: opens every page twice (first and warm visit; a time runs from the click until
   the page's content shows and the script is idle), waits for Projection's first map (computed in
   the background), draws lassos on its sampled backdrop (p50 / p90), and reads the server's RSS
   (process and children; the map worker is a separate process and is reported on its own).
Prints one JSON document of labelled figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# CelebA (Blond_Hair × Male): per split, groups (non-blond woman, non-blond man, blond woman, blond man)
CELEBA_COUNTS = {"train": (71_629, 66_874, 22_880, 1_387), "val": (8_535, 8_276, 2_874, 182),
                 "test": (9_767, 7_535, 2_480, 180)}
CELEBA_ROWS = sum(map(sum, CELEBA_COUNTS.values()))  # 202,599
MANIFEST = {"dataset": {"format": "synthetic", "source": "celeba-size generated features", "options": {}},
            "image_root": None, "class_names": ["not blond", "blond"], "attribute_names": ["woman", "man"],
            "backbone": {"kind": "imported", "model": None, "pretrained": None, "id": "generated-celeba-size"},
            "clip_space": False, "text_encoder": None, "shard": None}
METHOD_OVERRIDES = {"erm": [], "dfr": [], "hsfm": []}


def scaled_counts(n_rows: int) -> dict[str, list[int]]:
    """CelebA's per-split group counts scaled to n_rows (every group keeps at least 8 rows)."""
    return {split: [max(8, round(c * n_rows / CELEBA_ROWS)) for c in counts] for split, counts in CELEBA_COUNTS.items()}


def make_workspace(path: Path, n_rows: int = CELEBA_ROWS, dim: int = 512, seed: int = 0,
                   images_per_identity: int = 20) -> Path:
    """A store of generated features in CelebA's group proportions (no images).

    Like face embeddings, the features lie near a low-dimensional set: each row belongs to an
    "identity" (CelebA has about 20 images per identity) whose centre is random in a 32-d subspace,
    plus a weak class direction, a strong attribute direction and small isotropic noise — so nearest
    neighbours mean something and an IVF index is tested as on real features."""
    from hsfm_core.features import write_store
    from hsfm_core.groups import Groups

    rng = np.random.default_rng(seed)
    groups = Groups(MANIFEST["class_names"], MANIFEST["attribute_names"])
    counts = scaled_counts(n_rows)
    per_group = [sum(counts[s][g] for s in counts) for g in range(4)]
    first_id = np.cumsum([0] + [max(1, n // images_per_identity) for n in per_group])
    ys, as_, splits, ids = [], [], [], []
    for split, split_counts in counts.items():
        for g, n in enumerate(split_counts):
            y, a = divmod(g, 2)  # g = A·y + a with A = 2
            ys.append(np.full(n, y)), as_.append(np.full(n, a)), splits.append(np.full(n, split))
            ids.append(rng.integers(first_id[g], first_id[g + 1], size=n))
    y, a, split, identity = map(np.concatenate, (ys, as_, splits, ids))
    n = len(y)
    basis = np.linalg.qr(rng.normal(size=(dim, 34)))[0].T.astype(np.float32)  # 34 orthonormal directions
    core, spurious, subspace = basis[0], basis[1], basis[2:]
    centres = (rng.normal(size=(first_id[-1], 32)) / np.sqrt(32)).astype(np.float32) @ subspace
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        part = slice(start, min(start + 50_000, n))
        x[part] = centres[identity[part]] + rng.normal(scale=0.25 / np.sqrt(dim), size=(part.stop - start, dim))
        x[part] += np.outer(0.3 * (2 * y[part] - 1), core) + np.outer(0.6 * (2 * a[part] - 1), spurious)
    meta = pd.DataFrame({"row_id": np.arange(n), "sample_id": [f"{i:06d}.jpg" for i in range(n)], "split": split,
                         "y": y, "a": a, "g": groups.group_of(y, a), "image_path": ""})
    write_store(path, x, meta, MANIFEST)
    return path


def train_runs(path: Path, seeds: int) -> dict:
    from hsfm_core.train import train

    timings = {}
    for method, overrides in METHOD_OVERRIDES.items():
        start = time.perf_counter()
        train(path, method, overrides=overrides, seeds=list(range(seeds)))
        timings[f"train {method} ({seeds} seeds)_s"] = round(time.perf_counter() - start, 1)
    return timings


def index_figures(path: Path, queries: int = 500, k: int = 16) -> dict:
    """The workspace's Neighbors index (built and cached as the app does) against exact search."""
    import faiss

    from hsfm_core.analysis.retrieval import FeatureIndex, workspace_index
    from hsfm_core.features import FeatureStore

    store = FeatureStore.open(path)
    start = time.perf_counter()
    index = workspace_index(store)
    built = time.perf_counter() - start
    rows = np.random.default_rng(1).choice(store.manifest["n_rows"], size=queries, replace=False)
    q = np.asarray(store.features[rows])
    found, _ = index.search(q, k)
    exact = FeatureIndex.build(store.features, kind="exact")
    truth, _ = exact.search(q, k)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
    single = []
    for row in rows[:50]:
        t = time.perf_counter()
        index.search(np.asarray(store.features[row]), k)
        single.append(time.perf_counter() - t)
    exact_single = []
    for row in rows[:20]:
        t = time.perf_counter()
        exact.search(np.asarray(store.features[row]), k)
        exact_single.append(time.perf_counter() - t)
    ivf = faiss.extract_index_ivf(index.index) if index.kind == "ivf" else None
    return {"index kind": index.kind, "nlist": ivf.nlist if ivf else None, "nprobe": ivf.nprobe if ivf else None,
            "index build (first, then cached)_s": round(built, 2), f"recall@{k} vs exact ({queries} queries)": round(recall, 4),
            "one query, median_ms": round(1000 * float(np.median(single)), 2),
            "one exact query, median_ms": round(1000 * float(np.median(exact_single)), 2)}


def rss_mb(pid: int) -> dict:
    from benchmarks.bench_app import rss_mb as measure

    return measure(pid)


def app_figures(path: Path, lassos: int, out: dict) -> dict:
    """Fills `out` as it goes (a failure keeps the figures measured before it)."""
    from benchmarks.bench_lasso import MAP, lasso_times, summary
    from tests.browser import browser_page, streamlit_server, wait_until_idle

    out.update({"first visit_s": {}, "warm visit_s": {}})
    pages = [("Groups", "What changed"), ("Projection", "Projection"), ("Decode", "Decode"),
             ("Neighbors", "Neighbors"), ("Retrain", "Launch run"), ("Lesson", "Lesson"), ("Home", "Dataset card")]
    with streamlit_server("--workspace", str(path), timeout=180) as (url, proc), browser_page() as page:
        start = time.perf_counter()
        page.goto(url)
        page.get_by_text("Dataset card").wait_for(timeout=300_000)
        wait_until_idle(page, 300_000)
        out["first visit_s"]["Home"] = round(time.perf_counter() - start, 3)
        for visit in ("first visit_s", "warm visit_s"):
            for name, expect in pages:
                start = time.perf_counter()
                page.locator("[data-testid='stSidebarNav'] a", has_text=name).first.click()
                page.get_by_text(expect, exact=False).first.wait_for(timeout=300_000)
                wait_until_idle(page, 300_000)
                out[visit][name] = round(time.perf_counter() - start, 3)
                assert page.locator("[data-testid='stException']").count() == 0, name
                if name == "Projection" and visit == "first visit_s":  # the first map, in the background
                    if not page.locator(MAP).count():
                        page.get_by_text("Computing the map in the background", exact=False).first.wait_for(timeout=60_000)
                        out["projection progress shown"] = True
                    page.locator(MAP).first.wait_for(timeout=600_000)
                    wait_until_idle(page, 600_000)
                    out["Projection: first map, from the click_s"] = round(time.perf_counter() - start, 1)
                    job = next((path / "cache").glob("umap-*.job.json"), None)
                    if job is not None:
                        out["the map worker's own time_s"] = json.loads(job.read_text()).get("seconds")
                    out["Projection: backdrop caption"] = page.get_by_text("group-stratified sample", exact=False).first.inner_text()
                    phases: list = []
                    out["lasso on the sampled backdrop"] = summary(lasso_times(page, lassos, phases))
                    out["lasso phases"] = phases
                    out["server RSS after the map and lassos"] = rss_mb(proc.pid)
        out["server RSS at the end"] = rss_mb(proc.pid)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=CELEBA_ROWS)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lassos", type=int, default=5)
    parser.add_argument("--out", help="workspace folder (default: a temporary one, removed unless --keep)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--skip-app", action="store_true", help="build, train and the index only")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hsfm-scale-")) / "ws"
    figures: dict = {"rows": args.rows, "dim": args.dim, "seeds": args.seeds, "workspace": str(out)}
    try:
        if not (out / "manifest.json").exists():
            start = time.perf_counter()
            make_workspace(out, args.rows, args.dim)
            figures["write the store_s"] = round(time.perf_counter() - start, 1)
            figures.update(train_runs(out, args.seeds))
        figures["Neighbors index"] = index_figures(out)
        if not args.skip_app:
            figures["app"] = {}
            app_figures(out, args.lassos, figures["app"])
    finally:
        print(json.dumps(figures, indent=2, ensure_ascii=False), flush=True)
        if not args.keep and not args.out:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
