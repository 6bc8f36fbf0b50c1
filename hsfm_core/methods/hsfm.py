"""HSFM — Hard-Set-Guided Feature-Space Meta-Learning (docs/ARCHITECTURE.md §HSFM), as a pure function
over tensors, and its method entry (settings, presets, the store adapter).

Read `fit_hsfm` beside Algorithm 1; the numbered comments match its steps. Several runs train
*together* as rows: every tensor carries a leading row axis R = configurations × seeds, losses are
per-row means summed over rows (so each row's gradient is exactly its own), gradient clipping is per
row, Adam is elementwise, and α, η and the clip norm are per-row tensors — so a batched call is the
same computation as R separate runs, in one pass of the same ops. Configurations can share a pass
when they differ only in `ROW_SCALARS`. Any number of classes C: n support rows and K_hard hard rows
per class, classes in order 0…C−1 (the paper's binary case is C = 2).

Steps 3.2–3.3 run fused by default (`_FusedSteps`: the loss and ∇H in closed form, no autograd);
`fused=False` runs them as first written (`_PlainSteps`: autograd, `torch.optim.Adam`), the oracle.

Shapes: R rows, m = C·n support rows, C classes, d features (D ≥ d + 1 augmented columns), V
validation rows.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hsfm_core.errors import InputError
from hsfm_core.methods.base import FittedHead, Method, check_positive
from hsfm_core.methods.erm import initial_head
from hsfm_core.methods.hsfm_unroll import (fused_outer_loss_and_grad, head_logits_and_grad, large_support,
                                           linear_logits, mean_ce, unrolled_outer_loss)


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
# Measured on 2 CPU cores (benchmarks/bench_seed_batching.py, 5 seeds, d = 2048, CelebA-size val), CPU
# time of the fused loop, 1 thread: batched / loop = 0.35 at m = 32 support rows, 0.41 at 128, 0.68 at
# 512, 0.77–0.90 at 2048 (large supports go through an epoch a row at a time, so batching them shares
# the validation passes only). Batching never lost up to the largest preset, so from twice that size
# the seeds run one by one.
LOOP_SEEDS_FROM_SUPPORT_ROWS = 4096
# A pass's support features (rows × C·n × (d + 1), float32) at most this: the fit keeps about nine arrays
# that size (edits, best edits, gradient, Adam's moments…), so a pass stays near 2.3 GB however many
# configurations a sweep hands `fit_many` (CelebA preset: 15 rows of 17 MB a pass).
PASS_SUPPORT_BYTES = 256 * 2**20
# On the CPU an epoch's steps take rows in groups whose support features fit this (a share of a 32 MB
# L3). CelebA preset, 5 seeds, 2 epochs: 2.50 s of CPU a row at a time against 3.00 s all rows together
# (median of 3, `bench_seed_batching --support 2048 --one-group`).
SUPPORT_BYTES_PER_PASS = 24 * 2**20
# Settings that only scale a step: configurations differing in nothing else train together, one row each.
ROW_SCALARS = ("inner_lr", "outer_lr", "clip_norm")
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
    settings: HSFMSettings | None = None  # this row's configuration


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
    """Per seed, the k highest-cross-entropy rows of each class (class labels only): S × (≤ C·k) indices.
    `logits`: S × V × C."""
    ce = F.cross_entropy(logits.transpose(1, 2), labels.expand(len(logits), -1), reduction="none")  # S × V
    return _hardest(ce, [torch.nonzero(labels == c).flatten() for c in range(logits.shape[-1])], k)


def _hardest(ce: torch.Tensor, class_rows: list[torch.Tensor], k: int) -> torch.Tensor:
    picked = []
    for rows in class_rows:
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


def shape_of(settings: HSFMSettings) -> tuple:
    """The settings that fix tensor shapes and step counts: configurations that share them train together."""
    return tuple(getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name not in ROW_SCALARS)


def fit_hsfm(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    val_features: torch.Tensor | np.ndarray,
    val_labels: torch.Tensor | np.ndarray,
    val_groups: torch.Tensor | np.ndarray,
    init_weight: torch.Tensor,
    init_bias: torch.Tensor,
    config: HSFMSettings | Sequence[HSFMSettings],
    seeds: Sequence[int] = (0,),
    device: str | torch.device = "cpu",
    n_groups: int = 4,
    progress: Callable[[int, list[dict]], None] | None = None,
    dtype: torch.dtype = torch.float32,
    fused: bool = True,
) -> list[HSFMResult]:
    """Train HSFM for each configuration × seed (all batched) and return one `HSFMResult` per row,
    configuration-major: [(config 0, seed 0), (config 0, seed 1), …].

    `config` is one `HSFMSettings` or several that differ only in `ROW_SCALARS` (α, η, clip norm):
    those become a leading axis like the seeds, so each row is exactly its own separate run.
    `train_features` may be a (memory-mapped) array: only the support rows are read.
    `progress(epoch, entries)` is called after every epoch with one history entry per row.
    `fused=False` runs the bilevel and head steps through autograd and `torch.optim.Adam` (one
    configuration only): the plain loop the fused one is tested against.
    """
    configs = [config] if isinstance(config, HSFMSettings) else list(config)
    if not configs or len({shape_of(c) for c in configs}) != 1:
        raise ValueError(f"configurations trained together must differ only in {', '.join(ROW_SCALARS)}")
    if not fused and len(configs) > 1:
        raise ValueError("the plain loop trains one configuration at a time")
    device = torch.device(device)
    seeds = list(seeds)
    shared = configs[0]
    train_labels = torch.as_tensor(np.array(train_labels)).long()  # a copy: store arrays are read-only
    d, n_classes = val_features.shape[1], init_weight.shape[0]
    width = _augmented_width(d)
    # V × d, read in place where it already is a `dtype` array: a 166 MB copy for CelebA's val was 0.1 s of each fit
    val_x = _finite_float(val_features, "validation features", dtype, share=True).to(device)
    val_y = torch.as_tensor(np.array(val_labels)).long().to(device)
    val_g = torch.as_tensor(np.array(val_groups)).long().to(device)
    _check_inputs(train_labels, val_y, init_weight, init_bias, d, len(train_features), train_features.shape[1],
                  len(seeds))
    n_rows = len(configs) * len(seeds)

    # 1. Support set: n rows per class, the reference code's sampling rule; H is what gets edited.
    support = torch.stack([sample_support(train_labels, shared.n_support, s, n_classes) for s in seeds])  # S × m
    rows = support.flatten().numpy()
    H_before = _finite_float(train_features[rows], "support features", dtype).reshape(len(seeds), -1, d).to(device)
    if len(configs) > 1:
        H_before = H_before.repeat(len(configs), 1, 1)  # R × m × d: every configuration starts from its seed's rows
    support_y = torch.arange(n_classes).repeat_interleave(shared.n_support).to(device)  # n zeros, n ones, …

    # 2. Persistent head θ ← θ₀ with its own Adam (lr α), state kept across epochs. θ = [W b 0…], so that one
    # matrix product with a row [x 1 0…] gives its logits.
    theta0 = _augment(init_weight.detach().to(device, dtype), init_bias.detach().to(device, dtype), width)
    theta0 = theta0.expand(n_rows, -1, -1)
    scalars = {name: torch.tensor([getattr(c, name) for c in configs], dtype=torch.float64).repeat_interleave(len(seeds))
               for name in ROW_SCALARS}
    steps = (_FusedSteps if fused else _PlainSteps)(H_before, theta0, support_y, shared, scalars)

    class_rows = [torch.nonzero(val_y == c).flatten() for c in range(n_classes)]
    before_norms = H_before.norm(dim=-1).clamp_min(1e-12)
    best_wga = torch.full((n_rows,), -1.0, dtype=torch.float64, device=device)
    best_epoch = torch.zeros(n_rows, dtype=torch.long, device=device)
    best_theta, best_H = theta0.clone(), H_before.clone()
    edits = torch.empty_like(H_before)  # Δ, one buffer for every epoch (a fresh one is page faults at CelebA size)
    histories: list[list[dict]] = [[] for _ in range(n_rows)]
    start = time.perf_counter()
    with torch.no_grad():
        logits = _val_logits(steps.theta, val_x)  # R × C × V, reused: epoch e's selection is epoch e+1's hard set
        for epoch in range(1, shared.epochs + 1):
            # 3.1 Hard set Q: per class, the K_hard highest-CE validation rows under the current θ.
            ce = F.cross_entropy(logits, val_y.expand(n_rows, -1), reduction="none")  # R × V
            q = _hardest(ce, class_rows, shared.hard_per_class)  # R × |Q|

            # 3.2 K_H bilevel steps: unroll T inner steps from θ, outer loss on Q, Adam on H (∇H clipped).
            outer_losses = steps.bilevel(_augment(val_x[q], 1.0, width), val_y[q])  # hard rows [x 1 0…]
            # 3.3 Head update: T Adam steps on CE(stop-grad(H), θ).
            head_loss = steps.head()

            # 3.4 Model selection on val worst-group accuracy; ties go to the later epoch.
            logits = _val_logits(steps.theta, val_x)
            pred = logits.max(dim=1).indices  # argmax's first-maximum rule, 15× faster over the class axis
            acc = group_accuracy(pred, val_y, val_g, n_groups)
            avg = (pred == val_y).double().mean(dim=1)
            wga = torch.where(torch.isnan(acc), torch.inf, acc).amin(dim=1)
            # median ‖Δ‖/‖z‖ over the support set: lets the curves show the edits growing
            relative_edit = (torch.sub(steps.H, H_before, out=edits).norm(dim=-1) / before_norms).quantile(0.5, dim=1)
            improved = wga >= best_wga
            best_wga = torch.where(improved, wga, best_wga)
            best_epoch[improved] = epoch
            for r in torch.nonzero(improved).flatten().tolist():  # one pass over the rows that improved
                best_theta[r].copy_(steps.theta[r])
                best_H[r].copy_(steps.H[r])

            elapsed = time.perf_counter() - start
            columns = zip(*(t.tolist() for t in (outer_losses / shared.outer_steps, head_loss, avg, wga, acc,
                                                 relative_edit)))
            entries = []
            for r, (outer, head, average, worst, groups, edit) in enumerate(columns):
                entry = {"epoch": epoch, "outer_loss": outer, "head_loss": head, "val_avg": average, "val_wga": worst,
                         "val_group_acc": [None if v != v else v for v in groups], "median_relative_edit": edit,
                         "hard_set_size": int(q.shape[1]), "elapsed_s": elapsed}
                histories[r].append(entry)
                entries.append(entry)
            if progress is not None:
                progress(epoch, entries)

    # 4. Output: best θ, H_before, H_after, support indices, history.
    init_weight, init_bias = init_weight.detach().to(dtype).cpu(), init_bias.detach().to(dtype).cpu()
    best_theta, best_H, H_before = best_theta.cpu(), best_H.cpu(), H_before.cpu()
    return [
        HSFMResult(seed=seeds[r % len(seeds)], weight=best_theta[r, :, :d].clone(), bias=best_theta[r, :, d].clone(),
                   init_weight=init_weight, init_bias=init_bias, support_indices=support[r % len(seeds)],
                   support_labels=support_y.cpu(), H_before=H_before[r], H_after=best_H[r],
                   best_epoch=int(best_epoch[r]), history=histories[r], settings=configs[r // len(seeds)])
        for r in range(n_rows)
    ]


def _val_logits(theta: torch.Tensor, val_x: torch.Tensor) -> torch.Tensor:
    """R × C × D heads [W b 0…], V × d rows → R × C × V logits: one matrix product for every row."""
    n_rows, n_classes, _ = theta.shape
    d = val_x.shape[1]
    weights, bias = theta[..., :d].reshape(n_rows * n_classes, d), theta[..., d].reshape(-1)  # views
    if len(weights) <= 2:  # one binary head: MKL ran V × 2 1.6× faster than 2 × V (13 vs 21 ms, CelebA's val) …
        return torch.addmm(bias, val_x, weights.T).T.contiguous().view(n_rows, n_classes, -1)
    return torch.addmm(bias[:, None], weights, val_x.T).view(n_rows, n_classes, -1)  # … 4 to 24 heads 1.1–1.4× slower


class _Adam:
    """`torch.optim.Adam`'s single-tensor update (β = 0.9, 0.999, ε = 1e-8, same operations in the same
    order), with one learning rate per row and its buffers allocated once. When every row has the same
    learning rate the step is torch's own `addcdiv_` (one pass over the parameters where the per-row
    step takes three: 11.1 → 8.4 ms an outer step at CelebA size, `benchmarks/bench_hsfm_unroll.py`).
    A step may update a group of rows only (`rows`): each group counts its own steps, so rows stepped
    group by group end exactly where rows stepped together would."""

    def __init__(self, param: torch.Tensor, lr: torch.Tensor, max_steps: int):
        self.param = param
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
        self.denom = torch.empty_like(param)
        self.shared_lr = float(lr[0]) if bool((lr == lr[0]).all()) else None
        self.update = torch.empty_like(param) if self.shared_lr is None else self.denom  # (unused with one lr)
        steps = torch.arange(1, max_steps + 1, dtype=torch.float64)
        # −lr / (1 − β₁ᵗ) per step and row, computed in float64 as torch does in Python
        rows = (1,) * (param.dim() - 1)
        self.neg_step = (-lr[None, :] / (1 - 0.9 ** steps[:, None])).to(param).view(max_steps, -1, *rows)
        self.groups: dict[tuple, list] = {}  # (start, stop) → [steps taken, param, exp_avg, exp_avg_sq, denom, update]

    def __call__(self, grad: torch.Tensor, rows: slice = slice(None)) -> None:
        group = self.groups.get((rows.start, rows.stop))
        if group is None:  # views made once: they are most of the cost of a step on a small support
            group = [0] + [t[rows] for t in (self.param, self.exp_avg, self.exp_avg_sq, self.denom, self.update)]
            self.groups[(rows.start, rows.stop)] = group
        group[0] += 1
        step, param, exp_avg, exp_avg_sq, denom, update = group
        exp_avg.lerp_(grad, 0.1)
        exp_avg_sq.mul_(0.999).addcmul_(grad, grad, value=0.001)
        bias_correction2_sqrt = (1 - 0.999 ** step) ** 0.5
        torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(1e-8)
        if self.shared_lr is not None:
            param.addcdiv_(exp_avg, denom, value=-(self.shared_lr / (1 - 0.9**step)))
            return
        torch.mul(exp_avg, self.neg_step[step - 1][rows], out=update).div_(denom)
        param.add_(update)


class _FusedSteps:
    """Steps 3.2 and 3.3 in closed form: the loss and ∇H by hand (`fused_outer_loss_and_grad`), the
    head's gradient by hand, `_Adam` and clipping on buffers allocated once; no autograd graph. Every
    scalar setting is per row. H is kept as H̃ = [H 1 0…]: those columns get zero gradient, so Adam
    leaves them exactly as they are.

    Rows go through an epoch's steps `rows_per_pass` at a time, all K_H outer steps (and then all T head
    steps) of one group before the next: a large support (CelebA: m = 2048, 17 MB a row) is read 4T
    times per outer step, and one row's H̃ stays in the cache between those reads where a batch of
    rows would not (`SUPPORT_BYTES_PER_PASS`). Rows share nothing within an epoch, so the order is free."""

    def __init__(self, H_before, theta0, support_y, config: HSFMSettings, scalars: dict[str, torch.Tensor]):
        n_rows, m, d = H_before.shape
        self.config, self.d = config, d
        self.H1 = _augment(H_before, 1.0, theta0.shape[-1])
        self.theta = theta0.clone()
        self.onehot = F.one_hot(support_y, theta0.shape[1]).to(H_before.dtype).T.contiguous()  # C × m
        self.neg_scale = (-scalars["inner_lr"] / m).to(H_before).view(-1, 1, 1)  # −α/m
        self.clip = scalars["clip_norm"].to(H_before)
        self.H_adam = _Adam(self.H1, scalars["outer_lr"].to(H_before.device), config.epochs * config.outer_steps)
        self.head_adam = _Adam(self.theta, scalars["inner_lr"].to(H_before.device), config.epochs * config.inner_steps)
        self.grad_H = torch.empty_like(self.H1)
        # a CPU cache's rule: an accelerator takes every row at once (fewer, wider kernels)
        rows_per_pass = max(1, SUPPORT_BYTES_PER_PASS // self.H1[0].nbytes) if self.H1.is_cpu else n_rows
        self.row_groups = [slice(i, min(i + rows_per_pass, n_rows)) for i in range(0, n_rows, rows_per_pass)]

    @property
    def H(self) -> torch.Tensor:
        return self.H1[..., : self.d]

    def bilevel(self, hard_x1, hard_y) -> torch.Tensor:
        hard_onehot = F.one_hot(hard_y, self.onehot.shape[0]).to(self.H1.dtype).transpose(1, 2)  # R × C × q
        total = torch.zeros(len(self.H1), dtype=self.H1.dtype, device=self.H1.device)
        for rows in self.row_groups:
            H1, theta, grad, neg_scale, clip = (t[rows] for t in (self.H1, self.theta, self.grad_H, self.neg_scale,
                                                                   self.clip))
            hard = (hard_x1[rows], hard_y[rows], hard_onehot[rows])
            group_total = total[rows]
            for _ in range(self.config.outer_steps):
                # ∇H̃ written in place: a fresh 17 MB tensor an outer step cost 10 ms of page faults
                losses = fused_outer_loss_and_grad(H1, self.onehot, theta, *hard, self.config.inner_steps, neg_scale,
                                                   out=grad)[0]
                grad[..., self.d :] = 0  # the constant and padding columns
                norms = torch.linalg.vector_norm(grad, dim=(1, 2))
                grad.mul_(torch.clamp(clip / (norms + 1e-6), max=1.0)[:, None, None])  # clip_grad_norm_, per row
                self.H_adam(grad, rows)
                group_total += losses
        return total

    def head(self) -> torch.Tensor:
        m, steps = self.H1.shape[1], self.config.inner_steps
        loss = torch.empty(len(self.H1), dtype=self.H1.dtype, device=self.H1.device)
        large = large_support(m, steps, len(self.onehot))
        for rows in self.row_groups:
            H1, theta = self.H1[rows], self.theta[rows]
            buffer = H1.new_zeros(len(H1), len(self.onehot), m) if large else None  # C × m
            for t in range(steps):
                logits, grad = head_logits_and_grad(theta, H1, self.onehot, buffer)
                if t + 1 == steps:  # the loss reported: before the last step, as autograd's would be
                    loss[rows] = (torch.log_softmax(logits, dim=1) * self.onehot).sum(dim=(1, 2)).div_(-m)
                self.head_adam(grad, rows)
        return loss


class _PlainSteps:
    """Steps 3.2 and 3.3 as first written: autograd through `unrolled_outer_loss`, `_clip_per_seed`,
    `torch.optim.Adam`; one configuration. Kept as the oracle the fused steps are tested against."""

    def __init__(self, H_before, theta0, support_y, config: HSFMSettings, scalars: dict[str, torch.Tensor]):
        self.config, self.d = config, H_before.shape[-1]
        self.width = theta0.shape[-1]
        self.H_param = H_before.clone().requires_grad_(True)
        self.W = theta0[..., : self.d].clone().requires_grad_(True)
        self.b = theta0[..., self.d].clone().requires_grad_(True)
        self.support_y = support_y
        self.onehot = F.one_hot(support_y, theta0.shape[1]).to(H_before.dtype)
        self.H_opt = torch.optim.Adam([self.H_param], lr=config.outer_lr)
        self.head_opt = torch.optim.Adam([self.W, self.b], lr=config.inner_lr)

    @property
    def H(self) -> torch.Tensor:
        return self.H_param.detach()

    @property
    def theta(self) -> torch.Tensor:
        return _augment(self.W.detach(), self.b.detach(), self.width)

    def bilevel(self, hard_x1, hard_y) -> torch.Tensor:
        total = torch.zeros(len(self.W), dtype=self.W.dtype, device=self.W.device)
        with torch.enable_grad():
            for _ in range(self.config.outer_steps):
                self.H_opt.zero_grad(set_to_none=True)
                losses = unrolled_outer_loss(self.H_param, self.onehot, self.W.detach(), self.b.detach(),
                                             hard_x1[..., : self.d], hard_y, self.config.inner_steps,
                                             self.config.inner_lr)
                losses.sum().backward()
                _clip_per_seed(self.H_param.grad, self.config.clip_norm)
                self.H_opt.step()
                total += losses.detach()
        return total

    def head(self) -> torch.Tensor:
        H_fixed = self.H
        with torch.enable_grad():
            for _ in range(self.config.inner_steps):
                self.head_opt.zero_grad(set_to_none=True)
                head_loss = mean_ce(linear_logits(H_fixed, self.W, self.b), self.support_y)
                head_loss.sum().backward()
                self.head_opt.step()
        return head_loss.detach()


def _clip_per_seed(grad: torch.Tensor, max_norm: float) -> None:
    """clip_grad_norm_ semantics (coef = max_norm / (norm + 1e-6), at most 1), one norm per seed."""
    norms = grad.flatten(1).norm(dim=1)
    grad.mul_(torch.clamp(max_norm / (norms + 1e-6), max=1.0)[:, None, None])


def _finite_float(x, what: str, dtype: torch.dtype = torch.float32, share: bool = False) -> torch.Tensor:
    """x (array or tensor, n × d) as a `dtype` tensor, refused with the offending rows when not finite.
    With `share`, an array that already is `dtype` and C-contiguous (a read-only memory map included)
    becomes the tensor without a copy: the caller only reads it."""
    as_numpy = np.float64 if dtype == torch.float64 else np.float32  # (a float16 store is read as float32)
    if isinstance(x, torch.Tensor):
        t = x.to(dtype)
    elif share and isinstance(x, np.ndarray) and x.dtype == as_numpy and x.flags.c_contiguous:
        with warnings.catch_warnings():  # torch warns that writes would reach the array; nothing writes it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(x)
    else:
        t = torch.from_numpy(np.array(x, dtype=as_numpy)).to(dtype)
    # a non-finite value makes the sum non-finite; only then (or when finite values overflow it) are
    # the rows examined one by one
    if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t).reshape(len(t), -1).all(dim=1)).flatten()
        raise InputError(f"{what} contain NaN or inf ({len(bad)} row(s), first {bad[:5].tolist()})")
    return t


def _augmented_width(d: int) -> int:
    """Columns of an augmented row [x 1 0…]: d + 1 rounded up to 16, avoiding multiples of 256 (MKL's
    skinny products ran 2–4× slower with an odd or a power-of-two row length: d + 1 = 2049 and 2048)."""
    width = -(-(d + 1) // 16) * 16
    return width + 16 if width % 256 == 0 else width


def _augment(x: torch.Tensor, last: torch.Tensor | float, width: int) -> torch.Tensor:
    """… × d → … × width: [x last 0…]."""
    out = x.new_zeros(*x.shape[:-1], width)
    out[..., : x.shape[-1]] = x
    out[..., x.shape[-1]] = last
    return out


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
    # settings that `fit_many` trains in one pass when nothing else differs: a sweep grid over these alone
    # is one pass per value of its other keys (docs/ARCHITECTURE.md §HSFM)
    row_scalars = ROW_SCALARS

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

    def step_work(self, store, settings):
        return self.work_per_step(store.groups.n_classes, store.dim, settings)

    @staticmethod
    def work_per_step(n_classes: int, d: int, settings) -> int:
        """Multiply-adds of one step for one run: the logits of the C·n support rows (inner step) and of the
        C·K_hard hard rows (outer loss), C·d each. A step is dozens of kernels of this size: `auto` keeps it on
        the CPU below `device.GPU_MIN_STEP_WORK` (docs/ARCHITECTURE.md §Devices); batched seeds and
        configurations widen the kernels but do not add launches."""
        return (n_classes * settings.n_support + n_classes * settings.hard_per_class) * d * n_classes

    def fit(self, store, settings, seeds, *, device="cpu", progress=None):
        return self.fit_many(store, [settings], seeds, device=device, progress=progress)[0]

    def fit_many(self, store, settings_list, seeds, *, device="cpu", progress=None):
        """Every settings × seed, as few passes as the shapes allow: settings that differ only in
        `ROW_SCALARS` train together with their seeds (one row each, the same computation as separate
        runs); settings that change a shape (n, T, K_H, K_hard, E) train one group after another,
        large supports loop over seeds (`LOOP_SEEDS_FROM_SUPPORT_ROWS`), and a pass holds at most
        `PASS_SUPPORT_BYTES` of support features (memory stays bounded for any sweep). `progress(epoch, epochs,
        entries)`: entries for every (settings, seed), settings-major, None for rows not in this pass;
        `epoch` counts over the passes."""
        train, val = store.select("train"), store.select("val")
        init, init_info = initial_head(store)
        settings_list, seeds = list(settings_list), list(seeds)
        passes = []  # (indices into settings_list, seeds) trained together
        for shape in dict.fromkeys(shape_of(s) for s in settings_list):
            members = [k for k, s in enumerate(settings_list) if shape_of(s) == shape]
            support_rows = store.groups.n_classes * settings_list[members[0]].n_support
            batches = [seeds] if support_rows < LOOP_SEEDS_FROM_SUPPORT_ROWS else [[s] for s in seeds]
            per_pass = max(1, PASS_SUPPORT_BYTES // (support_rows * (store.dim + 1) * 4 * len(batches[0])))
            passes += [(members[i:i + per_pass], batch) for batch in batches
                       for i in range(0, len(members), per_pass)]  # rows are independent: any split is exact
        epochs = sum(settings_list[members[0]].epochs for members, _ in passes)
        if progress is not None:
            progress(0, epochs, [])  # training starts: a progress bar can appear before epoch 1 ends
        fitted: dict[tuple[int, int], FittedHead] = {}
        offset = 0
        for members, batch in passes:
            slots = [k * len(seeds) + seeds.index(seed) for k in members for seed in batch]

            def report(epoch, entries, offset=offset, slots=slots):
                if progress is not None:  # entries in the order of all (settings, seed), None for the others
                    padded = [None] * (len(settings_list) * len(seeds))
                    for slot, entry in zip(slots, entries):
                        padded[slot] = entry
                    progress(offset + epoch, epochs, padded)

            results = fit_hsfm(train.features, train.y, val.features, val.y, val.g, init.weight, init.bias,
                               [settings_list[k] for k in members], seeds=batch, device=device,
                               n_groups=store.groups.n_groups, progress=report)
            for slot, r in zip(slots, results):
                fitted[slot] = FittedHead(
                    seed=r.seed, weight=r.weight, bias=r.bias, init_weight=r.init_weight, init_bias=r.init_bias,
                    # store row ids, so that the app finds each support example's image
                    support={"before": r.H_before, "after": r.H_after, "labels": r.support_labels,
                             "indices": torch.as_tensor(train.rows[r.support_indices.numpy()])},
                    history=r.history, init_source=init_info,
                    selected={"best_epoch": r.best_epoch, "best_val_wga": r.history[r.best_epoch - 1]["val_wga"]})
            offset += settings_list[members[0]].epochs
        return [[fitted[k * len(seeds) + j] for j in range(len(seeds))] for k in range(len(settings_list))]


METHOD = HSFM()
