"""Rendering features as pictures (docs/ARCHITECTURE.md §Render): the renderer contract and its cache,
the bundled demo inverter's quality on held-back SynthBirds images, training an inverter, flip rates,
the unCLIP wiring on a tiny randomly initialised pipeline (no download), and the clear errors."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore, write_store
from hsfm_core.groups import Groups
from hsfm_core.render import base, flip, inverter, unclip
from hsfm_core.render.backbone import attribute_classifier, store_backbone
from hsfm_core.runs import list_runs
from tests.gaussian import gaussian_workspace

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "synthbirds-inverter"


@pytest.fixture(scope="module")
def workspace(app_workspace, tmp_path_factory):
    """A private copy of the app's workspace (demo-CLIP features of 172 images, an HSFM run)."""
    copy = tmp_path_factory.mktemp("render") / "ws"
    shutil.copytree(app_workspace, copy, ignore=shutil.ignore_patterns("cache"))
    return copy


@pytest.fixture(scope="module")
def store(workspace):
    return FeatureStore.open(workspace)


@pytest.fixture(scope="module")
def hsfm_run(workspace):
    return next(r for r in list_runs(workspace) if r["method"] == "hsfm")


class Counting(base.Renderer):
    """A deterministic stand-in that counts what it renders (the contract's own checks and the cache)."""

    name, key, size, dim, batch_size = "counting", "counting:1", 8, 64, 5

    def __init__(self):
        self.rendered = 0

    def _render_batch(self, features, seed):
        self.rendered += len(features)
        level = (np.abs(features).sum(axis=1) * 7 + seed) % 256
        return np.broadcast_to(level.astype(np.uint8)[:, None, None, None], (len(features), 8, 8, 3)).copy()


# -- the contract ------------------------------------------------------------------------------------------
def test_bundled_inverter_renders_uint8_images_deterministically(store):
    renderer = inverter.load_inverter(store)
    assert renderer.folder == BUNDLED and renderer.name == "inverter"
    features = np.asarray(store.features[:70])
    images = renderer.render(features, seed=3)
    assert images.shape == (70, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, renderer.render(features, seed=3))
    assert np.array_equal(images[5], renderer.render(features[5])[0])  # a row renders alike in any batch
    assert images.std() > 5  # pictures, not a flat colour


def test_render_checks_its_input():
    renderer = Counting()
    with pytest.raises(InputError, match="n × 64"):
        renderer.render(np.zeros((2, 3)))
    with pytest.raises(InputError, match="NaN"):
        renderer.render(np.full((1, 64), np.nan))
    with pytest.raises(InputError, match="seed"):
        renderer.render(np.zeros((1, 64)), seed=-1)


def test_render_edits_shapes_steps_and_cache(store, hsfm_run, tmp_path):
    renderer = Counting()
    cache = base.RenderCache(tmp_path / "cache")
    images = base.render_edits(renderer, store, hsfm_run, support=[0, 2, 5], steps=[0, 0.5, 1], cache=cache)
    assert images.shape == (3, 3, 8, 8, 3) and images.dtype == np.uint8 and renderer.rendered == 9
    again = base.render_edits(renderer, store, hsfm_run, support=[0, 2, 5], steps=[0, 0.5, 1], cache=cache)
    assert np.array_equal(images, again) and renderer.rendered == 9  # all from memory
    base.render_edits(renderer, store, hsfm_run, support=[0, 2, 5], steps=[1, 1.5], cache=cache)
    assert renderer.rendered == 12  # only t = 1.5 is new
    fresh = base.RenderCache(tmp_path / "cache")  # another process: from disk
    assert np.array_equal(images, base.render_edits(renderer, store, hsfm_run, [0, 2, 5], [0, 0.5, 1], cache=fresh))
    assert renderer.rendered == 12 and fresh.hits == 3
    # another seed, other rows, or a damaged file are misses
    base.render_edits(renderer, store, hsfm_run, [0, 2, 5], [0], seed=1, cache=fresh)
    assert renderer.rendered == 15
    for path in (tmp_path / "cache").glob("*.npy"):
        path.write_bytes(b"\x93NUMPY truncated")
    damaged = base.RenderCache(tmp_path / "cache")
    assert np.array_equal(images, base.render_edits(renderer, store, hsfm_run, [0, 2, 5], [0, 0.5, 1], cache=damaged))
    assert renderer.rendered == 24


