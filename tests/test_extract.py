import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from hsfm_core.cli import main
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore
from hsfm_core.features.encoders import load_encoder
from tests.helpers import make_celeba, make_generic_csv


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def test_extract_waterbirds_matches_direct_encoding(waterbirds_dir, tiny_clip, tmp_path):
    out = tmp_path / "ws"
    assert run_cli("extract", "--data", waterbirds_dir, "--format", "waterbirds", "--model", tiny_clip,
                   "--out", out, "--batch-size", 7, "--quiet") == 0
    store = FeatureStore.open(out)
    m = store.manifest
    assert m["clip_space"] is True and m["text_encoder"]["model"] == tiny_clip
    assert m["dim"] == 64 and m["n_rows"] == 60 and m["group_counts"]["train"] == [12, 2, 2, 12]
    assert m["backbone"]["kind"] == "open_clip" and m["init_head"] is None

    # the stored row equals the image embedding computed by open_clip itself
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    model.eval()
    row = 17
    with torch.no_grad():
        x = preprocess(Image.open(store.image_path(row)).convert("RGB")).unsqueeze(0)
        expected = model.encode_image(x)[0].numpy()
    np.testing.assert_allclose(store.features[row], expected, rtol=1e-4, atol=1e-5)
    # and the text tower the manifest names encodes into the same space
    tokenizer = open_clip.get_tokenizer(m["text_encoder"]["model"])
    with torch.no_grad():
        assert model.encode_text(tokenizer(["a waterbird"])).shape[1] == m["dim"]


def test_extract_csv_and_celeba(tmp_path, tiny_clip):
    csv_path = make_generic_csv(tmp_path / "ds")
    assert run_cli("extract", "--data", tmp_path / "ds", "--format", "csv", "--csv", csv_path, "--model", tiny_clip,
                   "--out", tmp_path / "ws1", "--class-names", "cat", "dog", "--dtype", "float16", "--quiet") == 0
    s1 = FeatureStore.open(tmp_path / "ws1")
    assert s1.class_names == ["cat", "dog"] and s1.features.dtype == np.float16
    make_celeba(tmp_path / "celeba")
    assert run_cli("extract", "--data", tmp_path / "celeba", "--format", "celeba", "--model", tiny_clip,
                   "--out", tmp_path / "ws2", "--target", "Smiling", "--quiet") == 0
    s2 = FeatureStore.open(tmp_path / "ws2")
    assert s2.class_names == ["not Smiling", "Smiling"]
    assert s2.manifest["dataset"]["options"] == {"target": "Smiling", "attribute": "Male"}


def test_shards_merge_to_the_full_store(waterbirds_dir, tiny_clip, tmp_path):
    base = ["extract", "--data", waterbirds_dir, "--format", "waterbirds", "--model", tiny_clip, "--quiet"]
    assert run_cli(*base, "--out", tmp_path / "full") == 0
    for i in range(3):
        assert run_cli(*base, "--shard", f"{i}/3", "--out", tmp_path / f"s{i}") == 0
    assert FeatureStore.open(tmp_path / "s1").manifest["shard"]["rows"] == [20, 40]
    with pytest.raises(InputError, match=r"shard\(s\) 1/3 missing"):
        from hsfm_core.features.extract import merge_shards
        merge_shards([tmp_path / "s0", tmp_path / "s2"], tmp_path / "merged")
    assert run_cli("extract", "--merge", tmp_path / "s2", tmp_path / "s0", tmp_path / "s1",
                   "--out", tmp_path / "merged") == 0
    full, merged = FeatureStore.open(tmp_path / "full"), FeatureStore.open(tmp_path / "merged")
    np.testing.assert_allclose(merged.features, full.features, rtol=1e-5, atol=1e-6)
    assert merged.meta.equals(full.meta)
    assert merged.manifest["shard"] is None and merged.manifest["splits"] == full.manifest["splits"]


