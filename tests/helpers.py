"""Small generated datasets and a tiny open_clip bundle for tests and benchmarks (offline)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

# 3.4M parameters, 64 px: the size ENVIRONMENT.md measured (most parameters are the token table).
TINY_CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS_CFG = {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

# Small per-(split, group) counts: train is correlated, val/test balanced.
SMALL_COUNTS = {"train": (12, 2, 2, 12), "val": (4, 4, 4, 4), "test": (4, 4, 4, 4)}
WATERBIRDS_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    import open_clip

    from hsfm_core.features.clip_bundle import save_local_dir

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    return save_local_dir(model, TINY_CLIP_CFG, folder, TINY_PREPROCESS_CFG)


def write_image(path: Path, g: int, index: int, size: int = 32) -> None:
    """A small PNG whose colour depends on the group, so features differ between groups."""
    rng = np.random.default_rng(index)
    colours = [(40, 120, 40), (40, 80, 200), (160, 120, 40), (30, 60, 220), (200, 60, 60), (120, 40, 160)]
    base = np.array(colours[g % len(colours)], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def rows_for(counts: dict[str, Sequence[int]], n_attributes: int = 2) -> list[tuple[str, int, int]]:
    """(split, y, a) for every row, grouped by split then group (g = A·y + a, A = n_attributes)."""
    return [(split, g // n_attributes, g % n_attributes) for split, per_group in counts.items()
            for g, n in enumerate(per_group) for _ in range(n)]


def make_waterbirds(root: Path, counts=SMALL_COUNTS, image_size: int = 32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for i, (split, y, a) in enumerate(rows_for(counts)):
            name = f"{'water' if y else 'land'}bird/img_{i:05d}.png"
            write_image(root / name, 2 * y + a, i, image_size)
            w.writerow([i + 1, name, y, WATERBIRDS_SPLIT_CODE[split], a, f"/p/place_{i}.jpg"])
    return root


def make_generic_csv(root: Path, counts=SMALL_COUNTS, split_words: bool = True, n_attributes: int = 2,
                     image_size: int = 32) -> Path:
    """`data.csv` + PNGs; `counts` per (split, group) with groups g = A·y + a, A = n_attributes."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "filename", "split", "y", "a"])
        for i, (split, y, a) in enumerate(rows_for(counts, n_attributes)):
            name = f"images/{i:05d}.png"
            write_image(root / name, n_attributes * y + a, i, image_size)
            w.writerow([f"s{i}", name, split if split_words else WATERBIRDS_SPLIT_CODE[split], y, a])
    return root / "data.csv"


CELEBA_ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Smiling"]


def make_celeba(root: Path, counts=SMALL_COUNTS, variant: str = "txt", nested: bool = False) -> Path:
    """CelebA files with 4 attribute columns; `variant` txt (original) or csv (Kaggle)."""
    rows = rows_for(counts)
    image_dir = root / "img_align_celeba" / ("img_align_celeba" if nested else "")
    lines_attr, lines_part = [], []
    for i, (split, y, a) in enumerate(rows):
        name = f"{i + 1:06d}.jpg"
        write_image(image_dir / name, 2 * y + a, i)
        values = {"5_o_Clock_Shadow": -1, "Blond_Hair": 1 if y else -1, "Male": 1 if a else -1,
                  "Smiling": 1 if i % 2 else -1}
        lines_attr.append((name, [values[c] for c in CELEBA_ATTRS]))
        lines_part.append((name, WATERBIRDS_SPLIT_CODE[split]))
    if variant == "txt":
        with open(root / "list_attr_celeba.txt", "w") as fh:
            fh.write(f"{len(rows)}\n{' '.join(CELEBA_ATTRS)} \n")
            for name, vals in lines_attr:
                fh.write(name + "".join(f" {v:2d}" for v in vals) + "\n")
        with open(root / "list_eval_partition.txt", "w") as fh:
            fh.writelines(f"{name} {p}\n" for name, p in lines_part)
    else:
        with open(root / "list_attr_celeba.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", *CELEBA_ATTRS])
            w.writerows([name, *vals] for name, vals in lines_attr)
        with open(root / "list_eval_partition.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "partition"])
            w.writerows(lines_part)
    return root


def wait_for(condition, timeout_s: float, poll_s: float = 0.1):
    """Poll `condition()` until it returns something truthy → that value; None when `timeout_s` passes
    first (the caller decides whether that is a failure)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    return None


def until(condition, timeout_s: float = 60, what: str = "condition", poll_s: float = 0.05):
    """`wait_for`, a test's assertion: AssertionError naming `what` when the time runs out."""
    value = wait_for(condition, timeout_s, poll_s)
    if not value:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
    return value
