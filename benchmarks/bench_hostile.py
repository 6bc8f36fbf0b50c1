"""Hostile inputs and faults against the CLI (issues 12 and 26): how many end as a clear error or a correct recovery.

    python -m benchmarks.bench_hostile [--rounds 20] [--skip-slow]

Every case damages a copy of a small workspace (or writes a bad cache, dataset or checkpoint) and
runs the CLI's entry point (`hsfm_core.cli.main`, in-process: what `python -m hsfm_core` runs). A
case passes when it ends as `error: …` with exit status 2 (a clear error), or, where the README
promises a recovery, when that recovery happened (e.g. `runs` lists the good runs and names the bad
one). Anything else — another exception (a traceback), exit 0 on bad input, a wrong recovery — is
counted as a failure and printed. Then: a SIGKILLed `train`, two writers at once without
`--overwrite`, and the stress of 2 spawned writers × `--rounds` overwrites with a reader that
recomputes the content hash of every store it opens (mixed opens: target 0).

Issue 26's classes (`sweep_job_cases`, and `sweep_process_cases` unless --skip-slow): seeds out of
range, bad job settings, valid JSON of the wrong types in a sweep's request, a job's record and a run's
process record, sweep ids that climb out of the workspace, `table --out` where nothing can be written, a
NUL byte in an image path, NaN in metrics, a missing workspace, a key both set and swept, a grid over
the size cap, a validation group with too few rows, features that overflow float32, a NaN head; then a
SIGKILLed foreground sweep (orphans, its status), `--submit local` beside a foreground run of the same
sweep, and the process count of a queued `--submit local` sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hsfm_core.cli import main  # noqa: E402
from hsfm_core.errors import InputError  # noqa: E402
from tests.test_reliability import (dfr_npz, reference_folder, rewrite_manifest, rewrite_meta,  # noqa: E402
                                    run_of, run_writer_stress)
from tests.test_reliability2 import (kill_processes, processes_mentioning, registered_job,  # noqa: E402
                                     rewrite_json, start_foreground_sweep, stop_group, store_with_val_rows,
                                     training_runs)
from tests.helpers import wait_for  # noqa: E402


def call(argv) -> tuple[int | str, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # noqa: BLE001  (what we count: a traceback)
            code = f"traceback {type(exc).__name__}: {str(exc)[:120]}"
    return code, out.getvalue(), err.getvalue()


def _ends_in_error(err: str) -> bool:
    """A clear error: the command's last line on stderr is `error: …` (a sweep prints its plan before)."""
    lines = err.strip().splitlines()
    return bool(lines) and lines[-1].startswith("error: ") and "Traceback" not in err


class Tally:
    def __init__(self):
        self.rows: list[tuple[str, str, bool, str]] = []

    def error(self, name: str, argv) -> None:
        code, _, err = call(argv)
        ok = code == 2 and _ends_in_error(err)
        self.rows.append((name, "error", ok, err.strip().splitlines()[-1][:150] if err.strip() else str(code)))

    def recovery(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, "recovery", bool(ok), detail[:150]))


def base_workspace(folder: Path) -> Path:
    from hsfm_core.train import train
    from tests.gaussian import TINY_HSFM, gaussian_workspace

    ws = folder / "base"
    gaussian_workspace(ws, d=8, sizes=(200, 100, 100))
    train(ws, "hsfm", overrides=TINY_HSFM)
    train(ws, "erm")
    return ws


def copy(base: Path, folder: Path, name: str) -> Path:
    target = folder / name
    shutil.copytree(base, target)
    return target


