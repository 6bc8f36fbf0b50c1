"""HSFM — Hard-Set-Guided Feature-Space Meta-Learning (docs/ARCHITECTURE.md §HSFM), as a pure function
over tensors, and its method entry (settings, presets, the store adapter).

Read `fit_hsfm` beside Algorithm 1; the numbered comments match its steps. Several seeds run
*together*: every tensor carries a leading seed axis S, losses are per-seed means summed over seeds
(so each seed's gradient is exactly its own), gradient clipping is per seed, and Adam is
elementwise — so a batched run is the same computation as S separate runs, in one pass of the
same ops. Any number of classes C: n support rows and K_hard hard rows per class, classes in
order 0…C−1 (the paper's binary case is C = 2).

Shapes: S seeds, m = C·n support rows, C classes, d features, V validation rows.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hsfm_core.errors import InputError
from hsfm_core.methods.base import FittedHead, Method, check_positive
from hsfm_core.methods.erm import initial_head
from hsfm_core.methods.hsfm_unroll import linear_logits, mean_ce, unrolled_outer_loss


@dataclass(frozen=True)
class HSFMSettings:
    n_support: int = 16  # n: support examples per class
    inner_steps: int = 15  # T: unrolled inner gradient steps (and head Adam steps per epoch)
    inner_lr: float = 5e-5  # α: inner step size and head Adam learning rate
    outer_lr: float = 1.0  # η: Adam learning rate on the support features H
    outer_steps: int = 15  # K_H: bilevel steps on H per epoch
    hard_per_class: int = 64  # K_hard: hardest validation examples per class
    epochs: int = 40  # E
    clip_norm: float = 10.0  # gradient-norm clip on ∇H

    def __post_init__(self) -> None:
        check_positive(self, ints=("n_support", "inner_steps", "outer_steps", "hard_per_class", "epochs"),
                       floats=("inner_lr", "outer_lr", "clip_norm"), what="HSFM")


# The paper's presets (ResNet-50 ERM features): n, T, α, η, K_H, K_hard, E.
PRESETS = {
    "waterbirds": HSFMSettings(16, 15, 5e-5, 1.0, 15, 64, 40),
    "celeba": HSFMSettings(1024, 10, 5e-5, 1.0, 5, 256, 20),
    "metashift": HSFMSettings(32, 15, 5e-5, 1e-2, 10, 64, 10),
    "dominoes": HSFMSettings(16, 10, 1e-4, 1.0, 15, 256, 40),
}
# The paper's presets were tuned on ResNet-50 ERM features with the checkpoint's own head; they are
# the default only for such stores of their datasets (see HSFM.default_preset). Elsewhere `auto`.
AUTO_BASE = "waterbirds"  # n, T, K_H, K_hard, E of `auto` (only α and η depend on the store)
AUTO_ETA_PER_STD = 0.022  # η = this × the features' RMS per-coordinate std (calibrated on the demo's sweep)
AUTO_SAMPLE_ROWS = 20000
# Seeds train batched (one pass of the same ops) while that is faster than one seed after another.
# Measured on 2 CPU cores (benchmarks/bench_seed_batching.py, 5 seeds, d = 2048, CelebA-size val):
# batched / loop = 0.26 at m = 32 support rows, 0.34 at 128, 0.49 at 512, 0.86 at 2048, and 0.92–0.96
# for the full celeba preset (m = 2048, bench_hsfm). Batching never lost up to the largest preset; the
# ratio climbs with m as the batch turns memory-bound, so from twice that size the seeds run one by one.
LOOP_SEEDS_FROM_SUPPORT_ROWS = 4096
# The paper's symbols, accepted wherever a field name is (`--set T=10 eta=0.5`).
ALIASES = {"n": "n_support", "T": "inner_steps", "alpha": "inner_lr", "eta": "outer_lr", "K_H": "outer_steps",
           "K_hard": "hard_per_class", "E": "epochs"}


@dataclass
class HSFMResult:
    """One seed's outcome: the selected head, the support set before/after editing, the history."""

    seed: int
    weight: torch.Tensor  # C × d, best head (val worst-group accuracy, ties → later epoch)
    bias: torch.Tensor  # C
    init_weight: torch.Tensor  # θ₀
    init_bias: torch.Tensor
    support_indices: torch.Tensor  # m, positions in the train arrays given
    support_labels: torch.Tensor  # m: n zeros, n ones, … (class order)
    H_before: torch.Tensor  # m × d
    H_after: torch.Tensor  # m × d, the edited support features at the selected epoch
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def sample_support(train_labels: torch.Tensor, n: int, seed: int, n_classes: int = 2) -> torch.Tensor:
    """The reference code's rule: one CPU generator; class 0, 1, … in order; randperm of its rows, first n."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(train_labels).cpu()
    picked = []
    for c in range(n_classes):
        class_rows = torch.nonzero(labels == c).flatten()
        if len(class_rows) < n:
            raise InputError(f"class {c} has {len(class_rows)} train rows; n_support = {n} needs at least that many")
        picked.append(class_rows[torch.randperm(len(class_rows), generator=generator)[:n]])
    return torch.cat(picked)


def hard_set(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per seed, the k highest-cross-entropy rows of each class (class labels only): S × (≤ C·k) indices."""
    ce = F.cross_entropy(logits.transpose(1, 2), labels.expand(len(logits), -1), reduction="none")  # S × V
    picked = []
    for c in range(logits.shape[-1]):
        rows = torch.nonzero(labels == c).flatten()
        top = ce[:, rows].topk(min(k, len(rows)), dim=1).indices
        picked.append(rows[top])
    return torch.cat(picked, dim=1)


