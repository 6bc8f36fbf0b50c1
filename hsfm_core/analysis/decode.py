"""Decode directions in feature space into words: cosine similarity with CLIP text embeddings of
a concept bank, each averaged over prompt templates (open_clip's `build_zero_shot_classifier`
with its `SIMPLE_IMAGENET_TEMPLATES`).

Directions are a feature editor's edits (HSFM's support set) Δ = after − before (per support example, or averaged per class) or
"selection mean − class mean" of original features (Domino-style slice description). Scores
need the features to live in a CLIP joint space. For other stores (a ResNet-50 extraction) a
linear bridge to CLIP image space — ridge regression fitted on paired features of the same
images — is used when the user extracted both; otherwise decoding is refused, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from hsfm_core.errors import InputError
from hsfm_core.resources import assets_dir

DEFAULT_CONCEPTS = assets_dir() / "concepts.txt"  # the checkout's assets/ or an installed copy
DEFAULT_CONTRAST = ("water background", "land background")


@dataclass
class ConceptBank:
    concepts: list[str]
    categories: list[str]
    embeddings: np.ndarray  # n × D, unit rows, in the CLIP joint space

    def scores(self, directions: np.ndarray) -> np.ndarray:
        """Cosine of each direction (m × D) with each concept: m × n."""
        d = np.atleast_2d(np.asarray(directions, dtype=np.float64))
        norms = np.linalg.norm(d, axis=1, keepdims=True)
        return (d / np.where(norms > 0, norms, 1)) @ self.embeddings.T.astype(np.float64)

    def ranked(self, direction: np.ndarray, top: int = 10) -> list[dict]:
        s = self.scores(direction)[0]
        order = np.argsort(-s)[:top]
        return [{"concept": self.concepts[i], "category": self.categories[i], "cosine": float(s[i])} for i in order]

    def contrast(self, directions: np.ndarray, positive: str, negative: str) -> np.ndarray:
        """cos(Δ, positive) − cos(Δ, negative) for each direction."""
        for name in (positive, negative):
            if name not in self.concepts:
                raise InputError(f"contrast concept {name!r} is not in the concept bank")
        s = self.scores(directions)
        return s[:, self.concepts.index(positive)] - s[:, self.concepts.index(negative)]


def read_concepts(path: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """Concepts and their categories from a text file (see assets/concepts.txt for the format)."""
    path = Path(path) if path else DEFAULT_CONCEPTS
    if not path.is_file():
        raise InputError(f"concept file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc})") from None
    concepts, categories, category = [], [], "concept"
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("# category:"):
            category = line.split(":", 1)[1].strip() or "concept"
        elif line and not line.startswith("#") and line not in concepts:
            concepts.append(line)
            categories.append(category)
    if not concepts:
        raise InputError(f"{path}: no concepts (one per line; '#' starts a comment)")
    return concepts, categories


def weights_stamp(text_encoder: dict) -> list:
    """What identifies the text encoder's weights: size and modification time of a local weights
    file (a retrained bundle or a replaced checkpoint changes it), else the pretrained tag."""
    model, pretrained = text_encoder["model"], text_encoder.get("pretrained")
    files = []
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        files = [folder / "open_clip_config.json", *sorted(folder.glob("open_clip_*model*"))]
    elif pretrained and Path(pretrained).is_file():
        files = [Path(pretrained)]
    return [model, pretrained, *[(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]]


def _text_model(model: str, pretrained: str | None):
    return _load_text_model(model, pretrained, json.dumps(weights_stamp({"model": model, "pretrained": pretrained})))


@lru_cache(maxsize=4)
def _load_text_model(model: str, pretrained: str | None, stamp: str):  # stamp: part of the cache key only
    import open_clip

    try:
        clip, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained, weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot load the text encoder {model} ({pretrained}): {type(exc).__name__}: {exc}") from None
    return clip.eval(), open_clip.get_tokenizer(model)


def encode_concepts(text_encoder: dict, concepts: list[str], categories: list[str],
                    cache_dir: str | os.PathLike | None = None) -> ConceptBank:
    """Template-averaged, normalised text embeddings; cached on disk by encoder and concepts."""
    import open_clip

    key = hashlib.blake2b(json.dumps([weights_stamp(text_encoder), open_clip.__version__,
                                      len(open_clip.SIMPLE_IMAGENET_TEMPLATES), concepts]).encode(),
                          digest_size=12).hexdigest()
    cached = Path(cache_dir) / f"concepts-{key}.npy" if cache_dir else None
    if cached is not None and cached.is_file():
        return ConceptBank(concepts, categories, np.load(cached, allow_pickle=False))
    model, tokenizer = _text_model(text_encoder["model"], text_encoder.get("pretrained"))
    with torch.inference_mode():
        classifier = open_clip.build_zero_shot_classifier(model, tokenizer, concepts,
                                                          open_clip.SIMPLE_IMAGENET_TEMPLATES, num_classes_per_batch=64)
    embeddings = classifier.T.float().numpy()  # n × D
    if cached is not None:
        from hsfm_core.fsutil import atomic_path

        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, embeddings)
    return ConceptBank(concepts, categories, embeddings)


def clip_space_map(store, bridge=None):
    """(map of directions into the CLIP joint space, the text encoder to use).

    A CLIP store maps directions as they are. Otherwise `bridge` must be a CLIP store of the same
    images (same sample ids): a ridge regression from this store's features to the bridge's is
    fitted on the rows they share, and its linear part maps directions (translations cancel in a
    difference)."""
    if store.manifest.get("clip_space"):
        return (lambda d: np.asarray(d, dtype=np.float64)), store.manifest["text_encoder"]
    if bridge is None:
        raise InputError(f"{store.path}: features from {store.manifest['backbone']['id']} are not in a CLIP joint "
                         f"space, so text similarities would be meaningless; extract the same images with an "
                         f"open_clip model and pass that store as the bridge (--bridge)")
    if not bridge.manifest.get("clip_space"):
        raise InputError(f"{bridge.path}: the bridge store must hold CLIP features")
    from sklearn.linear_model import Ridge

    ours = dict(zip(store.meta["sample_id"], range(len(store.meta))))
    pairs = [(ours[s], i) for i, s in enumerate(bridge.meta["sample_id"]) if s in ours]
    if len(pairs) < 2 * store.dim:
        raise InputError(f"only {len(pairs)} images are in both {store.path} and {bridge.path}; the bridge needs "
                         f"at least {2 * store.dim} (twice the feature dimension)")
    rows, bridge_rows = (np.array(p) for p in zip(*pairs))
    ridge = Ridge(alpha=1.0).fit(np.asarray(store.features[rows], dtype=np.float64),
                                 np.asarray(bridge.features[bridge_rows], dtype=np.float64))
    return (lambda d: np.asarray(d, dtype=np.float64) @ ridge.coef_.T), bridge.manifest["text_encoder"]


def decode_run(store, support: dict, bank: ConceptBank, to_clip, class_names: list[str], top: int = 10,
               contrast: tuple[str, str] = DEFAULT_CONTRAST) -> dict:
    """Top concepts and the contrast for each class's mean edit and for every support example."""
    delta = to_clip(support["after"].numpy() - support["before"].numpy())
    labels = support["labels"].numpy()
    out = {"contrast": {"positive": contrast[0], "negative": contrast[1]}, "per_class": [], "per_example": []}
    for c in np.unique(labels):
        mean = delta[labels == c].mean(axis=0)
        out["per_class"].append({"class": int(c), "name": class_names[int(c)], "n": int((labels == c).sum()),
                                 "top": bank.ranked(mean, top), "contrast": float(bank.contrast(mean, *contrast)[0])})
    contrasts = bank.contrast(delta, *contrast)
    for i, d in enumerate(delta):
        out["per_example"].append({"support": i, "row": int(support["indices"][i]), "class": int(labels[i]),
                                   "top": bank.ranked(d, 3), "contrast": float(contrasts[i])})
    return out


