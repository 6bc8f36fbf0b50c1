"""The `inverter` renderer: a small decoder from a store's features to its images, trained on the
store's own images (docs/ARCHITECTURE.md §Render).

Model: the feature, standardised per coordinate (the training features' mean and std, kept with the
weights), → a linear layer to a 4 × 4 grid → one (nearest ×2 upsampling, 3 × 3 convolution, GroupNorm,
SiLU) stage per doubling up to `size` → a 3 × 3 convolution and a sigmoid. Loss: a pixel term (L1
against the real image at `size` px) plus a feature-matching term through the store's own frozen
backbone, 1 − cos(backbone(rendered image), feature), so that a rendering encodes back close to the
feature it was rendered from — the property that makes a rendering evidence (§Render's flip rate
re-encodes renderings). AdamW with warm-up and cosine decay.

On disk (a folder): `inverter.safetensors` (fp16 weights and the standardisation), `card.json` (the
config, the backbone it inverts, the data, the steps, the losses and the quality numbers) and
`README.md` (the same card for people). `train_renderer` writes one into `<workspace>/renderers/inverter/`;
the demo's is bundled in `assets/synthbirds-inverter/` (trained by `python -m hsfm_core.render.train_demo`).
`load_inverter(store)` finds the right one: the workspace's own, else a bundled one for the same
backbone weights, else a clear error saying how to train one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hsfm_core.errors import InputError
from hsfm_core.render.base import Renderer
from hsfm_core.resources import assets_dir

FORMAT = "hsfm-inverter"
VERSION = 1
WEIGHTS = "inverter.safetensors"
CARD = "card.json"
README = "README.md"
WORKSPACE_DIR = Path("renderers") / "inverter"  # a workspace's own trained inverter
BUNDLED = ("synthbirds-inverter",)  # folders under assets/ holding bundled inverters
MAX_WIDTH_FACTOR = 8  # channels grow ×2 per halving of the resolution, up to 8 × width


@dataclass(frozen=True)
class InverterConfig:
    dim: int  # feature dimension
    size: int = 64  # output H = W, a power of two ≥ 8
    width: int = 16  # channels at the output resolution

    def __post_init__(self) -> None:
        if self.size < 8 or self.size & (self.size - 1) or self.size > 512:
            raise InputError(f"renderer size must be a power of two from 8 to 512, got {self.size}")
        if self.width < 8 or self.width % 8:
            raise InputError(f"renderer width must be a multiple of 8 (GroupNorm groups), got {self.width}")

    def channels(self) -> list[int]:
        """Channels at 4 × 4, 8 × 8, …, size × size."""
        stages = int(math.log2(self.size // 4))
        return [self.width * min(2 ** (stages - k), MAX_WIDTH_FACTOR) for k in range(stages + 1)]


class InverterNet(nn.Module):
    def __init__(self, config: InverterConfig):
        super().__init__()
        self.config = config
        ch = config.channels()
        self.register_buffer("feature_mean", torch.zeros(config.dim))
        self.register_buffer("feature_std", torch.ones(config.dim))
        self.project = nn.Linear(config.dim, ch[0] * 16)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1),
                          nn.GroupNorm(8, cout), nn.SiLU())
            for cin, cout in zip(ch[:-1], ch[1:]))
        self.start = nn.Sequential(nn.GroupNorm(8, ch[0]), nn.SiLU())
        self.out = nn.Conv2d(ch[-1], 3, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features b × d → images b × 3 × size × size in [0, 1]."""
        z = (features - self.feature_mean) / self.feature_std
        h = self.start(self.project(z).view(len(z), -1, 4, 4))
        for stage in self.stages:
            h = stage(h)
        return torch.sigmoid(self.out(h))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """b × 3 × H × W in [0, 1] → uint8 b × H × W × 3."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class InverterRenderer(Renderer):
    """A trained inverter: deterministic (the seed changes nothing), batched on the CPU."""

    name = "inverter"
    batch_size = 256

    def __init__(self, net: InverterNet, card: dict, folder: Path | None, weights_hash: str):
        self.net = net.eval()
        self.card = card
        self.folder = folder
        self.size = net.config.size
        self.dim = net.config.dim
        self.key = f"inverter:{weights_hash}"

    @torch.inference_mode()
    def _render_batch(self, features: np.ndarray, seed: int) -> np.ndarray:
        return to_uint8(self.net(torch.from_numpy(features)))


# -- finding and loading ------------------------------------------------------------------------------------
def _file_hash(path: Path) -> str:
    stat = path.stat()
    return _hash_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _hash_cached(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: part of the cache key only
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def backbone_record(store) -> dict:
    """What an inverter records about the backbone it inverts: the store's backbone id and, for a local
    weights file or bundle, the hash of its weights (a retrained bundle keeps its id but not its features)."""
    backbone = store.manifest["backbone"]
    record = {"id": backbone["id"], "dim": store.dim, "weights_blake2b": None}
    weights = _backbone_weights_file(backbone)
    if weights is not None:
        record["weights_blake2b"] = _file_hash(weights)
    return record


def _backbone_weights_file(backbone: dict) -> Path | None:
    from hsfm_core.features.encoders import LOCAL_DIR, LOCAL_DIR_WEIGHTS

    model, pretrained = backbone.get("model") or "", backbone.get("pretrained")
    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR):])
        return next((folder / w for w in LOCAL_DIR_WEIGHTS if (folder / w).is_file()), None)
    if pretrained and Path(pretrained).is_file():
        return Path(pretrained)
    return None


def fits(card: dict, store) -> str | None:
    """None when an inverter (its card) inverts this store's backbone, else why not."""
    want = card.get("backbone") or {}
    have = backbone_record(store)
    if want.get("id") != have["id"] or want.get("dim") != have["dim"]:
        return f"it inverts {want.get('id')} ({want.get('dim')}-d), the store holds {have['id']} ({have['dim']}-d)"
    if want.get("weights_blake2b") and have["weights_blake2b"] and want["weights_blake2b"] != have["weights_blake2b"]:
        return f"it was trained for other weights of {have['id']} (the backbone was retrained since)"
    return None


