"""`python -m hsfm_core …`: the command lines other tools script against (docs/ARCHITECTURE.md §Layers).

Bad input ends with a one-line `error: …` on stderr and exit status 2; the store or workspace
being written is left as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hsfm_core.errors import InputError

EXIT_BAD_INPUT = 2


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="encode a dataset's images into a feature store",
                       description="Images → feature store. With --merge, join the shard stores given as arguments.")
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--format", choices=("waterbirds", "celeba", "csv"), help="dataset format")
    p.add_argument("--csv", help="metadata CSV (default: DATA/metadata.csv) for waterbirds and csv formats")
    p.add_argument("--model", help="open_clip model name, local-dir:PATH, or resnet50")
    p.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint file; for resnet50 the ERM checkpoint")
    p.add_argument("--out", required=True, help="feature store (workspace) directory to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:N]")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0, help="image decoding processes (spawned); 0 = in-process")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored feature precision")
    p.add_argument("--shard", help="i/n: extract only block i (0-based) of n, for splitting across machines")
    p.add_argument("--merge", nargs="+", metavar="SHARD", help="merge these shard stores into --out instead of extracting")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store (runs/ and cache/ are kept)")
    p.add_argument("--target", default="Blond_Hair", help="CelebA target attribute (class)")
    p.add_argument("--attribute", default="Male", help="CelebA spurious attribute")
    p.add_argument("--images", help="CelebA image folder relative to DATA (default: auto-detect img_align_celeba)")
    p.add_argument("--class-names", nargs="+", metavar="NAME",
                   help="csv format: names of classes 0, 1, …; their number sets C (default: from the labels present)")
    p.add_argument("--attribute-names", nargs="+", metavar="NAME",
                   help="csv format: names of attributes 0, 1, …; their number sets A (default: from the values present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_extract)


def _run_extract(args) -> int:
    from hsfm_core.features.extract import extract, merge_shards, parse_shard

    if args.merge:
        if args.data or args.model or args.shard:
            raise InputError("--merge takes only shard stores and --out (no --data, --model or --shard)")
        store = merge_shards(args.merge, args.out, overwrite=args.overwrite)
        print(json.dumps(_store_summary(store)))
        return 0
    for flag in ("data", "format", "model"):
        if not getattr(args, flag):
            raise InputError(f"extract needs --{flag}")
    if args.batch_size < 1 or args.num_workers < 0:
        raise InputError("--batch-size must be ≥ 1 and --num-workers ≥ 0")
    shard = parse_shard(args.shard)

    from hsfm_core.data import read_dataset
    from hsfm_core.features.encoders import load_encoder, resolve_device

    options = {}
    if args.format == "celeba":
        options = {"target": args.target, "attribute": args.attribute, "images": args.images}
    elif args.format == "csv":
        options = {k: v for k, v in (("class_names", args.class_names), ("attribute_names", args.attribute_names)) if v}
    table = read_dataset(args.format, args.data, args.csv, **options)
    device = resolve_device(args.device)
    encoder = load_encoder(args.model, args.pretrained, device)
    store = extract(table, encoder, args.out, device=device, batch_size=args.batch_size,
                    num_workers=args.num_workers, shard=shard, dtype=args.dtype,
                    overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps(_store_summary(store)))
    return 0


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="import a reference-HSFM or DFR feature cache into a store")
    p.add_argument("--from", dest="source", required=True, choices=("reference", "dfr"))
    p.add_argument("--path", required=True, help="reference: folder with {train,val,test}_features.pt; dfr: the .npz")
    p.add_argument("--out", required=True, help="feature store (workspace) directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store (runs/ and cache/ are kept)")
    p.add_argument("--class-names", nargs="+", metavar="NAME", default=None,
                   help="names of classes 0, 1, …; their number sets C (default: from the labels present)")
    p.add_argument("--attribute-names", nargs="+", metavar="NAME", default=None,
                   help="names of attributes 0, 1, …; their number sets A (default: from the values present)")
    p.set_defaults(func=_run_import)


def _run_import(args) -> int:
    from hsfm_core.features.importers import import_dfr, import_reference

    names = {k: v for k, v in (("class_names", args.class_names), ("attribute_names", args.attribute_names)) if v}
    importer = import_reference if args.source == "reference" else import_dfr
    store = importer(args.path, args.out, overwrite=args.overwrite, **names)
    print(json.dumps(_store_summary(store)))
    return 0


class _MethodNames:
    """The registry's method names as argparse `choices`, read only when a command line uses them: the
    registry imports every method (torch), which `hsfm --help` must not pay for. (The argument needs a
    metavar: argparse formats the choices of an argument without one when it is added.)"""

    def __iter__(self):
        from hsfm_core import methods

        return iter(methods.names())

    def __contains__(self, name) -> bool:
        return name in list(self)


def _methods_epilog() -> str:
    from hsfm_core import methods

    return "methods:\n" + "\n".join(
        f"  {m.name:6} {m.description}\n         settings: {', '.join(m.field_types())}"
        + (f"; presets: {', '.join(m.presets)}" if m.presets else "")
        for m in methods.all_methods())


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called when the help is shown (see _MethodNames)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a head on a workspace (one run per seed); `train --help` lists the methods",
                       epilog=_methods_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", required=True)
    p.add_argument("--method", required=True, choices=_MethodNames(), metavar="METHOD", help="one of the methods below")
    p.add_argument("--preset", default=None, help="a preset of the method (default: the method's own; see below)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override settings by field name or alias, e.g. T=10 eta=0.5 (HSFM), C=0.5 (ERM probe)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    j = p.add_argument_group("background job (prints the job id and returns at once; see `jobs`, `cancel`)")
    j.add_argument("--submit", choices=("local", "slurm"), help="run as a job on this machine or on Slurm")
    j.add_argument("--max-parallel", type=int, help="local: jobs of this workspace training at once (default 2)")
    j.add_argument("--partition", help="slurm: partition (required with --submit slurm)")
    j.add_argument("--time", type=int, default=None, help="time limit in minutes (slurm default 60; local: none)")
    j.add_argument("--gpus", type=int, default=0, help="slurm: GPUs per node")
    j.add_argument("--cpus", type=int, default=None, help="slurm: CPUs per task")
    j.add_argument("--mem", type=float, default=None, help="slurm: memory in GB")
    j.add_argument("--slurm-param", nargs="+", default=[], metavar="KEY=VALUE",
                   help="slurm: more #SBATCH options, e.g. qos=high account=lab")
    p.set_defaults(func=_run_train)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _request(args, executor: str = "local"):
    """The one `TrainSpec` a `train` command line asks for."""
    from hsfm_core.spec import SlurmOptions, TrainSpec

    slurm = None
    if executor == "slurm":
        if not args.partition:
            raise InputError("--submit slurm needs --partition")
        extra = {}
        for pair in args.slurm_param:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise InputError(f"--slurm-param {pair!r}: expected key=value")
            extra[key.strip()] = value.strip()
        slurm = SlurmOptions(partition=args.partition, time_min=args.time or 60, gpus=args.gpus, cpus=args.cpus,
                             mem_gb=args.mem, extra=extra)
    elif args.partition or args.slurm_param or args.gpus or args.cpus or args.mem:
        raise InputError("--partition, --gpus, --cpus, --mem and --slurm-param are for --submit slurm")
    return TrainSpec.create(args.method, preset=args.preset, overrides=args.overrides, seeds=args.seeds,
                            device=args.device, executor=executor, slurm=slurm, max_parallel=args.max_parallel,
                            time_limit_min=args.time if executor == "local" else None)


def _submit_train(args) -> int:
    from hsfm_core import jobs

    record = jobs.launch(args.workspace, _request(args, args.submit))
    if not args.quiet:
        print(f"submitted {record['job_id']} ({args.submit}, {record['status']}); runs {', '.join(record['run_ids'])}. "
              f"Follow it with: python -m hsfm_core jobs --workspace {args.workspace}", file=sys.stderr)
    print(json.dumps({"job_id": record["job_id"], "status": record["status"], "executor": record["executor"],
                      "submitit_job_id": record["submitit_job_id"], "runs": record["run_ids"]}))
    return 0


def _run_train(args) -> int:
    if args.submit:
        return _submit_train(args)
    if args.max_parallel is not None or args.partition or args.slurm_param:
        raise InputError("--max-parallel, --partition and --slurm-param need --submit")
    from tqdm.auto import tqdm

    from hsfm_core.train import summarize, train

    bar = None

    def progress(epoch, epochs, entries):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=epochs, unit="epoch", desc=f"{args.method} ×{len(args.seeds)} seed(s)", disable=args.quiet)
        if entries:
            bar.set_postfix(val_wga=_pct(sum(e["val_wga"] for e in entries) / len(entries)))
            bar.update(1)

    spec = _request(args)
    if not args.quiet:
        print(f"fitting {args.method} for {len(spec.seeds)} seed(s)…", file=sys.stderr)
    try:
        runs = train(args.workspace, spec, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet and runs[0].preset:
        print(f"preset {runs[0].preset}: {runs[0].preset_reason}", file=sys.stderr)
    for r in runs:
        test = r.metrics.get("test") or r.metrics["val"]
        split = "test" if "test" in r.metrics else "val"
        print(f"{r.run_id}  seed {r.seed}  {split} WGA {_pct(test['wga'])}  adjusted avg {_pct(test['avg_adjusted'])}  "
              f"plain avg {_pct(test['avg_plain'])}")
    split = "test" if "test" in runs[0].metrics else "val"
    summary = summarize(runs, split)
    if len(runs) > 1:
        print(f"{len(runs)} seeds, {split}: " + ", ".join(
            f"{k} {_pct(v['mean'])} ± {_pct(v['std'])}" for k, v in summary.items()) + " (mean ± sample std)")
    print(json.dumps({"runs": [r.run_id for r in runs], "split": split, "summary": summary}))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-group table of a run on val and test")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from hsfm_core.features import FeatureStore
    from hsfm_core.heads import evaluate_head
    from hsfm_core.runs import find_run, load_head

    store = FeatureStore.open(args.workspace)
    run = find_run(args.workspace, args.run)
    head = load_head(run, store)
    metrics = evaluate_head(store, head["weight"], head["bias"])
    if args.json:
        print(json.dumps(metrics))
        return 0
    if run["config"].get("store_hash") not in (None, store.content_hash):
        print(f"warning: run {args.run} was trained on a store with a different content hash", file=sys.stderr)
    names = store.groups.names
    print(f"run {run['run_id']} ({run['method']}, status {run['status']})")
    for split, m in metrics.items():
        print(f"\n{split}: accuracy per group (%), Wilson 95% interval")
        print(f"  {'g':>2}  {'group':<40} {'n':>7} {'acc':>6}  {'95% CI':>13}")
        for g, name in enumerate(names):
            lo, hi = m["group_ci"][g]
            ci = "—" if lo is None else f"{_pct(lo)}–{_pct(hi)}"
            flag = "  ← worst" if g == m["worst_group"] else ""
            print(f"  {g:>2}  {name:<40} {m['group_n'][g]:>7} {_pct(m['group_acc'][g]):>6}  {ci:>13}{flag}")
        print(f"  worst-group {_pct(m['wga'])} · plain average {_pct(m['avg_plain'])} · adjusted average "
              f"(train group weights) {_pct(m['avg_adjusted'])} · mean over groups {_pct(m['mean_group'])}")
    _print_run_group(args.workspace, run, names)
    return 0


def _print_run_group(workspace, run: dict, names: list[str]) -> None:
    """The run's group (same settings, other seeds): per-group mean ± std when ≥ 2 seeds finished."""
    from hsfm_core.analysis.seeds import aggregate, format_mean_std, group_key, run_groups
    from hsfm_core.runs import list_runs

    group = next((g for g in run_groups(list_runs(workspace, unreadable=[])) if g.key == group_key(run)), None)
    if group is None:
        return
    for split in ("val", "test"):
        agg = aggregate(group, split)
        if agg["n"] < 2:
            continue
        print(f"\n{split}, run group {group.name} ({agg['n']} seeds: {agg['seeds']}): mean ± sample std (%)")
        for g, name in enumerate(names):
            print(f"  {g:>2}  {name:<40} {format_mean_std(agg['group_acc']['mean'][g], agg['group_acc']['std'][g]):>14}")
        print(f"  worst-group {format_mean_std(**agg['wga'])} · adjusted average {format_mean_std(**agg['avg_adjusted'])}"
              f" · plain average {format_mean_std(**agg['avg_plain'])}")


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list a workspace's runs with their test WGA and adjusted average")
    p.add_argument("--workspace", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_runs)


