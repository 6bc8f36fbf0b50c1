"""Analysis commands: argparse and printing over the facade (docs/ARCHITECTURE.md §Instruments).
Each command parses its arguments, calls one instrument of `hsfm_core/instruments/` and prints its
answer as text or JSON (`--json` prints the instrument's dict as the API returns it)."""

from __future__ import annotations

import sys

from hsfm_core.cli.common import pct, print_json

DEFAULT_CONTRAST = ["water background", "land background"]


def _run_eval(args) -> int:
    from hsfm_core.instruments.evaluation import evaluate, run_group_summary
    from hsfm_core.workspace import open_workspace

    ws = open_workspace(args.workspace)
    metrics = evaluate(ws, args.run)
    if args.json:
        print_json(metrics)
        return 0
    run = ws.run(args.run)
    print(f"run {run['run_id']} ({run['method']}, status {run['status']})")
    for split, m in metrics.items():
        print(f"\n{split}: accuracy per group (%), Wilson 95% interval")
        print(f"  {'g':>2}  {'group':<40} {'n':>7} {'acc':>6}  {'95% CI':>13}")
        for g, name in enumerate(ws.store.groups.names):
            lo, hi = m["group_ci"][g]
            ci = "—" if lo is None else f"{pct(lo)}–{pct(hi)}"
            flag = "  ← worst" if g == m["worst_group"] else ""
            print(f"  {g:>2}  {name:<40} {m['group_n'][g]:>7} {pct(m['group_acc'][g]):>6}  {ci:>13}{flag}")
        print(f"  worst-group {pct(m['wga'])} · plain average {pct(m['avg_plain'])} · adjusted average "
              f"(train group weights) {pct(m['avg_adjusted'])} · mean over groups {pct(m['mean_group'])}")
    _print_run_group(run_group_summary(ws, run), ws.store.groups.names)
    return 0


def _print_run_group(group: dict | None, names: list[str]) -> None:
    """The run's group (same settings, other seeds): per-group mean ± std when ≥ 2 seeds finished."""
    from hsfm_core.analysis.seeds import format_mean_std

    for split in ("val", "test"):
        agg = group[split] if group else {"n": 0}
        if agg["n"] < 2:
            continue
        print(f"\n{split}, run group {group['name']} ({agg['n']} seeds: {agg['seeds']}): mean ± sample std (%)")
        for g, name in enumerate(names):
            print(f"  {g:>2}  {name:<40} {format_mean_std(agg['group_acc']['mean'][g], agg['group_acc']['std'][g]):>14}")
        print(f"  worst-group {format_mean_std(**agg['wga'])} · adjusted average {format_mean_std(**agg['avg_adjusted'])}"
              f" · plain average {format_mean_std(**agg['avg_plain'])}")


def _run_runs(args) -> int:
    from hsfm_core.instruments.tables import runs_overview

    overview = runs_overview(args.workspace)
    if args.json:
        print_json(overview)
        return 0
    print(f"{'run':<44} {'method':<6} {'status':<9} {'seed':>4} {'test WGA':>9} {'test adj. avg':>13} {'val WGA':>8}")
    for r in overview["runs"]:
        print(f"{r['run_id']:<44} {r['method'] or '?':<6} {r['status']:<9} {str(r['seed']):>4} "
              f"{pct(r['test_wga']):>9} {pct(r['test_avg_adjusted']):>13} {pct(r['val_wga']):>8}")
    for u in overview["unreadable"]:
        print(f"{u['run_id']:<44} unreadable: {u['reason']}")
    if not overview["runs"] and not overview["unreadable"]:
        print("(no runs yet: python -m hsfm_core train --workspace … --method …)")
    if any(g["seeds"] > 1 for g in overview["groups"]):
        _print_groups(overview["groups"])
    from hsfm_core.cli.training import print_active_jobs

    print_active_jobs(args.workspace)
    return 0


def _print_groups(groups: list[dict]) -> None:
    from hsfm_core.analysis.seeds import format_mean_std

    print("\nrun groups (same settings, different seeds): mean ± sample std over finished seeds, %")
    print(f"  {'group':<52} {'seeds':>5} {'test WGA':>12} {'test adj. avg':>13} {'val WGA':>12}")
    for g in groups:
        print(f"  {g['group'][:52]:<52} {g['seeds']:>5} {format_mean_std(**g['test']['wga']):>12} "
              f"{format_mean_std(**g['test']['avg_adjusted']):>13} {format_mean_std(**g['val']['wga']):>12}")


def _run_table(args) -> int:
    from hsfm_core.fsutil import write_text_atomic
    from hsfm_core.instruments.tables import summary_table
    from hsfm_core.workspace import open_workspace

    ws = open_workspace(args.workspace)
    runs, unreadable = ws.read_runs()
    for run_id, why in unreadable:
        print(f"warning: run {run_id} left out: {why}", file=sys.stderr)
    text = summary_table(ws, args.split, runs=runs, fmt=args.format)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        print(text, end="")
    return 0


def _run_project(args) -> int:
    from hsfm_core.instruments.projection import project_map

    print_json(project_map(args.workspace, args.run, split=args.split, n_neighbors=args.n_neighbors,
                           min_dist=args.min_dist))
    return 0


def _run_neighbors(args) -> int:
    from hsfm_core.instruments.retrieval import neighbors

    print_json(neighbors(args.workspace, args.run, args.support, row=args.row, edited=args.edited, k=args.k,
                         exclude_query=args.exclude_query))
    return 0


def _run_edit_shift(args) -> int:
    from hsfm_core.instruments.retrieval import edit_shift

    print_json(edit_shift(args.workspace, args.run, k=args.k))
    return 0