def read_card(folder: str | os.PathLike) -> dict:
    from hsfm_core.safe_io import read_json, require_keys

    folder = Path(folder)
    card = read_json(folder / CARD, "inverter card")
    if card.get("format") != FORMAT or card.get("version") != VERSION:
        raise InputError(f"{folder / CARD}: expected format {FORMAT!r} version {VERSION}, found "
                         f"{card.get('format')!r} version {card.get('version')!r}")
    require_keys(card, {"config": dict, "backbone": dict}, str(folder / CARD))
    return card


def candidate_folders(store) -> list[Path]:
    """Where an inverter for this store may be, in order: the workspace's own, then the bundled ones."""
    return [Path(store.path) / WORKSPACE_DIR, *(assets_dir() / name for name in BUNDLED)]


def find_inverter(store) -> Path | None:
    """The first candidate folder whose inverter fits the store's backbone, or None."""
    for folder in candidate_folders(store):
        if (folder / CARD).is_file() and (folder / WEIGHTS).is_file():
            try:
                if fits(read_card(folder), store) is None:
                    return folder
            except InputError:
                continue  # a damaged candidate: the next one may do; load_inverter(path) names the damage
    return None


def load_inverter(store, folder: str | os.PathLike | None = None) -> InverterRenderer:
    """The inverter for `store`: from `folder`, or the first that fits (`find_inverter`).

    InputError when none fits (with the command that trains one), or when the folder's files are damaged or
    were trained for another backbone."""
    if folder is None:
        found = find_inverter(store)
        if found is None:
            raise InputError(f"no inverter renderer for {store.path} ({store.manifest['backbone']['id']}): train one "
                             f"with `python -m hsfm_core train-renderer --workspace {store.path}` (it needs the "
                             f"store's images), or use --renderer unclip for an OpenCLIP ViT-H/14 or OpenAI "
                             f"ViT-L/14 store")
        folder = found
    folder = Path(folder)
    card = read_card(folder)
    why = fits(card, store)
    if why is not None:
        raise InputError(f"{folder}: this inverter does not fit {store.path}: {why}")
    return _load(folder, card)


def load_folder(folder: str | os.PathLike) -> InverterRenderer:
    """An inverter from its folder, without a store to check it against (tests, benchmarks)."""
    folder = Path(folder)
    return _load(folder, read_card(folder))


