"""SynthBirds: a procedural Waterbirds (docs/ARCHITECTURE.md §Demo), drawn with numpy + PIL, deterministic by seed.

Every image is a small bird (landbird or waterbird: body shape, neck, beak, legs, pose, size,
position, colours from overlapping palettes) on a large background (land: forest, bamboo,
grass, ground; water: ocean, lake, horizon, waves). As on the real benchmark the bird is the
small, subtle core feature and the background the large, salient spurious one.

Size: 64 × 64 px. The bundled CLIP runs at 64 px (a small ModifiedResNet image tower, see demo/clip.py), a
bird of 14–24 px still shows its neck, beak and legs at that size, and 11,788 images render,
encode and train in well under the demo's two-minute budget on two CPU cores. Images are drawn
at 2× and box-filtered down, so edges are anti-aliased rather than jagged.

Determinism: each image has its own generator `default_rng([seed, stream, index])`, so the bytes
of image i depend only on (seed, i), whatever order or process draws it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hsfm_core.parallel import map_in_processes

SIZE = 64
SCALE = 2  # drawn at 2× then box-filtered down
BIRD_BOX = (16, 27)  # the bird's longest side in the CLIP's training pool: 16–26 px of the final 64
# The demo splits draw their birds smaller (12–20 px): as when a web-pretrained CLIP meets
# Waterbirds, the downstream birds are harder than the ones it learned from, and a linear probe
# trained on the 95%-correlated train split leans on the background.
DEMO_BIRD_BOX = (12, 21)
WATERBIRDS_COUNTS = {  # (landbird·land, landbird·water, waterbird·land, waterbird·water) per split
    "train": (3498, 184, 56, 1057),
    "val": (467, 466, 133, 133),
    "test": (2255, 2255, 642, 642),
}
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
LAND_SCENES = ("forest", "bamboo", "grass", "ground")
WATER_SCENES = ("ocean", "lake", "horizon", "waves")
LAND_BIRDS = ("sparrow", "finch", "warbler", "woodpecker", "robin")
WATER_BIRDS = ("duck", "gull", "heron", "swan", "cormorant")
# Overlapping palettes: every colour occurs on both kinds, with different frequencies.
COLOURS = {
    "brown": (120, 80, 45), "grey": (128, 128, 132), "white": (235, 235, 230), "black": (35, 35, 38),
    "yellow": (225, 190, 50), "red": (185, 55, 45), "blue": (70, 100, 170), "olive": (110, 115, 60),
}
LAND_PALETTE = {"brown": 4, "grey": 2, "yellow": 2, "red": 2, "blue": 1, "olive": 2, "black": 1, "white": 1}
WATER_PALETTE = {"white": 4, "grey": 3, "black": 2, "brown": 2, "blue": 1, "olive": 1, "yellow": 1, "red": 1}
STREAM_DATASET, STREAM_POOL = 0, 1


@dataclass(frozen=True)
class Scene:
    """What an image shows: enough to caption it."""

    bird: str  # one of LAND_BIRDS / WATER_BIRDS
    background: str  # one of LAND_SCENES / WATER_SCENES
    colour: str
    size: str  # "small" | "large"
    bird_area: float = 0.0  # fraction of the image's pixels the bird covers

    @property
    def is_waterbird(self) -> bool:
        return self.bird in WATER_BIRDS

    @property
    def is_water(self) -> bool:
        return self.background in WATER_SCENES


def _jitter(rgb, rng, amount=18):
    # min/max, not np.clip: the same integers, and np.clip on scalars was a quarter of the drawing time
    return tuple(int(min(255, max(0, c + rng.integers(-amount, amount + 1)))) for c in rgb)


def _pick(rng, weights: dict) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[rng.choice(len(names), p=p / p.sum())]


# -- backgrounds (drawn on a 2× canvas) ----------------------------------------------------------
def _gradient(top, bottom, height, width):
    t = np.linspace(0, 1, height)[:, None, None]
    return (np.array(top) * (1 - t) + np.array(bottom) * t).repeat(width, axis=1)


def _background(kind: str, rng: np.random.Generator) -> Image.Image:
    n = SIZE * SCALE
    sky = _gradient(_jitter((150, 190, 230), rng), _jitter((205, 225, 240), rng), n, n)
    if kind == "forest":
        arr = _gradient(_jitter((30, 70, 30), rng), _jitter((55, 95, 40), rng), n, n)
    elif kind == "bamboo":
        arr = _gradient(_jitter((150, 190, 110), rng), _jitter((110, 150, 70), rng), n, n)
    elif kind in ("grass", "ground", "horizon", "lake"):
        arr = sky.copy()
    else:  # ocean, waves
        arr = _gradient(_jitter((30, 80, 150), rng), _jitter((20, 55, 115), rng), n, n)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    horizon = int(n * rng.uniform(0.25, 0.5))
    if kind == "forest":
        for _ in range(rng.integers(4, 8)):
            x = rng.integers(0, n)
            d.rectangle([x, 0, x + rng.integers(4, 12), n], fill=_jitter((70, 45, 25), rng))
        for _ in range(rng.integers(8, 16)):
            x, y, r = rng.integers(0, n), rng.integers(0, int(n * 0.7)), rng.integers(10, 30)
            d.ellipse([x - r, y - r, x + r, y + r], fill=_jitter((25, 85, 35), rng, 25))
        d.rectangle([0, int(n * 0.85), n, n], fill=_jitter((60, 50, 30), rng))
    elif kind == "bamboo":
        for _ in range(rng.integers(6, 11)):
            x, w = rng.integers(0, n), rng.integers(4, 9)
            colour = _jitter((90, 150, 60), rng, 25)
            d.rectangle([x, 0, x + w, n], fill=colour)
            for y in range(rng.integers(0, 20), n, rng.integers(18, 30)):
                d.line([x - 1, y, x + w + 1, y], fill=_jitter((60, 100, 40), rng), width=2)
    elif kind == "grass":
        d.rectangle([0, horizon, n, n], fill=_jitter((80, 140, 50), rng))
        for _ in range(120):
            x, y = rng.integers(0, n), rng.integers(horizon, n)
            d.line([x, y, x + rng.integers(-3, 4), y - rng.integers(4, 10)], fill=_jitter((50, 110, 35), rng, 25))
    elif kind == "ground":
        d.rectangle([0, horizon, n, n], fill=_jitter((150, 115, 70), rng))
        for _ in range(rng.integers(5, 12)):
            x, y, r = rng.integers(0, n), rng.integers(horizon, n), rng.integers(3, 9)
            d.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=_jitter((120, 115, 105), rng))
    elif kind == "lake":
        shore = horizon + rng.integers(4, 12)
        d.rectangle([0, horizon, n, shore], fill=_jitter((45, 90, 45), rng))
        d.rectangle([0, shore, n, n], fill=_jitter((60, 110, 160), rng))
        for _ in range(rng.integers(6, 14)):
            x, y = rng.integers(0, n), rng.integers(shore + 4, n)
            d.line([x, y, x + rng.integers(8, 20), y], fill=_jitter((120, 160, 200), rng), width=1)
    elif kind == "horizon":
        d.rectangle([0, horizon, n, n], fill=_jitter((40, 95, 160), rng))
        if rng.random() < 0.5:
            x, r = rng.integers(10, n - 10), rng.integers(5, 10)
            d.ellipse([x - r, horizon - r - 6, x + r, horizon + r - 6], fill=_jitter((250, 220, 140), rng))
        for _ in range(rng.integers(3, 8)):
            x, y = rng.integers(0, n), rng.integers(horizon + 3, n)
            d.line([x, y, x + rng.integers(10, 30), y], fill=_jitter((150, 190, 220), rng), width=1)
    elif kind in ("ocean", "waves"):
        count = (6, 12) if kind == "ocean" else (18, 30)
        for _ in range(rng.integers(*count)):
            x, y, w = rng.integers(-10, n), rng.integers(0, n), rng.integers(10, 30)
            d.arc([x, y, x + w, y + w // 3], 180, 360, fill=_jitter((200, 225, 240), rng), width=2)
    return img


# -- birds (drawn on a 2× canvas with alpha, then placed) ---------------------------------------
def _bird(kind: str, colour: tuple, rng: np.random.Generator) -> Image.Image:
    """A bird facing right on a transparent 64×64 (2×) canvas."""
    n = 64
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    body = _jitter(colour, rng, 20)
    dark = tuple(int(c * 0.55) for c in body)
    beak = _jitter((230, 160, 40), rng, 20) if rng.random() < 0.7 else _jitter((60, 60, 60), rng, 10)
    legs = _jitter((90, 70, 40), rng, 15) if rng.random() < 0.6 else _jitter((230, 150, 60), rng, 15)
    cx, cy = 30, 34
    if kind in LAND_BIRDS:
        # round upright body, short neck, short pointed beak, thin legs, tail
        w, h = rng.integers(16, 22), rng.integers(14, 19)
        d.polygon([(cx - w // 2 + 2, cy), (cx - w // 2 - 10, cy + 6), (cx - w // 2 - 8, cy + 10)], fill=dark)  # tail
        for lx in (cx - 3, cx + 3):
            d.line([lx, cy + h // 2 - 2, lx + rng.integers(-2, 3), cy + h // 2 + rng.integers(6, 11)], fill=legs, width=2)
        d.ellipse([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=body)
        hr = rng.integers(6, 9)
        hx, hy = cx + w // 2 - 3, cy - h // 2 - 1
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=body)
        bl = rng.integers(5, 9) if kind != "woodpecker" else rng.integers(9, 13)
        d.polygon([(hx + hr - 1, hy - 2), (hx + hr + bl, hy + 1), (hx + hr - 1, hy + 3)], fill=beak)
        if kind in ("woodpecker", "robin") or rng.random() < 0.3:  # crest / breast patch
            patch = _jitter((190, 50, 40), rng, 20)
            d.ellipse([hx - 3, hy - hr - 2, hx + 3, hy - hr + 4], fill=patch)
        d.ellipse([hx + 1, hy - 3, hx + 4, hy], fill=(15, 15, 15))
        d.ellipse([cx - 4, cy - 3, cx + w // 2 - 2, cy + 5], fill=dark)  # wing
    else:
        # long horizontal body, long neck, long or flat beak, webbed feet or long legs / swimming
        w, h = rng.integers(24, 32), rng.integers(10, 14)
        swimming = kind in ("duck", "swan", "cormorant") and rng.random() < 0.6
        if kind == "heron" or not swimming:
            leg_len = rng.integers(12, 20) if kind == "heron" else rng.integers(5, 9)
            for lx in (cx - 4, cx + 3):
                d.line([lx, cy + h // 2 - 2, lx, cy + h // 2 + leg_len], fill=legs, width=2)
                d.line([lx - 3, cy + h // 2 + leg_len, lx + 3, cy + h // 2 + leg_len], fill=legs, width=2)
        d.ellipse([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=body)
        neck = rng.integers(8, 14) if kind in ("heron", "swan", "cormorant") else rng.integers(4, 7)
        nx = cx + w // 2 - 4
        d.line([nx, cy - 2, nx + 3, cy - h // 2 - neck], fill=body, width=5)
        hr = rng.integers(4, 7)
        hx, hy = nx + 4, cy - h // 2 - neck
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=body)
        if kind in ("duck", "swan"):  # flat bill
            d.rounded_rectangle([hx + hr - 2, hy - 1, hx + hr + rng.integers(6, 10), hy + 3], radius=2, fill=beak)
        else:  # long pointed beak
            bl = rng.integers(9, 15)
            d.polygon([(hx + hr - 1, hy - 2), (hx + hr + bl, hy + 1), (hx + hr - 1, hy + 2)], fill=beak)
        d.ellipse([hx, hy - 3, hx + 3, hy], fill=(15, 15, 15))
        d.ellipse([cx - w // 2 + 3, cy - h // 2 + 2, cx + 4, cy + h // 2 - 2], fill=dark)  # wing
        if swimming:  # the water line hides the lower body
            d.rectangle([0, cy + 2, n, n], fill=(0, 0, 0, 0))
    return img


def render(y: int, a: int, rng: np.random.Generator, bird_box: tuple[int, int] = BIRD_BOX) -> tuple[Image.Image, Scene]:
    """One SynthBirds image of class y (1 = waterbird) on background a (1 = water); the bird's longest
    side is drawn from `bird_box` (px of the final image)."""
    kind = WATER_BIRDS[rng.integers(len(WATER_BIRDS))] if y else LAND_BIRDS[rng.integers(len(LAND_BIRDS))]
    scene_kind = (WATER_SCENES if a else LAND_SCENES)[rng.integers(4)]
    colour = _pick(rng, WATER_PALETTE if y else LAND_PALETTE)
    canvas = _background(scene_kind, rng)
    bird = _bird(kind, COLOURS[colour], rng)
    if rng.random() < 0.5:
        bird = bird.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bird = bird.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC)
    bird = bird.crop(bird.getchannel("A").getbbox())  # the bird fills its box
    px = int(rng.integers(*bird_box)) * SCALE  # the bird's longest side
    w, h = bird.size
    bird = bird.resize((max(1, round(px * w / max(w, h))), max(1, round(px * h / max(w, h)))),
                       Image.Resampling.BILINEAR)
    n = SIZE * SCALE
    canvas.paste(bird, (int(rng.integers(0, n - bird.width)), int(rng.integers(n // 8, n - bird.height))), bird)
    image = canvas.filter(ImageFilter.GaussianBlur(0.4)).resize((SIZE, SIZE), Image.Resampling.BOX)
    area = float((np.asarray(bird.getchannel("A")) > 127).sum()) / n**2
    return image, Scene(kind, scene_kind, colour, "large" if px >= 22 * SCALE else "small", area)


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def labels_for(counts: dict[str, tuple[int, ...]], seed: int) -> list[tuple[str, int, int]]:
    """(split, y, a) rows with exact group counts, shuffled deterministically (splits interleave as in
    the real metadata.csv)."""
    rows = [(split, g // 2, g % 2) for split, per_group in counts.items() for g, k in enumerate(per_group)
            for _ in range(k)]
    order = np.random.default_rng([seed, 99]).permutation(len(rows))
    return [rows[i] for i in order]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _write_images(folder: str, rows: list, indices: list, seed: int) -> list[list]:
    """Draw and save these rows' PNGs; return their metadata.csv rows."""
    out = []
    for (split, y, a), i in zip(rows, indices):
        image, scene = render(y, a, image_rng(seed, STREAM_DATASET, i), DEMO_BIRD_BOX)
        species = WATER_BIRDS.index(scene.bird) + 6 if y else LAND_BIRDS.index(scene.bird) + 1
        name = f"{species:03d}.{scene.bird.capitalize()}/{scene.bird}_{i + 1:05d}.png"
        path = Path(folder) / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png_bytes(image))
        out.append([i + 1, name, y, SPLIT_CODE[split], a, f"/{scene.background[0]}/{scene.background}/{i + 1:08d}.jpg"])
    return out


