"""The semantics instrument (hsfm_core/analysis/semantics.py): calibration, planted truth, the demo's
verdicts over 5 seeds, and time.

    python -m benchmarks.bench_semantics [--demo DEMO] [--trials 200] [--planted-trials 100]
        [--snr 0.05 0.1 0.15 0.25] [--celeba-rows 202599]
        [--only calibration planted demo demo-calibration celeba]

1. Calibration: "runs" whose support edits are themselves random within-class differences of train
   features (5 seeds × 16 edits per class, log-normal sizes), in a synthetic CLIP-like world (d = 64,
   40 concepts with a shared text component, the attribute along one concept) and, with --demo, on
   the demo's real features and concept bank. Share of concept p-values (Fisher over seeds) < 0.05
   (target 3–7 %), of per-seed p-values < 0.05, and of class-trials with no verdict (target ≥ 95 %).
2. Planted truth: edits = unit within-class difference (noise) + SNR · û_c, per example, so SNR is the
   ratio of the planted component's norm to the noise's, per support edit. Right verdict (target
   ≥ 95 %) and the planted concept among the sparse explanation's top 3 (target ≥ 90 %).
3. The demo (--demo, a built demo workspace or a bare copy of its store; it is copied, never written):
   seeds 0-4 of the tuned configuration and of `auto` (the build's 0-2 kept, the rest trained into the
   copy); each class's verdict,
   alignment, contrast, concepts, sparse explanation and explained share, and the warm time of one
   call with N = 1,000.
4. Time at the CelebA preset's size: a generated CelebA-size store (d = 2,048, --celeba-rows rows,
   benchmarks.bench_scale's generator) with 5 synthetic runs of 1,024 support edits per class: the
   whole call (alignment; the store is not in CLIP space) and the statistics with a 49-concept text
   space in 2,048-d.
Prints one JSON document of labelled figures at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _log(*parts) -> None:
    print(*parts, flush=True)


# -- 1. calibration -------------------------------------------------------------------------------------

def pure_null_seeds(draw_differences, norms_like, rng, seeds: int = 5, n: int = 16) -> list:
    """A pure-null run group: each support edit a random within-class difference, log-normal sizes."""
    from hsfm_core.analysis.semantics import SeedEdits

    out = []
    for s in range(seeds):
        labels = np.repeat([0, 1], n)
        delta = np.concatenate([draw_differences(c, n, rng) for c in (0, 1)])
        delta *= norms_like * rng.lognormal(0, 0.3, (len(delta), 1))
        out.append(SeedEdits(f"null-s{s}", s, delta, labels))
    return out


def calibration(trials: int, references, space, draw_differences, norms_like: float, contrast, label: str) -> dict:
    from hsfm_core.analysis import semantics as sem

    rng = np.random.default_rng(11)
    combined, per_seed, verdicts, contrast_p, start = [], [], [], [], time.perf_counter()
    for trial in range(trials):
        out = sem.group_semantics(pure_null_seeds(draw_differences, norms_like, rng), references, text=space,
                                  to_text=lambda x: np.asarray(x, dtype=np.float64), contrast=contrast,
                                  null_draws=1000, seed=1000 + trial)
        for entry in out["per_class"]:
            combined += [row["p_value"] for row in entry["all_concepts"]]
            verdicts.append(entry["verdict"])
            contrast_p.append(entry["contrast"]["p_value"])
            per_seed += entry["attribute_alignment"]["p_per_seed"]
        if (trial + 1) % 50 == 0:
            _log(f"  {label}: {trial + 1}/{trials} trials, {time.perf_counter() - start:.0f} s")
    combined, contrast_p, per_seed = map(np.asarray, (combined, contrast_p, per_seed))
    result = {"trials": trials, "class_trials": len(verdicts), "seeds": 5, "null_draws": 1000,
              "concept_p_below_0.05": float((combined < 0.05).mean()),
              "concept_p_below_0.01": float((combined < 0.01).mean()),
              "contrast_p_below_0.05": float((contrast_p < 0.05).mean()),
              "alignment_per_seed_p_below_0.05": float((per_seed < 0.05).mean()),
              "no_consistent_direction": verdicts.count("no_consistent_direction") / len(verdicts),
              "seconds": round(time.perf_counter() - start, 1)}
    _log(f"calibration ({label}): concept p < 0.05 in {100 * result['concept_p_below_0.05']:.1f} % "
         f"(target 3–7 %); contrast {100 * result['contrast_p_below_0.05']:.1f} %; per-seed alignment "
         f"{100 * result['alignment_per_seed_p_below_0.05']:.1f} %; no consistent direction in "
         f"{100 * result['no_consistent_direction']:.1f} % of {len(verdicts)} class-trials (target ≥ 95 %)")
    return result


def synthetic_calibration(trials: int) -> dict:
    from tests.test_semantics import semantic_world, within_class_differences, world_references

    world = semantic_world(seed=21)
    return calibration(trials, world_references(world), world["space"],
                       lambda c, n, rng: within_class_differences(world, c, n, rng), 1.0, ("planted", "concept 1"),
                       "synthetic world")


# -- 2. planted truth ------------------------------------------------------------------------------------

def planted(trials: int, snr: float) -> dict:
    from hsfm_core.analysis import semantics as sem
    from tests.test_semantics import group_of_edits, semantic_world, world_references

    world = semantic_world(seed=31)
    references = world_references(world)
    rng = np.random.default_rng(32)
    right, top3, top1_sign, sparse_cos, start = 0, 0, 0, [], time.perf_counter()
    for trial in range(trials):
        out = sem.group_semantics(group_of_edits(world, rng, n=16, seeds=5, snr=snr, references=references),
                                  references, text=world["space"], to_text=lambda x: np.asarray(x, dtype=np.float64),
                                  contrast=("planted", "concept 1"), null_draws=1000, seed=2000 + trial)
        for c, entry in enumerate(out["per_class"]):
            right += entry["verdict"] == "toward_minority"
            names = [x["concept"] for x in entry["sparse"]["concepts"][:3]]
            top3 += "planted" in names
            first = entry["sparse"]["concepts"][0] if entry["sparse"]["concepts"] else None
            # u_0 runs along +planted, u_1 along −planted (class 1's minority is the attribute's low side)
            top1_sign += bool(first and first["concept"] == "planted" and (first["weight"] > 0) == (c == 0))
            sparse_cos.append(entry["sparse"]["cosine"])
    n = 2 * trials
    result = {"snr": snr, "class_trials": n, "right_verdict": right / n, "planted_in_sparse_top3": top3 / n,
              "planted_first_with_right_sign": top1_sign / n, "sparse_cosine_mean": float(np.mean(sparse_cos)),
              "seconds": round(time.perf_counter() - start, 1)}
    _log(f"planted SNR {snr}: right verdict {100 * result['right_verdict']:.1f} %, planted concept in sparse top 3 "
         f"{100 * result['planted_in_sparse_top3']:.1f} % ({n} class-trials)")
    return result


# -- 3. the demo -----------------------------------------------------------------------------------------

def copy_demo(demo: Path, into: Path) -> Path:
    """The demo workspace without its images (semantics reads features and runs only)."""
    from hsfm_core.demo.build import DATA_DIR

    target = into / "demo"
    shutil.copytree(demo, target, ignore=shutil.ignore_patterns(DATA_DIR, "*.lock", "maps"))
    return target


def demo_groups(ws: Path, seeds=(0, 1, 2, 3, 4)) -> dict:
    """{"tuned": runs, "auto": runs} over `seeds`: the build's seeds 0-2 are kept, the others trained here
    (a bare copy of the demo store gets all of them; a seed's run is the same either way, §Methods)."""
    from hsfm_core.analysis.seeds import group_key
    from hsfm_core.demo.build import TUNED
    from hsfm_core.spec import TrainSpec
    from hsfm_core.train import train

    tuned = next(r for r in json.loads(TUNED.read_text())["runs"] if r["role"] == "tuned")
    specs = {"tuned": dict(preset=tuned["preset"], overrides=tuned["overrides"]), "auto": {}}
    pick = {}
    for role, options in specs.items():
        start = time.perf_counter()
        have = {r["config"]["seed"] for r in _group_with(ws, role, options)}
        missing = [s for s in seeds if s not in have]
        if missing:
            train(ws, TrainSpec.create("hsfm", seeds=missing, device="cpu", **options))
        pick[role] = sorted((r for r in _group_with(ws, role, options) if r["config"]["seed"] in seeds),
                            key=lambda r: r["config"]["seed"])
        assert len({group_key(r) for r in pick[role]}) == 1, f"{role}: the runs are not one configuration"
        _log(f"demo: {role} (preset {pick[role][0]['config'].get('preset')}) seeds "
             f"{[r['config']['seed'] for r in pick[role]]}; trained here: {missing} in {time.perf_counter() - start:.1f} s")
    return pick


def _group_with(ws: Path, role: str, options: dict) -> list:
    """Finished HSFM runs of the demo's configuration `role` (its preset and overrides as requested)."""
    from hsfm_core.runs import list_runs

    def matches(run) -> bool:
        request = run["config"].get("request") or {}
        if role == "auto":
            return run["config"].get("preset") == "auto" and not request.get("overrides")
        return request.get("preset") == options["preset"] and list(request.get("overrides") or []) == options["overrides"]

    return [r for r in list_runs(ws, unreadable=[]) if r["method"] == "hsfm" and r["status"] == "done" and matches(r)]


def summarise_class(entry: dict) -> dict:
    align, contrast, sparse = entry["attribute_alignment"], entry["contrast"], entry["sparse"]
    top = entry["concepts"][:5] or sorted(entry["all_concepts"], key=lambda r: -abs(r["mean"]))[:5]
    return {
        "class": entry["name"], "verdict": entry["verdict"], "seeds": entry["seeds"],
        "alignment_mean": align["mean"], "alignment_std": align["std"], "alignment_per_seed": align["per_seed"],
        "alignment_p": align["p_value"], "alignment_sign_agreement": align["sign_agreement"],
        "null_q95_abs": align["null_q95_abs"], "holds_without_any_one_seed": align["holds_without_any_one_seed"],
        "leave_one_seed_out": [(x["seed"], x["verdict"], round(x["p_value"], 4)) for x in align["leave_one_seed_out"]],
        "share_of_examples_agreeing": entry["per_example"]["share_agreeing"],
        "share_of_examples_positive": entry["per_example"]["share_positive"],
        "mean_edit_agreement": entry["mean_edit_agreement"],
        "contrast_mean": contrast["mean"], "contrast_std": contrast["std"], "contrast_p": contrast["p_value"],
        "contrast_sign_agreement": contrast["sign_agreement"], "contrast_random_pair_rank": contrast["random_pair_rank"],
        "significant_concepts": [c["concept"] for c in entry["concepts"]],
        "top_concepts": [{"concept": c["concept"], "mean": round(c["mean"], 3), "q": round(c["q_value"], 4)} for c in top],
        "sparse_top": [(c["concept"], round(c["weight"], 3)) for c in sparse["concepts"][:5]],
        "sparse_cosine": sparse["cosine"], "sparse_cosine_by_size": sparse["cosine_by_size"],
        "sparse_jaccard": sparse["jaccard_across_seeds"],
        "explained_share": entry["explained_share"], "explained_share_chance": entry["explained_share_chance"],
        "class_name_share": entry["class_name_share"],
    }


def _fmt(mean, std, digits=2) -> str:
    return "—" if mean is None else (f"{mean:+.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}"))


