"""The `unclip` renderer: Stable Diffusion 2.1 unCLIP through diffusers, the paper's own decoder
(its Fig. 2 decodes support embeddings before and after editing with it) — docs/ARCHITECTURE.md §Render.

unCLIP is conditioned on a CLIP image embedding, so it decodes a store's features only when they come
from the CLIP it was trained with:

    stable-diffusion-2-1-unclip         OpenCLIP ViT-H/14 (laion2b_s32b_b79k), 1024-d
    stable-diffusion-2-1-unclip-small   OpenAI ViT-L/14 (open_clip's ViT-L-14 "openai"), 768-d

The pipeline's weights come from a local folder the user names (a `save_pretrained` / Hub snapshot
folder with `model_index.json`); nothing is downloaded (`local_files_only`). The image encoder in that
folder is not loaded: the store's features are the embeddings. They enter the pipeline's
`image_embeds` input unchanged when they are raw CLIP embeddings (what `extract` writes), which is the
scale the pipeline's own image encoder produces; a store of unit-norm features is rescaled to the
pipeline's expected embedding norm, √Σ(mean² + std²) of its `image_normalizer` (`pipeline_scale`).

diffusers and transformers are an optional extra: `pip install 'hsfm-studio[render]'`. Their
absence, a store of another backbone and a missing or incomplete weights folder are each one
InputError saying what to do. On a GPU (device "auto" picks CUDA when present) a 768-px image takes
seconds; on the CPU it takes minutes: `render` warns with the time measured for the first denoising
step × the steps (`SlowRenderWarning`).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from hsfm_core.errors import InputError
from hsfm_core.render.base import Renderer

EXTRA = "pip install 'hsfm-studio[render]'"
PIPELINES = {  # variant → the CLIP whose image embeddings it decodes
    "stable-diffusion-2-1-unclip": {"clip": "OpenCLIP ViT-H/14", "model": "ViT-H-14",
                                    "pretrained": ("laion2b_s32b_b79k",), "dim": 1024},
    "stable-diffusion-2-1-unclip-small": {"clip": "OpenAI ViT-L/14", "model": "ViT-L-14",
                                          "pretrained": ("openai",), "dim": 768},
}
PIPELINE_CLASS = "StableUnCLIPImg2ImgPipeline"
NEEDED = ("model_index.json", "unet", "vae", "scheduler", "image_normalizer", "image_noising_scheduler",
          "text_encoder", "tokenizer")


def embeddings_only_encoder(dtype=None):
    """Stands in for the pipeline's CLIP image encoder, which is not loaded (the store's features are the
    image embeddings; ViT-H/14's tower alone is 2.5 GB): the pipeline reads only its dtype, and calling it
    is an error."""
    import torch

    class EmbeddingsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dtype_marker = torch.nn.Parameter(torch.zeros(0, dtype=dtype or torch.float32), requires_grad=False)

        @property
        def dtype(self):
            return self.dtype_marker.dtype

        @property
        def device(self):
            return self.dtype_marker.device

        def forward(self, *args, **kwargs):
            raise RuntimeError("the unclip renderer passes image embeddings; it has no image encoder")

    return EmbeddingsOnly()


class SlowRenderWarning(UserWarning):
    """unCLIP is running on the CPU: the message gives the expected time per image."""


def require_diffusers():
    """The diffusers module, or InputError naming the extra to install."""
    try:
        import diffusers
        import transformers  # noqa: F401
    except ImportError as exc:
        raise InputError(f"the unclip renderer needs diffusers and transformers, which are not installed "
                         f"({exc.name}); install the extra: {EXTRA} — or use --renderer inverter") from None
    return diffusers


def variant_for_store(store) -> str:
    """Which unCLIP pipeline decodes this store's features; InputError for any other backbone."""
    backbone = store.manifest["backbone"]
    model, pretrained = backbone.get("model") or "", backbone.get("pretrained") or ""
    for variant, need in PIPELINES.items():
        if backbone.get("kind") == "open_clip" and model == need["model"] and store.dim == need["dim"] and (
                pretrained in need["pretrained"] or Path(pretrained).is_file()):
            return variant
    wanted = "; ".join(f"{n['clip']} (open_clip {n['model']}, pretrained {'/'.join(n['pretrained'])}, "
                       f"{n['dim']}-d) for {v}" for v, n in PIPELINES.items())
    raise InputError(f"{store.path}: unCLIP decodes only the CLIP image embeddings it was trained on: {wanted}. "
                     f"This store holds {backbone.get('id')} ({store.dim}-d) features; extract the images with one of "
                     f"those, or use --renderer inverter (train-renderer trains one for any store with images)")