def _run_runs(args) -> int:
    from hsfm_core.runs import list_runs

    rows = []
    unreadable: list = []  # a run whose files are corrupt is named, never hides the others
    runs = list_runs(args.workspace, unreadable=unreadable)
    for r in runs:
        test = (r["metrics"] or {}).get("test") or {}
        val = (r["metrics"] or {}).get("val") or {}
        rows.append({"run_id": r["run_id"], "method": r["method"], "status": r["status"],
                     "seed": r["config"].get("seed"), "test_wga": test.get("wga"),
                     "test_avg_adjusted": test.get("avg_adjusted"), "val_wga": val.get("wga")})
    groups = _group_rows(runs)
    if args.json:
        print(json.dumps({"runs": rows, "groups": groups,
                          "unreadable": [{"run_id": i, "reason": why} for i, why in unreadable]}))
        return 0
    print(f"{'run':<44} {'method':<6} {'status':<9} {'seed':>4} {'test WGA':>9} {'test adj. avg':>13} {'val WGA':>8}")
    for r in rows:
        print(f"{r['run_id']:<44} {r['method'] or '?':<6} {r['status']:<9} {str(r['seed']):>4} "
              f"{_pct(r['test_wga']):>9} {_pct(r['test_avg_adjusted']):>13} {_pct(r['val_wga']):>8}")
    for run_id, why in unreadable:
        print(f"{run_id:<44} unreadable: {why}")
    if not rows and not unreadable:
        print("(no runs yet: python -m hsfm_core train --workspace … --method …)")
    if any(g["seeds"] > 1 for g in groups):
        _print_groups(groups)
    from hsfm_core.jobs import ACTIVE, list_jobs

    active = [j for j in list_jobs(args.workspace) if j["status"] in ACTIVE]
    if active:
        print(f"\n{len(active)} job(s) queued or running:")
        _print_jobs(args.workspace, active)
    return 0


