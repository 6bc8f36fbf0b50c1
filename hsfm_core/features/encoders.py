"""Image encoders for extraction: one factory, `load_encoder(model, pretrained, device)`.

- open_clip, by name + pretrained tag (`ViT-B-32` + `laion2b_s34b_b79k`), by name + checkpoint
  file, or as a `local-dir:PATH` bundle (`open_clip_config.json` + weights). Features are the
  image embeddings in the joint image–text space, so text can later be encoded with the same
  model; the manifest records how to rebuild it.
- `resnet50`: a torchvision ResNet-50 ERM checkpoint (`--pretrained FILE`, a state dict,
  optionally under `model_state_dict` / `state_dict`). Features are the 2048-d pooled
  activations; the checkpoint's `fc` becomes the workspace's initial head θ₀.

Checkpoints are read with `torch.load(weights_only=True)` or safetensors: nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from hsfm_core.errors import InputError

RESNET50 = "resnet50"
LOCAL_DIR = "local-dir:"
LOCAL_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Encoder:
    """A frozen image encoder: `preprocess(PIL image) -> tensor`, `encode(batch) -> features`."""

    network: torch.nn.Module
    preprocess: Callable
    dim: int
    backbone: dict  # what the manifest records: kind, model, pretrained, id
    clip_space: bool
    text_encoder: dict | None = None  # {"model", "pretrained"} to rebuild the text tower
    init_head: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).float()


def resolve_device(device: str, probe: bool = True) -> torch.device:
    """The launch check (`hsfm_core.device.resolve`): 'auto' → GPU 0 when it passes the check (a test
    kernel included unless `probe` is False), else the CPU with a warning when a GPU is present but
    unusable; 'cpu'; 'cuda[:N]' → that GPU, or InputError saying what is wrong and what to install
    (docs/ARCHITECTURE.md §Devices)."""
    from hsfm_core.device import resolve

    return torch.device(resolve(device, probe=probe).device)


def load_encoder(model: str, pretrained: str | None, device: torch.device) -> Encoder:
    if model == RESNET50:
        return _load_resnet50(pretrained, device)
    return _load_open_clip(model, pretrained, device)


# -- open_clip -----------------------------------------------------------------------------
class _ImageTower(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)


def _load_open_clip(model: str, pretrained: str | None, device: torch.device) -> Encoder:
    import open_clip

    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR):]).expanduser().resolve()
        if not (folder / "open_clip_config.json").is_file():
            raise InputError(f"{model}: no open_clip_config.json in {folder}")
        if not any((folder / w).is_file() for w in LOCAL_DIR_WEIGHTS):
            # open_clip would silently build random weights: refuse instead.
            raise InputError(f"{model}: no weights file ({' or '.join(LOCAL_DIR_WEIGHTS)}) in {folder}")
        if pretrained:
            raise InputError("--pretrained does not apply to a local-dir: model (its weights are in the folder)")
        model, record = f"{LOCAL_DIR}{folder}", {"model": f"{LOCAL_DIR}{folder}", "pretrained": None}
    else:
        if model not in open_clip.list_models():
            raise InputError(f"unknown open_clip model {model!r}; see open_clip.list_models() "
                             f"(e.g. ViT-B-32, RN50), or use resnet50 or local-dir:PATH")
        if not pretrained:
            raise InputError(f"--pretrained is required for {model}: a tag such as "
                             f"{', '.join(open_clip.list_pretrained_tags_by_model(model)[:3]) or 'openai'}, or a checkpoint file")
        is_file = Path(pretrained).expanduser().is_file()
        if not is_file and pretrained not in open_clip.list_pretrained_tags_by_model(model):
            raise InputError(f"--pretrained {pretrained!r} is neither a file nor a known tag for {model} "
                             f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'})")
        pretrained = str(Path(pretrained).expanduser().resolve()) if is_file else pretrained
        record = {"model": model, "pretrained": pretrained}
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            record["model"], pretrained=record["pretrained"], device=device, weights_only=True
        )
    except Exception as exc:  # download failures, bad checkpoints: say which model and why
        raise InputError(f"cannot load open_clip model {record['model']} "
                         f"(pretrained {record['pretrained']}): {type(exc).__name__}: {exc}") from None
    clip.eval()
    dim = _probe_dim(clip, preprocess, device)
    # the id names the model and weights by file name, so shards extracted on machines that mount
    # them at different paths still agree; the full paths stay in "model" / "pretrained"
    weights = Path(record["pretrained"]).name if record["pretrained"] and Path(record["pretrained"]).is_absolute() \
        else record["pretrained"]
    name = f"local-dir:{Path(record['model'][len(LOCAL_DIR):]).name}" if record["model"].startswith(LOCAL_DIR) \
        else record["model"]
    backbone_id = f"open_clip:{name}" + (f"@{weights}" if weights else "")
    return Encoder(
        network=_ImageTower(clip),
        preprocess=preprocess,
        dim=dim,
        backbone={"kind": "open_clip", **record, "id": backbone_id},
        clip_space=True,
        text_encoder=dict(record),
    )


def _probe_dim(clip, preprocess, device) -> int:
    from PIL import Image

    with torch.inference_mode():
        x = preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(device)
        return int(clip.encode_image(x).shape[-1])


# -- ResNet-50 ERM checkpoint --------------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from hsfm_core.safe_io import read_safetensors, read_torch_weights

    if path.suffix == ".safetensors":
        return read_safetensors(path, "checkpoint")
    obj = read_torch_weights(path, "checkpoint")  # a pickled whole model is refused, saying why
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a state dict of tensors (optionally under 'model_state_dict')")
    # DataParallel / DDP checkpoints prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_resnet50(pretrained: str | None, device: torch.device) -> Encoder:
    import torchvision
    from torchvision import transforms

    if not pretrained:
        raise InputError("resnet50 needs --pretrained FILE: the ERM checkpoint (a state dict)")
    path = Path(pretrained).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"--pretrained {pretrained}: file not found")
    state = _read_state_dict(path)
    if "fc.weight" not in state or "fc.bias" not in state:
        raise InputError(f"{path}: no fc.weight / fc.bias — not a torchvision ResNet-50 state dict")
    net = torchvision.models.resnet50(weights=None)
    net.fc = torch.nn.Linear(2048, state["fc.weight"].shape[0])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{path}: does not match torchvision's ResNet-50 ({first})") from None
    init_head = {"weight": net.fc.weight.detach().clone().float(), "bias": net.fc.bias.detach().clone().float()}
    net.fc = torch.nn.Identity()
    net.eval().to(device)
    # The Waterbirds/CelebA ERM recipe (Sagawa et al., DFR): resize to 256², centre-crop 224.
    preprocess = transforms.Compose([
        transforms.Resize((256, 256)),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return Encoder(
        network=net,
        preprocess=preprocess,
        dim=2048,
        backbone={"kind": "resnet50", "model": RESNET50, "pretrained": str(path), "id": f"resnet50@{path.name}"},
        clip_space=False,
        text_encoder=None,
        init_head=init_head,
    )