def demo(demo_dir: Path, trials: int) -> dict:
    from hsfm_core.analysis import semantics as sem
    from hsfm_core.features import FeatureStore

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-semantics-") as tmp:
        ws = copy_demo(demo_dir, Path(tmp))
        groups = demo_groups(ws)
        store = FeatureStore.open(ws)
        for role, runs in groups.items():
            sem.edit_semantics(store, runs)  # cold: concept bank encoded into the copy's cache
            start, cpu = time.perf_counter(), time.process_time()
            result = sem.edit_semantics(store, runs)
            warm, warm_cpu = time.perf_counter() - start, time.process_time() - cpu
            classes = [summarise_class(e) for e in result["per_class"]]
            out[role] = {"runs": result["runs"], "warm_s": round(warm, 3), "warm_cpu_s": round(warm_cpu, 3),
                         "set_aside": result["text"]["set_aside"], "per_class": classes}
            _log(f"\ndemo, {role} ({len(runs)} seeds {result['seeds']}), warm {warm:.2f} s wall, {warm_cpu:.2f} s CPU "
                 f"with N = 1,000 (target ≤ 2 s); "
                 f"set aside (class names): {', '.join(result['text']['set_aside'])}")
            for c in classes:
                _log(f"  {c['class']}: {c['verdict']}; cos(Δ̄, u) {_fmt(c['alignment_mean'], c['alignment_std'])} "
                     f"(per seed {', '.join(f'{v:+.2f}' for v in c['alignment_per_seed'])}; Fisher p {c['alignment_p']:.3g}; "
                     f"sign {c['alignment_sign_agreement']:.0%}; null |cos| 95 % {c['null_q95_abs']:.2f}); examples "
                     f"agreeing {c['share_of_examples_agreeing'] if c['share_of_examples_agreeing'] is None else round(c['share_of_examples_agreeing'], 2)}, "
                     f"positive {c['share_of_examples_positive']:.2f}")
                _log("    with one seed left out: " + ", ".join(f"−s{seed} {v} (p {p:.2g})" for seed, v, p in c["leave_one_seed_out"]))
                agreement = c["mean_edit_agreement"]
                _log(f"    mean edits across seeds: cos mean {agreement['mean_cosine']:+.2f}, min {agreement['min_cosine']:+.2f} "
                     f"(isotropic chance {agreement['chance']:.2f}, null 95 % {agreement['null_q95']:.2f})")
                _log(f"    water − land contrast {_fmt(c['contrast_mean'], c['contrast_std'], 3)} (p {c['contrast_p']:.3g}, "
                     f"sign {c['contrast_sign_agreement']:.0%}, random-pair rank {c['contrast_random_pair_rank']:.2f})")
                _log(f"    concepts significant and sign-stable: {', '.join(c['significant_concepts']) or 'none'}; "
                     f"top by mean: " + ", ".join(f"{t['concept']} {t['mean']:+.2f} (q {t['q']:.2g})" for t in c["top_concepts"]))
                _log(f"    sparse: " + ", ".join(f"{n} {w:+.2f}" for n, w in c["sparse_top"])
                     + f"; cosine {c['sparse_cosine']:.2f} (at 3 / 5 / 10 concepts: "
                     + " / ".join("—" if v is None else f"{v:.2f}" for v in c["sparse_cosine_by_size"].values())
                     + f"; SpLiCE 0.43–0.54); Jaccard across seeds {c['sparse_jaccard']:.2f}; explained share "
                     f"{c['explained_share']:.2f} (chance {c['explained_share_chance']:.2f}); class-name share {c['class_name_share']:.2f}")
        if trials:
            out["calibration"] = demo_calibration(store, groups["tuned"], trials)
    return out