def _job_row(workspace, job) -> dict:
    """One job as the `jobs` command shows it: its record, and its progress read from its runs."""
    from hsfm_core.jobs import job_progress

    progress = job_progress(workspace, job["job_id"])
    last = [r["val_wga"] for r in progress["history"] if r.get("epoch") == progress["epoch"] and r.get("val_wga") is not None]
    return {"job_id": job["job_id"], "status": job["status"], "executor": job["executor"],
            "method": job["spec"]["method"], "seeds": job["spec"]["seeds"], "runs": job["run_ids"],
            "epoch": progress["epoch"], "epochs": progress["epochs"],
            "val_wga": sum(last) / len(last) if last else None, "elapsed_s": progress["elapsed_s"],
            "eta_s": progress["eta_s"], "time_left_s": progress["time_left_s"],
            "ends_at_time_limit": progress["ends_at_time_limit"], "pending": job["pending"],
            "error": job["error"], "created_at": job["created_at"]}


def _seconds(x) -> str:
    return "—" if x is None else f"{x:.0f}s"


def _print_jobs(workspace, job_list) -> None:
    print(f"{'job':<26} {'status':<9} {'where':<6} {'method':<6} {'epoch':>11} {'val WGA':>8} {'elapsed':>8} "
          f"{'eta':>6}  runs")
    for job in job_list:
        r = _job_row(workspace, job)
        epoch = f"{r['epoch']}/{r['epochs']}" if r["epochs"] else "—"
        print(f"{r['job_id']:<26} {r['status']:<9} {r['executor']:<6} {r['method']:<6} {epoch:>11} "
              f"{_pct(r['val_wga']):>8} {_seconds(r['elapsed_s']):>8} {_seconds(r['eta_s']):>6}  {', '.join(r['runs'])}")
        if r["error"]:
            print(f"{'':<26} error: {r['error']}")
        if r["pending"]:  # Slurm's reason for not starting it, and whether waiting can help
            never = r["pending"]["never_starts"]
            print(f"{'':<26} pending: {r['pending']['reason']}" + (f" — Slurm will not start it: {never}" if never else ""))
        if r["ends_at_time_limit"]:
            print(f"{'':<26} the time limit comes first: {_seconds(r['time_left_s'])} left, the epochs need more")