def test_decode_failure_is_reported_and_nothing_written(waterbirds_dir, tiny_clip, tmp_path):
    from hsfm_core.data import read_dataset

    table = read_dataset("waterbirds", waterbirds_dir)
    rel = table.frame["image_path"].iloc[9]
    data = (waterbirds_dir / rel).read_bytes()
    (waterbirds_dir / rel).write_bytes(data[: len(data) // 2])  # header intact, pixels truncated
    out = tmp_path / "ws"
    rc = run_cli("extract", "--data", waterbirds_dir, "--format", "waterbirds", "--model", tiny_clip,
                 "--out", out, "--quiet")
    assert rc == 2
    assert not (out / "manifest.json").exists() and not list(out.glob(".incoming-*"))


def test_cli_bad_input_exits_nonzero_with_one_line_reason(waterbirds_dir, tmp_path):
    (waterbirds_dir / "metadata.csv").write_text(
        (waterbirds_dir / "metadata.csv").read_text().replace("img_filename", "file"))
    proc = subprocess.run([sys.executable, "-m", "hsfm_core", "extract", "--data", str(waterbirds_dir),
                           "--format", "waterbirds", "--model", "local-dir:/nonexistent", "--out", str(tmp_path / "ws")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "missing column 'img_filename'" in proc.stderr


@pytest.mark.parametrize("model,pretrained,message", [
    ("local-dir:/nonexistent", None, "no open_clip_config.json"),
    ("NotAModel", "x", "unknown open_clip model 'NotAModel'"),
    ("ViT-B-32", None, "--pretrained is required"),
    ("ViT-B-32", "no_such_tag", "neither a file nor a known tag"),
    ("resnet50", None, "needs --pretrained FILE"),
])
def test_model_errors(model, pretrained, message):
    with pytest.raises(InputError, match=message):
        load_encoder(model, pretrained, torch.device("cpu"))


def test_local_dir_without_weights_is_refused(tmp_path, tiny_clip):
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(tiny_clip.removeprefix("local-dir:"), folder)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights file"):
        load_encoder(f"local-dir:{folder}", None, torch.device("cpu"))


@pytest.mark.slow
def test_resnet50_checkpoint_gives_2048d_features_and_init_head(tmp_path):
    import torchvision

    from tests.helpers import make_waterbirds

    data = make_waterbirds(tmp_path / "wb", counts={"train": (2, 1, 1, 2), "val": (1, 1, 1, 1), "test": (1, 1, 1, 1)})
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    net.fc = torch.nn.Linear(2048, 2)
    ckpt = tmp_path / "erm.pt"
    # DataParallel-style keys under model_state_dict, as training scripts often save them
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, ckpt)
    assert run_cli("extract", "--data", data, "--format", "waterbirds", "--model", "resnet50",
                   "--pretrained", ckpt, "--out", tmp_path / "ws", "--batch-size", 4, "--quiet") == 0
    store = FeatureStore.open(tmp_path / "ws")
    assert store.dim == 2048 and store.manifest["clip_space"] is False and store.manifest["text_encoder"] is None
    head = store.init_head()
    torch.testing.assert_close(head["weight"], net.fc.weight.detach())
    torch.testing.assert_close(head["bias"], net.fc.bias.detach())
    # the stored features, pushed through the checkpoint's fc, give the checkpoint's own logits
    from torchvision import transforms
    net.eval()
    tf = transforms.Compose([transforms.Resize((256, 256)), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    with torch.no_grad():
        logits = net(tf(Image.open(store.image_path(2)).convert("RGB")).unsqueeze(0))[0]
    feats = torch.from_numpy(np.array(store.features[2]))
    torch.testing.assert_close(feats @ head["weight"].T + head["bias"], logits, rtol=1e-4, atol=1e-4)


def test_pickled_model_checkpoint_is_refused(tmp_path):
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    torch.save(net, tmp_path / "whole_model.pt")  # a pickled object, not a state dict
    with pytest.raises(InputError, match="pickled checkpoints are refused"):
        load_encoder("resnet50", str(tmp_path / "whole_model.pt"), torch.device("cpu"))


def test_shards_merge_across_machines_with_different_paths(waterbirds_dir, tiny_clip, tmp_path):
    import json
    import shutil

    base = ["extract", "--data", waterbirds_dir, "--format", "waterbirds", "--model", tiny_clip, "--quiet"]
    assert run_cli(*base, "--shard", "0/2", "--out", tmp_path / "s0") == 0
    moved = tmp_path / "elsewhere" / "waterbirds"  # the second machine mounts the data elsewhere
    shutil.copytree(waterbirds_dir, moved)
    assert run_cli("extract", "--data", moved, "--format", "waterbirds", "--model", tiny_clip, "--quiet",
                   "--shard", "1/2", "--out", tmp_path / "s1") == 0
    assert run_cli("extract", "--merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "merged") == 0
    assert FeatureStore.open(tmp_path / "merged").manifest["n_rows"] == 60
    manifest = json.loads((tmp_path / "s1" / "manifest.json").read_text())
    manifest["backbone"]["id"] = "open_clip:ViT-B-32@openai"  # a different model is refused
    (tmp_path / "s1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="backbone differs"):
        from hsfm_core.features.extract import merge_shards
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged2")


def test_the_manifest_records_how_features_were_computed_and_bf16_autocast_stays_close(waterbirds_dir, tiny_clip,
                                                                                       tmp_path):
    """`extraction` in the manifest: device, precision, TF32 (CPU: none), torch; image-decoding workers
    from the device and the usable cores (the CPU: in-process). bf16 autocast on the CPU gives features
    within a few per mille of fp32 (cosine); fp16 autocast is refused on the CPU."""
    from hsfm_core.data import read_dataset
    from hsfm_core.features.extract import extract

    table = read_dataset("waterbirds", waterbirds_dir)
    encoder = load_encoder(tiny_clip, None, torch.device("cpu"))
    fp32 = extract(table, encoder, tmp_path / "fp32", device=torch.device("cpu"), progress=False)
    record = fp32.manifest["extraction"]
    assert record["device"] == "cpu" and record["precision"] == "fp32" and record["tf32"] is None
    assert record["torch"] == torch.__version__ and record["num_workers"] == 0 and record["gpu"] is None
    bf16 = extract(table, encoder, tmp_path / "bf16", device=torch.device("cpu"), progress=False, precision="bf16")
    assert bf16.manifest["extraction"]["precision"] == "bf16" and bf16.features.dtype == np.float32
    a, b = np.asarray(fp32.features, np.float64), np.asarray(bf16.features, np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(a, b)  # autocast really ran in bf16
    with pytest.raises(InputError, match="fp16 autocast needs a GPU"):
        extract(table, encoder, tmp_path / "fp16", device=torch.device("cpu"), progress=False, precision="fp16")
    with pytest.raises(InputError, match="precision 'int8'"):
        extract(table, encoder, tmp_path / "int8", device=torch.device("cpu"), progress=False, precision="int8")


def test_shards_computed_differently_are_not_merged(waterbirds_dir, tiny_clip, tmp_path):
    from hsfm_core.data import read_dataset
    from hsfm_core.features.extract import extract, merge_shards

    table = read_dataset("waterbirds", waterbirds_dir)
    encoder = load_encoder(tiny_clip, None, torch.device("cpu"))
    cpu = torch.device("cpu")
    extract(table, encoder, tmp_path / "s0", device=cpu, shard=(0, 2), progress=False)
    extract(table, encoder, tmp_path / "s1", device=cpu, shard=(1, 2), progress=False, precision="bf16")
    with pytest.raises(InputError, match="extraction precision differs"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    extract(table, encoder, tmp_path / "s1", device=cpu, shard=(1, 2), progress=False, overwrite=True)
    merged = merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert merged.manifest["extraction"]["precision"] == "fp32" and merged.manifest["n_rows"] == 60


def test_the_extract_command_picks_workers_and_takes_a_precision(waterbirds_dir, tiny_clip, tmp_path, capsys):
    """`--num-workers` defaults to the device's rule over the usable cores (the CPU: in-process); `--precision`
    reaches the manifest; fp16 on the CPU is refused before the encoder is loaded, with what to use instead."""
    base = ["extract", "--data", waterbirds_dir, "--format", "waterbirds", "--model", tiny_clip, "--quiet",
            "--device", "cpu"]
    assert run_cli(*base, "--out", tmp_path / "bf16", "--precision", "bf16") == 0
    record = FeatureStore.open(tmp_path / "bf16").manifest["extraction"]
    assert (record["device"], record["precision"], record["num_workers"], record["tf32"]) == ("cpu", "bf16", 0, None)
    assert run_cli(*base, "--out", tmp_path / "fp16", "--precision", "fp16") == 2
    assert "--precision fp16 needs a GPU, and --device cpu runs on the CPU: use bf16 or fp32" in capsys.readouterr().err
    assert not (tmp_path / "fp16").exists()
    assert run_cli(*base, "--out", tmp_path / "w", "--num-workers", "-1") == 2
    assert "--num-workers ≥ 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(*base, "--out", tmp_path / "int8", "--precision", "int8")


def _recorded_elsewhere(store_dir, **extraction) -> None:
    """Rewrite a shard's `extraction` record as if it had been computed on another machine (its features are
    kept): what a shard from a GPU node looks like here."""
    import json

    path = store_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["extraction"] = {**manifest["extraction"], **extraction}
    path.write_text(json.dumps(manifest))


def test_shards_from_another_device_or_tf32_setting_are_not_merged(waterbirds_dir, tiny_clip, tmp_path):
    from hsfm_core.data import read_dataset
    from hsfm_core.features.extract import extract, merge_shards

    table = read_dataset("waterbirds", waterbirds_dir)
    encoder = load_encoder(tiny_clip, None, torch.device("cpu"))
    for i in range(2):
        extract(table, encoder, tmp_path / f"s{i}", device=torch.device("cpu"), shard=(i, 2), progress=False)
    gpu = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "tf32": {"matmul": False, "cudnn": True}}
    _recorded_elsewhere(tmp_path / "s1", **gpu)
    with pytest.raises(InputError, match=r"s1: extraction device differs from .*s0 \('cuda' vs 'cpu'\)"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    _recorded_elsewhere(tmp_path / "s0", **{**gpu, "gpu": "NVIDIA A100-SXM4-40GB", "tf32": {"matmul": True, "cudnn": True}})
    with pytest.raises(InputError, match="TF32 switches differ"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    _recorded_elsewhere(tmp_path / "s0", **{**gpu, "gpu": "NVIDIA A100-SXM4-40GB"})  # another GPU model: merged
    merged = merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert merged.manifest["extraction"]["device"] == "cuda" and merged.manifest["n_rows"] == 60