def group_accuracy(pred: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """S × V predictions → S × n_groups accuracies (NaN for empty groups): `Groups.accuracies` for all
    seeds at once, on the training device, so per-epoch selection never leaves it."""
    correct = (pred == labels).to(torch.float64)
    totals = torch.bincount(groups, minlength=n_groups).to(torch.float64)
    hits = torch.zeros(len(pred), n_groups, dtype=torch.float64, device=pred.device)
    hits.index_add_(1, groups, correct)
    return hits / totals


def fit_hsfm(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    val_features: torch.Tensor | np.ndarray,
    val_labels: torch.Tensor | np.ndarray,
    val_groups: torch.Tensor | np.ndarray,
    init_weight: torch.Tensor,
    init_bias: torch.Tensor,
    config: HSFMSettings,
    seeds: Sequence[int] = (0,),
    device: str | torch.device = "cpu",
    n_groups: int = 4,
    progress: Callable[[int, list[dict]], None] | None = None,
) -> list[HSFMResult]:
    """Train HSFM for each seed (batched) and return one `HSFMResult` per seed.

    `train_features` may be a (memory-mapped) array: only the support rows are read.
    `progress(epoch, entries)` is called after every epoch with one history entry per seed.
    """
    device = torch.device(device)
    seeds = list(seeds)
    train_labels = torch.as_tensor(np.array(train_labels)).long()  # a copy: store arrays are read-only
    val_x = _finite_float(val_features, "validation features").to(device)
    val_y = torch.as_tensor(np.array(val_labels)).long().to(device)
    val_g = torch.as_tensor(np.array(val_groups)).long().to(device)
    d, n_classes = val_x.shape[1], init_weight.shape[0]
    _check_inputs(train_labels, val_y, init_weight, init_bias, d, len(train_features), train_features.shape[1],
                  len(seeds))

    # 1. Support set: n rows per class, the reference code's sampling rule; H is what gets edited.
    support = torch.stack([sample_support(train_labels, config.n_support, s, n_classes) for s in seeds])  # S × m
    rows = support.flatten().numpy()
    H_before = _finite_float(train_features[rows], "support features").reshape(len(seeds), -1, d).to(device)
    H = H_before.clone().requires_grad_(True)
    support_y = torch.arange(n_classes).repeat_interleave(config.n_support).to(device)  # n zeros, n ones, …
    onehot = F.one_hot(support_y, n_classes).to(H.dtype)
    H_opt = torch.optim.Adam([H], lr=config.outer_lr)

    # 2. Persistent head θ ← θ₀ with its own Adam (lr α), state kept across epochs.
    W = init_weight.detach().float().to(device).expand(len(seeds), -1, -1).clone().requires_grad_(True)
    b = init_bias.detach().float().to(device).expand(len(seeds), -1).clone().requires_grad_(True)
    head_opt = torch.optim.Adam([W, b], lr=config.inner_lr)

    best = [{"wga": -1.0} for _ in seeds]
    histories: list[list[dict]] = [[] for _ in seeds]
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        # 3.1 Hard set Q: per class, the K_hard highest-CE validation rows under the current θ.
        with torch.no_grad():
            q = hard_set(linear_logits(val_x, W, b), val_y, config.hard_per_class)  # S × |Q|
        hard_x, hard_y = val_x[q], val_y[q]

        # 3.2 K_H bilevel steps: unroll T inner steps from θ, outer loss on Q, Adam on H (∇H clipped).
        outer_losses = torch.zeros(len(seeds), device=device)
        for _ in range(config.outer_steps):
            H_opt.zero_grad(set_to_none=True)
            losses = unrolled_outer_loss(H, onehot, W.detach(), b.detach(), hard_x, hard_y,
                                         config.inner_steps, config.inner_lr)
            losses.sum().backward()
            _clip_per_seed(H.grad, config.clip_norm)
            H_opt.step()
            outer_losses += losses.detach()
        # 3.3 Head update: T Adam steps on CE(stop-grad(H), θ).
        H_fixed = H.detach()
        for _ in range(config.inner_steps):
            head_opt.zero_grad(set_to_none=True)
            head_loss = mean_ce(linear_logits(H_fixed, W, b), support_y)
            head_loss.sum().backward()
            head_opt.step()

        # 3.4 Model selection on val worst-group accuracy; ties go to the later epoch.
        with torch.no_grad():
            pred = linear_logits(val_x, W, b).argmax(dim=-1)
            acc = group_accuracy(pred, val_y, val_g, n_groups)
            avg = (pred == val_y).double().mean(dim=1)
            # median ‖Δ‖/‖z‖ over the support set: lets the curves show the edits growing
            relative_edit = ((H - H_before).norm(dim=-1) / H_before.norm(dim=-1).clamp_min(1e-12)).quantile(0.5, dim=1)
        entries = []
        for s in range(len(seeds)):
            present = ~torch.isnan(acc[s])
            wga = float(acc[s][present].min())
            entry = {"epoch": epoch, "outer_loss": float(outer_losses[s]) / config.outer_steps,
                     "head_loss": float(head_loss[s].detach()), "val_avg": float(avg[s]), "val_wga": wga,
                     "val_group_acc": [None if torch.isnan(v) else float(v) for v in acc[s]],
                     "median_relative_edit": float(relative_edit[s]),
                     "hard_set_size": int(q.shape[1]), "elapsed_s": time.perf_counter() - start}
            histories[s].append(entry)
            entries.append(entry)
            if wga >= best[s]["wga"]:
                best[s] = {"wga": wga, "epoch": epoch, "W": W[s].detach().clone(), "b": b[s].detach().clone(),
                           "H": H[s].detach().clone()}
        if progress is not None:
            progress(epoch, entries)

    # 4. Output: best θ, H_before, H_after, support indices, history.
    return [
        HSFMResult(seed=seed, weight=best[s]["W"].cpu(), bias=best[s]["b"].cpu(),
                   init_weight=init_weight.detach().float().cpu(), init_bias=init_bias.detach().float().cpu(),
                   support_indices=support[s], support_labels=support_y.cpu(), H_before=H_before[s].cpu(),
                   H_after=best[s]["H"].cpu(), best_epoch=best[s]["epoch"], history=histories[s])
        for s, seed in enumerate(seeds)
    ]


def _clip_per_seed(grad: torch.Tensor, max_norm: float) -> None:
    """clip_grad_norm_ semantics (coef = max_norm / (norm + 1e-6), at most 1), one norm per seed."""
    norms = grad.flatten(1).norm(dim=1)
    grad.mul_(torch.clamp(max_norm / (norms + 1e-6), max=1.0)[:, None, None])


def _finite_float(x, what: str) -> torch.Tensor:
    t = x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))
    if not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t).reshape(len(t), -1).all(dim=1)).flatten()
        raise InputError(f"{what} contain NaN or inf ({len(bad)} row(s), first {bad[:5].tolist()})")
    return t