def _add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="list a workspace's background training jobs (train --submit)")
    p.add_argument("--workspace", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--log", metavar="JOB_ID", help="print the last lines of this job's stdout and stderr")
    p.add_argument("--lines", type=int, default=40)
    p.set_defaults(func=_run_jobs)
    c = sub.add_parser("cancel", help="cancel a queued or running job (its runs are kept as cancelled)")
    c.add_argument("--workspace", required=True)
    c.add_argument("job_id")
    c.add_argument("--wait", type=float, default=10, help="seconds to wait for the job to stop (0: do not wait)")
    c.set_defaults(func=_run_cancel)


def _run_jobs(args) -> int:
    from hsfm_core.jobs import list_jobs, log_tail

    if args.log:
        tail = log_tail(args.workspace, args.log, args.lines)
        print(tail["stdout"])
        if tail["stderr"]:
            print("--- stderr ---")
            print(tail["stderr"])
        return 0
    unreadable: list = []
    job_list = list_jobs(args.workspace, unreadable)
    if args.json:
        print(json.dumps([_job_row(args.workspace, j) for j in job_list] +
                         [{"job_id": u["job_id"], "status": "unreadable", "error": u["error"]} for u in unreadable]))
        return 0
    _print_jobs(args.workspace, job_list)
    for u in unreadable:  # a damaged job.json is named, not hidden
        print(f"{u['job_id']:<26} unreadable: {u['error']}")
    if not job_list and not unreadable:
        print("(no jobs yet: python -m hsfm_core train … --submit local)")
    return 0


def _run_cancel(args) -> int:
    from hsfm_core.jobs import ACTIVE, cancel, wait

    record = cancel(args.workspace, args.job_id)
    if record["status"] in ACTIVE and args.wait > 0:
        try:
            record = wait(args.workspace, args.job_id, timeout_s=args.wait)
        except TimeoutError:
            pass
    print(json.dumps({"job_id": record["job_id"], "status": record["status"], "runs": record["run_ids"]}))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the bundled demo world: build its workspace, (re)train its CLIP")
    demo = p.add_subparsers(dest="demo_command", required=True)
    b = demo.add_parser("build", help="SynthBirds → extract with the bundled CLIP → ERM, DFR, HSFM runs")
    b.add_argument("--out", help="workspace folder (default: the app's demo workspace in the user cache)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=2, help="processes drawing images (spawned)")
    b.add_argument("--force", action="store_true", help="rebuild even if the workspace is complete")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_run_demo_build)
    c = demo.add_parser("train-clip", help="train the small demo CLIP and save it as a local-dir: bundle")
    c.add_argument("--out", default=None, help="bundle folder (default: assets/synthbirds-clip)")
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--pool-size", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_run_demo_train_clip)
    e = demo.add_parser("evaluate-clip", help="zero-shot and retrieval numbers of a demo CLIP bundle")
    e.add_argument("--model", default=None, help="local-dir:PATH (default: the bundled CLIP)")
    e.set_defaults(func=_run_demo_evaluate_clip)


def _run_demo_build(args) -> int:
    from tqdm.auto import tqdm

    from hsfm_core.demo.build import build_demo

    bar = tqdm(total=100, unit="%", desc="demo build", disable=args.quiet, bar_format="{l_bar}{bar}| {elapsed}")

    def progress(message: str, fraction: float) -> None:
        bar.set_description(message)
        bar.update(round(100 * fraction) - bar.n)

    try:
        out = build_demo(args.out, seed=args.seed, workers=args.workers, force=args.force, progress=progress)
    finally:
        bar.close()
    print((out / "demo.json").read_text())
    return 0


def _run_demo_train_clip(args) -> int:
    from dataclasses import replace

    from hsfm_core.demo import clip
    from hsfm_core.demo.build import DEMO_CLIP

    config = replace(clip.ClipTrainConfig(), seed=args.seed, workers=args.workers,
                     **{k: v for k, v in (("steps", args.steps), ("pool_size", args.pool_size)) if v is not None})
    model, log = clip.train_clip(config, progress=not args.quiet)
    out = clip.save_bundle(model, args.out or DEMO_CLIP, config, log, metrics=None)  # saved before evaluating
    metrics = clip.evaluate(model, clip.tokenize, seed=0, workers=args.workers)
    clip.save_bundle(model, out, config, log, metrics)
    print(json.dumps({"bundle": str(out), **metrics, "train_seconds": log["train_seconds"],
                      "pool_seconds": log["pool_seconds"]}, indent=2))
    return 0


def _run_demo_evaluate_clip(args) -> int:
    import open_clip

    from hsfm_core.demo import clip
    from hsfm_core.demo.build import DEMO_CLIP

    spec = args.model or f"local-dir:{DEMO_CLIP}"
    try:
        model, _, _ = open_clip.create_model_and_transforms(spec, weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot load {spec}: {type(exc).__name__}: {exc}") from None
    model.eval()
    print(json.dumps(clip.evaluate(model, open_clip.get_tokenizer(spec)), indent=2))
    return 0


def _add_retrieval(sub) -> None:
    p = sub.add_parser("neighbors", help="nearest real images (FAISS, cosine) to a support example, JSON")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--support", type=int, required=True, help="support example 0..2n-1")
    p.add_argument("--edited", action="store_true", help="query with the edited feature instead of the original")
    p.add_argument("-k", type=int, default=16)
    p.set_defaults(func=_run_neighbors)
    e = sub.add_parser("edit-shift", help="share of nearest neighbours with the other attribute, before/after, JSON")
    e.add_argument("--workspace", required=True)
    e.add_argument("--run", required=True)
    e.add_argument("-k", type=int, default=16)
    e.set_defaults(func=_run_edit_shift)


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="score a run's edit directions against CLIP text concepts, JSON")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--concepts", help="concept file (default: assets/concepts.txt)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--contrast", nargs=2, metavar=("POSITIVE", "NEGATIVE"),
                   default=["water background", "land background"])
    p.add_argument("--bridge", help="a CLIP store of the same images, for stores not in a CLIP space")
    p.add_argument("--support", type=int, nargs="+", help="also score the mean edit of these support examples")
    p.set_defaults(func=_run_decode)


