import hashlib

import numpy as np
import pytest

from hsfm_core.data import read_dataset
from hsfm_core.demo import synthbirds

SMALL = {"train": (6, 2, 2, 6), "val": (3, 3, 3, 3), "test": (2, 2, 2, 2)}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def digest(folder):
        h = hashlib.sha256()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
        return h.hexdigest()

    a = synthbirds.write_dataset(tmp_path / "a", seed=3, counts=SMALL)
    b = synthbirds.write_dataset(tmp_path / "b", seed=3, counts=SMALL, workers=2, chunk=7)  # other processes, chunks
    c = synthbirds.write_dataset(tmp_path / "c", seed=4, counts=SMALL)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_it_is_a_waterbirds_folder_with_exact_group_counts(tmp_path):
    folder = synthbirds.write_dataset(tmp_path / "wb", counts=SMALL)
    header = (folder / "metadata.csv").read_text().splitlines()[0]
    assert header == "img_id,img_filename,y,split,place,place_filename"
    table = read_dataset("waterbirds", folder)
    assert table.group_counts() == {s: list(c) for s, c in SMALL.items()}
    splits = table.frame["split"].tolist()
    assert splits != sorted(splits, key=["train", "val", "test"].index)  # interleaved like the real file
    from PIL import Image
    with Image.open(folder / table.frame["image_path"].iloc[0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_the_real_counts():
    rows = synthbirds.labels_for(synthbirds.WATERBIRDS_COUNTS, 0)
    for split, counts in {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133),
                          "test": (2255, 2255, 642, 642)}.items():
        g = np.array([2 * y + a for s, y, a in rows if s == split])
        assert np.bincount(g).tolist() == list(counts)


def test_scenes_follow_the_labels_and_vary():
    birds, scenes = set(), set()
    for i in range(200):
        y, a = i % 2, (i // 2) % 2
        image, scene = synthbirds.render(y, a, synthbirds.image_rng(0, 0, i))
        assert scene.is_waterbird == bool(y) and scene.is_water == bool(a)
        birds.add(scene.bird)
        scenes.add(scene.background)
    assert birds == set(synthbirds.LAND_BIRDS + synthbirds.WATER_BIRDS)
    assert scenes == set(synthbirds.LAND_SCENES + synthbirds.WATER_SCENES)


def test_background_dominates_the_pixels():
    """The bird is the small feature: on average it covers well under a fifth of the image."""
    areas = [synthbirds.render(i % 2, (i // 2) % 2, synthbirds.image_rng(0, 0, i))[1].bird_area for i in range(200)]
    assert 0.02 < float(np.mean(areas)) < 0.2 and max(areas) < 0.3


def test_captions_name_bird_and_place():
    rng = np.random.default_rng(0)
    scene = synthbirds.Scene("duck", "lake", "white", "small")
    captions = {synthbirds.caption(scene, rng) for _ in range(200)}
    assert any("waterbird" in c for c in captions) and any("duck" in c for c in captions)
    assert any("lake" in c or "pond" in c for c in captions)
    assert not any("landbird" in c or "forest" in c for c in captions)


def test_demo_build_never_deletes_a_folder_that_is_not_its_own(tmp_path):
    from hsfm_core.demo.build import build_demo
    from hsfm_core.errors import InputError

    precious = tmp_path / "my_workspace"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(InputError, match="not a demo workspace"):
        build_demo(precious)
    assert (precious / "thesis.txt").read_text() == "years of work"
