"""Training commands (docs/ARCHITECTURE.md §Requests, §Jobs, §Sweeps): train, sweep, jobs, cancel."""

from __future__ import annotations

import argparse
import json
import sys

from hsfm_core.cli.common import MethodNames, methods_epilog, pct, print_json, seconds
from hsfm_core.errors import InputError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a head on a workspace (one run per seed); `train --help` lists the methods",
                       epilog=methods_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", required=True)
    p.add_argument("--method", required=True, choices=MethodNames(), metavar="METHOD", help="one of the methods below")
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
        if note := record["spec"].get("device_note"):  # e.g. auto → cpu: the job asks Slurm for no GPU
            print(f"device: {note}", file=sys.stderr)
    print_json({"job_id": record["job_id"], "status": record["status"], "executor": record["executor"],
                "submitit_job_id": record["submitit_job_id"], "runs": record["run_ids"]})
    return 0


def _progress_bar(args):
    """A tqdm bar over epochs, created on the first epoch (the trainer knows how many there are)."""
    from tqdm.auto import tqdm

    state = {"bar": None}

    def progress(epoch, epochs, entries):
        if state["bar"] is None:
            state["bar"] = tqdm(total=epochs, unit="epoch", desc=f"{args.method} ×{len(args.seeds)} seed(s)",
                                disable=args.quiet)
        if entries:
            state["bar"].set_postfix(val_wga=pct(sum(e["val_wga"] for e in entries) / len(entries)))
            state["bar"].update(1)

    return progress, state


def _run_train(args) -> int:
    if args.submit:
        return _submit_train(args)
    if args.max_parallel is not None or args.partition or args.slurm_param:
        raise InputError("--max-parallel, --partition and --slurm-param need --submit")
    from hsfm_core.train import train

    progress, state = _progress_bar(args)
    spec = _request(args)
    if not args.quiet:
        print(f"fitting {args.method} for {len(spec.seeds)} seed(s)…", file=sys.stderr)
    try:
        runs = train(args.workspace, spec, progress=progress)
    finally:
        if state["bar"] is not None:
            state["bar"].close()
    if not args.quiet and runs[0].preset:
        print(f"preset {runs[0].preset}: {runs[0].preset_reason}", file=sys.stderr)
    _print_trained(runs)
    return 0


def _print_trained(runs) -> None:
    from hsfm_core.train import summarize

    for r in runs:
        split = "test" if "test" in r.metrics else "val"
        m = r.metrics[split]
        print(f"{r.run_id}  seed {r.seed}  {split} WGA {pct(m['wga'])}  adjusted avg {pct(m['avg_adjusted'])}  "
              f"plain avg {pct(m['avg_plain'])}")
    split = "test" if "test" in runs[0].metrics else "val"
    summary = summarize(runs, split)
    if len(runs) > 1:
        print(f"{len(runs)} seeds, {split}: " + ", ".join(
            f"{k} {pct(v['mean'])} ± {pct(v['std'])}" for k, v in summary.items()) + " (mean ± sample std)")
    print_json({"runs": [r.run_id for r in runs], "split": split, "summary": summary})


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="a grid over settings × seeds, each pair an ordinary run; selected on "
                       "validation worst-group accuracy only")
    p.add_argument("--workspace", required=True)
    p.add_argument("--method", required=True, choices=MethodNames(), metavar="METHOD",
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
    p.add_argument("--yes", action="store_true",
                   help="run a sweep larger than the workspace's limit (jobs/settings.json max_sweep_runs, default 500 runs)")
    p.add_argument("--cancel", metavar="SWEEP_ID", help="ask a running sweep to stop (rerun the sweep to resume)")
    p.add_argument("--json", action="store_true", help='print {"selected": {settings}, "rows": [...]}')
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_sweep)