def test_edit_path_is_z_plus_t_delta(store, hsfm_run):
    from hsfm_core.runs import load_support

    support = load_support(hsfm_run, store)
    z, after = support["before"].numpy(), support["after"].numpy()
    path = base.edit_features(z[:2], after[:2], [0, 1, 1.5])
    assert np.allclose(path[:, 0], z[:2]) and np.allclose(path[:, 1], after[:2], atol=1e-5)
    assert np.allclose(path[:, 2], z[:2] + 1.5 * (after[:2] - z[:2]), atol=1e-4)
    classes, images = base.render_class_means(Counting(), store, hsfm_run, steps=[0, 1], cache=False)
    assert classes == [0, 1] and images.shape == (2, 2, 8, 8, 3)
    with pytest.raises(InputError, match="support example"):
        base.render_edits(Counting(), store, hsfm_run, support=[99], cache=False)
    with pytest.raises(InputError, match="steps"):
        base.render_edits(Counting(), store, hsfm_run, steps=["x"], cache=False)


# -- the bundled demo inverter ----------------------------------------------------------------------------
def test_bundled_inverter_is_small_and_carded():
    assert (BUNDLED / inverter.WEIGHTS).stat().st_size <= 5 * 2**20
    card = json.loads((BUNDLED / inverter.CARD).read_text())
    assert card["backbone"]["id"] == "open_clip:local-dir:synthbirds-clip"
    q = card["quality"]["rendered"]
    assert q["median_cosine"] >= 0.85 and q["attribute_agreement"] >= 0.95 and q["class_accuracy"] >= 0.75
    assert card["data"]["splits"] == ["train", "val"] and card["training"]["steps"] > 0
    assert "## Quality" in (BUNDLED / inverter.README).read_text()


def test_bundled_inverter_quality_on_held_back_synthbirds(store):
    """64 demo *test* images (never trained on), drawn exactly as `demo build` draws them: the rendering of
    each one's feature encodes back close to it and shows its background."""
    from hsfm_core.demo import clip as demo_clip
    from hsfm_core.demo import synthbirds

    rows = synthbirds.labels_for(synthbirds.WATERBIRDS_COUNTS, 0)
    test = [i for i, (split, _, _) in enumerate(rows) if split == "test"][:64]
    images = synthbirds.render_rows([rows[i] for i in test], test, 0, 1)
    backbone = store_backbone(store)
    features = backbone.encode_uint8(images)
    rendered = backbone.encode_uint8(inverter.load_inverter(store).render(features))
    cos = np.sum(rendered * features, 1) / np.linalg.norm(rendered, axis=1) / np.linalg.norm(features, axis=1)
    assert np.median(cos) >= 0.85
    background = attribute_classifier(store)
    agree = (background.predict(rendered) == background.predict(features)).mean()
    assert agree >= 0.9  # 95 % on all 5,794 test images (benchmarks/bench_render.py); 64 here
    assert demo_clip.BACKGROUND_CLASSES  # the demo CLIP's card: zero-shot background 100 % on real images


# -- training an inverter -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_renderer_writes_a_loadable_inverter_with_its_card(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    store = FeatureStore.open(ws)
    seen = []
    card = inverter.train_renderer(store, size=16, epochs=2, width=8, batch_size=32, holdout=16,
                                   progress=lambda step, steps, losses: seen.append((step, steps)))
    folder = ws / inverter.WORKSPACE_DIR
    assert Path(card["path"]) == folder and (folder / inverter.WEIGHTS).is_file()
    assert seen and seen[-1][0] == seen[-1][1] == card["training"]["steps"]
    on_disk = json.loads((folder / inverter.CARD).read_text())
    assert on_disk["data"]["images"] == 92 + 40 and on_disk["quality"]["n"] == 16
    assert set(on_disk["quality"]["rendered"]) >= {"median_cosine", "attribute_agreement", "class_accuracy"}
    assert on_disk["training"]["log"][-1]["step"] == card["training"]["steps"]
    renderer = inverter.load_inverter(store)  # the workspace's own comes before the bundled one
    assert renderer.folder == folder and renderer.render(np.asarray(store.features[:3])).shape == (3, 16, 16, 3)


