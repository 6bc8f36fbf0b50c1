"""Train a head on a workspace and record it as runs: the I/O around `hsfm.fit_hsfm` and the baselines.

`train(workspace, method, …)` checks everything a user can get wrong before any run directory
exists, then writes one run per seed (DESIGN §3/§4). HSFM seeds are trained together in one
batched call; ERM and DFR are fitted per seed.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from hsfm_core.baselines import DFR, DFR_C_GRID, ERMProbe
from hsfm_core.config import HSFMConfig, hsfm_config, parse_overrides
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore
from hsfm_core.features.encoders import resolve_device
from hsfm_core.heads import evaluate_head
from hsfm_core.hsfm import fit_hsfm
from hsfm_core.runs import RunWriter, code_version, new_run_id, run_dir

METHODS = ("erm", "dfr", "hsfm")
ERM_SETTINGS = {"C": float, "max_iter": int}
DFR_SETTINGS = {"n_refits": int}


@dataclass
class TrainedRun:
    run_id: str
    path: Path
    seed: int
    metrics: dict


def _require_split(store: FeatureStore, split: str, why: str) -> None:
    if not store.has_split(split):
        raise InputError(f"{store.path}: the store has no {split} split ({why}); it has "
                         f"{', '.join(store.splits) or 'no splits'}")


def initial_head(store: FeatureStore, probe_settings: dict | None = None) -> tuple[dict, dict]:
    """θ₀ and how it was obtained: the extraction checkpoint's fc, else the ERM probe on train."""
    saved = store.init_head()
    if saved is not None:
        return {"weight": saved["weight"], "bias": saved["bias"]}, {"source": "checkpoint fc (init_head.safetensors)"}
    _require_split(store, "train", "the ERM probe is fitted on train features")
    settings = {"C": 1.0, "max_iter": 1000, **(probe_settings or {})}
    train = store.select("train")
    probe = ERMProbe(**settings).fit(train.features, train.y)
    return ({"weight": probe.head_.weight, "bias": probe.head_.bias},
            {"source": "erm probe: L2 logistic regression on train (lbfgs)", **settings})


def _check_store(store: FeatureStore) -> None:
    if store.manifest.get("shard"):
        raise InputError(f"{store.path} is one shard of an extraction; merge the shards first (extract --merge)")
    if len(store.class_names) != 2:
        raise InputError(f"{store.path}: training supports 2 classes, the store has {len(store.class_names)}")


@dataclass(frozen=True)
class TrainSpec:
    """A checked training request: what `train` will fit, before any store is read."""
    method: str
    preset: str | None
    seeds: list[int]
    hyper: dict
    config: HSFMConfig | None  # HSFM only


def check_spec(method: str, *, preset: str = "waterbirds", overrides: Sequence[str] = (),
               seeds: Sequence[int] = (0,)) -> TrainSpec:
    """Method, preset, `key=value` overrides and seeds, checked without touching any file.

    Raises `InputError` with the one-line reason; the job system calls it before submitting.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        seeds = list(dict.fromkeys(int(s) for s in seeds))
    except (TypeError, ValueError):
        raise InputError(f"seeds must be one or more integers ≥ 0, got {list(seeds)}") from None
    if not seeds or min(seeds) < 0:
        raise InputError(f"seeds must be one or more integers ≥ 0, got {seeds}")
    config = None
    if method == "hsfm":
        config = hsfm_config(preset, overrides)
        hyper = config.to_dict()
    elif method == "erm":
        hyper = {"C": 1.0, "max_iter": 1000, **parse_overrides(overrides, ERM_SETTINGS)}
        ERMProbe(**hyper)  # range checks (C > 0, max_iter ≥ 1)
    else:
        hyper = {"c_grid": list(DFR_C_GRID), "n_refits": 20, "scaler_fit_on": "val",
                 **parse_overrides(overrides, DFR_SETTINGS)}
        if hyper["n_refits"] < 1:
            raise InputError(f"DFR needs n_refits ≥ 1, got {hyper['n_refits']}")
    return TrainSpec(method, preset if method == "hsfm" else None, seeds, hyper, config)


def open_store_for(workspace: str | os.PathLike, method: str) -> FeatureStore:
    """The workspace's store, checked for what `method` needs (merged, 2 classes, val, and train for HSFM)."""
    store = FeatureStore.open(workspace)
    _check_store(store)
    _require_split(store, "val", "every method selects or fits on val")
    if method == "hsfm":
        _require_split(store, "train", "HSFM draws its support set from train")
    return store


def run_ids_for(run_id: str, seeds: Sequence[int]) -> list[str]:
    """The run ids `train(run_id=…)` writes: one per seed."""
    return [f"{run_id}-s{int(seed)}" for seed in dict.fromkeys(seeds)]


