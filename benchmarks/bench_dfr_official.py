"""Baselines as published (issue 15): DFR's and AFR's `official` recipes against the authors' own code
on identical features, both recipes side by side, and bit-identical re-runs of every method.

    python -m benchmarks.bench_dfr_official [--workspace DEMO] [--seeds 10] [--afr-seeds 3] [--threads 1]

1. DFR `official` vs `dfr_on_validation_tune` + `dfr_on_validation_eval` (tests/reference_dfr.py, run
   after `np.random.seed(s)`), seeds 0–4: the selected C and test WGA, on the generated world of
   tests/test_dfr_official.py and on the demo. Target: the same C, |ΔWGA| ≤ 0.2 points.
2. Both DFR recipes on the demo over `--seeds` seeds: mean ± sample std of test WGA (C chosen on val only).
3. AFR: `official` vs the authors' notebook (`sweep` + `train`, tests/reference_afr.py) on identical
   features (the default grid; the same reweighting split and θ₀), then both AFR recipes on the demo.
4. Every registered method (and both official presets) trained twice through `hsfm_core.train`, the
   second time from the first run's config.json with numpy's and torch's global generators scrambled:
   are the heads bit-identical?

`--workspace` is a built demo workspace (default: the app's, built first if missing); it is only read.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hsfm_core import methods
from hsfm_core.features import FeatureStore
from hsfm_core.heads import predict
from hsfm_core.methods.afr import AFRSettings, fit_afr, fit_afr_official, reweighting_split
from hsfm_core.methods.dfr import DFR, OfficialDFR
from hsfm_core.methods.erm import initial_head
from hsfm_core.runs import list_runs, load_head
from hsfm_core.spec import TrainSpec
from hsfm_core.train import train
from tests.gaussian import TINY_HSFM, gaussian_workspace
from tests.reference_afr import sweep as authors_afr_sweep
from tests.reference_dfr import run_authors_dfr

GENERATED = {"d": 32, "sizes": (1000, 400, 2000), "seed": 0}  # tests/test_dfr_official.py's world


def pm(values) -> str:
    values = 100 * np.asarray(values, dtype=np.float64)
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def arrays(store):
    sel = {s: store.select(s) for s in ("train", "val", "test") if store.has_split(s)}
    return ({s: np.asarray(v.features, dtype=np.float32) for s, v in sel.items()}, {s: v.y for s, v in sel.items()},
            {s: v.g for s, v in sel.items()})


def dfr_vs_authors(store, name: str, seeds) -> dict:
    emb, ys, gs = arrays(store)
    groups, rows = store.groups, []
    print(f"\n[1] DFR official vs the authors' functions — {name} (val {len(ys['val'])}, d = {store.dim})")
    print("seed | C authors | C official | test WGA authors | test WGA official | Δ (points) | differing test predictions")
    for s in seeds:
        t0 = time.perf_counter()
        c, test_accs, theirs = run_authors_dfr(emb, ys, gs, s)
        t1 = time.perf_counter()
        ours = OfficialDFR(groups, seed=s).fit(emb["val"], ys["val"], gs["val"], emb["train"])
        t2 = time.perf_counter()
        pred = ours.predict(emb["test"])
        wga_theirs, wga_ours = float(np.min(test_accs)), groups.worst_group_accuracy(pred, ys["test"], gs["test"])
        rows.append({"seed": s, "C_authors": c, "C_official": ours.best_C_, "wga_authors": wga_theirs,
                     "wga_official": wga_ours, "differing": int(np.sum(pred != theirs)), "authors_s": t1 - t0,
                     "official_s": t2 - t1})
        print(f"{s:4d} | {c:9g} | {ours.best_C_:10g} | {100 * wga_theirs:16.2f} | {100 * wga_ours:17.2f} | "
              f"{100 * (wga_ours - wga_theirs):10.2f} | {rows[-1]['differing']}")
    same_c = all(r["C_authors"] == r["C_official"] for r in rows)
    worst = max(abs(r["wga_official"] - r["wga_authors"]) for r in rows)
    print(f"same C on every seed: {same_c}; largest |ΔWGA| {100 * worst:.2f} points (target: same C, ≤ 0.2)")
    return {"rows": rows, "same_C": same_c, "max_abs_dwga_points": 100 * worst}


def dfr_recipes(store, seeds) -> dict:
    emb, ys, gs = arrays(store)
    groups, out = store.groups, {"val_scaler": [], "official": []}
    chosen = {"val_scaler": [], "official": []}
    for s in seeds:
        for recipe, dfr in (("val_scaler", DFR(groups, seed=s).fit(emb["val"], ys["val"], gs["val"])),
                            ("official", OfficialDFR(groups, seed=s).fit(emb["val"], ys["val"], gs["val"], emb["train"]))):
            out[recipe].append(groups.worst_group_accuracy(dfr.predict(emb["test"]), ys["test"], gs["test"]))
            chosen[recipe].append(dfr.best_C_)
    print(f"\n[2] DFR's two recipes on the demo, seeds {seeds[0]}–{seeds[-1]} (C chosen on val; test WGA, %)")
    for recipe in out:
        print(f"{recipe:10s}: test WGA {pm(out[recipe])} over {len(seeds)} seeds; selected C {chosen[recipe]}")
    return {"test_wga": out, "selected_C": chosen}


def afr_inputs(store, seed):
    tr, va, te = store.select("train"), store.select("val"), store.select("test")
    rest, rw = reweighting_split(len(tr.rows), 0.2, seed)
    init, _ = initial_head(store, train_rows=rest)
    f = lambda a: torch.tensor(np.array(a), dtype=torch.float32)  # noqa: E731
    i = lambda a: torch.tensor(np.array(a), dtype=torch.long)  # noqa: E731
    emb = dict(e=f(tr.features[rw]), y=i(tr.y[rw]), g=i(tr.g[rw]), val_e=f(va.features), val_y=i(va.y), val_g=i(va.g),
               test_e=f(te.features), test_y=i(te.y), test_g=i(te.g), w0=init.weight.float(), b0=init.bias.float())
    return emb, (tr.features[rw], tr.y[rw], va.features, va.y, va.g, init.weight, init.bias)


def afr_audit(store, name: str, seeds, settings: AFRSettings) -> dict:
    groups, te = store.groups, store.select("test")
    config = dict(lr_choices=[settings.lr], gamma_choices=list(settings.gamma_grid),
                  reg_coeff_choices=list(settings.lambda_grid), balance_classes_choices=[True],
                  num_epochs=settings.steps, early_stop="wga")
    print(f"\n[3a] AFR official vs the authors' notebook — {name} ({len(settings.grid)} (γ, λ) × {settings.steps} steps)")
    print("seed | (γ, λ, step) authors | (γ, λ, step) official | test WGA authors | official | differing predictions")
    rows = []
    for s in seeds:
        emb, args = afr_inputs(store, s)
        _, their_wga, their_pred, (_, gamma, lam, _), step = authors_afr_sweep(emb, config, seed=s)
        fit = fit_afr_official(*args, settings, groups.n_groups, s)
        pred = predict(te.features, fit.weight, fit.bias)
        wga = groups.worst_group_accuracy(pred, te.y, te.g)
        rows.append({"seed": s, "authors": [float(gamma), float(lam), step], "official": [fit.gamma, fit.lam, fit.step],
                     "wga_authors": their_wga, "wga_official": wga, "differing": int(np.sum(pred != their_pred.numpy()))})
        print(f"{s:4d} | {float(gamma):5.3g}, {float(lam):4.2g}, {step:4d}     | {fit.gamma:5.3g}, {fit.lam:4.2g}, "
              f"{fit.step:4d}      | {100 * their_wga:16.2f} | {100 * wga:8.2f} | {rows[-1]['differing']}")
    return {"rows": rows}


def afr_recipes(store, name: str, seeds, settings: AFRSettings) -> dict:
    groups, te = store.groups, store.select("test")
    out = {"zero_init": [], "official": []}
    for s in seeds:
        _, args = afr_inputs(store, s)
        for recipe, fit in (("zero_init", fit_afr(*args, settings, groups.n_groups)),
                            ("official", fit_afr_official(*args, settings, groups.n_groups, s))):
            out[recipe].append(groups.worst_group_accuracy(predict(te.features, fit.weight, fit.bias), te.y, te.g))
    print(f"\n[3b] AFR's two recipes — {name}, seeds {seeds[0]}–{seeds[-1]} (selection on val; test WGA, %)")
    for recipe in out:
        print(f"{recipe:9s}: test WGA {pm(out[recipe])} over {len(seeds)} seeds")
    return {"test_wga": out}


def scramble(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)


def reruns() -> dict:
    small = {"dfr": ["n_refits=5"], "afr": ["steps=100"], "hsfm": TINY_HSFM}
    cases = [(m.name, None) for m in methods.all_methods()] + [("dfr", "official"), ("afr", "official")]
    print("\n[4] Re-running a run from its config.json, global generators scrambled (CPU)")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        gaussian_workspace(tmp, d=16, sizes=(600, 300, 300))
        for method, preset in cases:
            scramble(1)
            first = train(tmp, TrainSpec.create(method, preset=preset, overrides=small.get(method, ()), seeds=[0, 1],
                                                device="cpu"))
            config = json.loads((first[0].path / "config.json").read_text())
            scramble(2)
            again = train(tmp, TrainSpec.from_dict(config["request"]))
            runs = {r["run_id"]: r for r in list_runs(tmp)}
            diffs = []
            for a, b in zip(first, again):
                ha, hb = load_head(runs[a.run_id]), load_head(runs[b.run_id])
                diffs.append(max(float((ha[k] - hb[k]).abs().max()) for k in ha))
            label = f"{method} · {config['preset'] or 'default'}"
            out[label] = {"bit_identical": all(d == 0 for d in diffs), "max_abs_diff": max(diffs)}
            print(f"{label:22s}: bit-identical {out[label]['bit_identical']} (max |Δ| {max(diffs):.1e}, seeds 0 and 1)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", help="a built demo workspace (read only; default: the app's)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds for the recipe comparisons on the demo (≥ 5)")
    parser.add_argument("--afr-seeds", type=int, default=3, help="seeds for AFR vs the authors' notebook (slow: unbatched)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workspace:
        demo = FeatureStore.open(args.workspace)
    else:
        from hsfm_core.demo.build import build_demo

        demo = FeatureStore.open(build_demo())
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        world = gaussian_workspace(Path(tmp) / "world", **GENERATED)
        results["dfr_vs_authors_generated"] = dfr_vs_authors(world, f"generated world {GENERATED}", range(5))
        results["dfr_vs_authors_demo"] = dfr_vs_authors(demo, "the demo", range(5))
        results["dfr_recipes_demo"] = dfr_recipes(demo, list(range(args.seeds)))
        afr_world = gaussian_workspace(Path(tmp) / "afr", d=32, sizes=(5000, 1000, 2000))
        default = AFRSettings()
        results["afr_vs_authors_generated"] = afr_audit(afr_world, "generated world (5000/1000/2000, d = 32)",
                                                        range(args.afr_seeds), default)
        results["afr_vs_authors_demo"] = afr_audit(demo, "the demo", range(args.afr_seeds), default)
        results["afr_recipes_generated"] = afr_recipes(afr_world, "generated world", list(range(args.seeds)), default)
        results["afr_recipes_demo"] = afr_recipes(demo, "the demo", list(range(args.seeds)), default)
    results["reruns"] = reruns()
    results["total_s"] = time.perf_counter() - t0
    print(f"\ntotal {results['total_s']:.0f} s")
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
