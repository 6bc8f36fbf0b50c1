"""Hostile inputs and faults against the CLI (issue 12): how many end as a clear error or a correct recovery.

    python -m benchmarks.bench_hostile [--rounds 20] [--skip-slow]

Every case damages a copy of a small workspace (or writes a bad cache, dataset or checkpoint) and
runs the CLI's entry point (`hsfm_core.cli.main`, in-process: what `python -m hsfm_core` runs). A
case passes when it ends as `error: …` with exit status 2 (a clear error), or, where the README
promises a recovery, when that recovery happened (e.g. `runs` lists the good runs and names the bad
one). Anything else — another exception (a traceback), exit 0 on bad input, a wrong recovery — is
counted as a failure and printed. Then: a SIGKILLed `train`, two writers at once without
`--overwrite`, and the stress of 2 spawned writers × `--rounds` overwrites with a reader that
recomputes the content hash of every store it opens (mixed opens: target 0).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
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
from tests.test_reliability import (dfr_npz, reference_folder, rewrite_manifest, rewrite_meta,  # noqa: E402
                                    run_of, run_writer_stress)


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


class Tally:
    def __init__(self):
        self.rows: list[tuple[str, str, bool, str]] = []

    def error(self, name: str, argv) -> None:
        code, _, err = call(argv)
        ok = code == 2 and err.startswith("error: ")
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


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20, help="overwrites per writer in the stress test")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--skip-slow", action="store_true", help="skip the extraction, killed-trainer and stress parts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    t = Tally()
    with tempfile.TemporaryDirectory(prefix="hsfm-hostile-") as folder:
        tmp = Path(folder)
        base = base_workspace(tmp)
        run_cases(t, base, tmp)
        if not args.skip_slow:
            dataset_cases(t, tmp)
            killed_trainer(t, base, tmp)
            concurrent_without_overwrite(t, tmp)
        for name, kind, ok, detail in t.rows:
            print(f"{'ok  ' if ok else 'FAIL'} [{kind:8}] {name}: {detail}")
        errors = sum(ok for _, kind, ok, _ in t.rows if kind == "error")
        recoveries = sum(ok for _, kind, ok, _ in t.rows if kind == "recovery")
        print(f"\nhostile cases: {len(t.rows)}; clear error (error: …, exit 2): {errors}; correct recovery: "
              f"{recoveries}; other (traceback, wrong exit or wrong recovery): {len(t.rows) - errors - recoveries}")
        if not args.skip_slow:
            report = run_writer_stress(tmp / "stress", writers=args.writers, rounds=args.rounds)
            print(f"stress: {report['writers']} spawned writers × {report['rounds']} overwrites each, exit codes "
                  f"{report['exit_codes']}; a reader opened the store {report['opens']} times: mixed opens "
                  f"{report['mixed_opens']}, refused while replaced {report['refused_opens']}; final store "
                  f"consistent: {report['final_consistent']}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main_()
