"""Issue 12's defects, one test (or more) each: corrupt files are clear errors (exit 2), concurrent
writers never mix a store, a killed trainer is found, and the store trusts nothing it reads."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hsfm_core.cli import main
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore, write_store
from hsfm_core.features.store import WRITE_ID_KEY, StoreWriter, content_hash
from hsfm_core.runs import list_runs
from tests.gaussian import MANIFEST, TINY_HSFM, gaussian_workspace

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory) -> Path:
    """A small store with a tiny HSFM run (support set) and an ERM run; copy it before damaging it."""
    from hsfm_core.train import train

    ws = tmp_path_factory.mktemp("base") / "ws"
    gaussian_workspace(ws, d=8, sizes=(200, 100, 100))
    train(ws, "hsfm", overrides=TINY_HSFM)
    train(ws, "erm")
    return ws


@pytest.fixture()
def ws(base_workspace, tmp_path) -> Path:
    target = tmp_path / "ws"
    shutil.copytree(base_workspace, target)
    return target


def run_of(ws: Path, method: str) -> Path:
    return next(p for p in sorted((ws / "runs").iterdir()) if p.name.startswith(method))


def rewrite_meta(ws: Path, meta: pd.DataFrame) -> None:
    """Replace meta.parquet keeping the write id (so that only the content is wrong)."""
    old = pq.read_schema(ws / "meta.parquet").metadata
    table = pa.Table.from_pandas(meta, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), WRITE_ID_KEY.encode():
                                                  old[WRITE_ID_KEY.encode()]}), ws / "meta.parquet")


def rewrite_manifest(ws: Path, change) -> None:
    manifest = json.loads((ws / "manifest.json").read_text())
    change(manifest)
    (ws / "manifest.json").write_text(json.dumps(manifest))


def dfr_npz(path: Path, seed: int = 0, n: int = 8, **override) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        y, p = np.array([0, 0, 1, 1] * (n // 4)), np.array([0, 1] * (n // 2))
        arrays.update({f"embeddings_{split}": rng.normal(size=(n, 4)).astype(np.float32), f"y_{split}": y,
                       f"p_{split}": p, f"g_{split}": 2 * y + p})
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def reference_folder(path: Path, **override) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        obj = {"features": torch.randn(8, 4), "labels": torch.tensor([0, 0, 1, 1] * 2),
               "envs": torch.tensor([0, 1, 2, 3] * 2)}
        obj.update(override.get(split, {}))
        torch.save(obj, path / f"{split}_features.pt")
    if "run" in override:
        torch.save(override["run"], path / "hsfm_best.pt")
    return path


# -- 1. concurrent writers ---------------------------------------------------------------------------

def _import_dfr(npz: str, out: str, overwrite: bool, queue) -> None:
    from hsfm_core.cli import main as cli_main

    queue.put(cli_main(["import", "--from", "dfr", "--path", npz, "--out", out] + (["--overwrite"] if overwrite else [])))


def test_1_a_second_writer_waits_for_the_first_and_then_needs_overwrite(tmp_path):
    npz = dfr_npz(tmp_path / "a.npz")
    out = tmp_path / "store"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with StoreWriter(out, 4, 2) as first:  # the first writer holds the target from its check to its commit
        first.features[:] = 1.0
        second = ctx.Process(target=_import_dfr, args=(str(npz), str(out), False, queue))
        second.start()
        time.sleep(3.0)
        assert second.is_alive(), "the second writer must wait for the first"
        meta = pd.DataFrame({"row_id": range(4), "sample_id": list("abcd"), "split": ["train", "train", "val", "test"],
                             "y": [0, 1, 0, 1], "a": [0, 1, 1, 0], "g": [0, 3, 1, 2], "image_path": ""})
        first.commit(meta, MANIFEST)
    second.join(60)
    assert queue.get(timeout=5) == 2  # it saw the first store: exit 2, "pass --overwrite"
    assert FeatureStore.open(out).manifest["n_rows"] == 4


def _rewrite_loop(out: str, writer: int, rounds: int) -> None:
    from hsfm_core.features import write_store as write
    from tests.gaussian import MANIFEST as manifest

    for r in range(rounds):
        rng = np.random.default_rng(1000 * writer + r)
        n = 40 + writer  # the two writers' stores differ in size too
        y, a = rng.integers(0, 2, n), rng.integers(0, 2, n)
        meta = pd.DataFrame({"row_id": np.arange(n), "sample_id": [f"w{writer}r{r}i{i}" for i in range(n)],
                             "split": ["train"] * (n - 20) + ["val"] * 10 + ["test"] * 10, "y": y, "a": a,
                             "g": 2 * y + a, "image_path": ""})
        write(out, rng.normal(size=(n, 8)).astype(np.float32), meta, manifest, overwrite=True)


def _read_loop(out: str, stop, result) -> None:
    from hsfm_core.errors import InputError as Refused
    from hsfm_core.features import FeatureStore as Store
    from hsfm_core.features.store import content_hash as digest

    opened = mixed = refused = 0
    while not stop.is_set():
        try:
            store = Store.open(out)
        except Refused:
            refused += 1  # between a manifest's removal and its replacement: no store, never a mixed one
            continue
        opened += 1
        mixed += digest(np.asarray(store.features), store.meta) != store.content_hash
    result.put((opened, mixed, refused))


def run_writer_stress(out: Path, writers: int = 2, rounds: int = 20) -> dict:
    """`writers` processes (spawned) each rewrite `out` with --overwrite `rounds` times while a reader
    opens it in a loop and recomputes the content hash of what it opened."""
    ctx = mp.get_context("spawn")
    _rewrite_loop(str(out), 99, 1)
    stop, result = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_loop, args=(str(out), stop, result))
    reader.start()
    procs = [ctx.Process(target=_rewrite_loop, args=(str(out), w, rounds)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    stop.set()
    opened, mixed, refused = result.get(timeout=60)
    reader.join(60)
    final = FeatureStore.open(out)
    return {"writers": writers, "rounds": rounds, "exit_codes": [p.exitcode for p in procs], "opens": opened,
            "mixed_opens": mixed, "refused_opens": refused,
            "final_consistent": content_hash(np.asarray(final.features), final.meta) == final.content_hash}


@pytest.mark.slow
def test_1_concurrent_overwrites_never_open_a_mixed_store(tmp_path):
    report = run_writer_stress(tmp_path / "store", writers=2, rounds=20)
    assert report["exit_codes"] == [0, 0]
    assert report["mixed_opens"] == 0 and report["opens"] > 0 and report["final_consistent"], report


def test_1_meta_of_another_write_is_refused(tmp_path):
    gaussian_workspace(tmp_path / "a", d=4, sizes=(40, 20, 20))
    gaussian_workspace(tmp_path / "b", d=4, sizes=(40, 20, 20), seed=1)
    shutil.copy(tmp_path / "b" / "meta.parquet", tmp_path / "a" / "meta.parquet")
    with pytest.raises(InputError, match="another write"):
        FeatureStore.open(tmp_path / "a")


# -- 2. one corrupt run never hides the others ---------------------------------------------------------

@pytest.mark.parametrize("file,content", [("metrics.json", b"{x"), ("metrics.json", b"[1,2]"),
                                          ("config.json", b"{\"method\": "), ("status", b"\xff\xfe\x00run")])
def test_2_runs_lists_the_readable_runs_and_names_the_bad_one(ws, capsys, file, content):
    bad = run_of(ws, "erm")
    (bad / file).write_bytes(content)
    code, out, err = cli(capsys, "runs", "--workspace", ws)
    assert code == 0 and run_of(ws, "hsfm").name in out
    assert f"{bad.name}" in out and "unreadable" in out and file in out
    code, out, _ = cli(capsys, "runs", "--workspace", ws, "--json")
    listed = json.loads(out)
    assert [r["run_id"] for r in listed["runs"]] == [run_of(ws, "hsfm").name]
    assert listed["unreadable"][0]["run_id"] == bad.name and file in listed["unreadable"][0]["reason"]
    code, _, err = cli(capsys, "eval", "--workspace", ws, "--run", bad.name)
    assert code == 2 and err.startswith("error: ") and file in err


def test_2_home_and_groups_show_a_list_shaped_metrics_file_as_a_message(ws, monkeypatch):
    from streamlit.testing.v1 import AppTest

    bad = run_of(ws, "erm")
    (bad / "metrics.json").write_text("[1, 2]")
    monkeypatch.setenv("HSFM_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert any(bad.name in w.value and "metrics.json" in w.value for w in at.sidebar.warning)
    at.switch_page("pages/1_Groups.py").run()
    assert not at.exception, at.exception


# -- 3. truncated or incomplete safetensors ------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "no weight"])
def test_3_a_damaged_head_is_an_error_under_eval_and_project(ws, capsys, damage):
    run = run_of(ws, "hsfm")
    head = run / "head.safetensors"
    if damage == "truncate":
        head.write_bytes(head.read_bytes()[:40])
    else:
        save_file({"bias": torch.zeros(2)}, head)
    for command in (["eval"], ["project"]):
        code, _, err = cli(capsys, *command, "--workspace", ws, "--run", run.name)
        assert code == 2 and "head.safetensors" in err, err


@pytest.mark.parametrize("damage", ["truncate", "no after"])
def test_3_a_damaged_support_is_an_error_under_neighbors_decode_and_edit_shift(ws, capsys, damage):
    run = run_of(ws, "hsfm")
    support = run / "support.safetensors"
    if damage == "truncate":
        support.write_bytes(support.read_bytes()[:100])
    else:
        save_file({"before": torch.zeros(2, 8), "indices": torch.tensor([0, 1]), "labels": torch.tensor([0, 1])}, support)
    for command in (["neighbors", "--support", "0"], ["decode"], ["edit-shift"]):
        code, _, err = cli(capsys, command[0], "--workspace", ws, "--run", run.name, *command[1:])
        assert code == 2 and "support.safetensors" in err, (command, err)


def test_3_support_indices_outside_the_store_are_refused(ws, capsys):
    from safetensors.torch import load_file

    run = run_of(ws, "hsfm")
    support = load_file(run / "support.safetensors")
    support["indices"][0] = 10_000
    save_file(support, run / "support.safetensors")
    for command in (["edit-shift"], ["neighbors", "--support", "0"]):
        code, out, err = cli(capsys, command[0], "--workspace", ws, "--run", run.name, *command[1:])
        assert code == 2 and "row 10000" in err and not out, err


# -- 4. manifest keys --------------------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("n_rows"), "missing key 'n_rows'"),
    (lambda m: m.update(n_rows=[1, 2, 3]), "'n_rows' must be a number"),
    (lambda m: m.update(class_names="ab"), "'class_names' must be a array"),
    (lambda m: m.update(splits={"train": "x"}), "splits"),
    (lambda m: m.pop("backbone"), "missing key 'backbone'"),
])
def test_4_manifest_keys_and_types_are_checked_on_open(ws, capsys, change, message):
    rewrite_manifest(ws, change)
    with pytest.raises(InputError, match=message):
        FeatureStore.open(ws)
    code, _, err = cli(capsys, "eval", "--workspace", ws, "--run", run_of(ws, "erm").name)
    assert code == 2 and "manifest.json" in err


def test_4_home_workspace_box_reports_a_bad_manifest(ws, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    broken = tmp_path / "broken"
    shutil.copytree(ws, broken)
    rewrite_manifest(broken, lambda m: m.update(n_rows=[1, 2, 3]))
    monkeypatch.setenv("HSFM_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.text_input[0].set_value(str(broken))
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert "Could not open that workspace" in at.error[0].value and "n_rows" in at.error[0].value


# -- 5. meta.parquet is checked ---------------------------------------------------------------------

@pytest.mark.parametrize("damage,message", [
    ("flip val groups", "is not 2·y \\+ a"),
    ("y = 5", "label 5 is outside 0…1"),
    ("a = 7", "attribute 7 is outside"),
    ("split validation", "split 'validation'"),
    ("row ids", "row ids must be"),
    ("absolute image", "absolute or climbs out"),
    ("image above root", "absolute or climbs out"),
    ("duplicate ids", "sample_id.*more than once"),
    ("float labels", "must hold integers"),
])
def test_5_meta_is_checked_on_open(ws, capsys, damage, message):
    meta = FeatureStore.open(ws).meta.copy()
    val = meta["split"] == "val"
    if damage == "flip val groups":
        meta.loc[val, "g"] = 3 - meta.loc[val, "g"]
    elif damage == "y = 5":
        meta.loc[meta.index[val][0], "y"] = 5
    elif damage == "a = 7":
        meta.loc[0, "a"] = 7
    elif damage == "split validation":
        meta.loc[val, "split"] = "validation"
    elif damage == "row ids":
        meta.loc[3, "row_id"] = 99
    elif damage == "absolute image":
        meta["image_path"] = [f"img{i}.png" for i in range(len(meta))]
        meta.loc[2, "image_path"] = "/etc/passwd"
    elif damage == "image above root":
        meta["image_path"] = [f"img{i}.png" for i in range(len(meta))]
        meta.loc[2, "image_path"] = "../outside/x.png"
    elif damage == "duplicate ids":
        meta.loc[5, "sample_id"] = meta.loc[4, "sample_id"]
    elif damage == "float labels":
        meta["y"] = meta["y"].astype(float)
    rewrite_meta(ws, meta)
    with pytest.raises(InputError, match=message):
        FeatureStore.open(ws)
    code, _, err = cli(capsys, "eval", "--workspace", ws, "--run", run_of(ws, "erm").name)
    assert code == 2 and "meta.parquet" in err


def test_5_manifest_counts_must_match_the_rows(ws):
    rewrite_manifest(ws, lambda m: m["splits"].update(train=m["splits"]["train"] - 1, val=m["splits"]["val"] + 1))
    with pytest.raises(InputError, match="rows per split"):
        FeatureStore.open(ws)


# -- 6. images stay inside their root ---------------------------------------------------------------

def _image_store(tmp_path: Path, names: list[str]) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    n = len(names)
    meta = pd.DataFrame({"row_id": range(n), "sample_id": [f"s{i}" for i in range(n)],
                         "split": (["train", "val", "test"] * n)[:n], "y": [i % 2 for i in range(n)],
                         "a": [0] * n, "g": [2 * (i % 2) for i in range(n)], "image_path": names})
    write_store(tmp_path / "ws", np.ones((n, 4), np.float32), meta, {**MANIFEST, "image_root": str(root)})
    return root


def test_6_a_symlink_out_of_the_image_root_is_never_read(tmp_path):
    from hsfm_core.studio.ui import _image_inside_root, thumbnail

    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    root = _image_store(tmp_path, ["a.png", "link.png", "c.png"])
    Image.new("RGB", (8, 8)).save(root / "a.png")
    os.symlink(secret, root / "link.png")
    store = FeatureStore.open(tmp_path / "ws")
    assert store.image_path(0) == (root / "a.png").resolve()
    with pytest.raises(InputError, match="outside the image root"):
        store.image_path(1)
    assert _image_inside_root(store, 1) is None  # the app's thumbnails: shown blank, file never opened
    assert thumbnail(str(store.image_path(0))) is not None


def test_6_extraction_refuses_a_symlink_out_of_the_dataset(tmp_path):
    from hsfm_core.data import check_images, read_dataset
    from tests.helpers import make_generic_csv

    csv = make_generic_csv(tmp_path / "data")
    secret = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(secret)
    first = pd.read_csv(csv)["filename"][0]
    (tmp_path / "data" / first).unlink()
    os.symlink(secret, tmp_path / "data" / first)
    table = read_dataset("csv", tmp_path / "data", csv)
    with pytest.raises(InputError, match=f"lead outside .*{first}"):
        check_images(table)


# -- 7. a SIGKILLed train is found ---------------------------------------------------------------------

@pytest.mark.slow
def test_7_a_killed_trainer_is_shown_failed(ws, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hsfm_core", "train", "--workspace", str(ws), "--method", "hsfm",
                             "--set", "epochs=100000", "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        run = None
        while time.time() < deadline and run is None:
            fresh = [r for r in list_runs(ws) if r["status"] == "running"]
            run = fresh[0] if fresh and (fresh[0]["path"] / "history.jsonl").stat().st_size else None
            time.sleep(0.5)
        assert run is not None, "the trainer never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert (run["path"] / "status").read_text().strip() == "running"  # nobody has looked yet
    code, out, _ = cli(capsys, "runs", "--workspace", ws, "--json")
    row = next(r for r in json.loads(out)["runs"] if r["run_id"] == run["run_id"])
    assert row["status"] == "failed"
    assert "the process ended without finishing" in (run["path"] / "error.txt").read_text()
    assert (run["path"] / "history.jsonl").stat().st_size > 0  # its partial history is kept


def test_7_the_next_train_marks_a_dead_run_failed(ws):
    from hsfm_core.runs import process_record
    from hsfm_core.train import train

    dead = run_of(ws, "erm")
    (dead / "status").write_text("running\n")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = {**process_record(), "pid": gone.pid, "started": 1.0}  # a pid that no longer runs this process
    (dead / "process.json").write_text(json.dumps(record))
    train(ws, "erm", seeds=[5])
    assert (dead / "status").read_text().strip() == "failed"
    assert "the process ended without finishing" in (dead / "error.txt").read_text()


# -- 8. bad caches on import ---------------------------------------------------------------------------

def test_8_bad_caches_are_errors(tmp_path, capsys):
    good = dfr_npz(tmp_path / "good.npz")
    (tmp_path / "trunc.npz").write_bytes(good.read_bytes()[:400])
    code, _, err = cli(capsys, "import", "--from", "dfr", "--path", tmp_path / "trunc.npz", "--out", tmp_path / "o1")
    assert code == 2 and "truncated or not an .npz" in err
    ref = reference_folder(tmp_path / "rows", val={"labels": torch.tensor([0, 0, 1, 1, 0, 1, 0])})
    code, _, err = cli(capsys, "import", "--from", "reference", "--path", ref, "--out", tmp_path / "o2")
    assert code == 2 and "labels has shape (7,), expected (8,)" in err
    run = {"theta": {"weight": [[1.0] * 4] * 2, "bias": torch.zeros(2)}, "support_emb": torch.randn(2, 4),
           "support_init": torch.randn(2, 4), "support_labels": torch.tensor([0, 1]), "init_indices": torch.tensor([0, 1])}
    ref = reference_folder(tmp_path / "theta", run=run)
    code, _, err = cli(capsys, "import", "--from", "reference", "--path", ref, "--out", tmp_path / "o3")
    assert code == 2 and "'weight' must be a tensor, got list" in err
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


# -- 9. decompression bombs ----------------------------------------------------------------------------

def test_9_a_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch):
    from hsfm_core.data import check_images, read_dataset
    from hsfm_core.features.extract import ImageRows
    from tests.helpers import make_generic_csv

    csv = make_generic_csv(tmp_path / "data")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # the 32 × 32 test images are now "bombs" (> 2 × 400)
    table = read_dataset("csv", tmp_path / "data", csv)
    with pytest.raises(InputError, match="image file\\(s\\) unreadable"):
        check_images(table)
    rows = ImageRows([str(tmp_path / "data" / table.frame["image_path"][0])], lambda im: torch.zeros(3, 8, 8))
    assert rows[0][2] is False  # flagged like any broken image, never an exception


# -- 10. silent coercions ------------------------------------------------------------------------------

def test_10_float_labels_and_complex_embeddings_are_refused(tmp_path, capsys):
    labels = np.array([0, 0, 1, 1] * 2, dtype=float)
    labels[1] = 1.9
    npz = dfr_npz(tmp_path / "float.npz", y_train=labels)
    code, _, err = cli(capsys, "import", "--from", "dfr", "--path", npz, "--out", tmp_path / "o1")
    assert code == 2 and "value 1.9 is not a whole number" in err
    ref = reference_folder(tmp_path / "ref", val={"labels": torch.tensor([0.5, 0, 1, 1, 0, 0, 1, 1])})
    code, _, err = cli(capsys, "import", "--from", "reference", "--path", ref, "--out", tmp_path / "o2")
    assert code == 2 and "value 0.5 is not a whole number" in err
    npz = dfr_npz(tmp_path / "complex.npz", embeddings_val=np.ones((8, 4), np.complex64) * (1 + 2j))
    code, _, err = cli(capsys, "import", "--from", "dfr", "--path", npz, "--out", tmp_path / "o3")
    assert code == 2 and "complex values are refused" in err


# -- 11. smaller defects -------------------------------------------------------------------------------

def test_11_runs_of_a_missing_workspace_is_an_error(tmp_path, capsys):
    code, out, err = cli(capsys, "runs", "--workspace", tmp_path / "does" / "not" / "exist")
    assert code == 2 and "not found" in err and "no runs yet" not in out


def test_11_a_nan_label_is_reported_as_nan(tmp_path, capsys):
    labels = np.array([0, 0, 1, 1] * 2, dtype=float)
    labels[2] = np.nan
    code, _, err = cli(capsys, "import", "--from", "dfr", "--path", dfr_npz(tmp_path / "nan.npz", y_val=labels),
                       "--out", tmp_path / "o")
    assert code == 2 and "value nan" in err and "-9223372036854775808" not in err


@pytest.mark.parametrize("column,message", [("id", "1 id\\(s\\) listed more than once: s3"),
                                            ("filename", "1 image\\(s\\) listed more than once: images/00002.png")])
def test_11_duplicate_ids_or_images_are_refused_by_name(tmp_path, column, message):
    from hsfm_core.data import read_dataset
    from tests.helpers import make_generic_csv

    csv = make_generic_csv(tmp_path / "data")
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[3 if column == "id" else 5, column] = frame.loc[2, column] if column == "filename" else "s3"
    if column == "id":
        frame.loc[4, "id"] = "s3"
    frame.to_csv(csv, index=False)
    with pytest.raises(InputError, match=message):
        read_dataset("csv", tmp_path / "data", csv)


def test_11_files_follow_the_umask(tmp_path):
    from hsfm_core.train import train

    old = os.umask(0o022)
    try:
        gaussian_workspace(tmp_path / "ws", d=4, sizes=(40, 20, 20))
        (run,) = train(tmp_path / "ws", "erm")
    finally:
        os.umask(old)
    for path in (tmp_path / "ws" / "manifest.json", tmp_path / "ws" / "meta.parquet", run.path / "config.json",
                 run.path / "metrics.json", run.path / "status", run.path / "head.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_11_a_failed_write_leaves_no_empty_out(tmp_path):
    features = np.ones((4, 2), np.float32)
    features[1, 0] = np.nan
    meta = pd.DataFrame({"row_id": range(4), "sample_id": list("abcd"), "split": ["train", "train", "val", "test"],
                         "y": [0, 1, 0, 1], "a": [0, 1, 1, 0], "g": [0, 3, 1, 2], "image_path": ""})
    with pytest.raises(InputError, match="not finite"):
        write_store(tmp_path / "new", features, meta, MANIFEST)
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is kept, only emptied of our files
    with pytest.raises(InputError):
        write_store(tmp_path / "kept", features, meta, MANIFEST)
    assert (tmp_path / "kept").is_dir()


def test_11_a_failed_extraction_leaves_no_empty_out(tmp_path, tiny_clip, capsys):
    from tests.helpers import make_generic_csv

    csv = make_generic_csv(tmp_path / "data")
    first = tmp_path / "data" / pd.read_csv(csv)["filename"][0]
    first.write_bytes(first.read_bytes()[:60])  # the header parses, the pixels do not
    code, _, err = cli(capsys, "extract", "--data", tmp_path / "data", "--csv", csv, "--format", "csv",
                       "--model", tiny_clip, "--out", tmp_path / "out", "--quiet")
    assert code == 2 and "could not be decoded" in err
    assert not (tmp_path / "out").exists()


def test_11_a_pickled_checkpoint_is_refused_plainly(tmp_path):
    from hsfm_core.safe_io import read_torch_weights

    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "model.pt")
    with pytest.raises(InputError) as caught:
        read_torch_weights(tmp_path / "model.pt")
    assert "pickled checkpoints are refused" in str(caught.value) and "arbitrary code" in str(caught.value)
    assert "weights_only=False" not in str(caught.value)