def _run_decode(args) -> int:
    from hsfm_core.instruments.decode import decode

    print_json(decode(args.workspace, args.run, concepts=args.concepts, top=args.top, contrast=tuple(args.contrast),
                      bridge=args.bridge, support=args.support))
    return 0


def _run_semantics(args) -> int:
    from hsfm_core.instruments.semantics import edit_semantics

    result = edit_semantics(args.workspace, args.runs, group=args.group, concepts=args.concepts,
                            contrast=tuple(args.contrast), null_draws=args.null, alpha=args.alpha, seed=args.seed,
                            scoring=args.scoring, bridge=args.bridge)
    if args.json:
        print_json(result)
    else:
        _print_semantics(result)
    return 0


def _signed(x) -> str:
    return "—" if x is None else f"{x:+.3f}"


def _print_semantics(result: dict) -> None:
    print(f"{len(result['runs'])} run(s), seeds {result['seeds']}; {result['scoring']} scoring; null: "
          f"{result['null_draws']} draws; α = {result['alpha']}")
    for c in result["per_class"]:
        align, agree = c["attribute_alignment"], c["mean_edit_agreement"]
        print(f"\n{c['name']}: {c['verdict'] or 'no attribute labels'} — {c['verdict_rule']}")
        if align:
            print(f"  alignment with the attribute direction {_signed(align['mean'])} ± {align['std'] or 0:.3f} "
                  f"(per seed {', '.join(_signed(v) for v in align['per_seed'])}; p {align['p_value']:.3g}, "
                  f"sign agreement {align['sign_agreement']:.0%})")
        print(f"  mean edits across seeds: cosine {_signed(agree['mean_cosine'])} (min {_signed(agree['min_cosine'])},"
              f" chance ±{agree['chance']:.3f})")
        if c.get("contrast"):
            k = c["contrast"]
            print(f"  “{k['positive']}” − “{k['negative']}”: {_signed(k['mean'])} ± {k['std'] or 0:.3f}, "
                  f"p {k['p_value']:.3g}")
        kept = c.get("concepts") or []  # the significant ones, agreeing in sign over the seeds
        print("  concepts (significant, seeds agreeing in sign): " +
              (", ".join(f"{k['concept']} {_signed(k['mean'])} (q {k['q_value']:.2g})" for k in kept[:8]) or "none"))
        if c.get("sparse"):
            print("  sparse explanation: " + ", ".join(f"{k['concept']} {k['weight']:.2f}" for k in c["sparse"]["concepts"])
                  + f" (cosine {_signed(c['sparse']['cosine'])})")


def add_commands(sub) -> None:
    p = sub.add_parser("semantics", help="what a run group's edits encode: verdicts, concepts and alignment "
                       "against a null, across seeds")
    p.add_argument("--workspace", required=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--group", help="a run group's name, as `runs` lists it (default: the newest edited one)")
    which.add_argument("--runs", nargs="+", metavar="ID", help="the seeds of one configuration")
    p.add_argument("--concepts", help="concept file (default: assets/concepts.txt)")
    p.add_argument("--contrast", nargs=2, metavar=("POSITIVE", "NEGATIVE"), default=DEFAULT_CONTRAST)
    p.add_argument("--null", type=int, default=1000, metavar="N", help="null draws per run and class (≥ 100)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="seeds the null draws")
    p.add_argument("--scoring", choices=("centred", "raw"), default="centred",
                   help="centred: the bank's mean removed and class names projected out (default); raw cosines")
    p.add_argument("--bridge", help="a CLIP store of the same images, for stores not in a CLIP space")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_semantics)

    p = sub.add_parser("eval", help="per-group table of a run on val and test")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.set_defaults(func=_run_eval)

    p = sub.add_parser("runs", help="list a workspace's runs with their test WGA and adjusted average")
    p.add_argument("--workspace", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_runs)

    p = sub.add_parser("table", help="the run groups as a paper-style table: WGA and adjusted average, "
                       "mean ± std and seeds per method")
    p.add_argument("--workspace", required=True)
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--format", default="markdown", choices=("markdown", "latex", "csv"))
    p.add_argument("--out", help="write to this file (atomically) instead of stdout")
    p.set_defaults(func=_run_table)

    p = sub.add_parser("neighbors", help="nearest real images (FAISS, cosine) to a support example or a row, JSON")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", help="the run whose support example (or edited row) is the query")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--support", type=int, help="support example 0..2n-1 of --run")
    query.add_argument("--row", type=int, help="a store row's own feature (with --edited: its edit in --run)")
    p.add_argument("--edited", action="store_true", help="query with the edited feature instead of the original")
    p.add_argument("--exclude-query", action="store_true", help="leave the query's own row out of its neighbours")
    p.add_argument("-k", type=int, default=16)
    p.set_defaults(func=_run_neighbors)

    p = sub.add_parser("edit-shift", help="share of nearest neighbours with the other attribute, before/after, JSON")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("-k", type=int, default=16)
    p.set_defaults(func=_run_edit_shift)

    p = sub.add_parser("decode", help="score a run's edit directions against CLIP text concepts, JSON")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--concepts", help="concept file (default: assets/concepts.txt)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--contrast", nargs=2, metavar=("POSITIVE", "NEGATIVE"), default=DEFAULT_CONTRAST)
    p.add_argument("--bridge", help="a CLIP store of the same images, for stores not in a CLIP space")
    p.add_argument("--support", type=int, nargs="+", help="also score the mean edit of these support examples")
    p.set_defaults(func=_run_decode)

    p = sub.add_parser("project", help="UMAP map of a workspace (+ a run's edits); prints the coordinates file, JSON")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", help="add this run's edited support points and its correctness")
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split (default: all rows)")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.set_defaults(func=_run_project)
