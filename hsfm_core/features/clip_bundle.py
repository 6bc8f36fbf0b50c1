"""Save an open_clip model as a `local-dir:` bundle that `open_clip.create_model_and_transforms`
and `open_clip.get_tokenizer` load offline: `open_clip_config.json` (model_cfg + preprocess_cfg)
beside `open_clip_model.safetensors`."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch


def save_local_dir(model: torch.nn.Module, model_cfg: dict, folder: str | os.PathLike,
                   preprocess_cfg: dict | None = None) -> Path:
    """Write the bundle into a temporary sibling folder and rename it into place."""
    from safetensors.torch import save_model

    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_model(model, str(tmp / "open_clip_model.safetensors"))  # handles tied weights
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