def _sweep_request(args):
    from hsfm_core import sweeps

    slurm = None
    if args.submit == "slurm":
        if not args.partition:
            raise InputError("--submit slurm needs --partition")
        slurm = {"partition": args.partition, "time_min": args.time or 60, "gpus": args.gpus}
    return sweeps.SweepRequest(method=args.method, grid=sweeps.parse_grid(args.method, args.grid),
                               seeds=tuple(dict.fromkeys(args.seeds)), preset=args.preset,
                               overrides=tuple(args.overrides), device=args.device, executor=args.submit or "local",
                               slurm=slurm, max_parallel=args.max_parallel)


def _run_sweep(args) -> int:
    from hsfm_core import sweeps

    if args.cancel:
        sweeps.cancel(args.workspace, args.cancel)
        print_json({"sweep_id": args.cancel, "cancel": "requested"})
        return 0
    request = _sweep_request(args)
    if args.submit:
        launched = sweeps.submit(args.workspace, request, yes=args.yes)
        print_json({"sweep_id": request.sweep_id, "jobs": launched, "status": "submitted" if launched else "done"})
        return 0
    if not args.quiet:
        print(f"sweep {request.sweep_id}: {len(request.configurations())} configuration(s) × {len(request.seeds)} "
              f"seed(s); finished runs are kept (rerun to resume)", file=sys.stderr)

    def on_configuration(done, n, outcome):
        if not args.quiet:
            print(f"  configuration {done}/{n} {outcome}", file=sys.stderr)

    table = sweeps.run(args.workspace, request, on_configuration, yes=args.yes)
    if args.json:
        print_json({"sweep_id": request.sweep_id, "status": sweeps.status(args.workspace, request.sweep_id),
                    "selected": sweeps.selected_settings(args.workspace, request, table),
                    "rows": json.loads(table.to_json(orient="records"))})
    else:
        _print_sweep_table(table, list(request.grid))
    return 0


def _print_sweep_table(table, names: list[str]) -> None:
    from hsfm_core.analysis.seeds import format_mean_std

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


def _print_jobs(workspace, job_list) -> None:
    print(f"{'job':<26} {'status':<9} {'where':<6} {'method':<6} {'epoch':>11} {'val WGA':>8} {'elapsed':>8} "
          f"{'eta':>6}  runs")
    for job in job_list:
        r = _job_row(workspace, job)
        epoch = f"{r['epoch']}/{r['epochs']}" if r["epochs"] else "—"
        print(f"{r['job_id']:<26} {r['status']:<9} {r['executor']:<6} {r['method']:<6} {epoch:>11} "
              f"{pct(r['val_wga']):>8} {seconds(r['elapsed_s']):>8} {seconds(r['eta_s']):>6}  {', '.join(r['runs'])}")
        if r["error"]:
            print(f"{'':<26} error: {r['error']}")
        if r["pending"]:  # Slurm's reason for not starting it, and whether waiting can help
            never = r["pending"]["never_starts"]
            print(f"{'':<26} pending: {r['pending']['reason']}" + (f" — Slurm will not start it: {never}" if never else ""))
        if r["ends_at_time_limit"]:
            print(f"{'':<26} the time limit comes first: {seconds(r['time_left_s'])} left, the epochs need more")


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
        print_json([_job_row(args.workspace, j) for j in job_list] +
                   [{"job_id": u["job_id"], "status": "unreadable", "error": u["error"]} for u in unreadable])
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
    print_json({"job_id": record["job_id"], "status": record["status"], "runs": record["run_ids"]})
    return 0


def add_commands(sub) -> None:
    _add_train(sub)
    _add_sweep(sub)
    _add_jobs(sub)


def print_active_jobs(workspace) -> None:
    """The queued and running jobs under `runs`' listing (nothing when there are none)."""
    from hsfm_core.jobs import ACTIVE, list_jobs

    active = [j for j in list_jobs(workspace) if j["status"] in ACTIVE]
    if active:
        print(f"\n{len(active)} job(s) queued or running:")
        _print_jobs(workspace, active)