def _load(folder: Path, card: dict) -> InverterRenderer:
    from hsfm_core.safe_io import read_safetensors

    try:
        config = InverterConfig(**card["config"])
    except TypeError as exc:
        raise InputError(f"{folder / CARD}: config {card['config']} is not an inverter config ({exc})") from None
    net = InverterNet(config)
    state = read_safetensors(folder / WEIGHTS, "inverter weights", required=tuple(net.state_dict()))
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{folder / WEIGHTS}: does not match the card's config {card['config']} "
                         f"({str(exc).splitlines()[0]})") from None
    if not all(torch.isfinite(p).all() for p in net.state_dict().values()):
        raise InputError(f"{folder / WEIGHTS}: holds NaN or inf weights")
    return InverterRenderer(net, card, folder, _file_hash(folder / WEIGHTS))


# -- training -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    size: int = 64
    width: int = 16  # the decoder's cost is its high-resolution convolutions: 16 channels at 64 px
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    feature_weight: float = 2.0  # the feature-matching term's weight beside the pixel L1
    seed: int = 0
    splits: tuple[str, ...] = ("train", "val")  # the rows trained on; quality is measured on the others
    holdout: int = 512  # rows of the quality check (a seeded sample of the rows not trained on)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "holdout"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be an integer ≥ 1, got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.feature_weight >= 0 or not self.weight_decay >= 0:
            raise InputError("lr must be > 0, feature_weight and weight_decay ≥ 0")
        InverterConfig(dim=1, size=self.size, width=self.width)  # the size and width checks


TrainProgress = Callable[[int, int, dict], None]  # (step done, steps, latest losses)