def run_cases(t: Tally, base: Path, tmp: Path) -> None:
    from hsfm_core.features import FeatureStore

    n = iter(range(10_000))

    def fresh() -> Path:
        return copy(base, tmp, f"ws{next(n)}")

    # -- 2. corrupt run files: `runs` (text and --json) recovers, `eval` of the bad run is an error
    for label, file, content in (("metrics {x", "metrics.json", b"{x"), ("metrics [1,2]", "metrics.json", b"[1,2]"),
                                 ("config invalid", "config.json", b'{"method": '),
                                 ("config a list", "config.json", b"[]"),
                                 ("status not UTF-8", "status", b"\xff\xfe\x00"), ("status unknown", "status", b"weird"),
                                 ("metrics wga a string", "metrics.json", b'{"val": {"wga": "high"}}')):
        ws = fresh()
        bad = run_of(ws, "erm")
        (bad / file).write_bytes(content)
        code, out, _ = call(["runs", "--workspace", ws])
        t.recovery(f"runs with {label}", code == 0 and run_of(ws, "hsfm").name in out and "unreadable" in out
                   and bad.name in out, f"exit {code}")
        code, out, _ = call(["runs", "--workspace", ws, "--json"])
        good = code == 0 and json.loads(out)["unreadable"][0]["run_id"] == bad.name if code == 0 else False
        t.recovery(f"runs --json with {label}", good, f"exit {code}")
        t.error(f"eval of a run with {label}", ["eval", "--workspace", ws, "--run", bad.name])

    # -- 3. damaged tensors
    for label, damage in (("truncated", lambda p: p.write_bytes(p.read_bytes()[:40])),
                          ("without weight", lambda p: save_file({"bias": torch.zeros(2)}, p)),
                          ("weight of another shape", lambda p: save_file({"weight": torch.zeros(2, 3),
                                                                           "bias": torch.zeros(2)}, p)),
                          ("empty", lambda p: p.write_bytes(b""))):
        for command in ("eval", "project"):
            ws = fresh()
            run = run_of(ws, "hsfm")
            damage(run / "head.safetensors")
            t.error(f"{command}: head.safetensors {label}", [command, "--workspace", ws, "--run", run.name])
    for label, damage in (("truncated", lambda p: p.write_bytes(p.read_bytes()[:100])),
                          ("without after", lambda p: save_file({k: v for k, v in load_file(p).items() if k != "after"}, p)),
                          ("indices outside the store", lambda p: save_file(
                              {**load_file(p), "indices": load_file(p)["indices"] + 10_000}, p)),
                          ("float labels", lambda p: save_file({**load_file(p), "labels": load_file(p)["labels"].float()}, p))):
        for command in (["neighbors", "--support", "0"], ["decode"], ["edit-shift"]):
            ws = fresh()
            run = run_of(ws, "hsfm")
            damage(run / "support.safetensors")
            t.error(f"{command[0]}: support.safetensors {label}",
                    [command[0], "--workspace", ws, "--run", run.name, *command[1:]])

    # -- 4. manifests
    for label, change in (("n_rows missing", lambda m: m.pop("n_rows")), ("n_rows [1,2,3]", lambda m: m.update(n_rows=[1, 2, 3])),
                          ("dim a string", lambda m: m.update(dim="8")), ("class_names a string", lambda m: m.update(class_names="ab")),
                          ("one class", lambda m: m.update(class_names=["x"])), ("splits wrong", lambda m: m.update(splits={"train": -1})),
                          ("group_counts wrong", lambda m: m.update(group_counts={"train": [1]})),
                          ("backbone missing", lambda m: m.pop("backbone")), ("format wrong", lambda m: m.update(format="x")),
                          ("dtype unknown", lambda m: m.update(dtype="int8")), ("n_rows true", lambda m: m.update(n_rows=True))):
        ws = fresh()
        rewrite_manifest(ws, change)
        t.error(f"manifest: {label}", ["eval", "--workspace", ws, "--run", run_of(ws, "erm").name])
    for label, data in (("{x", b"{x"), ("a list", b"[1]"), ("not UTF-8", b"\xff{}"), ("empty", b"")):
        ws = fresh()
        (ws / "manifest.json").write_bytes(data)
        t.error(f"manifest: {label}", ["eval", "--workspace", ws, "--run", run_of(ws, "erm").name])

    # -- 5. meta.parquet, features.npy
    def meta_case(label, change):
        ws = fresh()
        meta = FeatureStore.open(ws).meta.copy()
        changed = change(meta)
        rewrite_meta(ws, changed if isinstance(changed, pd.DataFrame) else meta)
        t.error(f"meta: {label}", ["eval", "--workspace", ws, "--run", run_of(ws, "erm").name])

    val = lambda m: m["split"] == "val"  # noqa: E731
    meta_case("val g = 3 − g", lambda m: m.__setitem__("g", np.where(val(m), 3 - m["g"], m["g"])))
    meta_case("y = 5", lambda m: m.__setitem__("y", np.where(m.index == 250, 5, m["y"])))
    meta_case("a = 7", lambda m: m.__setitem__("a", np.where(m.index == 3, 7, m["a"])))
    meta_case("split 'validation'", lambda m: m.__setitem__("split", np.where(val(m), "validation", m["split"])))
    meta_case("row ids not contiguous", lambda m: m.__setitem__("row_id", m["row_id"] * 2))
    meta_case("absolute image path", lambda m: m.__setitem__("image_path", ["/etc/passwd"] + [f"{i}.png" for i in range(1, len(m))]))
    meta_case("image path ../outside/x.png", lambda m: m.__setitem__("image_path", ["../outside/x.png"] + [f"{i}.png" for i in range(1, len(m))]))
    meta_case("duplicate sample ids", lambda m: m.__setitem__("sample_id", ["same"] * len(m)))
    meta_case("duplicate image paths", lambda m: m.__setitem__("image_path", ["x.png"] * len(m)))
    meta_case("float labels", lambda m: m.__setitem__("y", m["y"].astype(float)))
    meta_case("column g missing", lambda m: m.drop(columns="g"))
    meta_case("one row missing", lambda m: m.drop(index=m.index[-1]))
    ws = fresh()
    other = tmp / f"other{next(n)}"
    from tests.gaussian import gaussian_workspace

    gaussian_workspace(other, d=8, sizes=(200, 100, 100), seed=1)
    shutil.copy(other / "meta.parquet", ws / "meta.parquet")
    t.error("meta: from another write (a mixed store)", ["eval", "--workspace", ws, "--run", run_of(ws, "erm").name])
    for label, damage in (("meta truncated", lambda ws: (ws / "meta.parquet").write_bytes((ws / "meta.parquet").read_bytes()[:200])),
                          ("features truncated", lambda ws: (ws / "features.npy").write_bytes((ws / "features.npy").read_bytes()[:300])),
                          ("features of another shape", lambda ws: np.save(ws / "features.npy", np.zeros((3, 8), np.float32))),
                          ("features missing", lambda ws: (ws / "features.npy").unlink()),
                          ("features a pickle", lambda ws: np.save(ws / "features.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True))):
        ws = fresh()
        damage(ws)
        t.error(f"store: {label}", ["eval", "--workspace", ws, "--run", run_of(ws, "erm").name])

    # -- 8, 10, 11: bad caches
    def imp(label, kind, path):
        t.error(f"import {kind}: {label}", ["import", "--from", kind, "--path", path, "--out", tmp / f"imp{next(n)}"])

    good = dfr_npz(tmp / "good.npz")
    (tmp / "trunc.npz").write_bytes(good.read_bytes()[:400])
    imp("truncated .npz", "dfr", tmp / "trunc.npz")
    (tmp / "junk.npz").write_bytes(b"junk")
    imp("not a zip", "dfr", tmp / "junk.npz")
    labels = np.array([0, 0, 1, 1] * 2, float)
    imp("float labels 1.9", "dfr", dfr_npz(tmp / "f.npz", y_train=np.where(np.arange(8) == 1, 1.9, labels)))
    imp("NaN label", "dfr", dfr_npz(tmp / "nan.npz", y_val=np.where(np.arange(8) == 2, np.nan, labels)))
    imp("complex embeddings", "dfr", dfr_npz(tmp / "c.npz", embeddings_val=np.ones((8, 4), np.complex64) * (1 + 2j)))
    imp("object arrays (a pickle)", "dfr", _object_npz(tmp / "obj.npz"))
    imp("labels of another length", "dfr", dfr_npz(tmp / "len.npz", y_test=np.zeros(7, int)))
    imp("g ≠ 2·y + p", "dfr", dfr_npz(tmp / "g.npz", g_val=np.zeros(8, int)))
    imp("split without p", "dfr", _drop(dfr_npz(tmp / "nop.npz"), "p_val"))
    imp("labels and features differ in rows", "reference",
        reference_folder(tmp / "r1", val={"labels": torch.tensor([0, 0, 1, 1, 0, 1, 0])}))
    imp("labels 0.5", "reference", reference_folder(tmp / "r2", val={"labels": torch.tensor([0.5, 0, 1, 1, 0, 0, 1, 1])}))
    imp("complex features", "reference", reference_folder(tmp / "r3", val={"features": torch.ones(8, 4, dtype=torch.complex64)}))
    run = {"theta": {"weight": [[1.0] * 4] * 2, "bias": torch.zeros(2)}, "support_emb": torch.randn(2, 4),
           "support_init": torch.randn(2, 4), "support_labels": torch.tensor([0, 1]), "init_indices": torch.tensor([0, 1])}
    imp("theta.weight a list", "reference", reference_folder(tmp / "r4", run=run))
    imp("support labels NaN", "reference", reference_folder(tmp / "r5", run={**run, "theta": {
        "weight": torch.randn(2, 4), "bias": torch.zeros(2)}, "support_labels": torch.tensor([0.0, float("nan")])}))
    imp("theta of another shape", "reference", reference_folder(tmp / "r6", run={**run, "theta": {
        "weight": torch.randn(3, 4), "bias": torch.zeros(3)}}))
    folder = reference_folder(tmp / "r7")
    torch.save({"features": torch.nn.Linear(2, 2)}, folder / "val_features.pt")
    imp("a pickled module", "reference", folder)
    folder = reference_folder(tmp / "r8")
    (folder / "test_features.pt").write_bytes((folder / "test_features.pt").read_bytes()[:100])
    imp("truncated .pt", "reference", folder)

    # -- 11: a missing workspace; umask
    t.error("runs of a missing workspace", ["runs", "--workspace", tmp / "does" / "not" / "exist"])
    t.error("eval of an unknown run", ["eval", "--workspace", fresh(), "--run", "nope"])
    ws = fresh()
    old = os.umask(0o022)
    try:
        code, _, _ = call(["train", "--workspace", ws, "--method", "erm", "--quiet"])
    finally:
        os.umask(old)
    newest = sorted((ws / "runs").iterdir())[-1]
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (ws / "manifest.json", newest / "config.json", newest / "status")}
    t.recovery("files follow the umask (022 → 0644)", code == 0 and set(modes.values()) == {"0o644"}, str(modes))


def _object_npz(path: Path) -> Path:
    arrays = dict(np.load(dfr_npz(path.with_suffix(".tmp.npz"))))
    arrays["y_val"] = np.array([0, 0, 1, 1, 0, 0, 1, {"x": 1}], dtype=object)
    np.savez(path, **arrays)
    return path


def _drop(path: Path, key: str) -> Path:
    arrays = dict(np.load(path))
    arrays.pop(key)
    np.savez(path, **arrays)
    return path


def dataset_cases(t: Tally, tmp: Path) -> None:
    """Bad datasets under `extract` (with a tiny random CLIP): each refused before or during encoding,
    and a failed extraction leaves no --out behind."""
    from tests.helpers import make_generic_csv, make_tiny_clip

    model = f"local-dir:{make_tiny_clip(tmp / 'clip')}"
    n = iter(range(1000))

    def case(label, damage, check_out=False):
        data = tmp / f"data{next(n)}"
        csv = make_generic_csv(data, counts={"train": (2, 1, 1, 2), "val": (1, 1, 1, 1), "test": (1, 1, 1, 1)})
        frame = pd.read_csv(csv, dtype=str)
        damage(data, csv, frame)
        out = tmp / f"out{next(n)}"
        t.error(f"extract: {label}", ["extract", "--data", data, "--csv", csv, "--format", "csv", "--model", model,
                                      "--out", out, "--quiet"])
        if check_out:
            t.recovery(f"extract: {label} leaves no --out", not out.exists(), str(out.exists()))

    def rewrite(csv, frame):
        frame.to_csv(csv, index=False)

    case("duplicate ids", lambda d, c, f: rewrite(c, f.assign(id=["same"] * len(f))))
    case("the same image twice", lambda d, c, f: rewrite(c, f.assign(filename=[f["filename"][0]] * len(f))))
    case("absolute image path", lambda d, c, f: rewrite(c, f.assign(filename=["/etc/hostname"] + list(f["filename"][1:]))))
    case("image path ../x.png", lambda d, c, f: rewrite(c, f.assign(filename=["../x.png"] + list(f["filename"][1:]))))
    case("a NaN label", lambda d, c, f: rewrite(c, f.assign(y=["nan"] + list(f["y"][1:]))))
    case("split 'validation'", lambda d, c, f: rewrite(c, f.assign(split=["validation"] + list(f["split"][1:]))))
    case("CSV not UTF-8", lambda d, c, f: c.write_bytes(c.read_bytes() + b"\xff\xfe,\xff\n"))
    case("column y missing", lambda d, c, f: rewrite(c, f.drop(columns="y")))

    def symlink_out(d, c, f):
        outside = tmp / f"secret{next(n)}.png"
        Image.new("RGB", (8, 8)).save(outside)
        (d / f["filename"][0]).unlink()
        os.symlink(outside, d / f["filename"][0])
    case("a symlink out of the dataset folder", symlink_out)

    def bomb(d, c, f):
        Image.new("1", (14000, 14000)).save(d / f["filename"][0], optimize=True)  # ~0.2 MB, 196 Mpixels
    case("a 14000 × 14000 PNG (decompression bomb)", bomb, check_out=True)

    def truncated(d, c, f):
        p = d / f["filename"][0]
        p.write_bytes(p.read_bytes()[:60])  # the header parses; the pixels do not
    case("a truncated image (fails while encoding)", truncated, check_out=True)
    case("an image that is not one", lambda d, c, f: (d / f["filename"][0]).write_bytes(b"not a png"))
    case("an image path with a NUL byte (issue 26)",
         lambda d, c, f: rewrite(c, f.assign(filename=[f["filename"][0] + "\x00.png"] + list(f["filename"][1:]))))


def killed_trainer(t: Tally, base: Path, tmp: Path) -> None:
    from hsfm_core.runs import list_runs

    ws = copy(base, tmp, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "hsfm_core", "train", "--workspace", str(ws), "--method", "hsfm",
                             "--set", "epochs=100000", "--quiet"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run, deadline = None, time.time() + 180
    while run is None and time.time() < deadline:
        running = [r for r in list_runs(ws) if r["status"] == "running"]
        run = running[0] if running and (running[0]["path"] / "history.jsonl").stat().st_size else None
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    code, out, _ = call(["runs", "--workspace", ws, "--json"])
    status = next((r["status"] for r in json.loads(out)["runs"] if run and r["run_id"] == run["run_id"]), None)
    t.recovery("SIGKILLed train is shown failed", status == "failed", f"status {status}")


def concurrent_without_overwrite(t: Tally, tmp: Path) -> None:
    out = tmp / "race"
    npz = dfr_npz(tmp / "race-a.npz")
    procs = [subprocess.Popen([sys.executable, "-m", "hsfm_core", "import", "--from", "dfr", "--path", str(npz),
                               "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    t.recovery("two `import --out SAME` at once without --overwrite: one writes, the other is told to --overwrite",
               codes == [0, 2] and any("pass --overwrite" in e for _, e in results), f"exit codes {codes}")


# -- issue 26 -------------------------------------------------------------------------------------------

def _standard_json(text: str) -> bool:
    """Whether `text` is standard JSON (no NaN or Infinity)."""
    def refuse(constant):
        raise ValueError(constant)
    try:
        json.loads(text, parse_constant=refuse)
        return True
    except ValueError:
        return False


def sweep_job_cases(t: Tally, base: Path, tmp: Path) -> None:
    """Issue 26's input classes, in-process through the CLI's entry point (and the readers the app calls)."""
    from hsfm_core import sweeps

    n = iter(range(10_000))

    def fresh() -> Path:
        return copy(base, tmp, f"s{next(n)}")

    def new_runs(ws: Path, before: set) -> set:
        return {p.name for p in (ws / "runs").iterdir()} - before

    # 5. seeds out of range: refused before any run folder exists
    for label, argv in (("train erm --seeds 2**32", ["train", "--method", "erm", "--seeds", 2**32]),
                        ("train dfr --seeds 2**63", ["train", "--method", "dfr", "--seeds", 2**63]),
                        ("train afr --seeds 2**32 (torch)", ["train", "--method", "afr", "--seeds", 2**32]),
                        ("sweep dfr --seeds 2**32", ["sweep", "--method", "dfr", "--grid", "n_refits=1,2", "--seeds",
                                                     2**32, "--max-parallel", "1"])):
        ws = fresh()
        before = {p.name for p in (ws / "runs").iterdir()}
        t.error(f"seeds: {label}", [argv[0], "--workspace", ws, *argv[1:]])
        t.recovery(f"seeds: {label} leaves no run folder", not new_runs(ws, before), str(sorted(new_runs(ws, before))))

    # 6. jobs/settings.json with a bad job limit
    for label, text in (("max_parallel 0", '{"max_parallel": 0}'), ("max_parallel -3", '{"max_parallel": -3}'),
                        ("max_parallel 'two'", '{"max_parallel": "two"}'), ("max_parallel true", '{"max_parallel": true}'),
                        ("a list", "[2]"), ("not JSON", "{x")):
        ws = fresh()
        (ws / "jobs").mkdir(exist_ok=True)
        (ws / "jobs" / "settings.json").write_text(text)
        t.error(f"jobs/settings.json {label}: sweep", ["sweep", "--workspace", ws, "--method", "dfr", "--grid",
                                                       "n_refits=1,2", "--seeds", "0"])

    # 7a. a sweep's request.json: valid JSON, wrong types
    for label, change in (("grid 5", lambda r: r.update(grid=5)), ("grid values a string", lambda r: r.update(grid={"n_refits": "12"})),
                          ("seeds a string", lambda r: r.update(seeds="01")), ("seeds [true]", lambda r: r.update(seeds=[True])),
                          ("method 7", lambda r: r.update(method=7)), ("overrides {}", lambda r: r.update(overrides={})),
                          ("max_parallel 'x'", lambda r: r.update(max_parallel="x")), ("a list", None)):
        ws = fresh()
        good = sweeps.create(ws, sweeps.SweepRequest(method="erm", grid={"C": [1.0, 2.0]}, seeds=(0,)))
        bad = sweeps.create(ws, sweeps.SweepRequest(method="dfr", grid={"n_refits": [1, 2]}, seeds=(0,)))
        if change is None:
            (bad / "request.json").write_text("[1, 2]")
        else:
            rewrite_json(bad / "request.json", change)
        t.error(f"sweep request.json {label}: sweep --cancel", ["sweep", "--workspace", ws, "--method", "dfr",
                                                                "--cancel", bad.name])
        try:
            listed = sweeps.list_sweeps(ws)
            ok = [s["sweep_id"] for s in listed if "error" not in s] == [good.name] and \
                any(s["sweep_id"] == bad.name and "error" in s for s in listed)
            try:
                sweeps.progress(ws, bad.name)
                ok = False
            except InputError:
                pass
            detail = "listed"
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f"traceback {type(exc).__name__}: {exc}"
        t.recovery(f"sweep request.json {label}: list_sweeps names it, lists the other (the Retrain page)", ok, detail)

    # 7b. a job's job.json: valid JSON, wrong types
    for label, change in (("run_ids 5", lambda r: r.update(run_ids=5)), ("spec a list", lambda r: r.update(spec=[])),
                          ("controller.pid 'abc'", lambda r: r.update(controller={"pid": "abc", "started": 1.0, "host": socket.gethostname()}, submitit_job_id="1")),
                          ("controller.pid -5", lambda r: r.update(controller={"pid": -5, "started": 1.0, "host": socket.gethostname()}, submitit_job_id="1")),
                          ("created_t a string", lambda r: r.update(created_t="yesterday")),
                          ("submitit_folder 3", lambda r: r.update(submitit_folder=3, submitit_job_id="1")),
                          ("ended a string", lambda r: r.update(ended="done"))):
        ws = fresh()
        good = registered_job(ws)
        bad = registered_job(ws)
        rewrite_json(bad / "job.json", change)
        t.error(f"job.json {label}: cancel", ["cancel", "--workspace", ws, bad.name, "--wait", "0"])
        t.error(f"job.json {label}: jobs --log", ["jobs", "--workspace", ws, "--log", bad.name])
        code, out, err = call(["jobs", "--workspace", ws, "--json"])
        try:
            rows = json.loads(out) if code == 0 else []
        except ValueError:
            rows = []
        t.recovery(f"job.json {label}: jobs lists the good job and names the bad one",
                   code == 0 and {r["job_id"]: r["status"] for r in rows}.get(bad.name) == "unreadable"
                   and good.name in {r["job_id"] for r in rows}, f"exit {code} {err.strip()[-120:]}")

    # 7c. a run's process.json: valid JSON, wrong types (on a run that says it is running)
    for label, record in (("pid -5", {"pid": -5, "started": 1.0, "host": socket.gethostname()}),
                          ("pid 'abc'", {"pid": "abc", "started": 1.0, "host": socket.gethostname()}),
                          ("pid 10**30", {"pid": 10**30, "started": 1.0, "host": socket.gethostname()}),
                          ("started 'x'", {"pid": os.getpid(), "started": "x", "host": socket.gethostname()}),
                          ("host 5", {"pid": os.getpid(), "started": 1.0, "host": 5})):
        ws = fresh()
        bad = run_of(ws, "erm")
        (bad / "status").write_text("running\n")
        (bad / "process.json").write_text(json.dumps(record))
        code, out, err = call(["runs", "--workspace", ws, "--json"])
        try:
            listing = json.loads(out) if code == 0 else {}
        except ValueError:
            listing = {}
        good = run_of(ws, "hsfm").name
        t.recovery(f"process.json {label}: runs --json lists the other runs",
                   good in [r["run_id"] for r in listing.get("runs", [])], f"exit {code} {err.strip()[-120:]}")
        code, _, err = call(["train", "--workspace", ws, "--method", "erm", "--quiet"])
        t.recovery(f"process.json {label}: train still trains", code == 0, f"exit {code} {err.strip()[-120:]}")

    # 8. sweep ids that climb out of the workspace
    ws, other = fresh(), fresh()
    target = sweeps.create(other, sweeps.SweepRequest(method="erm", grid={"C": [1.0, 2.0]}, seeds=(0,)))
    for label, sweep_id in (("../../other/sweeps/<id>", f"../../{other.name}/sweeps/{target.name}"),
                            ("an absolute path", str(target)), ("..", "..")):
        t.error(f"sweep --cancel {label}", ["sweep", "--workspace", ws, "--method", "erm", "--cancel", sweep_id])
    t.recovery("sweep --cancel of another workspace's sweep writes no flag there", not (target / "cancel").exists(),
               str((target / "cancel").exists()))

    # 9. table --out where nothing can be written
    ws = fresh()
    (tmp / "a-file").write_text("x")
    for label, out in (("a folder", tmp), ("under a missing folder of /proc", "/proc/nope/table.md"),
                       ("under a file", tmp / "a-file" / "table.md")):
        t.error(f"table --out {label}", ["table", "--workspace", ws, "--out", out])

    # 11. metrics.json with NaN or Infinity: `runs --json` prints standard JSON
    for label, change in (("NaN", lambda m: m["val"].update(wga=float("nan"))),
                          ("Infinity", lambda m: m["test"].update(wga=float("inf"), avg_adjusted=float("-inf"))),
                          ("NaN in group_acc", lambda m: m["test"]["group_acc"].__setitem__(0, float("nan"))),
                          ("no group_acc", lambda m: m["test"].pop("group_acc"))):
        ws = fresh()
        rewrite_json(run_of(ws, "erm") / "metrics.json", change)
        code, out, _ = call(["runs", "--workspace", ws, "--json"])
        t.recovery(f"metrics.json with {label}: runs --json prints standard JSON",
                   code == 0 and _standard_json(out) and run_of(ws, "hsfm").name in out, f"exit {code}")

    # 12. a missing workspace is not created; a key both set and swept is refused
    missing = tmp / "does-not-exist"
    t.error("sweep --workspace DOES_NOT_EXIST", ["sweep", "--workspace", missing, "--method", "dfr", "--grid", "n_refits=1,2"])
    t.recovery("sweep --workspace DOES_NOT_EXIST creates nothing", not missing.exists(), str(missing.exists()))
    ws = fresh()
    t.error("sweep --set alpha=… --grid alpha=…", ["sweep", "--workspace", ws, "--method", "hsfm", "--grid",
                                                   "alpha=1e-3,2e-3", "--set", "alpha=5e-3", *TINY, "--seeds", "0",
                                                   "--max-parallel", "1"])
    t.recovery("sweep --set alpha --grid alpha trains nothing", not (ws / "sweeps").exists(), "")

    # 4b. a grid over the size cap (refused with the number, before anything is checked or written)
    ws = fresh()
    values = ",".join(f"{v:.6g}" for v in np.geomspace(1e-4, 1e-1, 300))
    t0 = time.perf_counter()
    code, _, err = call_subprocess(["sweep", "--workspace", ws, "--method", "hsfm", "--grid", f"alpha={values}",
                                    f"eta={values}", "--seeds", "0"], timeout_s=60)
    t.rows.append(("sweep of a 300 × 300 grid (90,000 runs)", "error",
                   code == 2 and _ends_in_error(err) and "90000" in err.replace(",", ""),
                   f"{(err.strip().splitlines() or [str(code)])[-1][:120]} ({time.perf_counter() - t0:.0f} s)"))

    # 13. a validation group with too few rows: methods that select or balance on val groups refuse, naming it
    for keep in (0, 1):
        ws = store_with_val_rows(tmp / f"val{next(n)}", group=3, keep=keep)
        for method, extra in (("dfr", []), ("dfr", ["--preset", "official"]), ("afr", []), ("hsfm", ["--set", *TINY])):
            code, _, err = call(["train", "--workspace", ws, "--method", method, *extra, "--quiet"])
            named = "waterbird · water" in err or "group 3" in err
            t.rows.append((f"val group 3 with {keep} row(s): train {method} {' '.join(extra[:2])}".rstrip(), "error",
                           code == 2 and _ends_in_error(err) and named, (err.strip().splitlines() or [str(code)])[-1][:150]))
        code, _, err = call(["train", "--workspace", ws, "--method", "erm", "--quiet"])
        t.recovery(f"val group 3 with {keep} row(s): erm (reads no val group) trains", code == 0, f"exit {code}")

    # 14. features that overflow float32 arithmetic: import refuses; a NaN head ends failed with its epoch
    big = dfr_npz(tmp / f"big{next(n)}.npz")
    arrays = dict(np.load(big))
    arrays["embeddings_train"] = np.where(arrays["embeddings_train"] > 0, 3e38, -3e38).astype(np.float32)
    np.savez(big, **arrays)
    t.error("import of ±3e38 features", ["import", "--from", "dfr", "--path", big, "--out", tmp / f"imp{next(n)}"])
    ws = store_with_val_rows(tmp / f"huge{next(n)}", keep=10_000, scale=1e38)
    code, _, err = call(["train", "--workspace", ws, "--method", "hsfm", "--set", *TINY, "--quiet"])
    statuses = [(p / "status").read_text().strip() for p in sorted((ws / "runs").iterdir())] if (ws / "runs").is_dir() else []
    why = next(((p / "error.txt").read_text() for p in sorted((ws / "runs").iterdir()) if (p / "error.txt").is_file()), "") \
        if (ws / "runs").is_dir() else ""
    t.recovery("train hsfm on ±3e38 features: the run is failed, naming the epoch", code == 2 and statuses == ["failed"]
               and "epoch" in why and "non-finite" in why, f"exit {code} statuses {statuses} {why[:80]!r}")


TINY = ["E=2", "K_H=2", "T=2", "n=4", "K_hard=8"]


def call_subprocess(argv, timeout_s: float) -> tuple[int | str, str, str]:
    """`python -m hsfm_core ARGV` in its own session, killed with its process group after `timeout_s`."""
    process = subprocess.Popen([sys.executable, "-m", "hsfm_core", *map(str, argv)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        stop_group(process)
        return f"still running after {timeout_s:.0f} s", "", f"still running after {timeout_s:.0f} s"


def sweep_process_cases(t: Tally, base: Path, tmp: Path) -> dict:
    """Issue 26's process classes: a SIGKILLed foreground sweep, --submit beside a foreground run, a queued
    --submit local. → the measured figures."""
    import psutil

    from hsfm_core import sweeps

    figures = {}
    # 1, 2. SIGKILL the parent of a foreground `sweep --max-parallel 2`
    ws = copy(base, tmp, "killed-sweep")
    process = start_foreground_sweep(ws)
    try:
        wait_for(lambda: len(training_runs(ws)) >= 2 or process.poll() is not None, 240)
        children = psutil.Process(process.pid).children(recursive=True)
        sweep_id = next((ws / "sweeps").iterdir()).name
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        t_kill = time.monotonic()
        wait_for(lambda: not [c for c in children if _alive(c)], 5)
        survivors = [c for c in children if _alive(c)]
        figures["orphans_after_sigkill"] = len(survivors)
        t.recovery("SIGKILL of a foreground sweep --max-parallel 2: no survivors within 5 s",
                   not survivors and len(children) >= 2, f"{len(children)} children, {len(survivors)} alive after 5 s")
        status = wait_for(lambda: (s := sweeps.status(ws, sweep_id)) == "failed" and s, 10) or sweeps.status(ws, sweep_id)
        figures["killed_sweep_reads_failed_s"] = round(time.monotonic() - t_kill, 2) if status == "failed" else None
        listed = {s["sweep_id"]: s.get("status") for s in sweeps.list_sweeps(ws)}
        t.recovery("a SIGKILLed sweep reads failed (status, list_sweeps) within 10 s",
                   status == "failed" and listed.get(sweep_id) == "failed", f"status {status}, listed {listed.get(sweep_id)}")
    finally:
        stop_group(process)
        kill_processes(processes_mentioning(str(ws)))

    # 3. --submit local while a foreground run of the same sweep trains
    ws = copy(base, tmp, "two-ways")
    process = start_foreground_sweep(ws, max_parallel=1)
    try:
        wait_for(lambda: training_runs(ws) or process.poll() is not None, 240)
        running = {p: (p / "process.json").read_text() for p in training_runs(ws)}  # who trains each run
        code, _, err = call(["sweep", "--workspace", ws, "--method", "hsfm", "--grid", "alpha=1e-3,2e-3", "--set",
                             *ENDLESS_SET, "--seeds", "0", "--max-parallel", "1", "--device", "cpu", "--submit", "local"])
        t.rows.append(("sweep --submit local beside a foreground run of the same sweep", "error",
                       code == 2 and _ends_in_error(err), (err.strip().splitlines() or [str(code)])[-1][:150]))
        time.sleep(1)
        intact = [p for p, who in running.items() if (p / "process.json").is_file() and (p / "process.json").read_text() == who]
        t.recovery("… and the foreground's runs are intact (the same folders, the same trainer), its process alive",
                   bool(running) and len(intact) == len(running) and process.poll() is None,
                   f"{len(intact)}/{len(running)} runs intact, exit {process.poll()}")
    finally:
        stop_group(process)
        kill_processes(processes_mentioning(str(ws)))

    # 4. --submit local of 6 endless configurations with max_parallel 2: processes at most the limit plus a constant
    ws = copy(base, tmp, "storm")
    try:
        t0 = time.monotonic()
        code, out, err = call(["sweep", "--workspace", ws, "--method", "hsfm", "--grid", "alpha=1e-3,2e-3,3e-3,4e-3,5e-3,6e-3",
                               "--set", *ENDLESS_SET, "--seeds", "0", "--max-parallel", "2", "--device", "cpu",
                               "--submit", "local"])
        peak, peak_rss = 0, 0.0
        while time.monotonic() - t0 < 45:
            mine = processes_mentioning(str(ws))
            peak, peak_rss = max(peak, len(mine)), max(peak_rss, _rss_mb(mine))
            time.sleep(0.5)
        figures["submit_local_6_configs"] = {"peak_processes": peak, "peak_rss_mb": round(peak_rss)}
        t.recovery("sweep --submit local, 6 configurations, max_parallel 2: ≤ 2 × 2 + 2 processes",
                   code == 0 and 0 < peak <= 6, f"exit {code}, peak {peak} processes, {peak_rss:.0f} MB")
        sweep_id = next((ws / "sweeps").iterdir()).name
        launched = json.loads((ws / "sweeps" / sweep_id / "jobs.json").read_text()) \
            if (ws / "sweeps" / sweep_id / "jobs.json").is_file() else {}
        code, _, _ = call(["sweep", "--workspace", ws, "--method", "hsfm", "--cancel", sweep_id])
        gone = wait_for(lambda: not processes_mentioning(str(ws)), 60)
        t.recovery("… jobs.json lists what was launched and sweep --cancel stops every process",
                   bool(launched) and code == 0 and bool(gone), f"{len(launched)} in jobs.json, exit {code}, "
                   f"{len(processes_mentioning(str(ws)))} processes left")
    finally:
        kill_processes(processes_mentioning(str(ws)))
    return figures


ENDLESS_SET = ["E=100000", "K_H=1", "T=1", "n=4", "K_hard=8"]




def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _rss_mb(processes) -> float:
    from tests.test_reliability2 import rss_mb

    return rss_mb(processes)


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20, help="overwrites per writer in the stress test")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--skip-slow", action="store_true", help="skip the extraction, killed-trainer, sweep-process "
                        "and stress parts")
    parser.add_argument("--only-26", action="store_true", help="only issue 26's cases")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    t = Tally()
    with tempfile.TemporaryDirectory(prefix="hsfm-hostile-") as folder:
        tmp = Path(folder)
        base = base_workspace(tmp)
        if not args.only_26:
            run_cases(t, base, tmp)
        sweep_job_cases(t, base, tmp)
        figures = {}
        if not args.skip_slow:
            if not args.only_26:
                dataset_cases(t, tmp)
                killed_trainer(t, base, tmp)
                concurrent_without_overwrite(t, tmp)
            figures = sweep_process_cases(t, base, tmp)
        for name, kind, ok, detail in t.rows:
            print(f"{'ok  ' if ok else 'FAIL'} [{kind:8}] {name}: {detail}")
        errors = sum(ok for _, kind, ok, _ in t.rows if kind == "error")
        recoveries = sum(ok for _, kind, ok, _ in t.rows if kind == "recovery")
        print(f"\nhostile cases: {len(t.rows)}; clear error (error: …, exit 2): {errors}; correct recovery: "
              f"{recoveries}; other (traceback, wrong exit or wrong recovery): {len(t.rows) - errors - recoveries}")
        if figures:
            print(f"issue 26 figures: {json.dumps(figures)}")
        if not args.skip_slow and not args.only_26:
            report = run_writer_stress(tmp / "stress", writers=args.writers, rounds=args.rounds)
            print(f"stress: {report['writers']} spawned writers × {report['rounds']} overwrites each, exit codes "
                  f"{report['exit_codes']}; a reader opened the store {report['opens']} times: mixed opens "
                  f"{report['mixed_opens']}, refused while replaced {report['refused_opens']}; final store "
                  f"consistent: {report['final_consistent']}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main_()
