import json

import numpy as np
import pytest
import torch

from hsfm_core.cli import main
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore
from hsfm_core.features.importers import import_dfr, import_reference
from hsfm_core.heads import predict
from hsfm_core.metrics import group_metrics
from hsfm_core.runs import list_runs

D = 16


def split_arrays(n, seed):
    rng = np.random.default_rng(seed)
    y, a = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = (rng.normal(size=(n, D)) + y[:, None]).astype(np.float32)
    return x, y, a


def write_reference(folder, splits=("val", "test")):
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for i, split in enumerate(splits):
        x, y, a = split_arrays(30 + i, i)
        data[split] = (x, y, a)
        torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y),
                    "envs": torch.from_numpy(2 * y + a)}, folder / f"{split}_features.pt")
    return data


def test_reference_import_without_train_and_with_best_run(tmp_path):
    data = write_reference(tmp_path / "ref")
    torch.manual_seed(0)
    theta = {"weight": torch.randn(2, D), "bias": torch.randn(2)}
    torch.save({"theta": theta, "support_emb": torch.randn(4, D), "support_init": torch.randn(4, D),
                "support_labels": torch.tensor([0, 0, 1, 1]), "init_indices": torch.tensor([5, 9, 2, 7]),
                "epoch": 12, "val_wga": torch.tensor(0.875), "val_avg": 0.91}, tmp_path / "ref" / "hsfm_best.pt")
    assert main(["import", "--from", "reference", "--path", str(tmp_path / "ref"), "--out", str(tmp_path / "ws"),
                 "--class-names", "landbird", "waterbird"]) == 0
    store = FeatureStore.open(tmp_path / "ws")
    assert store.splits == ("val", "test") and not store.has_split("train")
    np.testing.assert_array_equal(store.select("test").features, data["test"][0])
    np.testing.assert_array_equal(store.select("val").a, data["val"][2])
    assert store.class_names == ["landbird", "waterbird"] and store.manifest["clip_space"] is False

    (run,) = list_runs(tmp_path / "ws")
    assert run["run_id"].startswith("hsfm-reference-") and run["status"] == "done" and run["method"] == "hsfm"
    assert run["config"]["reference_saved"] == {"epoch": 12, "val_wga": 0.875, "val_avg": 0.91}
    assert run["config"]["store_hash"] == store.content_hash
    from safetensors.torch import load_file
    head = load_file(run["path"] / "head.safetensors")
    torch.testing.assert_close(head["weight"], theta["weight"])
    support = load_file(run["path"] / "support.safetensors")
    assert support["reference_indices"].tolist() == [5, 9, 2, 7] and support["after"].shape == (4, D)
    assert support["indices"].tolist() == [-1] * 4  # the reference train split is not in this store
    metrics = json.loads((run["path"] / "metrics.json").read_text())
    x, y, a = data["test"]
    expected = group_metrics(predict(x, theta["weight"], theta["bias"]), y, 2 * y + a, 4)
    assert metrics["test"] == expected
    assert metrics["test"]["avg_adjusted"] is None  # no train split, no train proportions


def test_bad_reference_run_writes_nothing(tmp_path):
    write_reference(tmp_path / "ref")
    torch.save({"theta": {"weight": torch.zeros(1, D), "bias": torch.zeros(1)}, "support_emb": torch.zeros(2, D),
                "support_init": torch.zeros(2, D), "support_labels": torch.tensor([0, 1]),
                "init_indices": torch.tensor([0, 1])}, tmp_path / "ref" / "hsfm_best.pt")
    with pytest.raises(InputError, match=r"theta.weight \(1, 16\).*expected \(2, 16\)"):
        import_reference(tmp_path / "ref", tmp_path / "ws")
    assert not (tmp_path / "ws" / "manifest.json").exists()  # the store is not written either