def _store_and_support(workspace: str, run_id: str):
    """The store and a run's support set, refusing runs trained on another store."""
    from hsfm_core.features import FeatureStore
    from hsfm_core.runs import check_run_fits_store, find_run, load_support

    store = FeatureStore.open(workspace)
    run = find_run(workspace, run_id)
    check_run_fits_store(run, store)
    return store, load_support(run, store)


def _run_decode(args) -> int:
    from hsfm_core.analysis.decode import clip_space_map, decode_run, encode_concepts, read_concepts
    from hsfm_core.features import FeatureStore

    if args.top < 1:
        raise InputError(f"--top must be ≥ 1, got {args.top}")
    store, support = _store_and_support(args.workspace, args.run)
    to_clip, text_encoder = clip_space_map(store, FeatureStore.open(args.bridge) if args.bridge else None)
    bank = encode_concepts(text_encoder, *read_concepts(args.concepts), cache_dir=store.path / "cache")
    result = decode_run(store, support, bank, to_clip, store.class_names, args.top, tuple(args.contrast))
    if args.support:
        from hsfm_core.analysis.decode import decode_edit_selection

        result["selection"] = decode_edit_selection(support, args.support, bank, to_clip, args.top,
                                                    tuple(args.contrast))
    print(json.dumps({"run": args.run, "concepts": len(bank.concepts), "text_encoder": text_encoder, **result,
                      "edit_diagnostics": _diagnostics(store, support)}))
    return 0


