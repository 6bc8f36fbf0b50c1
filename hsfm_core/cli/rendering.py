"""Rendering commands (docs/ARCHITECTURE.md §Render): `render` and `train-renderer`, argparse and
printing over the facade's `instruments/render.py`."""

from __future__ import annotations

import sys

from hsfm_core.cli.common import print_json
from hsfm_core.errors import InputError


def _steps(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--steps {text!r}: expected numbers separated by commas, e.g. 0,0.5,1") from None


def _run_render(args) -> int:
    from hsfm_core.instruments.render import render

    result = render(args.workspace, args.run, args.out, renderer_name=args.renderer, support=args.support,
                    steps=_steps(args.steps), seed=args.seed, weights=args.weights, null_draws=args.null)
    if args.json:
        print_json(result)
        return 0
    print(f"{len(result['images'])} image(s) by the {result['renderer']} renderer in {args.out}")
    for c in result["flip_rate"]["per_class"]:
        print(f"  {c['name']}: rendered attribute flips majority → minority for {c['rate']:.0%} of {c['n']} "
              f"(null edits: {c['null_rate']:.0%})")
    return 0


def _run_train_renderer(args) -> int:
    from hsfm_core.instruments.render import train_renderer

    if args.size < 16 or args.epochs < 1:
        raise InputError("--size must be ≥ 16 and --epochs ≥ 1")
    card = train_renderer(args.workspace, size=args.size, epochs=args.epochs, out=args.out, progress=not args.quiet)
    if not args.quiet:
        print(f"inverter written: {card.get('folder', args.out or 'renderers/inverter')}", file=sys.stderr)
    print_json(card)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("render", help="render a run's original and edited features as images (z + t·Δ), with "
                       "the measured attribute flip rate")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="folder for the PNGs, named s<support>_t<step>.png")
    p.add_argument("--renderer", choices=("inverter", "unclip"), default="inverter")
    p.add_argument("--weights", help="an inverter folder, or the local SD 2.1 unCLIP pipeline folder (unclip)")
    p.add_argument("--support", type=int, nargs="+", metavar="K", help="support examples (default: all)")
    p.add_argument("--steps", default="0,0.5,1", help="values of t, comma-separated (default 0,0.5,1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--null", type=int, default=8, metavar="N", help="null edits per support example (flip rate)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_render)

    p = sub.add_parser("train-renderer", help="train an inverter renderer on a store's own images and features")
    p.add_argument("--workspace", required=True)
    p.add_argument("--size", type=int, default=64, help="rendered image side in pixels")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", help="folder to write (default: WORKSPACE/renderers/inverter)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train_renderer)
