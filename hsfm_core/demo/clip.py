"""The demo's small CLIP: an open_clip architecture trained contrastively (open_clip's `ClipLoss`)
on a group-balanced pool of SynthBirds images with varied captions, then saved as a `local-dir:`
bundle. It plays the part a web-pretrained CLIP plays for real data.

The training loop is plain PyTorch, readable in one sitting (nanoGPT style): sample a batch of
pool images and one of several captions for each, compute the symmetric InfoNCE loss, AdamW with
linear warm-up and cosine decay, clamp the logit scale at 100 as CLIP does.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hsfm_core.demo import synthbirds

# A ModifiedResNet image tower (open_clip's RN50 design at width 16, one block a stage) and a
# 2-layer text transformer. Measured here: with the same 200 supervised steps a ResNet tower told
# landbirds from waterbirds 84% of the time on held-out images, a 2-layer ViT with 8-px patches
# 64% (even with larger birds): small objects at 64 px need convolutions.
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS_CFG = {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                  "interpolation": "bicubic", "resize_mode": "shortest"}
POOL_SEED = 1000  # the pool never shares a generator with the demo splits (seed 0, another stream)
CAPTIONS_PER_IMAGE = 4
BACKGROUND_CLASSES, BACKGROUND_TEMPLATES = ("land", "water"), (
    "a photo of a bird on {}.", "a bird in front of {}.", "a photo of the {}.", "{} in the background.")
BIRD_CLASSES, BIRD_TEMPLATES = ("landbird", "waterbird"), ("a photo of a {}.", "a {}.", "a photo of a small {}.")


@dataclass(frozen=True)
class ClipTrainConfig:
    steps: int = 1200
    batch_size: int = 256
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    pool_size: int = 16000
    seed: int = 0
    workers: int = 2


def tokenize(texts):
    import open_clip

    return open_clip.tokenize(list(texts), context_length=MODEL_CFG["text_cfg"]["context_length"])


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 N × H × W × 3 → normalised float N × 3 × H × W (PREPROCESS_CFG, no resize needed at 64 px)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - 0.5) / 0.5


def build_model(seed: int):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**MODEL_CFG)


def _param_groups(model, weight_decay: float):
    # no decay on gains, biases, embeddings and the logit scale (the usual CLIP recipe)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_clip(config: ClipTrainConfig, progress: bool = True):
    """Train the demo CLIP from scratch; returns (model, training log)."""
    import open_clip

    t0 = time.perf_counter()
    images, scenes = synthbirds.render_pool_parallel(config.pool_size, POOL_SEED + config.seed, config.workers)
    caption_rng = np.random.default_rng([config.seed, 7])
    captions = [[synthbirds.caption(s, caption_rng) for _ in range(CAPTIONS_PER_IMAGE)] for s in scenes]
    tokens = tokenize([c for cs in captions for c in cs]).view(len(scenes), CAPTIONS_PER_IMAGE, -1)
    pool_s = time.perf_counter() - t0

    model = build_model(config.seed)
    model.train()
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    generator = torch.Generator().manual_seed(config.seed)
    # Half the batches share one background scene: with the background no help in telling pairs
    # apart, the loss can only fall by learning the birds (the small feature) and their words.
    by_scene = [torch.tensor([i for i, s in enumerate(scenes) if s.background == b])
                for b in synthbirds.LAND_SCENES + synthbirds.WATER_SCENES]
    log = []
    bar = tqdm(range(config.steps), desc="train-clip", unit="step", disable=not progress)
    for step in bar:
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if step % 2:
            same = by_scene[int(torch.randint(len(by_scene), (1,), generator=generator))]
            idx = same[torch.randint(len(same), (config.batch_size,), generator=generator)]
        else:
            idx = torch.randint(len(images), (config.batch_size,), generator=generator)
        which = torch.randint(CAPTIONS_PER_IMAGE, (config.batch_size,), generator=generator)
        out = model(to_model_input(images[idx.numpy()]), tokens[idx, which])
        image_features, text_features, logit_scale = out[:3]  # normalised embeddings, exp(logit scale)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == config.steps - 1:
            log.append({"step": step, "loss": loss.item(), "lr": lr})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model, {"pool_seconds": pool_s, "train_seconds": time.perf_counter() - t0 - pool_s, "log": log}


@torch.inference_mode()
def encode_images(model, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    feats = [model.encode_image(to_model_input(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1)


@torch.inference_mode()
def zero_shot_accuracy(model, tokenizer, image_features, labels, classes, templates) -> float:
    import open_clip

    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, classes, templates, use_tqdm=False)
    pred = (image_features @ classifier).argmax(dim=1).numpy()
    return float((pred == np.asarray(labels)).mean())


@torch.inference_mode()
def retrieval(model, tokenizer, image_features, captions: list[str]) -> dict:
    """Image → text: rank each held-out image's own caption among all held-out captions."""
    text = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    sims = image_features @ text.T
    rank = (sims > sims.diag()[:, None]).sum(dim=1)  # captions scoring strictly above the true one
    n = len(captions)
    return {"n": n, "recall@1": float((rank < 1).float().mean()), "recall@5": float((rank < 5).float().mean()),
            "chance@1": 1 / n, "chance@5": 5 / n, "median_rank": float(rank.float().median()) + 1}


def evaluate(model, tokenizer, seed: int = 0, heldout: int = 1000, workers: int = 2) -> dict:
    """The card's numbers: zero-shot background / bird accuracy on the demo *test* split (rendered
    exactly as `demo build` writes it) and image→text retrieval on held-out pool captions."""
    rows = synthbirds.labels_for(synthbirds.WATERBIRDS_COUNTS, seed)
    test_idx = [i for i, (split, _, _) in enumerate(rows) if split == "test"]
    images = synthbirds.render_rows([rows[i] for i in test_idx], test_idx, seed, workers)
    feats = encode_images(model, images)
    y = np.array([rows[i][1] for i in test_idx])
    a = np.array([rows[i][2] for i in test_idx])
    # held-out captions: pool indices beyond any training pool, full captions (bird and place)
    held_images, held_scenes = synthbirds.render_pool(heldout, POOL_SEED + seed, start=10_000_000)
    rng = np.random.default_rng([seed, 8])
    held_captions = [synthbirds.CAPTION_TEMPLATES[k % 4].format(
        bird=synthbirds.BIRD_WORDS[s.bird][0], place=synthbirds.BACKGROUND_WORDS[s.background][0],
        colour=s.colour, size=s.size) for k, s in zip(rng.integers(0, 4, heldout), held_scenes)]
    return {
        "test_images": len(test_idx),
        "zero_shot_background_accuracy": zero_shot_accuracy(model, tokenizer, feats, a, BACKGROUND_CLASSES,
                                                            BACKGROUND_TEMPLATES),
        "zero_shot_bird_accuracy": zero_shot_accuracy(model, tokenizer, feats, y, BIRD_CLASSES, BIRD_TEMPLATES),
        "retrieval": retrieval(model, tokenizer, encode_images(model, held_images), held_captions),
    }


def save_bundle(model, out: str | Path, config: ClipTrainConfig, train_log: dict, metrics: dict) -> Path:
    from hsfm_core.features.clip_bundle import save_local_dir

    out = save_local_dir(model.half(), MODEL_CFG, out, PREPROCESS_CFG)  # fp16 on disk: half the size
    model.float()
    (out / "training.json").write_text(json.dumps({"config": asdict(config), "metrics": metrics,
                                                   "pool_seconds": train_log["pool_seconds"],
                                                   "train_seconds": train_log["train_seconds"],
                                                   "log": train_log["log"]}, indent=2) + "\n")
    return out