def decode_edit_selection(support: dict, selected, bank: ConceptBank, to_clip, top: int = 10,
                          contrast: tuple[str, str] = DEFAULT_CONTRAST) -> dict:
    """Top concepts and the contrast for the mean edit of a chosen set of support examples."""
    selected = np.asarray(selected, dtype=np.int64)
    n = len(support["after"])
    if len(selected) == 0 or selected.min() < 0 or selected.max() >= n:
        raise InputError(f"support selection {selected.tolist()}: choose among 0..{n - 1}")
    delta = to_clip((support["after"].numpy() - support["before"].numpy())[selected]).mean(axis=0)
    return {"support": selected.tolist(), "top": bank.ranked(delta, top),
            "contrast": float(bank.contrast(delta, *contrast)[0])}


def describe_selection(store, rows: np.ndarray, bank: ConceptBank, to_clip, top: int = 10) -> dict:
    """Concepts for "selection mean − class mean" of original features, per class in the selection."""
    rows = np.asarray(rows)
    y = store.meta["y"].to_numpy()
    out = []
    for c in np.unique(y[rows]):
        chosen = rows[y[rows] == c]
        whole_class = np.flatnonzero(y == c)
        direction = to_clip(np.asarray(store.features[chosen], dtype=np.float64).mean(axis=0)
                            - np.asarray(store.features[whole_class], dtype=np.float64).mean(axis=0))
        out.append({"class": int(c), "n": int(len(chosen)), "top": bank.ranked(direction, top)})
    return {"per_class": out}