def check_weights_folder(folder: str | os.PathLike | None, variant: str) -> Path:
    """The pipeline folder, checked: it exists, holds an unCLIP pipeline's parts, and its embedding size
    is the variant's."""
    from hsfm_core.safe_io import read_json

    if folder is None or str(folder) == "":
        raise InputError(f"the unclip renderer needs the {variant} weights in a local folder (nothing is downloaded "
                         f"at run time): download stabilityai/{variant} once, e.g. `huggingface-cli download "
                         f"stabilityai/{variant} --local-dir DIR`, and pass that folder (--unclip-weights DIR)")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"unCLIP weights folder {folder} not found; download stabilityai/{variant} into it first "
                         f"(`huggingface-cli download stabilityai/{variant} --local-dir {folder}`)")
    missing = [name for name in NEEDED if not (folder / name).exists()]
    if missing:
        raise InputError(f"{folder}: not a complete {variant} pipeline folder: missing {', '.join(missing)} "
                         f"(expected a diffusers {PIPELINE_CLASS} folder with model_index.json)")
    index = read_json(folder / "model_index.json", "pipeline index")
    if index.get("_class_name") != PIPELINE_CLASS:
        raise InputError(f"{folder / 'model_index.json'}: a {index.get('_class_name')!r} pipeline; the unclip renderer "
                         f"needs a {PIPELINE_CLASS} ({variant})")
    normalizer = read_json(folder / "image_normalizer" / "config.json", "image normalizer config")
    dim = normalizer.get("embedding_dim")
    if dim != PIPELINES[variant]["dim"]:
        other = next((v for v, n in PIPELINES.items() if n["dim"] == dim), None)
        raise InputError(f"{folder}: its image embeddings are {dim}-d" + (f" ({other})" if other else "")
                         + f", but this store's {PIPELINES[variant]['clip']} features need {variant} "
                         f"({PIPELINES[variant]['dim']}-d)")
    return folder


def pipeline_scale(store, normalizer) -> float:
    """The one number the store's features are multiplied by before they enter `image_embeds`: 1 for raw
    CLIP embeddings, the pipeline's expected embedding norm for a store of unit-norm features."""
    sample = np.asarray(store.features[: min(len(store.meta), 4096)], dtype=np.float64)
    median_norm = float(np.median(np.linalg.norm(sample, axis=1))) if len(sample) else 1.0
    if abs(median_norm - 1.0) > 0.01:
        return 1.0
    mean = normalizer.mean.detach().double().cpu().numpy()
    std = normalizer.std.detach().double().cpu().numpy()
    return float(np.sqrt(np.sum(mean**2 + std**2)))


