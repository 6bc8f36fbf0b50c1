import json

import numpy as np
import pandas as pd
import pytest

from hsfm_core.cli import main
from hsfm_core.analysis.decode import clip_space_map, encode_concepts, read_concepts
from hsfm_core.demo.build import DEMO_CLIP
from hsfm_core.errors import InputError
from hsfm_core.features import write_store
from tests.gaussian import hsfm_and_erm_runs, MANIFEST, gaussian_problem, gaussian_workspace

TEXT_ENCODER = {"model": f"local-dir:{DEMO_CLIP}", "pretrained": None}


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return encode_concepts(TEXT_ENCODER, *read_concepts(), cache_dir=tmp_path_factory.mktemp("cache"))


def clip_workspace(path, d=64, transform=None, clip_space=True):
    """A store of generated 64-d features declared to be in the bundled CLIP's joint space."""
    problem = gaussian_problem(d, (600, 300, 300))
    x = np.concatenate([problem[s][0] for s in ("train", "val", "test")])
    y = np.concatenate([problem[s][1] for s in ("train", "val", "test")])
    a = np.concatenate([problem[s][2] for s in ("train", "val", "test")])
    meta = pd.DataFrame({"row_id": np.arange(len(x)), "sample_id": [f"img{i}" for i in range(len(x))],
                         "split": np.repeat(["train", "val", "test"], [600, 300, 300]), "y": y, "a": a, "g": 2 * y + a,
                         "image_path": ""})
    manifest = {**MANIFEST, "clip_space": clip_space, "text_encoder": TEXT_ENCODER if clip_space else None}
    return write_store(path, x if transform is None else (x @ transform).astype(np.float32), meta, manifest)


def test_a_concepts_own_embedding_decodes_to_it(bank):
    i = bank.concepts.index("water background")
    top = bank.ranked(bank.embeddings[i] * 7.0, top=3)  # the scale of a direction does not matter
    assert top[0]["concept"] == "water background" and top[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert top[0]["category"] == "background"
    assert [t["cosine"] for t in top] == sorted((t["cosine"] for t in top), reverse=True)
    water, land = bank.embeddings[i], bank.embeddings[bank.concepts.index("land background")]
    assert bank.contrast(water - land, "water background", "land background")[0] > 0
    assert bank.contrast(land - water, "water background", "land background")[0] < 0
    with pytest.raises(InputError, match="not in the concept bank"):
        bank.contrast(water, "purple background", "land background")


def test_concept_bank_is_cached(tmp_path):
    concepts, categories = ["ocean", "forest"], ["bg", "bg"]
    first = encode_concepts(TEXT_ENCODER, concepts, categories, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("concepts-*.npy"))) == 1
    again = encode_concepts(TEXT_ENCODER, concepts, categories, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.embeddings, again.embeddings)
    np.testing.assert_allclose(np.linalg.norm(first.embeddings, axis=1), 1.0, rtol=1e-5)


def test_concept_file_format_and_errors(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# my bank\n# category: place\nbeach\n\nbeach\n# category: thing\nkite\n")
    assert read_concepts(path) == (["beach", "kite"], ["place", "thing"])
    path.write_text("# nothing\n")
    with pytest.raises(InputError, match="no concepts"):
        read_concepts(path)
    with pytest.raises(InputError, match="concept file not found"):
        read_concepts(tmp_path / "missing.txt")


def test_non_clip_store_is_refused_or_bridged(tmp_path, bank):
    resnet_like = gaussian_workspace(tmp_path / "r50", d=16)
    with pytest.raises(InputError, match="not in a CLIP joint space"):
        clip_space_map(resnet_like)
    clip_store = clip_workspace(tmp_path / "clip")
    mixing = np.random.default_rng(5).normal(size=(64, 64))
    other = clip_workspace(tmp_path / "other", transform=mixing, clip_space=False)  # same images, another space
    to_clip, encoder = clip_space_map(other, bridge=clip_store)
    assert encoder == TEXT_ENCODER
    delta_clip = np.random.default_rng(6).normal(size=(4, 64))
    recovered = to_clip(delta_clip @ mixing)
    np.testing.assert_allclose(bank.scores(recovered), bank.scores(delta_clip), atol=0.02)


def test_decode_cli(tmp_path, capsys):
    ws = tmp_path / "ws"
    clip_workspace(ws)
    run, erm = hsfm_and_erm_runs(ws)
    capsys.readouterr()
    assert main(["decode", "--workspace", str(ws), "--run", run.run_id, "--top", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in out["per_class"]] == ["landbird", "waterbird"]
    assert all(len(c["top"]) == 4 for c in out["per_class"]) and len(out["per_example"]) == 8
    assert out["contrast"] == {"positive": "water background", "negative": "land background"}
    assert main(["decode", "--workspace", str(ws), "--run", run.run_id, "--support", "0", "5"]) == 0
    selection = json.loads(capsys.readouterr().out)["selection"]
    assert selection["support"] == [0, 5] and len(selection["top"]) == 10
    assert main(["decode", "--workspace", str(ws), "--run", run.run_id, "--support", "9"]) == 2
    assert "choose among 0..7" in capsys.readouterr().err
    assert main(["decode", "--workspace", str(ws), "--run", erm.run_id]) == 2
    assert "no support set" in capsys.readouterr().err


def test_mean_edit_of_chosen_support_examples(bank):
    import torch

    from hsfm_core.analysis.decode import decode_edit_selection

    water = bank.embeddings[bank.concepts.index("water background")]
    before = torch.zeros(4, len(water))
    after = before.clone()
    after[1] = torch.from_numpy(water)
    after[2] = torch.from_numpy(-water)
    support = {"before": before, "after": after}
    chosen = decode_edit_selection(support, [1, 3], bank, lambda d: np.asarray(d, dtype=np.float64), top=1)
    assert chosen["top"][0]["concept"] == "water background" and chosen["contrast"] > 0
    assert decode_edit_selection(support, [2], bank, lambda d: np.asarray(d, dtype=np.float64))["contrast"] < 0


def test_a_selection_is_described_by_what_sets_it_apart(tmp_path, bank):
    from hsfm_core.analysis.decode import describe_selection

    store = clip_workspace(tmp_path / "ws")
    y = store.meta["y"].to_numpy()
    selected = np.flatnonzero(y == 1)[:40]
    features = np.array(store.features)
    features[selected] += 20 * bank.embeddings[bank.concepts.index("long neck")]  # what the selection shares
    meta = store.meta
    shifted = write_store(tmp_path / "ws2", features, meta, {**MANIFEST, "clip_space": True,
                                                             "text_encoder": TEXT_ENCODER})
    to_clip, _ = clip_space_map(shifted)
    (described,) = describe_selection(shifted, selected, bank, to_clip, top=3)["per_class"]
    assert described["class"] == 1 and described["n"] == 40
    assert described["top"][0]["concept"] == "long neck"


def test_concept_cache_follows_the_weights(tmp_path):
    import os
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_CLIP, bundle)
    encoder = {"model": f"local-dir:{bundle}", "pretrained": None}
    encode_concepts(encoder, ["ocean"], ["bg"], cache_dir=tmp_path / "cache")
    weights = bundle / "open_clip_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained in place
    encode_concepts(encoder, ["ocean"], ["bg"], cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("concepts-*.npy"))) == 2