def write_dataset(out: str | os.PathLike, seed: int = 0, counts=WATERBIRDS_COUNTS, workers: int = 1,
                  progress: Callable[[int, int], None] | None = None, chunk: int = 500) -> Path:
    """Write a Waterbirds-format folder (metadata.csv + one PNG per row) atomically: it is drawn in a
    hidden sibling folder and renamed into place. `workers` > 1 draws in spawned processes."""
    out = Path(out)
    if (out / "metadata.csv").exists():
        raise FileExistsError(f"{out} already holds a dataset")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        rows = labels_for(counts, seed)
        starts = range(0, len(rows), chunk)
        args = [(str(tmp), rows[s : s + chunk], list(range(s, min(s + chunk, len(rows)))), seed) for s in starts]
        written: list[list] = []
        for part in map_in_processes(_write_images, *zip(*args), workers=workers):
            written.extend(part)
            if progress is not None:
                progress(len(written), len(rows))
        with open(tmp / "metadata.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
            writer.writerows(written)
        if out.exists():
            shutil.rmtree(out)  # an empty or partial leftover without metadata.csv
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# -- captions for training the demo CLIP ----------------------------------------------------------
BIRD_WORDS = {
    "sparrow": ("sparrow", "sparrow-like bird", "songbird", "landbird", "small perching bird"),
    "finch": ("finch", "songbird", "landbird", "perching bird"),
    "warbler": ("warbler", "songbird", "landbird", "small songbird"),
    "woodpecker": ("woodpecker", "landbird", "forest bird"),
    "robin": ("robin", "songbird", "landbird", "perching bird"),
    "duck": ("duck", "waterbird", "water bird", "waterfowl"),
    "gull": ("gull", "seagull", "seabird", "waterbird"),
    "heron": ("heron", "wading bird", "waterbird", "egret"),
    "swan": ("swan", "waterbird", "waterfowl", "water bird"),
    "cormorant": ("cormorant", "seabird", "waterbird", "diving bird"),
}
BACKGROUND_WORDS = {
    "forest": ("forest", "woods", "trees", "land"),
    "bamboo": ("bamboo", "bamboo forest", "bamboo grove", "land"),
    "grass": ("grass", "meadow", "grassy field", "land"),
    "ground": ("ground", "dirt", "dry land", "land"),
    "ocean": ("ocean", "sea", "open sea", "water"),
    "lake": ("lake", "pond", "lake shore", "water"),
    "horizon": ("sea horizon", "ocean horizon", "calm sea", "water"),
    "waves": ("waves", "surf", "rough sea", "water"),
}
CAPTION_TEMPLATES = (
    "a photo of a {bird} on the {place}.",
    "a {colour} {bird} in front of the {place}.",
    "a {size} {colour} {bird} and the {place}.",
    "a {bird} with {place} in the background.",
    "a {colour} {bird}.",  # no background
    "a photo of a {size} {bird}.",  # no background
    "a photo of the {place}.",  # no bird
    "{place} behind a {colour} bird.",  # bird kind omitted
)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A varied caption; half the time the bird is named by its class word (landbird / waterbird)."""
    class_word = "waterbird" if scene.is_waterbird else "landbird"
    words = (class_word,) if rng.random() < 0.5 else BIRD_WORDS[scene.bird]
    places = BACKGROUND_WORDS[scene.background]
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(bird=words[rng.integers(len(words))], place=places[rng.integers(len(places))],
                           colour=scene.colour, size=scene.size)


def render_labelled(labels: list[tuple[int, int]], indices: list[int], seed: int, stream: int):
    """Images (uint8 N × 64 × 64 × 3) and scenes for (y, a) labels, image i drawn with its own generator."""
    images = np.empty((len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    scenes = []
    bird_box = DEMO_BIRD_BOX if stream == STREAM_DATASET else BIRD_BOX
    for k, ((y, a), i) in enumerate(zip(labels, indices)):
        image, scene = render(y, a, image_rng(seed, stream, i), bird_box)
        images[k] = np.asarray(image)
        scenes.append(scene)
    return images, scenes


def render_pool(n: int, seed: int, start: int = 0) -> tuple[np.ndarray, list[Scene]]:
    """A group-balanced pool of images (for CLIP training, not the demo splits): uint8 N × 64 × 64 × 3."""
    indices = list(range(start, start + n))
    return render_labelled([(i % 4 // 2, i % 2) for i in indices], indices, seed, STREAM_POOL)


def render_pool_parallel(n: int, seed: int, workers: int = 2, chunk: int = 1000) -> tuple[np.ndarray, list[Scene]]:
    """`render_pool` split over spawned processes (same images, same order)."""
    starts = list(range(0, n, chunk))
    parts = list(map_in_processes(render_pool, [min(chunk, n - s) for s in starts], [seed] * len(starts), starts,
                                  workers=workers))
    return np.concatenate([p[0] for p in parts]), [s for p in parts for s in p[1]]


def render_rows(rows, indices, seed: int, workers: int = 2, chunk: int = 1000) -> np.ndarray:
    """The demo dataset's images for these rows (as `write_dataset` draws them), without files."""
    starts = range(0, len(rows), chunk)
    labels = [(y, a) for _, y, a in rows]
    parts = map_in_processes(render_labelled, [labels[s : s + chunk] for s in starts],
                             [indices[s : s + chunk] for s in starts], [seed] * len(starts),
                             [STREAM_DATASET] * len(starts), workers=workers)
    return np.concatenate([images for images, _ in parts])