def test_reference_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="none of train_features.pt"):
        import_reference(tmp_path / "empty", tmp_path / "ws")
    write_reference(tmp_path / "ref")
    bad = torch.load(tmp_path / "ref" / "val_features.pt", weights_only=True)
    bad["envs"][4] = 2 * bad["labels"][4] + 5
    torch.save(bad, tmp_path / "ref" / "val_features.pt")
    # A inferred from the largest envs (5 → 3 attributes): the rows that no longer fit are named, and so is row 4
    with pytest.raises(InputError, match=r"val_features.pt: row \d+: envs \d with label 1 is not A·label \+ attribute "
                                         r"for A = 3 attributes \(inferred as \(largest envs 5, .*val_features.pt: row 4,"):
        import_reference(tmp_path / "ref", tmp_path / "ws")
    with pytest.raises(InputError, match=r"val_features.pt: row 4: envs 5 with label 0 is not A·label \+ attribute "
                                         r"for A = 2 attributes \(2 attribute names were given\)"):
        import_reference(tmp_path / "ref", tmp_path / "ws", attribute_names=["land", "water"])
    bad["envs"][4] = 2 * bad["labels"][4] + 4  # largest envs 4: 5 groups are not a multiple of 2 classes
    torch.save(bad, tmp_path / "ref" / "val_features.pt")
    with pytest.raises(InputError, match=r"cannot infer the number of attributes A: .* largest envs, 4 \(.*row 4\)"):
        import_reference(tmp_path / "ref", tmp_path / "ws")
    torch.save({"features": torch.zeros(3, D), "labels": torch.zeros(3)}, tmp_path / "ref" / "val_features.pt")
    with pytest.raises(InputError, match=r"val_features.pt: missing key 'envs'"):
        import_reference(tmp_path / "ref", tmp_path / "ws")
    assert not (tmp_path / "ws" / "manifest.json").exists()


class NotATensor:
    """Stands for arbitrary pickled code: weights_only loading must refuse it."""


def test_reference_pickled_object_is_not_loaded(tmp_path):
    (tmp_path / "ref").mkdir()
    torch.save({"features": NotATensor()}, tmp_path / "ref" / "val_features.pt")
    with pytest.raises(InputError, match="pickled checkpoints are refused: loading a pickle can run arbitrary code"):
        import_reference(tmp_path / "ref", tmp_path / "ws")


def write_dfr(path, splits=("train", "val", "test")):
    arrays = {}
    for i, split in enumerate(splits):
        x, y, a = split_arrays(20 + i, 10 + i)
        arrays |= {f"embeddings_{split}": x, f"y_{split}": y, f"g_{split}": 2 * y + a, f"p_{split}": a}
    np.savez(path, **arrays)
    return arrays


def test_dfr_import(tmp_path):
    arrays = write_dfr(tmp_path / "dfr.npz")
    store = import_dfr(tmp_path / "dfr.npz", tmp_path / "ws")
    assert store.manifest["splits"] == {"train": 20, "val": 21, "test": 22}
    np.testing.assert_array_equal(store.select("val").features, arrays["embeddings_val"])
    np.testing.assert_array_equal(store.select("test").g, arrays["g_test"])
    assert store.meta["image_path"].eq("").all()


def test_dfr_bad_inputs(tmp_path):
    arrays = write_dfr(tmp_path / "dfr.npz")
    arrays["g_val"][3] = (arrays["g_val"][3] + 1) % 4
    np.savez(tmp_path / "bad_g.npz", **arrays)
    with pytest.raises(InputError, match=r"\[val\]: row 3: group \d is not 2·label \+ attribute"):
        import_dfr(tmp_path / "bad_g.npz", tmp_path / "ws")
    arrays = write_dfr(tmp_path / "dfr.npz")
    del arrays["p_test"]
    np.savez(tmp_path / "no_p.npz", **arrays)
    with pytest.raises(InputError, match=r"split 'test' has .* but lacks p_test"):
        import_dfr(tmp_path / "no_p.npz", tmp_path / "ws")
    arrays = write_dfr(tmp_path / "dfr.npz")
    arrays["embeddings_train"][2, 0] = np.inf
    np.savez(tmp_path / "inf.npz", **arrays)
    with pytest.raises(InputError, match=r"\[train\]: row 2: features contain NaN or inf"):
        import_dfr(tmp_path / "inf.npz", tmp_path / "ws")
    arrays = write_dfr(tmp_path / "dfr.npz")
    arrays["y_val"] = np.array([{"x": 1}] * 21, dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays)
    with pytest.raises(InputError, match="pickle"):
        import_dfr(tmp_path / "obj.npz", tmp_path / "ws")
    assert not (tmp_path / "ws" / "manifest.json").exists()


def test_import_never_replaces_a_store_silently(tmp_path):
    write_dfr(tmp_path / "dfr.npz")
    import_dfr(tmp_path / "dfr.npz", tmp_path / "ws")
    assert main(["import", "--from", "dfr", "--path", str(tmp_path / "dfr.npz"), "--out", str(tmp_path / "ws")]) == 2


def three_class_arrays(n, seed, n_attributes=2):
    """y ∈ {0, 1, 2}, a ∈ {0 … A−1}, every group present."""
    rng = np.random.default_rng(seed)
    g = np.concatenate([np.arange(3 * n_attributes), rng.integers(0, 3 * n_attributes, n - 3 * n_attributes)])
    y, a = g // n_attributes, g % n_attributes
    x = (rng.normal(size=(n, D)) + y[:, None]).astype(np.float32)
    return x, y, a