def demo_calibration(store, tuned_runs, trials: int) -> dict:
    """Pure-null runs on the demo's real features and concept bank, edits sized like the tuned runs'."""
    from hsfm_core.analysis import semantics as sem
    from hsfm_core.analysis.decode import read_concepts
    from hsfm_core.runs import load_support

    names, categories = read_concepts()
    space, to_text, _ = sem._text_for(store, None, names, categories, "centred")
    meta = store.meta
    y, train = meta["y"].to_numpy(), meta["split"].to_numpy() == "train"
    references = sem.class_references(store.features, y, meta["a"].to_numpy(), train, store.class_names,
                                      store.attribute_names, [0, 1], 0, sem.POOL_DIFFERENCES)
    support = load_support(tuned_runs[0], store)
    norms_like = float(np.median(np.linalg.norm((support["after"] - support["before"]).numpy(), axis=1)))
    features = np.asarray(store.features, dtype=np.float64)

    def draw(c, n, rng):
        rows = np.flatnonzero(train & (y == c))
        j = rng.integers(0, len(rows), n)
        k = (j + rng.integers(1, len(rows), n)) % len(rows)
        diff = features[rows[j]] - features[rows[k]]
        return diff / np.linalg.norm(diff, axis=1, keepdims=True)

    return calibration(trials, references, space, draw, norms_like, sem.DEFAULT_CONTRAST, "demo features and bank")


