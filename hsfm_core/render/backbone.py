"""A store's own backbone, as rendering needs it: encode rendered images again (exactly as extraction
did), encode float images differentiably (the inverter's feature-matching loss), and classify a
store's attribute or class from features (zero-shot prompts in a CLIP space, else a linear probe).

The encoder is rebuilt from the manifest's `backbone` record through `features.encoders.load_encoder`,
the one construction path extraction used, so a re-encoded rendering lands in the store's space.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from hsfm_core.errors import InputError

_load_lock = threading.Lock()


@dataclass
class StoreBackbone:
    encoder: object  # features.encoders.Encoder
    input_size: int  # H = W the network takes
    mean: torch.Tensor  # 3 × 1 × 1, the preprocessing's normalisation
    std: torch.Tensor

    @property
    def network(self) -> torch.nn.Module:
        return self.encoder.network

    def encode_float(self, images: torch.Tensor) -> torch.Tensor:
        """Float images b × 3 × h × w in [0, 1] → features b × d, differentiable (the inverter's loss):
        resized to the network's input size and normalised as extraction's preprocessing does."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = torch.nn.functional.interpolate(images, size=(self.input_size, self.input_size),
                                                     mode="bicubic", align_corners=False, antialias=True)
        return self.network((images - self.mean.to(images)) / self.std.to(images)).float()

    @torch.inference_mode()
    def encode_uint8(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 n × H × W × 3 → features n × d, through the encoder's own preprocessing (PIL in, as at
        extraction), so a rendering is encoded exactly as a real image of that size would be."""
        from PIL import Image

        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.encoder.preprocess(Image.fromarray(im)) for im in images[start : start + batch_size]])
            out.append(self.encoder.encode(batch).float().numpy())
        return np.concatenate(out) if out else np.empty((0, self.encoder.dim), np.float32)


def _preprocess_geometry(preprocess) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(input size, mean, std) from a torchvision Compose (open_clip's and the ResNet recipe's)."""
    from torchvision import transforms

    size, mean, std = None, None, None
    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, transforms.CenterCrop):
            size = t.size[0] if isinstance(t.size, (tuple, list)) else int(t.size)
        elif isinstance(t, transforms.Resize) and size is None:
            size = t.size if isinstance(t.size, int) else t.size[0]
        elif isinstance(t, transforms.Normalize):
            mean, std = t.mean, t.std
    if size is None or mean is None:
        raise InputError(f"cannot read the input size and normalisation from the backbone's preprocessing {preprocess}")
    return int(size), torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), torch.tensor(std, dtype=torch.float32).view(3, 1, 1)


def store_backbone(store) -> StoreBackbone:
    """The store's backbone on the CPU (cached per backbone record); InputError when it cannot be rebuilt."""
    record = store.manifest["backbone"]
    if record.get("kind") not in ("open_clip", "resnet50") or not record.get("model"):
        raise InputError(f"{store.path}: its features come from {record.get('id')!r}, which this Studio cannot "
                         f"rebuild (imported features without their model); rendering needs the backbone itself")
    return _backbone(json.dumps({"model": record["model"], "pretrained": record.get("pretrained")}))


@lru_cache(maxsize=2)
def _backbone(record_json: str) -> StoreBackbone:
    from hsfm_core.features.encoders import load_encoder

    record = json.loads(record_json)
    with _load_lock:
        encoder = load_encoder(record["model"], record["pretrained"], torch.device("cpu"))
    for p in encoder.network.parameters():
        p.requires_grad_(False)
    encoder.network.eval()
    size, mean, std = _preprocess_geometry(encoder.preprocess)
    return StoreBackbone(encoder, size, mean, std)


# -- classifying features: the attribute (flip rates) and the class (quality checks) -------------------------
PROMPT_TEMPLATES = ("a photo of a {}.", "a photo with {}.", "{}.", "a picture of {}.")


@dataclass
class FeatureClassifier:
    """Scores features n × d → predicted index n; `kind` says how (zero-shot prompts or a linear probe)."""

    kind: str  # "zero-shot" | "linear probe"
    names: list[str]
    weight: np.ndarray  # k × d (zero-shot: unit text embeddings, applied to unit features)
    bias: np.ndarray
    normalize: bool

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return (x @ self.weight.T + self.bias).argmax(axis=1)


def zero_shot_classifier(store, names: list[str], templates=PROMPT_TEMPLATES) -> FeatureClassifier:
    """Template-averaged prompts of `names` encoded by the store's text tower (a CLIP-space store)."""
    import open_clip

    from hsfm_core.analysis.decode import _text_model

    text = store.manifest.get("text_encoder")
    if not store.manifest.get("clip_space") or not text:
        raise InputError(f"{store.path}: not a CLIP-space store, so zero-shot prompts do not apply")
    model, tokenizer = _text_model(text["model"], text.get("pretrained"))
    with torch.inference_mode():
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, list(names), list(templates),
                                                       use_tqdm=False).T.float().numpy()
    return FeatureClassifier("zero-shot", list(names), weights.astype(np.float64), np.zeros(len(names)), True)


def probe_classifier(store, labels: str) -> FeatureClassifier:
    """An L2 logistic probe on the store's train features for `labels` ("a" attribute or "y" class)."""
    from sklearn.linear_model import LogisticRegression

    train = store.select("train")
    target = train.meta[labels].to_numpy()
    names = store.attribute_names if labels == "a" else store.class_names
    if len(np.unique(target)) < 2:
        raise InputError(f"{store.path}: the train split has one {'attribute' if labels == 'a' else 'class'} only; "
                         f"a probe needs two")
    x = np.asarray(train.features, dtype=np.float64)
    scale = np.maximum(x.std(axis=0), 1e-12)
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(x / scale, target)
    weight = np.zeros((len(names), x.shape[1]))
    bias = np.full(len(names), -np.inf)
    if len(probe.classes_) == 2:  # sklearn's binary form: one row for the second class
        weight[probe.classes_[1]] = probe.coef_[0] / scale
        bias[probe.classes_[1]] = probe.intercept_[0]
        bias[probe.classes_[0]] = 0.0
    else:
        weight[probe.classes_] = probe.coef_ / scale
        bias[probe.classes_] = probe.intercept_
    return FeatureClassifier("linear probe", list(names), weight, bias, False)


def attribute_classifier(store) -> FeatureClassifier:
    """The store's attribute from a feature: zero-shot prompts of its attribute names in a CLIP space,
    otherwise a linear probe on its attribute labels (docs/ARCHITECTURE.md §Render)."""
    if len(store.attribute_names) < 2:
        raise InputError(f"{store.path}: one attribute only ({store.attribute_names}); there is nothing to flip")
    if store.manifest.get("clip_space") and store.manifest.get("text_encoder"):
        return zero_shot_classifier(store, store.attribute_names)
    return probe_classifier(store, "a")


def class_classifier(store) -> FeatureClassifier:
    if store.manifest.get("clip_space") and store.manifest.get("text_encoder"):
        return zero_shot_classifier(store, store.class_names)
    return probe_classifier(store, "y")