def _diagnostics(store, support, example: int | None = None) -> dict:
    """How far the edits moved (docs/ARCHITECTURE.md §HSFM): the run's summary, or one example's figures."""
    from hsfm_core.analysis.diagnostics import run_diagnostics, warning_text

    result = run_diagnostics(store, support)
    summary = {k: v for k, v in result.items() if k != "per_example"} | {"warning": warning_text(result)}
    if example is None:
        return summary | {"per_example": result["per_example"]}
    return summary | {k: values[example] for k, values in result["per_example"].items()}


def _add_project(sub) -> None:
    p = sub.add_parser("project", help="UMAP map of a workspace (+ a run's edits); prints the coordinates file, JSON")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", help="add this run's edited support points and its correctness")
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split (default: all rows)")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.set_defaults(func=_run_project)


def _run_project(args) -> int:
    from hsfm_core.features import FeatureStore
    from hsfm_core.analysis.projection import ProjectionParams, project
    from hsfm_core.runs import find_run

    if args.n_neighbors < 2 or not 0 <= args.min_dist <= 1:
        raise InputError("--n-neighbors must be ≥ 2 and --min-dist in [0, 1]")
    store = FeatureStore.open(args.workspace)
    run = find_run(args.workspace, args.run) if args.run else None
    rows = store.rows(args.split) if args.split else None
    path = project(store, run, rows, ProjectionParams(n_neighbors=args.n_neighbors, min_dist=args.min_dist))
    import pyarrow.parquet as pq

    print(json.dumps({"coordinates": str(path), "points": pq.read_metadata(path).num_rows}))
    return 0


def _open_run_support(args):
    from hsfm_core.analysis.retrieval import workspace_index

    if args.k < 1:
        raise InputError(f"-k must be ≥ 1, got {args.k}")
    store, support = _store_and_support(args.workspace, args.run)
    return store, support, workspace_index(store)


def _run_neighbors(args) -> int:
    store, support, index = _open_run_support(args)
    n = len(support["after"])
    if not 0 <= args.support < n:
        raise InputError(f"--support {args.support}: this run has support examples 0..{n - 1}")
    query = support["after" if args.edited else "before"][args.support].numpy()
    ids, scores = index.search(query, args.k)
    rows = [{"row": int(r), "cosine": float(c), **{k: (v.item() if hasattr(v, "item") else v)
                                                    for k, v in store.meta.iloc[int(r)].items()},
             "image": str(store.image_path(int(r)) or "")} for r, c in zip(ids[0], scores[0]) if r >= 0]
    print(json.dumps({"run": args.run, "support": args.support, "edited": args.edited,
                      "support_row": int(support["indices"][args.support]), "neighbors": rows,
                      "edit_diagnostics": _diagnostics(store, support, args.support)}))
    return 0


