"""Data commands (docs/ARCHITECTURE.md §Store, §Devices, §Demo, §Package): extract, import, demo, app."""

from __future__ import annotations

import sys
from pathlib import Path

from hsfm_core.cli.common import print_json
from hsfm_core.errors import InputError


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
    p.add_argument("--num-workers", type=int, default=None,
                   help="image decoding processes (spawned); 0 = in-process; default: from the device and the usable "
                        "cores (on a GPU one per core but one, at most 8; on the CPU 0)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="the encoder's arithmetic: fp32, or bf16/fp16 autocast (fp16 on a GPU only); recorded in the "
                        "manifest, and shards of different precisions are not merged")
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
        print_json(_store_summary(store))
        return 0
    _check_extract_flags(args)
    shard = parse_shard(args.shard)

    from hsfm_core.data import read_dataset
    from hsfm_core.features.encoders import load_encoder, resolve_device

    table = read_dataset(args.format, args.data, args.csv, **_dataset_options(args))
    device = resolve_device(args.device)
    if args.precision == "fp16" and device.type != "cuda":  # before the encoder is loaded
        raise InputError(f"--precision fp16 needs a GPU, and --device {args.device} runs on the CPU: use bf16 or fp32")
    encoder = load_encoder(args.model, args.pretrained, device)
    store = extract(table, encoder, args.out, device=device, batch_size=args.batch_size,
                    num_workers=args.num_workers, shard=shard, dtype=args.dtype,
                    overwrite=args.overwrite, progress=not args.quiet, precision=args.precision)
    print_json(_store_summary(store))
    return 0


def _check_extract_flags(args) -> None:
    for flag in ("data", "format", "model"):
        if not getattr(args, flag):
            raise InputError(f"extract needs --{flag}")
    if args.batch_size < 1 or (args.num_workers is not None and args.num_workers < 0):
        raise InputError("--batch-size must be ≥ 1 and --num-workers ≥ 0")


def _dataset_options(args) -> dict:
    """The reader's keywords for the dataset's format (CelebA's columns, a CSV's names)."""
    if args.format == "celeba":
        return {"target": args.target, "attribute": args.attribute, "images": args.images}
    if args.format == "csv":
        return {k: v for k, v in (("class_names", args.class_names), ("attribute_names", args.attribute_names)) if v}
    return {}


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
    print_json(_store_summary(store))
    return 0


def _store_summary(store) -> dict:
    from hsfm_core.runs import list_runs

    m = store.manifest
    return {"store": str(Path(store.path).resolve()), "rows": m["n_rows"], "dim": m["dim"], "dtype": m["dtype"],
            "splits": m["splits"], "group_counts": m["group_counts"], "backbone": m["backbone"]["id"],
            "content_hash": m["content_hash"], "runs": [r["run_id"] for r in list_runs(store.path, unreadable=[])]}


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
    print_json({"bundle": str(out), **metrics, "train_seconds": log["train_seconds"],
                "pool_seconds": log["pool_seconds"]}, indent=2)
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
    print_json(clip.evaluate(model, open_clip.get_tokenizer(spec)), indent=2)
    return 0


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="start the Streamlit app (HSFM Studio) from any folder",
                       description="Serve the app (app.py and pages/ of this installation) on HOST:PORT. Without "
                                   "--workspace it opens the bundled demo workspace, building it on first launch.")
    p.add_argument("--workspace", help="a workspace folder to open (default: $HSFM_WORKSPACE, else the demo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser window")
    p.add_argument("--read-only", action="store_true",
                   help="a class watching: hide Retrain and launch nothing from the app (the CLI and API still train)")
    p.add_argument("--jobs-per-session", type=int, metavar="N",
                   help="the most jobs one browser session may have queued or running (default 3)")
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
    if args.jobs_per_session is not None and args.jobs_per_session < 1:
        raise InputError(f"--jobs-per-session must be ≥ 1, got {args.jobs_per_session}")
    script_args = []  # after `--`: read by the app (studio/ui.py: default_workspace, server_settings)
    if args.workspace:
        workspace = Path(args.workspace).expanduser().resolve()
        if not workspace.is_dir():
            raise InputError(f"--workspace {args.workspace}: no such folder")
        script_args += ["--workspace", str(workspace)]
    script_args += ["--read-only"] if args.read_only else []
    script_args += ["--jobs-per-session", str(args.jobs_per_session)] if args.jobs_per_session else []
    if script_args:
        command += ["--", *script_args]
    sys.stdout.flush()
    os.execv(sys.executable, command)  # Streamlit becomes this process: Ctrl-C and kill PID reach it directly
    return 0  # not reached


def add_commands(sub) -> None:
    _add_extract(sub)
    _add_import(sub)
    _add_demo(sub)
    _add_app(sub)
