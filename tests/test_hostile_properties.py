"""Property-based tests (hypothesis): malformed inputs for the dataset readers, both importers, store
open and run reading end in a result or an `InputError` — never another exception (issue 12); so do the
files of sweeps, jobs and runs' process records, and their listings never hide the others (issue 26).

Each target draws 200 examples (`EXAMPLES`); inputs start from a valid file and are damaged by a
drawn edit, so that most examples get past the first check and reach the deeper ones.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore, write_store
from hsfm_core.features.importers import import_dfr, import_reference
from tests.gaussian import MANIFEST

EXAMPLES = 200
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def result_or_input_error(call):
    """Run `call`; InputError is an answer, anything else fails the property."""
    try:
        return call()
    except InputError as exc:
        assert str(exc), "an InputError must say what is wrong"
        return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def fresh(scratch: Path) -> Path:
    path = scratch / uuid.uuid4().hex[:12]
    path.mkdir()
    return path


cells = st.one_of(st.sampled_from(["0", "1", "2", "-1", "1.5", "nan", "", " ", "train", "val", "test", "validation",
                                   "a.png", "../x.png", "/etc/passwd", "C:\\x.png", "x,y", "\"", "s1", "1e9",
                                   "99999999999999999999", "\x00", "é"]),
                  st.text(max_size=6))


# -- the dataset readers ---------------------------------------------------------------------------------

@st.composite
def csv_texts(draw, header: list[str]):
    columns = draw(st.one_of(st.just(header), st.permutations(header),
                             st.lists(st.sampled_from(header + ["extra", ""]), min_size=0, max_size=7)))
    rows = draw(st.lists(st.lists(cells, min_size=len(columns), max_size=len(columns)), min_size=0, max_size=12))
    lines = [",".join(columns)] + [",".join(r) for r in rows]
    text = "\n".join(lines)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]
    return text.encode("utf-8") if draw(st.integers(0, 9)) else text.encode("utf-8") + b"\xff\xfe"


@PROPERTY
@given(data=csv_texts(["id", "filename", "split", "y", "a"]))
def test_generic_csv_reader(scratch, data):
    from hsfm_core.data import read_dataset

    root = fresh(scratch)
    (root / "metadata.csv").write_bytes(data)
    table = result_or_input_error(lambda: read_dataset("csv", root))
    if table is not None:
        assert len(table.frame) > 0 and set(table.frame["split"]) <= {"train", "val", "test"}


@PROPERTY
@given(data=csv_texts(["img_id", "img_filename", "y", "split", "place", "place_filename"]))
def test_waterbirds_reader(scratch, data):
    from hsfm_core.data import read_dataset

    root = fresh(scratch)
    (root / "metadata.csv").write_bytes(data)
    result_or_input_error(lambda: read_dataset("waterbirds", root))


@PROPERTY
@given(attrs=st.lists(st.lists(cells, min_size=0, max_size=4), max_size=8),
       partition=st.lists(st.lists(cells, min_size=0, max_size=3), max_size=8), declared=cells)
def test_celeba_reader(scratch, attrs, partition, declared):
    from hsfm_core.data import read_dataset

    root = fresh(scratch)
    (root / "list_attr_celeba.txt").write_text(
        "\n".join([declared, "Blond_Hair Male Smiling"] + [" ".join(r) for r in attrs]), encoding="utf-8")
    (root / "list_eval_partition.txt").write_text("\n".join(" ".join(r) for r in partition), encoding="utf-8")
    result_or_input_error(lambda: read_dataset("celeba", root))


# -- the importers ---------------------------------------------------------------------------------------

def _valid_arrays(rng: np.random.Generator) -> dict:
    arrays = {}
    for split in ("train", "val", "test"):
        y, p = np.array([0, 0, 1, 1] * 2), np.array([0, 1] * 4)
        arrays.update({f"embeddings_{split}": rng.normal(size=(8, 4)).astype(np.float32), f"y_{split}": y,
                       f"p_{split}": p, f"g_{split}": 2 * y + p})
    return arrays


hostile_arrays = st.one_of(
    st.sampled_from([np.array([]), np.zeros((8,)), np.zeros((8, 4, 2)), np.full(8, np.nan), np.full(8, 1.5),
                     np.full(8, -1), np.full(8, 7), np.ones((8, 4), np.complex64), np.array(["a"] * 8),
                     np.ones(8, bool), np.zeros((0, 4)), np.full((8, 4), np.inf), np.zeros(7, np.int64),
                     np.zeros((8, 3), np.float16), np.array(3), np.full(8, 2 ** 40)]),
    st.builds(lambda n, v: np.full(n, v), st.integers(0, 10), st.integers(-3, 5)),
)


@st.composite
def npz_edits(draw):
    keys = [f"{k}_{s}" for k in ("embeddings", "y", "g", "p") for s in ("train", "val", "test")]
    return draw(st.lists(st.tuples(st.sampled_from(keys + ["junk"]), st.one_of(st.none(), hostile_arrays)),
                         max_size=3)), draw(st.one_of(st.none(), st.integers(0, 3000)))


@PROPERTY
@given(edit=npz_edits())
def test_dfr_importer(scratch, edit):
    edits, truncate = edit
    folder = fresh(scratch)
    arrays = _valid_arrays(np.random.default_rng(0))
    for key, value in edits:
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    (folder / "cache.npz").write_bytes(data[:truncate] if truncate is not None else data)
    store = result_or_input_error(lambda: import_dfr(folder / "cache.npz", folder / "ws"))
    if store is not None:
        assert FeatureStore.open(folder / "ws").content_hash == store.content_hash
    shutil.rmtree(folder)


hostile_values = st.one_of(
    hostile_arrays.map(lambda a: torch.as_tensor(a) if a.dtype.kind != "U" else list(a)),
    st.sampled_from([None, 3, "text", [1.0, 2.0], {"weight": 1}, torch.zeros(2, 4, dtype=torch.bfloat16),
                     torch.tensor([0.5, float("nan")])]),
)


@st.composite
def reference_edits(draw):
    split_keys = st.sampled_from(["features", "labels", "envs"])
    run_keys = st.sampled_from(["theta", "theta.weight", "theta.bias", "support_emb", "support_init",
                                "support_labels", "init_indices", "epoch"])
    return (draw(st.lists(st.tuples(st.sampled_from(["val", "test"]), split_keys, st.one_of(st.none(), hostile_values)),
                          max_size=2)),
            draw(st.lists(st.tuples(run_keys, st.one_of(st.none(), hostile_values)), max_size=2)),
            draw(st.one_of(st.none(), st.integers(0, 1500))), draw(st.booleans()))


@PROPERTY
@given(edit=reference_edits())
def test_reference_importer(scratch, edit):
    split_edits, run_edits, truncate, with_run = edit
    folder = fresh(scratch)
    for split in ("val", "test"):
        obj = {"features": torch.randn(8, 4), "labels": torch.tensor([0, 0, 1, 1] * 2),
               "envs": torch.tensor([0, 1, 2, 3] * 2)}
        for s, key, value in split_edits:
            if s == split:
                obj.pop(key, None) if value is None else obj.__setitem__(key, value)
        torch.save(obj, folder / f"{split}_features.pt")
    if with_run or run_edits:
        run = {"theta": {"weight": torch.randn(2, 4), "bias": torch.zeros(2)}, "support_emb": torch.randn(2, 4),
               "support_init": torch.randn(2, 4), "support_labels": torch.tensor([0, 1]),
               "init_indices": torch.tensor([0, 1]), "epoch": 3}
        for key, value in run_edits:
            holder, name = (run.get("theta"), key.split(".")[1]) if key.startswith("theta.") else (run, key)
            if isinstance(holder, dict):  # theta itself may have been replaced by an earlier edit
                holder.pop(name, None) if value is None else holder.__setitem__(name, value)
        torch.save(run, folder / "hsfm_best.pt")
        if truncate is not None:
            data = (folder / "hsfm_best.pt").read_bytes()
            (folder / "hsfm_best.pt").write_bytes(data[:truncate])
    result_or_input_error(lambda: import_reference(folder, folder / "ws"))
    shutil.rmtree(folder)


# -- store open ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("valid") / "ws"
    n = 12
    y, a = np.array([0, 1] * 6), np.array([0, 0, 1, 1] * 3)
    meta = pd.DataFrame({"row_id": range(n), "sample_id": [f"s{i}" for i in range(n)],
                         "split": ["train"] * 6 + ["val"] * 3 + ["test"] * 3, "y": y, "a": a, "g": 2 * y + a,
                         "image_path": [f"img/{i}.png" for i in range(n)]})
    write_store(path, np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32), meta,
                {**MANIFEST, "image_root": str(path.parent)})
    return path


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 20), st.floats(allow_nan=True),
                                     st.text(max_size=5)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)
MANIFEST_KEYS = ["format", "version", "n_rows", "dim", "dtype", "splits", "group_counts", "class_names",
                 "attribute_names", "content_hash", "backbone", "clip_space", "image_root", "dataset", "init_head",
                 "shard", "write_id"]
META_COLUMNS = ["row_id", "sample_id", "split", "y", "a", "g", "image_path"]
meta_values = st.one_of(st.integers(-3, 6), st.sampled_from(["train", "validation", "", "/abs.png", "../up.png",
                                                             "s1", None, 1.5, float("nan")]))


@st.composite
def store_damage(draw):
    kind = draw(st.sampled_from(["manifest key", "manifest bytes", "meta cell", "meta column", "features", "file"]))
    if kind == "manifest key":
        return kind, (draw(st.sampled_from(MANIFEST_KEYS)), draw(st.one_of(st.just("<delete>"), json_values)))
    if kind == "manifest bytes":
        return kind, draw(st.one_of(st.binary(max_size=40), st.integers(0, 400)))
    if kind == "meta cell":
        return kind, draw(st.lists(st.tuples(st.integers(0, 11), st.sampled_from(META_COLUMNS), meta_values),
                                   min_size=1, max_size=3))
    if kind == "meta column":
        return kind, (draw(st.sampled_from(META_COLUMNS)), draw(st.sampled_from(["drop", "float", "str", "shuffle"])))
    if kind == "features":
        return kind, draw(st.sampled_from(["truncate", "shape", "dtype", "garbage", "missing"]))
    return kind, draw(st.sampled_from(["meta.parquet", "features.npy", "manifest.json"]))


@PROPERTY
@given(damage=store_damage())
def test_store_open(scratch, valid_store, damage):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hsfm_core.features.store import WRITE_ID_KEY

    ws = fresh(scratch) / "ws"
    shutil.copytree(valid_store, ws)
    kind, what = damage
    if kind == "manifest key":
        manifest = json.loads((ws / "manifest.json").read_text())
        key, value = what
        manifest.pop(key, None) if value == "<delete>" else manifest.__setitem__(key, value)
        (ws / "manifest.json").write_text(json.dumps(manifest))
    elif kind == "manifest bytes":
        data = (ws / "manifest.json").read_bytes()
        (ws / "manifest.json").write_bytes(data[:what] if isinstance(what, int) else what)
    elif kind in ("meta cell", "meta column"):
        meta = pd.read_parquet(ws / "meta.parquet")
        if kind == "meta cell":
            meta = meta.astype(object)
            for row, column, value in what:
                meta.at[row, column] = value
        else:
            column, how = what
            if how == "drop":
                meta = meta.drop(columns=column)
            elif how == "float":
                meta[column] = pd.to_numeric(meta[column], errors="coerce").astype(float)
            elif how == "str":
                meta[column] = meta[column].astype(str)
            else:
                meta[column] = meta[column].sample(frac=1, random_state=0).to_numpy()
        write_id = pq.read_schema(valid_store / "meta.parquet").metadata[WRITE_ID_KEY.encode()]
        try:
            table = pa.Table.from_pandas(meta, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError):  # pandas cannot even write it: nothing to open
            return
        pq.write_table(table.replace_schema_metadata({WRITE_ID_KEY.encode(): write_id}), ws / "meta.parquet")
    elif kind == "features":
        path = ws / "features.npy"
        if what == "truncate":
            path.write_bytes(path.read_bytes()[:150])
        elif what == "shape":
            np.save(path, np.zeros((3, 4), np.float32))
        elif what == "dtype":
            np.save(path, np.zeros((12, 4), np.float64))
        elif what == "garbage":
            path.write_bytes(b"\x93NUMPY garbage")
        else:
            path.unlink()
    else:
        (ws / what).write_bytes(b"\x00\x01not this kind of file")
    store = result_or_input_error(lambda: FeatureStore.open(ws))
    if store is not None:  # what opens is usable: its groups and every row's image resolve or refuse
        store.groups.names
        for row in range(len(store.meta)):
            result_or_input_error(lambda: store.image_path(row))
    shutil.rmtree(ws.parent)


# -- run reading ------------------------------------------------------------------------------------

RUN_FILES = ["config.json", "metrics.json", "status", "process.json", "head.safetensors", "support.safetensors"]


def _tensor_file(draw) -> bytes:
    tensors = draw(st.dictionaries(st.sampled_from(["weight", "bias", "before", "after", "indices", "labels", "x"]),
                                   st.sampled_from([torch.zeros(2, 4), torch.zeros(2), torch.zeros(3, 5),
                                                    torch.tensor([0, 1]), torch.tensor([-5, 99]),
                                                    torch.zeros(2, dtype=torch.int64), torch.zeros(0)]),
                                   max_size=4))
    data = save({k: v.clone() for k, v in tensors.items()})  # sampled tensors are shared objects
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def run_files(draw):
    files = {}
    for name in draw(st.lists(st.sampled_from(RUN_FILES), unique=True, max_size=4)):
        if name.endswith(".safetensors"):
            files[name] = _tensor_file(draw)
        elif name == "status":
            files[name] = draw(st.one_of(st.sampled_from([b"done\n", b"running\n", b"\xff\xfe", b"weird"]),
                                         st.binary(max_size=8)))
        else:
            files[name] = draw(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=20),
                                         st.sampled_from([b"{x", b"[1,2]", b'{"val": [1]}',
                                                          b'{"val": {"wga": "high"}}', b'{"pid": "x", "started": 1}'])))
    return files


@PROPERTY
@given(files=run_files())
def test_run_reading(scratch, valid_store, files):
    from hsfm_core.runs import list_runs, load_head, load_support, read_run

    ws = fresh(scratch)
    good = ws / "runs" / "erm-good"
    good.mkdir(parents=True)
    (good / "config.json").write_text(json.dumps({"method": "erm", "seed": 0}))
    (good / "status").write_text("done\n")
    bad = ws / "runs" / "hsfm-bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"method": "hsfm"}))
    for name, data in files.items():
        (bad / name).write_bytes(data)
    unreadable: list = []
    listed = list_runs(ws, unreadable=unreadable)  # never raises: the good run is always listed
    assert "erm-good" in [r["run_id"] for r in listed]
    assert {r["run_id"] for r in listed} | {i for i, _ in unreadable} == {"erm-good", "hsfm-bad"}
    store = FeatureStore.open(valid_store)
    run = result_or_input_error(lambda: read_run(bad))
    if run is not None:
        result_or_input_error(lambda: load_head(run, store))
        result_or_input_error(lambda: load_support(run, store))
    shutil.rmtree(ws)


# -- the files of sweeps and jobs (issue 26) --------------------------------------------------------------
# Every reader of sweeps/<id>/{request.json, status, results.csv, jobs.json, process.json}, jobs/<id>/job.json,
# jobs/settings.json and runs/<id>/process.json ends in a value or an InputError; the listings never hide the
# other sweeps, jobs or runs.

def _mutated(draw, valid: dict) -> bytes:
    """A valid JSON record with drawn edits (a key replaced, deleted or added), or drawn bytes."""
    kind = draw(st.sampled_from(["edit", "edit", "edit", "json", "bytes", "truncate"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=24))
    text = json.dumps(valid).encode()
    if kind == "truncate":
        return text[:draw(st.integers(0, len(text)))]
    record = json.loads(text)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(record) + ["extra"]))
        if draw(st.booleans()) and key in record:
            record.pop(key)
        else:
            record[key] = draw(st.one_of(json_values, st.sampled_from(
                [-5, 0, 2**32, 10**30, "abc", "../x", [0, 1], [True], {"pid": -5, "started": 1.0}, float("inf")])))
    return json.dumps(record).encode()


def _good_sweep(ws: Path, method: str, grid: dict) -> str:
    from hsfm_core import sweeps

    request = sweeps.SweepRequest(method=method, grid=grid, seeds=(0, 1))
    directory = sweeps.sweep_dir(ws, request.sweep_id)
    directory.mkdir(parents=True)
    (directory / "request.json").write_text(json.dumps({**sweeps._request_dict(request), "sweep_id": request.sweep_id}))
    (directory / "status").write_text("done\n")
    return request.sweep_id


RESULTS_CSV = ("config,C,seeds_done,seeds,run_ids,val_wga_mean,val_wga_std,val_avg_adjusted_mean,val_avg_adjusted_std,"
               "test_wga_mean,test_wga_std,test_avg_adjusted_mean,test_avg_adjusted_std,selected\n"
               "0,1.0,2,2,a b,0.5,0.1,0.8,0.01,0.4,0.1,0.7,0.02,True\n1,2.0,1,2,c d,,,,,,,,,False\n")


@st.composite
def sweep_files(draw):
    from hsfm_core import sweeps

    valid = {**sweeps._request_dict(sweeps.SweepRequest(method="dfr", grid={"n_refits": [1, 2]}, seeds=(0,)))}
    files = {}
    for name in draw(st.lists(st.sampled_from(["request.json", "status", "results.csv", "jobs.json", "process.json",
                                               "cancel"]), unique=True, min_size=1, max_size=4)):
        if name == "request.json":
            files[name] = _mutated(draw, valid)
        elif name == "status":
            files[name] = draw(st.one_of(st.sampled_from([b"running\n", b"submitted\n", b"done\n", b"weird", b"\xff"]),
                                         st.binary(max_size=8)))
        elif name == "results.csv":
            data = RESULTS_CSV.encode()
            files[name] = draw(st.one_of(st.just(data), st.binary(max_size=40), st.integers(0, len(data)).map(lambda n: data[:n]),
                                         st.tuples(st.integers(0, len(data) - 1), st.binary(min_size=1, max_size=3)).map(
                                             lambda e: data[:e[0]] + e[1] + data[e[0] + len(e[1]):])))
        elif name == "jobs.json":
            files[name] = draw(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.sampled_from(
                [b'{"0": "job-20260101-000000-abcd"}', b'{"0": "../../x"}', b'{"x": 1}', b"[]"])))
        elif name == "process.json":
            files[name] = _mutated(draw, {"pid": 1, "started": 1.0, "host": "elsewhere"})
        else:
            files[name] = b"x"
    return files


@PROPERTY
@given(files=sweep_files(), bad_name=st.sampled_from(["sweep-dfr-054ef6a7", "sweep-dfr-00000000", "notasweep", ".."]))
def test_sweep_reading(scratch, files, bad_name):
    from hsfm_core import sweeps

    ws = fresh(scratch)
    good = _good_sweep(ws, "erm", {"C": [1.0, 2.0]})
    bad = ws / "sweeps" / ("x-" + bad_name if bad_name == ".." else bad_name)
    bad.mkdir()
    for name, data in files.items():
        (bad / name).write_bytes(data)
    listed = sweeps.list_sweeps(ws)  # never raises; the good sweep is always listed
    assert [s["sweep_id"] for s in listed if "error" not in s and s["sweep_id"] == good] == [good]
    assert {s["sweep_id"] for s in listed} == {good, bad.name}
    for reader in (sweeps.load_request, sweeps.status, sweeps.progress, sweeps.read_results, sweeps._launched):
        result_or_input_error(lambda: reader(ws, bad.name))
    assert sweeps.status(ws, good) == "done"
    shutil.rmtree(ws)


def _valid_job(ws: Path, job_id: str) -> dict:
    return {"job_id": job_id, "workspace": str(ws), "spec": {"method": "erm", "preset": None, "overrides": [],
            "seeds": [0], "device": "cpu", "executor": "local", "slurm": None, "time_limit_min": None,
            "max_parallel": None, "tags": {}}, "run_id": f"{job_id}-run", "run_ids": [f"{job_id}-run-s0"],
            "max_parallel": 2, "created_at": "2026-01-01T00:00:00+00:00", "created_t": 1.0e9, "env": {},
            "submitit_folder": str(ws / "jobs" / job_id / "submitit"), "submitit_job_id": None,
            "cancel_requested": False, "ended": {"status": "done", "error": None, "t": 1.0e9}}


@PROPERTY
@given(data=st.data())
def test_job_reading(scratch, data):
    from hsfm_core import jobs

    ws = fresh(scratch)
    good, bad = "job-20260101-000000-aaaa", "job-20260101-000000-bbbb"
    for job_id in (good, bad):
        (ws / "jobs" / job_id).mkdir(parents=True)
        (ws / "jobs" / job_id / "job.json").write_text(json.dumps(_valid_job(ws, job_id)))
    (ws / "jobs" / bad / "job.json").write_bytes(_mutated(data.draw, _valid_job(ws, bad)))
    if data.draw(st.booleans()):
        (ws / "jobs" / "settings.json").write_bytes(_mutated(data.draw, {"max_parallel": 2, "max_sweep_runs": 500}))
    unreadable: list = []
    listed = jobs.list_jobs(ws, unreadable)  # never raises; the good job is always listed
    assert good in [j["job_id"] for j in listed]
    assert {j["job_id"] for j in listed} | {u["job_id"] for u in unreadable} == {good, bad}
    for reader in (jobs.get_job, jobs.job_progress, jobs.log_tail):
        result_or_input_error(lambda: reader(ws, bad))
    result_or_input_error(lambda: jobs.settings(ws))
    result_or_input_error(lambda: jobs.job_limit(ws))
    shutil.rmtree(ws)


def process_records(host: str):
    """process.json contents: mostly a record of this host with drawn values (pids psutil refuses among them, so
    that a reader looks them up), else any JSON or bytes."""
    import os

    pids = st.one_of(st.sampled_from([-5, -1, 0, 1, os.getpid(), 2**31, 2**40, 10**30, "abc", None, 1.5, True]),
                     st.integers(-10, 2**40), json_values)
    started = st.one_of(st.sampled_from([1.0, 0, -1, 1e300, "x", None]), st.floats(allow_nan=True), json_values)
    hosts = st.one_of(st.just(host), st.just(host), st.just(host), st.text(max_size=4), json_values)
    fields = st.tuples(st.fixed_dictionaries({"pid": pids, "started": started, "host": hosts},
                                             optional={"at": started, "slurm_job_id": json_values}),
                       st.sampled_from([None, None, None, None, None, "pid", "started", "host"]))
    records = fields.map(lambda r: json.dumps({k: v for k, v in r[0].items() if k != r[1]}).encode())
    return st.one_of(records, records, records, records, json_values.map(lambda v: json.dumps(v).encode()),
                     st.binary(max_size=24))


@PROPERTY
@given(data=st.data(), status=st.sampled_from([b"running\n", b"running\n", b"queued\n", b"done\n"]))
def test_process_record_reading(scratch, data, status):
    import socket

    from hsfm_core.runs import end_dead_runs, list_runs, read_process, read_run

    ws = fresh(scratch)
    drawn = data.draw(process_records(socket.gethostname()))
    for run_id, record in (("erm-good", None), ("hsfm-bad", drawn)):
        run = ws / "runs" / run_id
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"method": run_id.split("-")[0], "seed": 0}))
        (run / "status").write_bytes(b"done\n" if record is None else status)
        if record is not None:
            (run / "process.json").write_bytes(record)
    unreadable: list = []
    listed = list_runs(ws, unreadable=unreadable)  # never raises; the good run is always listed
    assert "erm-good" in [r["run_id"] for r in listed]
    assert {r["run_id"] for r in listed} | {i for i, _ in unreadable} == {"erm-good", "hsfm-bad"}
    result_or_input_error(lambda: read_process(ws / "runs" / "hsfm-bad"))
    result_or_input_error(lambda: read_run(ws / "runs" / "hsfm-bad"))
    end_dead_runs(ws)  # the next train's sweep over the runs: never raises
    shutil.rmtree(ws)
