"""A small but complete workspace for the app's tests: real PNGs, features from the bundled demo
CLIP (so decoding works), and finished ERM, DFR and HSFM runs."""

from __future__ import annotations

from pathlib import Path

import torch

from hsfm_core.demo.build import DEMO_CLIP
from tests.gaussian import TINY_HSFM
from tests.helpers import make_waterbirds

# Enough images for UMAP and DFR; train is correlated, val/test balanced.
APP_COUNTS = {"train": (40, 6, 6, 40), "val": (10, 10, 10, 10), "test": (10, 10, 10, 10)}


def make_app_workspace(root: Path) -> Path:
    """root/data (images) and root/ws (the workspace with three finished runs); returns the workspace."""
    from hsfm_core.data import read_dataset
    from hsfm_core.features.encoders import load_encoder
    from hsfm_core.features.extract import extract
    from hsfm_core.train import train

    data = make_waterbirds(root / "data", APP_COUNTS, image_size=64)
    table = read_dataset("waterbirds", data)
    encoder = load_encoder(f"local-dir:{DEMO_CLIP}", None, torch.device("cpu"))
    workspace = root / "ws"
    extract(table, encoder, workspace, device=torch.device("cpu"), batch_size=256, progress=False)
    for method, overrides in (("erm", []), ("dfr", ["n_refits=3"]), ("hsfm", TINY_HSFM)):
        train(workspace, method, overrides=overrides)
    return workspace
