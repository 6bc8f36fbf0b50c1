"""Property-based tests (hypothesis): malformed inputs for the dataset readers, both importers, store
open and run reading end in a result or an `InputError` — never another exception (issue 12).

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