def _check_inputs(train_y, val_y, init_weight, init_bias, d, n_train, train_dim, n_seeds) -> None:
    n_classes = init_weight.shape[0]
    if n_seeds < 1:
        raise InputError("at least one seed is needed")
    if train_dim != d:
        raise InputError(f"train features are {train_dim}-d but validation features are {d}-d")
    if len(train_y) != n_train:
        raise InputError(f"{n_train} train feature rows but {len(train_y)} train labels")
    if n_classes < 2 or tuple(init_weight.shape) != (n_classes, d) or tuple(init_bias.shape) != (n_classes,):
        raise InputError(f"initial head has weight {tuple(init_weight.shape)} / bias {tuple(init_bias.shape)}; "
                         f"the features are {d}-d, so expected (C, {d}) / (C,) with C ≥ 2 classes")
    for name, labels in (("train", train_y), ("val", val_y)):
        present = set(torch.unique(labels).tolist())
        if present != set(range(n_classes)):
            raise InputError(f"the {name} split has classes {sorted(present)}; HSFM needs every class 0…{n_classes - 1}")


class HSFM(Method):
    name = "hsfm"
    label = "HSFM"
    description = "Hard-Set-Guided Feature-Space Meta-Learning: edit n train features per class so the head fits the hardest val rows"
    order = 10
    Settings = HSFMSettings
    aliases = ALIASES
    presets = PRESETS
    needs = ("train", "val")
    uses_device = True
    edits_features = True

    def default_preset(self, store=None):
        """The paper's preset for ResNet-50 ERM features of its datasets, else `auto`."""
        if store is None:
            return "waterbirds", "the paper's Waterbirds preset (no store given)"
        dataset = (store.manifest.get("dataset") or {}).get("format")
        backbone = store.manifest.get("backbone") or {}
        if backbone.get("kind") == "resnet50" and dataset in PRESETS:
            return dataset, f"the paper's {dataset} preset: this store holds ResNet-50 ERM features of {dataset}"
        return "auto", (f"the paper's presets were tuned for ResNet-50 ERM features of Waterbirds, CelebA, MetaShift "
                        f"or Dominoes; this store holds {backbone.get('id', 'other')} features of "
                        f"{dataset or 'another dataset'}")

    def auto_settings(self, store):
        """α and η from the store's scale; the other settings from the Waterbirds preset.

        α: the head must be able to travel from θ₀ to a head that fits the minority groups within its
        E·T Adam steps. Adam moves each of the P = C·(d+1) parameters by about α a step, so
        α = ‖θ_DFR − θ₀‖ / (E·T·√P), with θ_DFR a one-refit DFR head on val (DFR's own C tuning)
        as the destination's distance. η: the edits are Adam steps on the features, so η follows the
        features' per-coordinate scale: η = 0.022 × RMS per-coordinate std of train (0.022 is the
        demo's validation-selected η = 0.1 over its std 4.5). Both scale with the features: ×s
        features give α/s (heads shrink) and η·s.
        """
        from hsfm_core.methods.dfr import DFR

        base = PRESETS[AUTO_BASE]
        val = store.select("val")
        _finite_float(val.features, "validation features")  # the same message as the fit's own check
        init, _ = initial_head(store)
        dfr = DFR(store.groups, n_refits=1, seed=0).fit(np.asarray(val.features), val.y, val.g).head_
        theta0 = torch.cat([init.weight.float(), init.bias.float()[:, None]], dim=1)
        target = torch.cat([dfr.weight.float(), dfr.bias.float()[:, None]], dim=1)
        distance = float((target - theta0).norm())
        alpha = distance / (base.epochs * base.inner_steps * theta0.numel() ** 0.5)
        train = store.select("train")
        rows = np.random.default_rng(0).choice(len(train.rows), size=min(AUTO_SAMPLE_ROWS, len(train.rows)),
                                               replace=False)
        spread = float(np.sqrt(np.mean(np.asarray(train.features[np.sort(rows)], dtype=np.float64).std(axis=0) ** 2)))
        eta = AUTO_ETA_PER_STD * spread
        if not (np.isfinite(alpha) and alpha > 0 and np.isfinite(eta) and eta > 0):
            raise InputError(f"{store.path}: cannot derive auto settings (‖θ_DFR − θ₀‖ = {distance}, feature spread "
                             f"{spread}); give --preset and --set alpha=… eta=…")
        settings = dataclasses.replace(base, inner_lr=float(f"{alpha:.3g}"), outer_lr=float(f"{eta:.3g}"))
        why = (f"auto: α = ‖θ_DFR − θ₀‖ / (E·T·√P) = {distance:.3g} / ({base.epochs}·{base.inner_steps}·"
               f"√{theta0.numel()}) = {settings.inner_lr:.3g}; η = {AUTO_ETA_PER_STD} × feature spread {spread:.3g} "
               f"= {settings.outer_lr:.3g}; other settings from the {AUTO_BASE} preset")
        return settings, why

    def fit(self, store, settings, seeds, *, device="cpu", progress=None):
        train, val = store.select("train"), store.select("val")
        init, init_info = initial_head(store)
        seeds = list(seeds)
        batches = ([seeds] if store.groups.n_classes * settings.n_support < LOOP_SEEDS_FROM_SUPPORT_ROWS
                   else [[s] for s in seeds])
        epochs = settings.epochs * len(batches)
        if progress is not None:
            progress(0, epochs, [])  # training starts: a progress bar can appear before epoch 1 ends
        results = []
        for i, batch in enumerate(batches):
            def report(epoch, entries, offset=i * settings.epochs, first=seeds.index(batch[0])):
                if progress is not None:  # entries in the order of all seeds, None for the others
                    padded = [None] * len(seeds)
                    padded[first : first + len(entries)] = entries
                    progress(offset + epoch, epochs, padded)

            results += fit_hsfm(train.features, train.y, val.features, val.y, val.g, init.weight, init.bias, settings,
                                seeds=batch, device=device, n_groups=store.groups.n_groups, progress=report)
        return [FittedHead(
            seed=r.seed, weight=r.weight, bias=r.bias, init_weight=r.init_weight, init_bias=r.init_bias,
            # store row ids, so that the app finds each support example's image
            support={"before": r.H_before, "after": r.H_after, "labels": r.support_labels,
                     "indices": torch.as_tensor(train.rows[r.support_indices.numpy()])},
            history=r.history, init_source=init_info,
            selected={"best_epoch": r.best_epoch, "best_val_wga": r.history[r.best_epoch - 1]["val_wga"]},
        ) for r in results]


METHOD = HSFM()