def train(
    workspace: str | os.PathLike,
    method: str,
    *,
    preset: str = "waterbirds",
    overrides: Sequence[str] = (),
    seeds: Sequence[int] = (0,),
    device: str = "auto",
    progress: Callable[[int, int, list[dict]], None] | None = None,
    run_id: str | None = None,
) -> list[TrainedRun]:
    """Fit `method` for each seed and write one finished run per seed.

    Runs are named `<run_id>-s<seed>`; `run_id` defaults to `<method>-<UTC time>-<random>`
    (the job system passes its own so that the run ids are known before training starts).
    `progress(epoch, epochs, entries)` is called once with epoch 0 and no entries when HSFM starts,
    then after each epoch with one history entry per seed.
    """
    spec = check_spec(method, preset=preset, overrides=overrides, seeds=seeds)
    seeds, hyper, config = spec.seeds, spec.hyper, spec.config
    base_id = run_id if run_id is not None else new_run_id(method)
    for rid in run_ids_for(base_id, seeds):  # all checked before the first run directory exists
        if run_dir(workspace, rid).exists():
            raise InputError(f"{run_dir(workspace, rid)} already exists; runs are never overwritten")
    store = open_store_for(workspace, method)
    torch_device = resolve_device(device) if method == "hsfm" else torch.device("cpu")

    init, init_info = (None, None)
    if method in ("erm", "hsfm"):
        init, init_info = initial_head(store, hyper if method == "erm" else None)
        if method == "erm" and store.init_head() is not None:
            hyper = {}  # θ₀ is the checkpoint's fc: no probe settings were used
    val = store.select("val")
    if init is not None and tuple(init["weight"].shape) != (2, store.dim):
        raise InputError(f"the initial head is {tuple(init['weight'].shape)} but the features are {store.dim}-d")

    common = {"method": method, "preset": preset if method == "hsfm" else None, "hyperparameters": hyper,
              "seeds_in_call": seeds, "device": str(torch_device), "workspace": str(Path(workspace).resolve()),
              "store_hash": store.content_hash, "code_version": code_version(), "init_head": init_info}
    writers = [RunWriter(workspace, rid, {**common, "seed": seed}) for rid, seed in zip(run_ids_for(base_id, seeds), seeds)]
    out = []
    try:
        if method == "hsfm":
            fitted = _run_hsfm(store, val, init, config, seeds, torch_device, writers, progress)
        else:
            fitted = _run_baseline(method, store, val, init, hyper, seeds)
        for seed, writer, (head, support, facts) in zip(seeds, writers, fitted):
            metrics = evaluate_head(store, head["weight"], head["bias"])
            writer.update_config(fitted=facts)
            writer.finish(head, metrics, support)
            out.append(TrainedRun(writer.run_id, writer.path, seed, metrics))
    except InputError:
        for w in writers:  # bad input found inside the fit: leave nothing half-written behind
            if w.status() != "done":
                w.discard()
        raise
    except KeyboardInterrupt:
        for w in writers:
            if w.status() != "done":
                w.set_status("cancelled")
        raise
    except BaseException as exc:
        for w in writers:
            if w.status() != "done":
                w.fail(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        raise
    return out


def _run_hsfm(store, val, init, config, seeds, device, writers, progress):
    """→ [(head, support, facts)] per seed."""
    train_split = store.select("train")

    def on_epoch(epoch: int, entries: list[dict]) -> None:
        for writer, entry in zip(writers, entries):
            writer.append_history(entry)
        if progress is not None:
            progress(epoch, config.epochs, entries)

    on_epoch(0, [])  # training starts: lets a progress bar appear before the first epoch ends

    results = fit_hsfm(train_split.features, train_split.y, val.features, val.y, val.g, init["weight"], init["bias"],
                       config, seeds=seeds, device=device, n_groups=store.n_groups, progress=on_epoch)
    return [(
        {"weight": r.weight, "bias": r.bias, "init.weight": r.init_weight, "init.bias": r.init_bias},
        {"before": r.H_before, "after": r.H_after, "labels": r.support_labels,
         # store row ids, so that the app finds each support example's image
         "indices": torch.as_tensor(train_split.rows[r.support_indices.numpy()])},
        {"best_epoch": r.best_epoch, "best_val_wga": r.history[r.best_epoch - 1]["val_wga"]},
    ) for r in results]


def _run_baseline(method, store, val, init, hyper, seeds):
    """→ [(head, None, facts)] per seed. ERM is deterministic; DFR's seed drives its subsampling."""
    fitted = []
    for seed in seeds:
        if method == "erm":
            head = {"weight": init["weight"], "bias": init["bias"],  # ERM is θ₀ itself
                    "init.weight": init["weight"].clone(), "init.bias": init["bias"].clone()}
            facts = {}
        else:
            dfr = DFR(c_grid=hyper["c_grid"], n_refits=hyper["n_refits"], seed=seed, n_groups=store.n_groups)
            dfr.fit(np.asarray(val.features), val.y, val.g)
            head = {"weight": dfr.head_.weight, "bias": dfr.head_.bias}
            saved = store.init_head()  # θ₀, for before/after views, when the extraction recorded one
            if saved is not None:
                head |= {"init.weight": saved["weight"], "init.bias": saved["bias"]}
            facts = {"selected_C": dfr.best_C_, "tuning_wga": {str(c): v for c, v in dfr.tuning_scores_.items()}}
        fitted.append((head, None, facts))
    return fitted


def summarize(runs: list[TrainedRun], split: str = "test") -> dict:
    """Mean ± sample std over seeds of WGA and the averages, for the CLI."""
    out = {}
    for key in ("wga", "avg_adjusted", "avg_plain", "mean_group"):
        values = [r.metrics[split][key] for r in runs if split in r.metrics and r.metrics[split][key] is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
    return out