# -- 4. CelebA-size time ---------------------------------------------------------------------------------

def celeba_time(rows: int, seeds: int = 5, n: int = 1024, dim: int = 2048) -> dict:
    import torch

    from benchmarks.bench_scale import make_workspace
    from hsfm_core.analysis import semantics as sem
    from hsfm_core.features import FeatureStore
    from hsfm_core.runs import list_runs, write_finished_run

    out = {"rows": rows, "dim": dim, "support_per_class": n, "seeds": seeds}
    with tempfile.TemporaryDirectory(prefix="bench-semantics-celeba-") as tmp:
        start = time.perf_counter()
        ws = make_workspace(Path(tmp) / "ws", n_rows=rows, dim=dim)
        out["build_store_s"] = round(time.perf_counter() - start, 1)
        store = FeatureStore.open(ws)
        y, train = store.meta["y"].to_numpy(), store.meta["split"].to_numpy() == "train"
        rng = np.random.default_rng(0)
        for s in range(seeds):  # synthetic HSFM runs: support rows of each class, edits = noise
            rows_s = np.concatenate([rng.choice(np.flatnonzero(train & (y == c)), n, replace=False) for c in (0, 1)])
            before = torch.from_numpy(np.asarray(store.features[np.sort(rows_s)], dtype=np.float32))
            after = before + 0.05 * torch.randn(before.shape, generator=torch.Generator().manual_seed(s))
            labels = torch.from_numpy(y[np.sort(rows_s)].astype(np.int64))
            config = {"method": "hsfm", "store_hash": store.content_hash, "hyperparameters": {"n": n}, "seed": s}
            head = {"weight": torch.zeros(2, dim), "bias": torch.zeros(2)}
            write_finished_run(ws, f"hsfm-bench-s{s}", config, head, {},
                               {"before": before, "after": after, "indices": torch.from_numpy(np.sort(rows_s)),
                                "labels": labels})
        runs = list_runs(ws)
        sem.edit_semantics(store, runs)  # warm-up (page cache)
        start, cpu = time.perf_counter(), time.process_time()
        result = sem.edit_semantics(store, runs)
        out["edit_semantics_s"] = round(time.perf_counter() - start, 2)
        out["edit_semantics_cpu_s"] = round(time.process_time() - cpu, 2)
        out["text"] = result["text"]["reason"][:80] if result["text"]["reason"] else None
        # the statistics with a text space: 49 random concepts in 2,048-d, class names projected out
        g = np.random.default_rng(1)
        bank, class_names = g.normal(size=(49, dim)) + 3, g.normal(size=(2, dim)) + 3
        space = sem.text_space([f"c{k}" for k in range(49)], bank, class_names, "centred")
        seeds_edits = [sem.SeedEdits(r["run_id"], r["config"]["seed"], *_edits(r, store)) for r in runs]
        start, cpu = time.perf_counter(), time.process_time()
        references = sem.class_references(store.features, y, store.meta["a"].to_numpy(), train, store.class_names,
                                          store.attribute_names, [0, 1], 0, max(sem.POOL_DIFFERENCES, 4 * n))
        sem.group_semantics(seeds_edits, references, text=space, to_text=lambda x: np.asarray(x, dtype=np.float64),
                            contrast=("c0", "c1"), null_draws=1000)
        out["statistics_with_text_s"] = round(time.perf_counter() - start, 2)
        out["statistics_with_text_cpu_s"] = round(time.process_time() - cpu, 2)
    _log(f"CelebA size ({rows:,} rows × {dim}, {seeds} seeds × {n} edits per class): edit_semantics "
         f"{out['edit_semantics_s']:.1f} s wall / {out['edit_semantics_cpu_s']:.1f} s CPU (alignment; no text space), "
         f"statistics with a 49-concept text space {out['statistics_with_text_s']:.1f} s wall / "
         f"{out['statistics_with_text_cpu_s']:.1f} s CPU (target ≤ 20 s); store built in {out['build_store_s']:.0f} s")
    return out


def _edits(run, store):
    from hsfm_core.runs import load_support

    support = load_support(run, store)
    return (support["after"].double() - support["before"].double()).numpy(), support["labels"].numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, help="a built demo workspace (copied, never written)")
    parser.add_argument("--trials", type=int, default=200, help="calibration trials (5 seeds each)")
    parser.add_argument("--planted-trials", type=int, default=100, help="planted-truth trials per SNR (2 classes each)")
    parser.add_argument("--snr", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.25])
    parser.add_argument("--celeba-rows", type=int, default=202_599)
    parts = ["calibration", "planted", "demo", "demo-calibration", "celeba"]
    parser.add_argument("--only", nargs="+", choices=parts, default=parts)
    args = parser.parse_args()
    figures = {}
    if "calibration" in args.only:
        figures["calibration_synthetic"] = synthetic_calibration(args.trials)
    if "planted" in args.only:
        figures["planted"] = [planted(args.planted_trials, snr) for snr in args.snr]
    if "demo" in args.only and args.demo:
        figures["demo"] = demo(args.demo, args.trials if "demo-calibration" in args.only else 0)
    if "celeba" in args.only:
        figures["celeba_size"] = celeba_time(args.celeba_rows)
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