def test_inverter_errors(tmp_path, store):
    gaussian = gaussian_workspace(tmp_path / "g", d=64)
    with pytest.raises(InputError, match="train-renderer"):
        inverter.load_inverter(gaussian)
    with pytest.raises(InputError, match="does not fit"):
        inverter.load_inverter(gaussian, BUNDLED)
    with pytest.raises(InputError, match="cannot rebuild"):  # imported features: no backbone, no images
        inverter.train_renderer(gaussian, epochs=1, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(BUNDLED, broken)
    (broken / inverter.WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="safetensors"):
        inverter.load_inverter(store, broken)
    with pytest.raises(InputError, match="power of two"):
        inverter.train_renderer(store, size=48, progress=False)


# -- flip rates ---------------------------------------------------------------------------------------------
def test_null_edits_are_within_class_and_rescaled(store):
    labels = np.array([0, 0, 1, 1, 1])
    norms = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    nulls = flip.null_edits(store, labels, norms, draws=4, seed=0)
    assert nulls.shape == (4, 5, store.dim)
    assert np.allclose(np.linalg.norm(nulls, axis=2), norms[None], rtol=1e-5)
    assert np.array_equal(nulls, flip.null_edits(store, labels, norms, draws=4, seed=0))
    # each is a difference of two train features of the class: it lies in their span's difference set
    train = store.select("train")
    diffs = {c: np.asarray(train.features)[train.y == c] for c in (0, 1)}
    direction = nulls[0, 0] / np.linalg.norm(nulls[0, 0])
    pairwise = diffs[0][:, None] - diffs[0][None]
    unit = pairwise / np.maximum(np.linalg.norm(pairwise, axis=2, keepdims=True), 1e-12)
    assert np.abs(unit @ direction).max() > 0.9999


def test_flip_rates_per_class_with_null(store, hsfm_run):
    renderer = inverter.load_inverter(store)
    result = flip.flip_rates(store, hsfm_run, renderer, null_draws=3, cache=False)
    assert result["renderer"] == "inverter" and result["classifier"].startswith("zero-shot")
    assert [c["class"] for c in result["per_class"]] == [0, 1]
    for row in result["per_class"]:
        assert set(row) >= {"class", "name", "rate", "null_rate", "n"}
        assert 0 <= row["rate"] <= 1 and 0 <= row["null_rate"] <= 1 and row["n"] == 4
        assert row["flipped"] == sum(e["flipped"] for e in result["per_example"] if e["class"] == row["class"])
        assert row["majority"] != row["minority"]
    assert len(result["per_example"]) == 8
    assert result == flip.flip_rates(store, hsfm_run, renderer, null_draws=3, cache=False)  # seeded
    summary = flip.summarize([result, result])
    assert summary["per_class"][0]["rate_std"] == 0 and summary["per_class"][0]["rate_mean"] == result["per_class"][0]["rate"]


def test_flip_rates_are_cached_on_disk_keyed_by_what_decides_them(store, hsfm_run, tmp_path, monkeypatch):
    """The attributes read back are kept beside the renderings: a new process (a new RenderCache on the same
    folder) gets the same result without rendering or re-encoding; another seed or null size is another key."""
    renderer = inverter.load_inverter(store)
    folder = tmp_path / "render"
    first = flip.flip_rates(store, hsfm_run, renderer, null_draws=3, cache=base.RenderCache(folder))
    assert first == flip.flip_rates(store, hsfm_run, renderer, null_draws=3, cache=False)  # what is cached is exact
    (path,) = (folder / flip.CACHE_SUBDIR).glob("*.json")

    def no_reading_back(*args, **kwargs):
        raise AssertionError("rendered and re-encoded again")

    monkeypatch.setattr(flip, "_read_back", no_reading_back)
    fresh = base.RenderCache(folder)  # nothing in memory: what a restarted server has
    assert flip.cached_flip_rates(store, hsfm_run, renderer, null_draws=3, cache=fresh) == first
    assert flip.flip_rates(store, hsfm_run, renderer, null_draws=3, cache=fresh) == first
    assert flip.cached_flip_rates(store, hsfm_run, renderer, null_draws=2, cache=fresh) is None
    assert flip.cached_flip_rates(store, hsfm_run, renderer, seed=5, null_draws=3, cache=fresh) is None
    assert flip.cached_flip_rates(store, hsfm_run, renderer, null_draws=3, cache=False) is None
    assert [p.name for p in (folder / flip.CACHE_SUBDIR).glob("*.json")] == [path.name]


def _damaged(text: str) -> list[str]:
    """Ways a flip-rate cache file can be wrong: cut short, not JSON, not an object, another key, out-of-range
    or mis-shaped attributes, a non-integer, another format version."""
    good = json.loads(text)
    n = len(good["predicted"])
    return [text[: len(text) // 2], "\x00\xff binary", "[1, 2]",
            json.dumps({**good, "key": {**good["key"], "seed": good["key"]["seed"] + 1}}),
            json.dumps({**good, "predicted": [[0, 7]] * n}),
            json.dumps({**good, "predicted": good["predicted"][:-1]}),
            json.dumps({**good, "predicted_null": [row[:-1] for row in good["predicted_null"]]}),
            json.dumps({**good, "predicted": [[0, 1.0]] * n}),
            json.dumps({**good, "predicted": [[True, False]] * n}),
            json.dumps({**good, "version": flip.CACHE_VERSION + 1}),
            json.dumps({**good, "classifier": None})]


def test_a_corrupt_flip_rate_cache_file_is_recomputed_never_trusted(store, hsfm_run, tmp_path):
    renderer = inverter.load_inverter(store)
    folder = tmp_path / "render"
    first = flip.flip_rates(store, hsfm_run, renderer, null_draws=3, cache=base.RenderCache(folder))
    (path,) = (folder / flip.CACHE_SUBDIR).glob("*.json")
    good = path.read_text()
    for damaged in _damaged(good):
        path.write_text(damaged)
        fresh = base.RenderCache(folder)  # the renderings stay cached: only the reading back is redone
        assert flip.cached_flip_rates(store, hsfm_run, renderer, null_draws=3, cache=fresh) is None, damaged[:80]
        assert flip.flip_rates(store, hsfm_run, renderer, null_draws=3, cache=fresh) == first
        assert json.loads(path.read_text()) == json.loads(good)  # rewritten whole


def test_a_background_worker_fills_the_render_cache_of_runs(workspace, hsfm_run, tmp_path):
    """`render.background`: a worker process computes a run's flip rate, class means and the strips the views
    open on into the workspace's render cache, records its stage in its job file, and a failure is recorded
    for the page (which then computes in the foreground)."""
    from hsfm_core.render import background

    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy, ignore=shutil.ignore_patterns("cache"))
    store = FeatureStore.open(copy)
    run = next(r for r in list_runs(copy) if r["run_id"] == hsfm_run["run_id"])
    renderer = inverter.load_inverter(store)
    assert background.job_status(store, [run["run_id"]]).state == "absent"
    assert background.start(store, [run["run_id"]]).state == "running"
    assert background.start(store, [run["run_id"]]).state == "running"  # a second start does nothing
    final = background.wait(store, [run["run_id"]], timeout=300)
    assert final.state == "done", (final, (copy / background.JOBS).glob("*.log") and
                                   [p.read_text()[-2000:] for p in (copy / background.JOBS).glob("*.log")])
    cached = flip.cached_flip_rates(store, run, renderer)
    assert cached == flip.flip_rates(store, run, renderer, cache=False)
    steps = list(background.STRIP_STEPS)
    counting = base.RenderCache(copy / base.CACHE_DIR)
    for example in background.strip_candidates(cached):
        base.render_edits(renderer, store, run, [example], steps, cache=counting)
    base.render_class_means(renderer, store, run, cache=counting)
    assert counting.misses == 0 and counting.hits == len(background.strip_candidates(cached)) * len(steps) + 2

    failed = background.start(store, ["hsfm-no-such-run"])
    assert background.wait(store, ["hsfm-no-such-run"], timeout=300).state == "failed"
    assert "no-such-run" in background.job_status(store, ["hsfm-no-such-run"]).stage and failed.state == "running"


def test_the_demo_builds_warm_step_waits_for_the_first_map_then_fills_the_lessons_views(workspace, tmp_path):
    """`demo.build.start_render_views`: the worker for the newest edited run group waits (before its imports)
    until the file it is given — the first map — exists, then computes the group's flip rates."""
    from hsfm_core.analysis.projection import default_map_run
    from hsfm_core.demo.build import start_render_views
    from hsfm_core.render import background

    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy, ignore=shutil.ignore_patterns("cache"))
    store = FeatureStore.open(copy)
    first_map = tmp_path / "map.parquet"
    status = start_render_views(copy, after=first_map)
    assert status is not None and status.state == "running"
    run = default_map_run(copy)
    runs = [run["run_id"]]  # this workspace's newest edited group is one run
    deadline = time.monotonic() + 120
    while background.job_status(store, runs).stage != "Waiting for the first map":  # its record, before any import
        assert time.monotonic() < deadline, background.job_status(store, runs)
        time.sleep(0.1)
    again = start_render_views(copy, after=first_map)  # another server's start: it sees this one, starts none
    assert again.state == "running" and again.stage == "Waiting for the first map"
    assert len([job for job, (w, _) in background._spawned.items() if str(copy) in job and w.poll() is None]) == 1
    assert flip.cached_flip_rates(store, run, inverter.load_inverter(store)) is None  # nothing computed yet
    first_map.write_bytes(b"the map")
    assert background.wait(store, runs, timeout=300).state == "done"
    assert flip.cached_flip_rates(store, run, inverter.load_inverter(store)) is not None


