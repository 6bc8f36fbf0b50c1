"""Rendering (docs/ARCHITECTURE.md §Instruments, §Render): a run's edited features as pictures along
z + t·Δ, written as PNGs, with the flip rate that makes the picture evidence — `hsfm render`,
`hsfm train-renderer`, `hc.render`, and the Neighbors / Decode / Lesson views."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hsfm_core.errors import InputError
from hsfm_core.render.background import STRIP_STEPS  # noqa: F401  (the views' strip, re-exported)
from hsfm_core.workspace import Workspace, as_workspace

RENDERERS = ("inverter", "unclip")
DEFAULT_STEPS = (0.0, 0.5, 1.0)


def renderer(workspace: Workspace | str | os.PathLike, name: str = "inverter", weights: str | os.PathLike | None = None,
             device: str = "auto"):
    """The renderer for the workspace's store: its inverter (the bundled one for the demo, else
    `<workspace>/renderers/inverter/` or `weights`), or SD unCLIP from the local pipeline folder
    `weights`. InputError says what to train or install when none fits. An inverter is loaded once per
    process and folder (until its files change): the views ask for it on every strip and flip rate."""
    ws = as_workspace(workspace)
    if name == "inverter":
        return _inverter(ws.store, weights)
    if name == "unclip":
        from hsfm_core.render.unclip import load_unclip

        return load_unclip(ws.store, weights, device=device)
    raise InputError(f"renderer {name!r}: expected one of {', '.join(RENDERERS)}")


_inverters: OrderedDict[tuple, object] = OrderedDict()  # (folder, its files' stamps, store) → loaded inverter
_inverters_lock = threading.Lock()


def _inverter(store, weights: str | os.PathLike | None):
    from hsfm_core.render.inverter import CARD, WEIGHTS, find_inverter, load_inverter

    folder = Path(weights).expanduser() if weights is not None else find_inverter(store)
    if folder is None:
        return load_inverter(store)  # its InputError says what to train
    try:
        stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in (folder / CARD, folder / WEIGHTS))
    except OSError:
        return load_inverter(store, folder)  # its InputError names what is missing
    key = (str(folder.resolve()), stamps, str(store.path), store.content_hash)
    with _inverters_lock:
        if key in _inverters:
            _inverters.move_to_end(key)
            return _inverters[key]
    loaded = load_inverter(store, folder)  # checks the card against the store
    with _inverters_lock:
        _inverters[key] = loaded
        while len(_inverters) > 4:
            _inverters.popitem(last=False)
    return loaded


def strip(workspace: Workspace | str | os.PathLike, run: dict | str, support: Sequence[int] | None = None,
          steps: Sequence[float] = DEFAULT_STEPS, *, seed: int = 0, name: str = "inverter",
          weights: str | os.PathLike | None = None) -> np.ndarray:
    """z + t·Δ of support examples rendered: uint8 (examples × steps × H × W × 3), cached per
    (renderer, store, run, rows, t, seed) in the workspace's cache/."""
    from hsfm_core.render.base import render_edits

    ws = as_workspace(workspace)
    return render_edits(renderer(ws, name, weights), ws.store, ws.run(run), support, steps, seed)


def class_means(workspace: Workspace | str | os.PathLike, run: dict | str, steps: Sequence[float] = (0.0, 1.0), *,
                seed: int = 0, name: str = "inverter", weights: str | os.PathLike | None = None):
    """Each class's mean support feature before and after its mean edit, rendered: (classes, uint8
    classes × steps × H × W × 3)."""
    from hsfm_core.render.base import render_class_means

    ws = as_workspace(workspace)
    return render_class_means(renderer(ws, name, weights), ws.store, ws.run(run), steps, seed)


def flip_rate(workspace: Workspace | str | os.PathLike, run: dict | str, *, seed: int | None = None,
              null_draws: int = 8, name: str = "inverter", weights: str | os.PathLike | None = None) -> dict:
    """Per class, the share of support examples whose rendering's attribute (re-encoded with the store's
    backbone, classified zero-shot or by a probe) goes from the majority to the minority attribute
    under the edit, beside the same for null edits (`render.flip.flip_rates`)."""
    from hsfm_core.render.flip import flip_rates

    ws = as_workspace(workspace)
    return flip_rates(ws.store, ws.run(run), renderer(ws, name, weights), seed=seed, null_draws=null_draws)