def _group_rows(runs: list[dict]) -> list[dict]:
    """Run groups (runs differing only in their seed) with mean ± std of val and test figures."""
    from hsfm_core.analysis.seeds import aggregate, run_groups

    out = []
    for group in run_groups(runs):
        row = {"group": group.name, "method": group.method, "run_ids": [r["run_id"] for r in group.runs]}
        for split in ("val", "test"):
            agg = aggregate(group, split)
            row["seeds"] = max(row.get("seeds", 0), agg["n"])
            row[split] = {k: agg[k] for k in ("wga", "avg_adjusted", "avg_plain", "mean_group")}
        out.append(row)
    return out


def _print_groups(groups: list[dict]) -> None:
    from hsfm_core.analysis.seeds import format_mean_std

    print("\nrun groups (same settings, different seeds): mean ± sample std over finished seeds, %")
    print(f"  {'group':<52} {'seeds':>5} {'test WGA':>12} {'test adj. avg':>13} {'val WGA':>12}")
    for g in groups:
        print(f"  {g['group'][:52]:<52} {g['seeds']:>5} {format_mean_std(**g['test']['wga']):>12} "
              f"{format_mean_std(**g['test']['avg_adjusted']):>13} {format_mean_std(**g['val']['wga']):>12}")


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="the run groups as a paper-style table: WGA and adjusted average, "
                       "mean ± std and seeds per method")
    p.add_argument("--workspace", required=True)
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--format", default="markdown", choices=("markdown", "latex", "csv"))
    p.add_argument("--out", help="write to this file (atomically) instead of stdout")
    p.set_defaults(func=_run_table)


def _run_table(args) -> int:
    from hsfm_core.analysis.seeds import paper_table, run_groups
    from hsfm_core.features import FeatureStore
    from hsfm_core.fsutil import write_text_atomic
    from hsfm_core.runs import list_runs

    store = FeatureStore.open(args.workspace)
    unreadable: list = []
    runs = [r for r in list_runs(args.workspace, unreadable=unreadable)
            if r["config"].get("store_hash") in (None, store.content_hash)]
    for run_id, why in unreadable:
        print(f"warning: run {run_id} left out: {why}", file=sys.stderr)
    text = paper_table(run_groups(runs), args.split, args.format)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        print(text, end="")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="a grid over settings × seeds, each pair an ordinary run; selected on "
                       "validation worst-group accuracy only")
    p.add_argument("--workspace", required=True)
    p.add_argument("--method", required=True, choices=_MethodNames(), metavar="METHOD",
                   help="a method name (`train --help` lists them)")
    p.add_argument("--preset", default=None)
    p.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                   help="values to try, same names as --set, e.g. alpha=5e-5,2e-4 eta=0.1,1")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="fixed settings for every configuration")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument("--submit", choices=("local", "slurm"), default=None,
                   help="one background job per configuration, on this machine (the job limit applies) or on Slurm; "
                        "prints the job ids and returns. Without it the sweep runs here and prints its table")
    p.add_argument("--max-parallel", type=int, help="configurations training at once (default: the job limit, 2)")
    p.add_argument("--partition", help="slurm partition")
    p.add_argument("--time", type=int, default=None, help="slurm time limit in minutes")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--cancel", metavar="SWEEP_ID", help="ask a running sweep to stop (rerun the sweep to resume)")
    p.add_argument("--json", action="store_true", help='print {"selected": {settings}, "rows": [...]}')
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_sweep)