def test_flip_rates_use_a_linear_probe_outside_clip_space(tmp_path):
    from tests.gaussian import hsfm_and_erm_runs

    gaussian = gaussian_workspace(tmp_path / "g", d=64)
    hsfm, _ = hsfm_and_erm_runs(gaussian.path)
    run = next(r for r in list_runs(gaussian.path) if r["run_id"] == hsfm.run_id)
    classifier = attribute_classifier(gaussian)
    assert classifier.kind == "linear probe"
    test = gaussian.select("test")
    assert (classifier.predict(np.asarray(test.features)) == test.a).mean() > 0.9
    with pytest.raises(InputError, match="cannot rebuild"):  # imported features: no backbone to re-encode with
        flip.flip_rates(gaussian, run, Counting(), null_draws=2, cache=False)


# -- unCLIP ---------------------------------------------------------------------------------------------------
VIT_H = {"kind": "open_clip", "model": "ViT-H-14", "pretrained": "laion2b_s32b_b79k",
         "id": "open_clip:ViT-H-14@laion2b_s32b_b79k"}


def clip_store(path, backbone=VIT_H, dim=1024, unit=False, n=40):
    """A small store that says it holds CLIP ViT-H/14 embeddings (raw scale, or unit norm)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.6, (n, dim)).astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    y, a = np.arange(n) % 2, (np.arange(n) // 2) % 2
    split = np.array(["train", "val", "test", "train"] * (n // 4))
    groups = Groups(["landbird", "waterbird"], ["land", "water"])
    meta = pd.DataFrame({"row_id": np.arange(n), "sample_id": [f"s{i}" for i in range(n)], "split": split,
                         "y": y, "a": a, "g": groups.group_of(y, a), "image_path": ""})
    manifest = {"dataset": {"format": "synthetic", "source": "test", "options": {}}, "image_root": None,
                "class_names": groups.class_names, "attribute_names": groups.attribute_names, "backbone": backbone,
                "clip_space": True, "text_encoder": {"model": backbone["model"], "pretrained": backbone["pretrained"]},
                "shard": None}
    return write_store(path, x, meta, manifest)


def test_unclip_refuses_other_backbones_and_missing_weights(tmp_path, store):
    with pytest.raises(InputError, match="ViT-H/14.*stable-diffusion-2-1-unclip.*inverter"):
        unclip.variant_for_store(store)  # the demo's small CLIP
    vit_l = {"kind": "open_clip", "model": "ViT-L-14", "pretrained": "openai", "id": "open_clip:ViT-L-14@openai"}
    assert unclip.variant_for_store(clip_store(tmp_path / "l", vit_l, dim=768)) == "stable-diffusion-2-1-unclip-small"
    h = clip_store(tmp_path / "h")
    assert unclip.variant_for_store(h) == "stable-diffusion-2-1-unclip"
    with pytest.raises(InputError, match="local folder.*download"):
        unclip.check_weights_folder(None, "stable-diffusion-2-1-unclip")
    with pytest.raises(InputError, match="not found"):
        unclip.check_weights_folder(tmp_path / "nowhere", "stable-diffusion-2-1-unclip")
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "model_index.json").write_text(json.dumps({"_class_name": unclip.PIPELINE_CLASS}))
    with pytest.raises(InputError, match="missing vae"):
        unclip.check_weights_folder(partial, "stable-diffusion-2-1-unclip")
    for name in unclip.NEEDED[2:]:
        (partial / name).mkdir(exist_ok=True)
    (partial / "image_normalizer" / "config.json").write_text(json.dumps({"embedding_dim": 768}))
    with pytest.raises(InputError, match="768-d.*unclip-small.*need stable-diffusion-2-1-unclip "):
        unclip.check_weights_folder(partial, "stable-diffusion-2-1-unclip")


def test_unclip_without_the_extra_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # an import of it fails, as when it is not installed
    with pytest.raises(InputError, match=r"pip install 'hsfm-studio\[render\]'"):
        unclip.load_unclip(clip_store(tmp_path / "h"), tmp_path)


def tiny_unclip_pipeline(folder: Path, embed_dim: int = 1024):
    """A randomly initialised StableUnCLIPImg2ImgPipeline built from configs (16-px images), saved to
    `folder` the way a downloaded one is laid out. The tokenizer is a hand-written 56-token BPE vocabulary
    (the real one is a file of the weights folder)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz!"):
        vocab[ch], vocab[ch + "</w>"] = 2 + 2 * i, 3 + 2 * i
    source = folder.parent / f"{folder.name}-tokenizer"
    source.mkdir(parents=True)
    (source / "vocab.json").write_text(json.dumps(vocab))
    (source / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(source / "vocab.json"), str(source / "merges.txt"), model_max_length=77)
    hidden = 32
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, projection_dim=hidden, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=77))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), attention_head_dim=(2, 4),
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * embed_dim, cross_attention_dim=hidden,
        layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=None, image_encoder=None, image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=tokenizer,
        text_encoder=text_encoder, unet=unet, vae=vae,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "None cannot be saved" for the image encoder we leave out
        pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_unclip_wiring_on_a_tiny_random_pipeline(tmp_path):
    pytest.importorskip("diffusers", reason="diffusers is the optional [render] extra; not installed here")
    pytest.importorskip("transformers", reason="transformers is the optional [render] extra; not installed here")
    folder = tiny_unclip_pipeline(tmp_path / "sd21-unclip")
    raw, unit = clip_store(tmp_path / "raw"), clip_store(tmp_path / "unit", unit=True)
    for store, expected_scale in ((raw, 1.0), (unit, 32.0)):  # 32 = √1024: a fresh normaliser's mean 0, std 1
        renderer = unclip.load_unclip(store, folder, device="cpu", steps=2)
        assert renderer.variant == "stable-diffusion-2-1-unclip" and renderer.scale == pytest.approx(expected_scale)
        seen = []

        def record(embeds, seen=seen, original=renderer.pipe.image_normalizer.scale):
            seen.append(embeds.clone())
            return original(embeds)

        renderer.pipe.image_normalizer.scale = record
        features = np.asarray(store.features[:3])
        with pytest.warns(unclip.SlowRenderWarning, match="s per image"):
            images = renderer.render(features, seed=7)
        assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
        # the store's features are what reaches the pipeline's image-embedding input, at its scale
        assert np.allclose(seen[0].numpy(), features * expected_scale, rtol=1e-5, atol=1e-6)
        assert np.array_equal(images, renderer.render(features, seed=7))
        assert not np.array_equal(images, renderer.render(features, seed=8))
        assert np.array_equal(images[1], renderer.render(features[1:2], seed=7)[0])  # any batch, same pixels


def test_a_killed_render_worker_reads_failed_everywhere_so_pages_compute_rather_than_respawn(workspace, tmp_path):
    """SIGKILL leaves the worker's record without its lock: every process (not only the one that started it)
    reads the job as failed, with the log's path, and the pages compute the view in the foreground."""
    import signal

    from hsfm_core.analysis.projection import default_map_run
    from hsfm_core.render import background

    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy, ignore=shutil.ignore_patterns("cache"))
    store = FeatureStore.open(copy)
    runs = [default_map_run(copy)["run_id"]]
    background.start(store, runs, after=tmp_path / "never")
    deadline = time.monotonic() + 120
    while background.job_status(store, runs).stage != "Waiting for the first map":
        assert time.monotonic() < deadline, background.job_status(store, runs)
        time.sleep(0.1)
    job = str(background.job_file(store.path, store.content_hash, runs))
    worker, _ = background._spawned[job]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    background._spawned.pop(job)  # from here on, as a process that did not start it sees it
    status = background.job_status(store, runs)
    assert status.state == "failed" and "stopped before it finished" in status.stage and ".log" in status.stage
