"""Train a head on a workspace and record it as runs: the I/O around a registered method's `fit`.

`train(workspace, spec)` checks everything a user can get wrong before any run directory exists,
then writes one run per seed (docs/ARCHITECTURE.md §Runs). Which method, with which settings,
comes from the `TrainSpec` and the method registry; nothing here names a method.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hsfm_core import methods
from hsfm_core.device import training_device
from hsfm_core.errors import InputError
from hsfm_core.features import FeatureStore
from hsfm_core.heads import evaluate_head
from hsfm_core.methods.base import Progress
from hsfm_core.runs import RunWriter, code_version, free_run_ids, new_run_id
from hsfm_core.spec import TrainSpec


@dataclass
class TrainedRun:
    run_id: str
    path: Path
    seed: int
    metrics: dict
    preset: str | None = None  # the preset used, and why (the method's default for this store, or asked for)
    preset_reason: str = ""


def open_store_for(workspace: str | os.PathLike, method_name: str) -> FeatureStore:
    """The workspace's store, checked for what the method needs (merged, and the splits it reads)."""
    store = FeatureStore.open(workspace)
    if store.manifest.get("shard"):
        raise InputError(f"{store.path} is one shard of an extraction; merge the shards first (extract --merge)")
    method = methods.get(method_name)
    for split in method.needs:
        if not store.has_split(split):
            raise InputError(f"{store.path}: the store has no {split} split ({method_name} reads it); it has "
                             f"{', '.join(store.splits) or 'no splits'}")
    method.check_store(store)  # e.g. every validation group present, for methods that select on them
    return store


def train(workspace: str | os.PathLike, spec: TrainSpec | str, *, progress: Progress | None = None,
          run_id: str | None = None, **request) -> list[TrainedRun]:
    """Fit `spec.method` for each seed and write one finished run per seed.

    `spec` is a `TrainSpec`; a method name with `TrainSpec.create`'s keywords (`preset`, `overrides`,
    `seeds`, `device`) is accepted as a shorthand for scripts. Runs are named `<run_id>-s<seed>`;
    `run_id` defaults to `<method>-<UTC time>-<random>` (the job system passes its own so that the
    run ids are known before training starts). `progress(epoch, epochs, entries)`: see `methods.base`.

    Example: `train("ws", TrainSpec.create("hsfm", preset="waterbirds", seeds=[0, 1, 2]))`.
    """
    if not isinstance(spec, TrainSpec):
        spec = TrainSpec.create(spec, **request)
    elif request:
        raise TypeError(f"train(workspace, spec) takes no request keywords beside a TrainSpec: {sorted(request)}")
    return train_many(workspace, [spec], progress=progress, run_ids=[run_id])[0]