def load_images(store, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The store's images of `rows`, centre-cropped to a square and resized to size × size: (uint8 images,
    rows kept). An unreadable image is left out (its row with it) rather than stopping the training."""
    from PIL import Image, ImageOps

    from hsfm_core.safe_io import open_image

    if store.image_root is None:
        raise InputError(f"{store.path}: the store records no image root (features imported without images); "
                         f"an inverter is trained on the store's own images")
    images, kept = [], []
    for row in rows:
        try:
            path = store.image_path(int(row))
            image = open_image(path) if path is not None else None
        except InputError:
            image = None
        if image is None:
            continue
        if image.size != (size, size):
            image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
        images.append(np.asarray(image, dtype=np.uint8))
        kept.append(int(row))
    if not kept:
        raise InputError(f"{store.path}: none of the {len(rows)} images could be read under {store.image_root}")
    return np.stack(images), np.asarray(kept, dtype=np.int64)


def _split_rows(store, settings: TrainSettings) -> tuple[np.ndarray, np.ndarray]:
    """(rows trained on, rows of the quality check)."""
    for split in settings.splits:
        if not store.has_split(split):
            raise InputError(f"{store.path}: no {split!r} split to train the renderer on (it has "
                             f"{', '.join(store.splits)})")
    fit = np.concatenate([store.rows(s) for s in settings.splits])
    others = np.setdiff1d(np.arange(len(store.meta)), fit)
    rng = np.random.default_rng([settings.seed, 17])
    if len(others) == 0:  # every split trained on: hold out a sample of them instead
        held = np.sort(rng.choice(fit, size=min(settings.holdout, len(fit) // 10 or 1), replace=False))
        return np.setdiff1d(fit, held), held
    return fit, np.sort(rng.choice(others, size=min(settings.holdout, len(others)), replace=False))


def train_renderer(store, size: int = 64, epochs: int = 10, *, out: str | os.PathLike | None = None,
                   progress: bool | TrainProgress = True, source: str | None = None, **settings) -> dict:
    """Train an inverter on a store's own images and features; write it with its card; → the card.

    Args:
        store: a `FeatureStore` with images (its manifest's image root).
        size: the rendered images' side in pixels (a power of two).
        epochs: passes over the training images (the store's train and val rows).
        out: the folder to write (default `<workspace>/renderers/inverter/`, where `load_inverter` looks
            first); replaced atomically.
        progress: True for a tqdm bar, False for none, or a callable(step, steps, losses).
        source: how the card names the data (default: the store's folder).
        settings: other `TrainSettings` fields (width, batch_size, lr, feature_weight, seed, splits, holdout).

    The card (`card.json`, and `README.md` for people) records the data, the steps, the losses and the
    quality numbers on held-out rows (`render.quality.inverter_quality`)."""
    from tqdm.auto import tqdm

    from hsfm_core.version import __version__
    from hsfm_core.render.backbone import store_backbone
    from hsfm_core.render.quality import inverter_quality

    settings = TrainSettings(size=size, epochs=epochs, **settings)
    started = time.perf_counter()
    backbone = store_backbone(store)
    fit_rows, held_rows = _split_rows(store, settings)
    images, fit_rows_kept = load_images(store, fit_rows, settings.size)
    load_s = time.perf_counter() - started
    cpu_started = time.process_time()  # training only, as train_seconds
    load_average = [round(os.getloadavg()[0], 1)]  # how busy the machine was: wall times depend on it
    X = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8; floats per batch (memory)
    Z = torch.from_numpy(np.asarray(store.features[fit_rows_kept], dtype=np.float32))

    torch.manual_seed(settings.seed)
    net = InverterNet(InverterConfig(dim=store.dim, size=settings.size, width=settings.width))
    net.feature_mean.copy_(Z.mean(0))
    net.feature_std.copy_(Z.std(0).clamp_min(1e-6))
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    per_epoch = math.ceil(len(X) / settings.batch_size)
    steps = settings.epochs * per_epoch
    generator = torch.Generator().manual_seed(settings.seed)
    log, window = [], []
    bar = tqdm(total=steps, desc="train-renderer", unit="step", disable=progress is not True)
    step = 0
    net.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(X), generator=generator)
        for start in range(0, len(X), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            lr = settings.lr * min(1.0, (step + 1) / settings.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            target, z = X[idx].float().div_(255), Z[idx]
            rendered = net(z)
            pixel = (rendered - target).abs().mean()
            feature = (1 - torch.nn.functional.cosine_similarity(backbone.encode_float(rendered), z)).mean()
            loss = pixel + settings.feature_weight * feature
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            window.append((pixel.item(), feature.item()))
            if step % per_epoch == 0 or step == steps or step % 100 == 0:
                mean_pixel, mean_feature = np.mean(window, axis=0)
                entry = {"step": step, "epoch": epoch + 1, "lr": lr, "pixel_l1": float(mean_pixel),
                         "feature_1_minus_cos": float(mean_feature),
                         "loss": float(mean_pixel + settings.feature_weight * mean_feature)}
                log.append(entry)
                window = []
                bar.set_postfix(pixel=f"{mean_pixel:.3f}", feature=f"{mean_feature:.3f}")
                if callable(progress):
                    progress(step, steps, entry)
            bar.update(1)
    bar.close()
    net.eval()
    train_s = time.perf_counter() - started - load_s
    cpu_s = time.process_time() - cpu_started
    load_average.append(round(os.getloadavg()[0], 1))

    renderer = InverterRenderer(net, {}, None, "unsaved")
    quality = inverter_quality(store, renderer, held_rows, reference_rows=fit_rows_kept)
    card = {
        "format": FORMAT, "version": VERSION, "renderer": "inverter",
        "config": asdict(net.config),
        "backbone": backbone_record(store),
        "data": {"store": source or str(Path(store.path).resolve()), "store_hash": store.content_hash,
                 "dataset": store.manifest["dataset"].get("format"), "splits": list(settings.splits),
                 "images": int(len(fit_rows_kept)), "unreadable_images_left_out": int(len(fit_rows) - len(fit_rows_kept)),
                 "image_size": settings.size},
        "training": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
                     "steps": steps, "steps_per_epoch": per_epoch,
                     "loss": "L1(rendered, image) + feature_weight × (1 − cos(backbone(rendered), feature))",
                     "optimizer": "AdamW, linear warm-up then cosine decay",
                     "parameters": int(sum(p.numel() for p in net.parameters())),
                     "load_seconds": round(load_s, 1), "train_seconds": round(train_s, 1),
                     "cpu_seconds": round(cpu_s, 1), "torch_threads": torch.get_num_threads(),
                     "load_average_start_end": load_average, "cpus": os.cpu_count(),
                     "final": log[-1] if log else None, "log": log},
        "quality": quality,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hsfm_core_version": __version__, "torch_version": torch.__version__,
    }
    folder = Path(out) if out is not None else Path(store.path) / WORKSPACE_DIR
    save(net, card, folder)
    return {**card, "path": str(folder)}


def save(net: InverterNet, card: dict, folder: str | os.PathLike) -> Path:
    """Write weights (fp16), card.json and README.md into a temporary sibling folder, then rename it into
    place (an earlier inverter there is replaced only once the new one is complete)."""
    from safetensors.torch import save_file

    from hsfm_core.fsutil import current_umask

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: (v.half() if k not in ("feature_mean", "feature_std") else v.float()).contiguous()
                 for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION)})
        os.chmod(tmp / WEIGHTS, 0o666 & ~current_umask())  # as any file this process writes (not 0600)
        (tmp / CARD).write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
        (tmp / README).write_text(card_markdown(card), encoding="utf-8")
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(folder, old)
        os.rename(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def card_markdown(card: dict) -> str:
    """The card for people: what the inverter is, its data, its training and its quality numbers."""
    t, d, q, c = card["training"], card["data"], card["quality"], card["config"]
    r, n, real = q["rendered"], q["nearest_real"], q["real"]
    lines = [
        f"# Inverter renderer for `{card['backbone']['id']}`", "",
        "A feature-inversion decoder: it turns a feature of this backbone into a "
        f"{c['size']} × {c['size']} image (hsfm_core/render/inverter.py; docs/ARCHITECTURE.md §Render).", "",
        "## Data",
        f"{d['images']:,} images of the store's {' + '.join(d['splits'])} splits ({d['dataset']}; store "
        f"`{d['store_hash']}`), at {d['image_size']} px, with their stored features."
        + (f" {d['unreadable_images_left_out']} unreadable images left out." if d['unreadable_images_left_out'] else ""), "",
        "## Training",
        f"Loss: {t['loss']} (feature_weight {t['feature_weight']}). {t['optimizer']}, lr {t['lr']}, "
        f"weight decay {t['weight_decay']}, batch {t['batch_size']}, {t['epochs']} epochs = {t['steps']:,} steps, "
        f"seed {t['seed']}; {t['parameters']:,} parameters, stored in fp16.",
        f"Time: {t['train_seconds']:.0f} s training ({t['cpu_seconds']:.0f} s of CPU time; torch threads: "
        f"{t['torch_threads']}) after {t['load_seconds']:.0f} s reading images"
        + (f"; the machine's load average went {t['load_average_start_end'][0]} → {t['load_average_start_end'][1]} "
           f"on {t['cpus']} CPUs (wall time depends on it)." if t.get("load_average_start_end") else "."),
        f"Final losses (mean of the last logged steps): pixel L1 {t['final']['pixel_l1']:.4f}, "
        f"1 − cos {t['final']['feature_1_minus_cos']:.4f}." if t.get("final") else "", "",
        "## Quality",
        f"On {q['n']} held-out rows ({q['rows']}), re-encoding each rendering with the backbone; attribute and "
        f"class by {q['classifier']}. The nearest real training image (by feature cosine) is the reference.", "",
        "| | rendering | nearest real image | real image |", "| --- | --- | --- | --- |",
        f"| median cosine with the feature | {r['median_cosine']:.3f} | {n['median_cosine']:.3f} | 1 |",
        f"| attribute agrees with the real image's | {_pct(r['attribute_agreement'])} | {_pct(n['attribute_agreement'])} | 100% |",
        f"| attribute accuracy (labels) | {_pct(r['attribute_accuracy'])} | {_pct(n['attribute_accuracy'])} | {_pct(real['attribute_accuracy'])} |",
        f"| class agrees with the real image's | {_pct(r['class_agreement'])} | {_pct(n['class_agreement'])} | 100% |",
        f"| class accuracy (labels) | {_pct(r['class_accuracy'])} | {_pct(n['class_accuracy'])} | {_pct(real['class_accuracy'])} |",
        "",
    ]
    return "\n".join(lines) + "\n"
