"""Train the demo's bundled inverter: `python -m hsfm_core.render.train_demo`.

It locates the demo workspace (`demo.build.default_demo_dir()`, built there first when it is not built
yet, without starting its map), trains an inverter on the workspace's train + val images through the
same `train_renderer` any workspace uses, measures it on a held-out sample of the test split, and writes
it into `assets/synthbirds-inverter/` (weights in fp16, `card.json`, `README.md`), where
`render.inverter.load_inverter` finds it for any store of the bundled CLIP — so the demo needs no
training at launch. Run it again after retraining the bundled CLIP (`demo train-clip`): the card records
the CLIP weights' hash and a mismatching inverter is not used.

    python -m hsfm_core.render.train_demo [--workspace DIR] [--out DIR] [--epochs N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULTS = {"size": 64, "epochs": 10, "width": 16, "batch_size": 32, "feature_weight": 2.0}


def main(argv=None) -> None:
    import torch

    from hsfm_core.demo.build import build_demo, default_demo_dir
    from hsfm_core.features import FeatureStore
    from hsfm_core.render.inverter import BUNDLED, train_renderer
    from hsfm_core.resources import assets_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=None, help="the demo workspace (default: the app's)")
    parser.add_argument("--out", type=Path, default=assets_dir() / BUNDLED[0])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--width", type=int, default=DEFAULTS["width"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--feature-weight", type=float, default=DEFAULTS["feature_weight"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    workspace = build_demo(args.workspace or default_demo_dir(), default_map="none")  # returns at once when built
    store = FeatureStore.open(workspace)
    card = train_renderer(store, size=DEFAULTS["size"], epochs=args.epochs, out=args.out, width=args.width,
                          batch_size=args.batch_size, feature_weight=args.feature_weight,
                          source="the demo workspace (SynthBirds seed 0, hsfm_core.demo.build)")
    print(json.dumps({"path": card["path"], "quality": card["quality"],
                      "training": {k: v for k, v in card["training"].items() if k != "log"}}, indent=1))


if __name__ == "__main__":
    main()