def train_many(workspace: str | os.PathLike, specs: Sequence[TrainSpec], *, progress: Progress | None = None,
               run_ids: Sequence[str | None] | None = None) -> list[list[TrainedRun]]:
    """`train` for several requests of one method on the same seeds and device, in ONE `Method.fit_many` call:
    requests whose settings differ only in the method's `row_scalars` train in one pass (HSFM's α, η, clip
    norm: a row each, like seeds; docs/ARCHITECTURE.md §Sweeps). → one list of runs per request, in order.

    Every run is the run `train(workspace, specs[k], run_id=run_ids[k])` writes, file for file (config.json,
    history.jsonl, head, support, metrics; only ids and times differ): each run's config records its own
    request. `run_ids[k]` names request k's runs `<run_id>-s<seed>` (None: a new id). Everything is checked
    before the first run directory exists. `progress(epoch, epochs, entries)`: entries for every (request,
    seed), request-major, None for those not training that epoch (`Method.fit_many`).

    Bad input found inside the fit removes every unfinished run (InputError); an interrupt leaves them
    `cancelled`, a crash `failed`; a run whose head or history is not finite is kept `failed` and the others
    are finished, then `TrainingDiverged` names the failed ones (issue 26).
    """
    specs = list(specs)
    if not specs or not all(isinstance(s, TrainSpec) for s in specs):
        raise TypeError("train_many(workspace, specs) takes a non-empty list of TrainSpec")
    first = specs[0]
    seeds = list(first.seeds)
    if any(s.method != first.method or list(s.seeds) != seeds or s.device != first.device for s in specs):
        raise ValueError("train_many trains requests of one method, on the same seeds and device")
    run_ids = [None] * len(specs) if run_ids is None else list(run_ids)
    if len(run_ids) != len(specs):
        raise ValueError(f"{len(specs)} requests but {len(run_ids)} run ids")
    method = methods.get(first.method)
    bases = [rid if rid is not None else new_run_id(first.method) for rid in run_ids]
    if len(set(bases)) != len(bases):
        raise InputError(f"run ids given twice: {sorted({b for b in bases if bases.count(b) > 1})}")
    ids = [free_run_ids(workspace, base, seeds) for base in bases]  # all checked before the first run directory exists
    store = open_store_for(workspace, first.method)
    resolved = [spec.resolve(store) for spec in specs]  # (settings, preset, why), each checked
    work = [w for settings, _, _ in resolved if (w := method.step_work(store, settings)) is not None]
    device, where = training_device(first.device, method.uses_device, max(work) if work else None,  # §Devices
                                    method=method.label, note=first.device_note)

    shared = {**where, "workspace": str(Path(workspace).resolve()), "store_hash": store.content_hash,
              "code_version": code_version()}  # one `git rev-parse` per call, not per request
    writers, owners = [], []  # request-major, as fit_many's entries: (request k, seed)
    try:
        for k, (spec, (settings, preset, why), rids) in enumerate(zip(specs, resolved, ids)):
            common = {"method": spec.method, "preset": preset, "preset_reason": why,
                      "hyperparameters": _jsonable(dataclasses.asdict(settings)), "request": spec.to_dict(),
                      "seeds_in_call": list(spec.seeds), **shared, **spec.tags}
            for rid, seed in zip(rids, spec.seeds):
                writers.append(RunWriter(workspace, rid, {**common, "seed": seed}))
                owners.append(k)
    except BaseException:
        for w in writers:  # e.g. a run directory that appeared meanwhile: none of this call's runs is kept
            w.discard()
        raise

    def on_epoch(epoch: int, epochs: int, entries: list[dict]) -> None:
        for writer, entry in zip(writers, entries):
            if entry is not None:  # None: a run not training this epoch (another pass, or seeds one after another)
                writer.append_history(entry)
        if progress is not None:
            progress(epoch, epochs, entries)

    out: list[list[TrainedRun]] = [[] for _ in specs]
    diverged = []
    try:
        fitted = method.fit_many(store, [settings for settings, _, _ in resolved], seeds, device=device,
                                 progress=on_epoch)
        for writer, k, head in zip(writers, owners, [head for heads in fitted for head in heads]):
            if (reason := non_finite(head)) is not None:  # never a NaN head marked done (issue 26)
                writer.update_config(fitted=_jsonable(head.selected), init_head=head.init_source)
                writer.fail(f"{reason}; the run is failed rather than scored. {DIVERGED_HINT}")
                diverged.append(f"{writer.run_id}: {reason}")
                continue
            metrics = evaluate_head(store, head.weight, head.bias)
            writer.update_config(fitted=_jsonable(head.selected), init_head=head.init_source)
            writer.finish(head.head_tensors(), metrics, head.support)
            out[k].append(TrainedRun(writer.run_id, writer.path, head.seed, metrics, resolved[k][1], resolved[k][2]))
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
    if diverged:  # the runs are kept, failed, with the epoch and the reason in error.txt
        raise TrainingDiverged(f"{len(diverged)} of {len(writers)} run(s) failed: " + "; ".join(diverged)
                               + f". {DIVERGED_HINT}", done=[run for runs in out for run in runs])
    return out


DIVERGED_HINT = ("Lower the learning rates, or check the features' scale (`python -m hsfm_core import` refuses "
                 "features that overflow float32)")


class TrainingDiverged(InputError):
    """Some runs ended with a non-finite head or loss: they are written `failed` (error.txt says at which epoch
    and why); `done` holds the runs of the other seeds, which finished."""

    def __init__(self, message: str, done: list):
        super().__init__(message)
        self.done = done


def non_finite(head) -> str | None:
    """Why a fitted head cannot be scored: the first epoch whose history holds a non-finite number (a loss, a
    norm), or a non-finite weight, bias or edited support feature; None when all are finite."""
    for index, entry in enumerate(head.history):
        bad = sorted(key for key, value in entry.items() if _is_non_finite(value))
        if bad:
            epoch = entry.get("epoch", index + 1)
            return f"non-finite {', '.join(bad)} at epoch {epoch} (seed {head.seed})"
    tensors = {"weight": head.weight, "bias": head.bias, **{f"support {k}": v for k, v in (head.support or {}).items()
                                                          if k in ("before", "after")}}
    for name, tensor in tensors.items():
        if tensor is not None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            where = f" (model selection chose epoch {head.selected['best_epoch']})" if "best_epoch" in head.selected else ""
            return f"non-finite values in the head's {name}{where} (seed {head.seed})"
    return None


def _is_non_finite(value) -> bool:
    if isinstance(value, float):
        return not np.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_is_non_finite(v) for v in value)
    return False


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def summarize(runs: list[TrainedRun], split: str = "test") -> dict:
    """Mean ± sample std over seeds of WGA and the averages, for the CLI."""
    out = {}
    for key in ("wga", "avg_adjusted", "avg_plain", "mean_group"):
        values = [r.metrics[split][key] for r in runs if split in r.metrics and r.metrics[split][key] is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
    return out