def _run_sweep(args) -> int:
    from hsfm_core import sweeps
    from hsfm_core.analysis.seeds import format_mean_std

    if args.cancel:
        sweeps.cancel(args.workspace, args.cancel)
        print(json.dumps({"sweep_id": args.cancel, "cancel": "requested"}))
        return 0
    slurm = None
    if args.submit == "slurm":
        if not args.partition:
            raise InputError("--submit slurm needs --partition")
        slurm = {"partition": args.partition, "time_min": args.time or 60, "gpus": args.gpus}
    request = sweeps.SweepRequest(method=args.method, grid=sweeps.parse_grid(args.method, args.grid),
                                  seeds=tuple(dict.fromkeys(args.seeds)), preset=args.preset,
                                  overrides=tuple(args.overrides), device=args.device, executor=args.submit or "local",
                                  slurm=slurm, max_parallel=args.max_parallel)
    total = len(request.configurations())
    if args.submit:
        launched = sweeps.submit(args.workspace, request)
        print(json.dumps({"sweep_id": request.sweep_id, "jobs": launched, "status": "submitted" if launched else "done"}))
        return 0
    if not args.quiet:
        print(f"sweep {request.sweep_id}: {total} configuration(s) × {len(request.seeds)} seed(s); "
              f"finished runs are kept (rerun to resume)", file=sys.stderr)

    def on_configuration(done, n, outcome):
        if not args.quiet:
            print(f"  configuration {done}/{n} {outcome}", file=sys.stderr)

    table = sweeps.run(args.workspace, request, on_configuration)
    rows = json.loads(table.to_json(orient="records"))
    if args.json:
        print(json.dumps({"sweep_id": request.sweep_id, "status": sweeps.status(args.workspace, request.sweep_id),
                          "selected": sweeps.selected_settings(args.workspace, request, table), "rows": rows}))
        return 0
    names = list(request.grid)
    print(f"{'':2}{'k':>3}  " + "  ".join(f"{n:>14}" for n in names)
          + f"  {'seeds':>5}  {'val WGA':>12}  {'val adj.':>12}  {'test WGA':>12}  {'test adj.':>12}")
    for _, row in table.iterrows():
        mark = "→" if row["selected"] else " "
        print(f"{mark:2}{row['config']:>3}  " + "  ".join(f"{str(row[n]):>14}" for n in names)
              + f"  {row['seeds_done']:>2}/{row['seeds']:<2}  "
              + "  ".join(f"{format_mean_std(row[f'{s}_{k}_mean'], row[f'{s}_{k}_std']):>12}"
                          for s in ("val", "test") for k in ("wga", "avg_adjusted")))
    print("→ selected on mean val worst-group accuracy (ties: val adjusted average, then grid order); "
          "test is shown, never used to select. mean ± sample std over seeds, %")
    return 0


def _run_edit_shift(args) -> int:
    from hsfm_core.analysis.retrieval import edit_shift

    store, support, index = _open_run_support(args)
    rows = support["indices"].numpy()
    if (rows < 0).any():
        raise InputError(f"run {args.run} has support examples without store rows (an imported reference run): "
                         f"their own attribute is unknown")
    result = edit_shift(index, store.meta["a"].to_numpy(), rows, support["labels"].numpy(),
                        support["before"].numpy(), support["after"].numpy(), k=args.k)
    print(json.dumps({"run": args.run, **result, "edit_diagnostics": _diagnostics(store, support)}))
    return 0


def _store_summary(store) -> dict:
    from hsfm_core.runs import list_runs

    m = store.manifest
    return {"store": str(Path(store.path).resolve()), "rows": m["n_rows"], "dim": m["dim"], "dtype": m["dtype"],
            "splits": m["splits"], "group_counts": m["group_counts"], "backbone": m["backbone"]["id"],
            "content_hash": m["content_hash"], "runs": [r["run_id"] for r in list_runs(store.path, unreadable=[])]}


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="start the Streamlit app (HSFM Studio) from any folder",
                       description="Serve the app (app.py and pages/ of this installation) on HOST:PORT. Without "
                                   "--workspace it opens the bundled demo workspace, building it on first launch.")
    p.add_argument("--workspace", help="a workspace folder to open (default: $HSFM_WORKSPACE, else the demo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser window")
    p.set_defaults(func=_run_app)


def _run_app(args) -> int:
    import os

    from hsfm_core.resources import app_script

    script = app_script()
    if not script.is_file():
        raise InputError(f"the app's script is missing: {script} (reinstall hsfm-studio)")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", args.host,
               "--server.port", str(args.port), "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]  # as .streamlit/config.toml: no source watcher in a tool
    if args.headless:
        command += ["--server.headless", "true"]
    if args.workspace:
        workspace = Path(args.workspace).expanduser().resolve()
        if not workspace.is_dir():
            raise InputError(f"--workspace {args.workspace}: no such folder")
        command += ["--", "--workspace", str(workspace)]
    sys.stdout.flush()
    os.execv(sys.executable, command)  # Streamlit becomes this process: Ctrl-C and kill PID reach it directly
    return 0  # not reached


def build_parser(prog: str = "python -m hsfm_core") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="HSFM Studio command line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_extract(sub)
    _add_import(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_runs(sub)
    _add_table(sub)
    _add_sweep(sub)
    _add_jobs(sub)
    _add_demo(sub)
    _add_retrieval(sub)
    _add_decode(sub)
    _add_project(sub)
    _add_app(sub)
    return parser


def console_main() -> int:
    """The `hsfm` command (pyproject.toml [project.scripts]): the same commands as `python -m hsfm_core`."""
    return main(prog="hsfm")


def main(argv: list[str] | None = None, prog: str = "python -m hsfm_core") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: a store being written was left as it was; runs in progress are marked cancelled",
              file=sys.stderr)
        return 130