class UnclipRenderer(Renderer):
    """Stable Diffusion 2.1 unCLIP conditioned on a store's features; one seeded generator per image."""

    name = "unclip"
    batch_size = 4

    def __init__(self, pipe, store_scale: float, variant: str, folder: Path | None, device, steps: int = 20,
                 guidance_scale: float = 10.0, noise_level: int = 0, prompt: str = ""):
        self.pipe = pipe
        self.scale = store_scale
        self.variant = variant
        self.folder = folder
        self.device = device
        self.steps, self.guidance_scale, self.noise_level, self.prompt = steps, guidance_scale, noise_level, prompt
        self.dim = int(pipe.image_normalizer.mean.shape[-1])
        self.size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
        stamp = _folder_stamp(folder) if folder is not None else f"in-memory-{id(pipe)}"
        self.key = (f"unclip:{variant}:{stamp}:steps={steps}:cfg={guidance_scale}:noise={noise_level}:"
                    f"prompt={prompt!r}:scale={store_scale:.6g}")
        self._warned = False

    def embeddings(self, features: np.ndarray):
        """What reaches the pipeline's `image_embeds`: the features × `pipeline_scale`, as a tensor."""
        import torch

        return torch.from_numpy(np.asarray(features, dtype=np.float32) * self.scale).to(
            self.device, dtype=self.pipe.unet.dtype)

    def _render_batch(self, features: np.ndarray, seed: int) -> np.ndarray:
        import torch

        generators = [torch.Generator(device="cpu").manual_seed(seed) for _ in range(len(features))]
        started = time.perf_counter()
        first_step = {}

        def timer(pipe, step, timestep, kwargs):
            if step == 0:
                first_step["s"] = time.perf_counter() - started
            return kwargs

        with torch.inference_mode():
            out = self.pipe(image_embeds=self.embeddings(features), prompt=[self.prompt] * len(features),
                            num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                            noise_level=self.noise_level, generator=generators, output_type="np",
                            **self._callback_kwargs(timer))
        if self.device.type == "cpu" and not self._warned and "s" in first_step:
            self._warned = True
            per_image = first_step["s"] * self.steps / len(features)
            warnings.warn(SlowRenderWarning(
                f"unCLIP is running on the CPU: about {per_image:.0f} s per image ({self.steps} denoising steps, "
                f"{first_step['s']:.1f} s measured for the first step of {len(features)} image(s)); a CUDA GPU "
                f"takes seconds"), stacklevel=3)
        images = np.asarray(out.images)
        return np.clip(np.round(images * 255), 0, 255).astype(np.uint8)

    def _callback_kwargs(self, timer) -> dict:
        import inspect

        params = inspect.signature(self.pipe.__call__).parameters
        if "callback_on_step_end" in params:
            return {"callback_on_step_end": timer}
        if "callback" in params:  # older pipelines: callback(step, timestep, latents)
            return {"callback": lambda step, t, latents: timer(self.pipe, step, t, {}), "callback_steps": 1}
        return {}


def _folder_stamp(folder: Path) -> str:
    """Which weights: the names, sizes and modification times of the folder's weight files."""
    import hashlib

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    text = json.dumps([(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def resolve_device(device: str):
    from hsfm_core.features.encoders import resolve_device as resolve

    return resolve(device)


def load_unclip(store, weights: str | os.PathLike | None, *, device: str = "auto", steps: int = 20,
                guidance_scale: float = 10.0, noise_level: int = 0, prompt: str = "") -> UnclipRenderer:
    """The unCLIP renderer for `store` from the local pipeline folder `weights`.

    InputError, in this order: diffusers missing (the extra to install); a store of another backbone; no or
    an incomplete weights folder, or one of the other variant. Loads without the pipeline's image encoder
    (the store's features are the embeddings) and from local files only."""
    require_diffusers()
    variant = variant_for_store(store)
    folder = check_weights_folder(weights, variant)
    from diffusers import StableUnCLIPImg2ImgPipeline
    from diffusers.utils import logging as diffusers_logging

    dev = resolve_device(device)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # not "expected CLIPVisionModelWithProjection" for the stand-in
    try:
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, image_encoder=embeddings_only_encoder(),
                                                           feature_extractor=None, local_files_only=True)
    except Exception as exc:  # corrupt or partial weights: name the folder and the cause
        raise InputError(f"cannot load the unCLIP pipeline from {folder}: {type(exc).__name__}: {exc}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return from_pipeline(pipe, store, variant, folder, dev, steps=steps, guidance_scale=guidance_scale,
                         noise_level=noise_level, prompt=prompt)


def from_pipeline(pipe, store, variant: str, folder: Path | None, device, **settings) -> UnclipRenderer:
    """Wrap a loaded pipeline (the tests build a tiny one from configs) as the store's renderer."""
    if isinstance(device, str):
        device = resolve_device(device)
    if getattr(pipe, "image_encoder", None) is None:
        pipe.image_encoder = embeddings_only_encoder(pipe.unet.dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    renderer = UnclipRenderer(pipe, pipeline_scale(store, pipe.image_normalizer), variant, folder, device, **settings)
    if renderer.dim != store.dim:
        raise InputError(f"the unCLIP pipeline takes {renderer.dim}-d image embeddings; {store.path} holds "
                         f"{store.dim}-d features")
    return renderer