def flip_rate_cached(workspace: Workspace | str | os.PathLike, run: dict | str, *, seed: int | None = None,
                     null_draws: int = 8, name: str = "inverter", weights: str | os.PathLike | None = None
                     ) -> dict | None:
    """`flip_rate` when its attributes read back are in the workspace's render cache, else None: nothing
    is rendered (a page's question before it computes in the background)."""
    from hsfm_core.render.flip import cached_flip_rates

    ws = as_workspace(workspace)
    return cached_flip_rates(ws.store, ws.run(run), renderer(ws, name, weights), seed=seed, null_draws=null_draws)


def render_in_background(workspace: Workspace | str | os.PathLike, runs: Sequence[dict | str], start: bool = True):
    """The worker process that computes these runs' render views into the workspace's render cache
    (flip rates, class means, the strips the views open on; `render.background`): started unless it runs
    now (`start=False`: only its status) → its `JobStatus` (state running | done | failed | absent)."""
    from hsfm_core.render import background

    ws = as_workspace(workspace)
    run_ids = [ws.run(run)["run_id"] for run in runs]
    if start:
        return background.start(ws.store, run_ids)
    return background.job_status(ws.store, run_ids)


def render(workspace: Workspace | str | os.PathLike, run: dict | str, out: str | os.PathLike, *,
           renderer_name: str = "inverter", support: Sequence[int] | None = None,
           steps: Sequence[float] = DEFAULT_STEPS, seed: int = 0, weights: str | os.PathLike | None = None,
           null_draws: int = 8) -> dict:
    """Render a run's support examples along z + t·Δ into `out` (one PNG per example and step, named
    `s<support>_t<step>.png`, each written atomically), and measure the flip rate.

    Args:
        workspace: a `Workspace` or its folder.
        run: a run with a support set (HSFM), as a dict or id.
        out: the folder for the PNGs (created if missing).
        renderer_name: "inverter" (trained on the store's images; bundled for the demo) or "unclip"
            (SD 2.1 unCLIP, for OpenCLIP ViT-H/14 or OpenAI ViT-L/14 stores; needs `weights`).
        support: the support examples (default: all).
        steps: the values of t (0 = the original feature, 1 = the edited one).
        seed: the rendering seed.
        weights: the renderer's folder (an inverter's, or the local unCLIP pipeline).
        null_draws: null edits per support example for the flip rate's null.

    Returns:
        The dict `hsfm render` prints: {"renderer", "run", "steps", "images": [{support, step, path}],
        "flip_rate": {"per_class": [{class, name, rate, null_rate, n, …}], …}}.

    Example:
        >>> render(ws, hsfm_runs[0], "renders/", support=[0, 1], steps=[0, 0.5, 1])["flip_rate"]
    """
    from PIL import Image

    from hsfm_core.fsutil import atomic_path
    from hsfm_core.render.base import check_steps, check_support, render_edits
    from hsfm_core.render.flip import flip_rates

    ws = as_workspace(workspace)
    run = ws.run(run)
    chosen_renderer = renderer(ws, renderer_name, weights)
    n = len(ws.support(run)["after"])
    chosen, steps = check_support(support, n), check_steps(steps)
    images = render_edits(chosen_renderer, ws.store, run, chosen, steps, seed)
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {folder}: cannot create it ({exc.strerror})") from None
    written = []
    for i, example in enumerate(chosen):
        for j, t in enumerate(steps):
            path = folder / f"s{example}_t{t:g}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(images[i, j]).save(tmp, format="PNG")
            written.append({"support": int(example), "step": float(t), "path": str(path.resolve())})
    flips = flip_rates(ws.store, run, chosen_renderer, seed=seed, null_draws=null_draws)
    return {"renderer": chosen_renderer.name, "run": run["run_id"], "steps": steps, "images": written,
            "flip_rate": flips}


def train_renderer(workspace: Workspace | str | os.PathLike, *, size: int = 64, epochs: int = 10,
                   out: str | os.PathLike | None = None, progress: bool | Callable = True, **settings) -> dict:
    """Train an inverter renderer on the store's own images and features (pixel + feature-matching loss
    through the store's backbone); write its weights and model card; → the card (data, steps, losses,
    quality numbers). Default folder: `<workspace>/renderers/inverter/`, where `renderer` looks."""
    from hsfm_core.render.inverter import train_renderer as train

    ws = as_workspace(workspace)
    return train(ws.store, size, epochs, out=out, progress=progress, **settings)