def test_dfr_import_with_three_classes(tmp_path):
    arrays = {}
    for i, split in enumerate(("train", "val", "test")):
        x, y, a = three_class_arrays(30 + i, i)
        arrays |= {f"embeddings_{split}": x, f"y_{split}": y, f"g_{split}": 2 * y + a, f"p_{split}": a}
    np.savez(tmp_path / "dfr.npz", **arrays)
    store = import_dfr(tmp_path / "dfr.npz", tmp_path / "ws")
    assert store.class_names == ["class 0", "class 1", "class 2"]
    assert store.attribute_names == ["attribute 0", "attribute 1"] and store.n_groups == 6
    np.testing.assert_array_equal(store.select("test").g, arrays["g_test"])
    assert store.groups.train_counts == tuple(np.bincount(arrays["g_train"], minlength=6))
    named = import_dfr(tmp_path / "dfr.npz", tmp_path / "named", class_names=["e", "n", "c"],
                       attribute_names=["plain", "negated"])
    assert named.groups.names[-1] == "c · negated"
    # three attribute names declare A = 3, so g = 2y + p no longer fits
    with pytest.raises(InputError, match=r"\[train\]: row \d+: group \d is not 3·label \+ attribute"):
        import_dfr(tmp_path / "dfr.npz", tmp_path / "ws3", attribute_names=["p0", "p1", "p2"])
    arrays["y_val"][5] = 4  # labels 0, 1, 2, 4: class 3 never occurs
    arrays["g_val"][5] = 2 * 4 + arrays["p_val"][5]
    np.savez(tmp_path / "gap.npz", **arrays)
    with pytest.raises(InputError, match=r"gap.npz: the label array uses class values 0, 1, 2, 4 but never 3"):
        import_dfr(tmp_path / "gap.npz", tmp_path / "ws4")
    with pytest.raises(InputError, match=r"gap.npz \[val\]: row 5: label has value 4, but 3 class names were given"):
        import_dfr(tmp_path / "gap.npz", tmp_path / "ws4", class_names=["e", "n", "c"])


def test_reference_import_with_three_classes_infers_the_attributes(tmp_path):
    folder = tmp_path / "ref"
    folder.mkdir()
    data = {}
    for i, split in enumerate(("val", "test")):
        x, y, a = three_class_arrays(40 + i, i)
        data[split] = (x, y, a)
        torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y),
                    "envs": torch.from_numpy(2 * y + a)}, folder / f"{split}_features.pt")
    theta = {"weight": torch.randn(3, D), "bias": torch.randn(3)}
    torch.save({"theta": theta, "support_emb": torch.randn(6, D), "support_init": torch.randn(6, D),
                "support_labels": torch.tensor([0, 0, 1, 1, 2, 2]), "init_indices": torch.arange(6)},
               folder / "hsfm_best.pt")
    store = import_reference(folder, tmp_path / "ws", class_names=["e", "n", "c"])
    assert store.n_groups == 6 and store.attribute_names == ["attribute 0", "attribute 1"]
    np.testing.assert_array_equal(store.select("val").a, data["val"][2])
    (run,) = list_runs(tmp_path / "ws")
    metrics = json.loads((run["path"] / "metrics.json").read_text())
    x, y, a = data["test"]
    assert metrics["test"] == group_metrics(predict(x, theta["weight"], theta["bias"]), y, 2 * y + a, 6)
    # attribute names declare A: with 3 of them, envs = 2y + a does not fit every row
    with pytest.raises(InputError, match=r"row \d+: envs \d with label \d is not A·label \+ attribute for A = 3 "
                                         r"attributes \(3 attribute names were given\)"):
        import_reference(folder, tmp_path / "ws3", attribute_names=["p0", "p1", "p2"])
    # a 2-class head does not fit a 3-class store, and nothing is written
    torch.save({"theta": {"weight": torch.zeros(2, D), "bias": torch.zeros(2)}, "support_emb": torch.zeros(2, D),
                "support_init": torch.zeros(2, D), "support_labels": torch.tensor([0, 1]),
                "init_indices": torch.tensor([0, 1])}, folder / "hsfm_best.pt")
    with pytest.raises(InputError, match=r"theta.weight \(2, 16\).*expected \(3, 16\) / \(3,\) for 3 classes"):
        import_reference(folder, tmp_path / "ws2")
    assert not (tmp_path / "ws2" / "manifest.json").exists()
