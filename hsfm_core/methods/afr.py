"""AFR — Automatic Feature Reweighting (Qiu, Potapczynski, Izmailov & Wilson, ICML 2023), last-layer
retraining on a held-out share of train, weighted towards the examples θ₀ gets wrong.

The reference is the authors' code, github.com/AndPotap/afr: `losses.get_exp_weights`,
`utils/supervised_utils.py` (`rebalance_weights`, `normalize_weights`, `take_step`,
`get_last_layer_model`), `train_embeddings.py`, and the notebooks that produced the paper's tables
(`notebooks/wb_celeba.ipynb`, `notebooks/multinli.ipynb`: `compute_afr_weights`, `train`, `sweep`).

Recipe (each line: what this module does ← where it comes from):

1. Reweighting set. A `reweight_fraction` share of train (0.2) is held out: the train rows are
   shuffled by `np.random.default_rng(seed).permutation` (the run's seed); the first
   int((1 − fraction)·N) of the order are the rest, the others the reweighting set ← multinli.ipynb
   `save_emb` (`rng.shuffle(idx)`, `idx[int((1 - reweighting_frac) * len(idx)):]`); the README's
   `--train_prop=80` / `--train_prop=-20` (ERM on 80 %, AFR on the other 20 %).
2. θ₀. Without a checkpoint head: the ERM probe (`erm.initial_head`, L2 logistic regression with
   ERM's default settings) refit on the rest only, so θ₀ never saw the reweighting set ← the paper's
   two stages. With a checkpoint head (`init_head.safetensors`, e.g. a ResNet fc trained on all of
   train) θ₀ *is* that head and cannot be refit without leaving the model the features came from,
   so AFR keeps it, reweights on the same seeded share of train, and writes
   `theta0_saw_reweighting_set: true` into the run's config (`init_head`): the weights are then
   in-sample confidences, which under-weight minority rows the checkpoint memorised. Set
   `reweight_fraction=1` to reweight on all of train in that case (without a checkpoint 1 is refused:
   no rows would be left for the probe).
3. Weights. wᵢ = exp(−γ·p̂(yᵢ|xᵢ)) under θ₀ ← `get_exp_weights`; then, with `balance_classes`
   (default, as in every notebook sweep and `--rebalance_weights=True`), wᵢ ×= 1/N_{yᵢ}, the class
   count in the reweighting set ← `compute_afr_weights(balance_classes=True)` (×N₀/N_y, the same after
   normalising) and `rebalance_weights` (×N/N_y); finally Σwᵢ = 1 ← `normalize_weights`.
4. Objective. L(θ) = Σᵢ wᵢ·CE(θ; xᵢ, yᵢ) + λ·(‖W − W₀‖² + ‖b − b₀‖²) ← `fixed_cwxe_fn` (weighted sum)
   and `take_step` (`reg_coeff` times the squared distance to θ₀, weight and bias).
5. Optimiser. Full batch (`emb_batch_size=-1`, asserted in `train_embeddings.py`), plain gradient
   descent: SGD, momentum 0, weight decay 0, constant learning rate `lr` (1e-2) for `steps` (500),
   starting at θ = θ₀, the gradient of L clipped to norm `clip_norm` (1.0) over (W, b) of each head
   ← wb_celeba.ipynb (`SGD(lr=1e-2, momentum=0., weight_decay=0.)`, 500 epochs on Waterbirds,
   `clip_grad_norm_(model.parameters(), 1.)`; `train_embeddings.py` runs `--grad_norm=0.0`, no
   clip), `get_last_layer_model` (start at θ₀). Two deliberate departures:
   - the L2 part of each step is taken implicitly (its proximal step): with g = ∇ Σ wᵢ·CE and
     s = min(1, clip_norm / ‖g + 2λ(θ − θ₀)‖) the clip factor of the whole gradient, as the
     reference computes it, θ ← θ₀ + (θ − θ₀ − ηs·g)/(1 + 2ηsλ) instead of the explicit
     θ ← θ − ηs·(g + 2λ(θ − θ₀)). Both stop exactly at the minimiser of L (∇L = 0); the implicit
     step is stable for every λ (λ → ∞ keeps θ₀ exactly, where the explicit one diverges once
     2ηλ > 2 or, clipped, oscillates around θ₀) and differs from the explicit step by O((2ηsλ)²)
     per step (≤ 4·10⁻⁵ on the paper's Waterbirds grid). Clipping only g would not do: with a large
     λ it would stop at a point pulled towards θ₀ by the clip rather than at the minimiser;
   - the notebooks parameterise θ = θ₀ + Δ with Δ drawn by `nn.Linear`'s random initialisation;
     here Δ starts at 0, as `train_embeddings.py` does, so a fit is deterministic given its seed.
6. Early stopping and selection. Every (γ, λ) of the grid is trained (all at once, batched) and
   evaluated on val after every step; each keeps its step of best val worst-group accuracy (ties →
   the earliest step) ← the notebooks' `early_stop='wga'` (`np.argmax(val_wgas)`). The chosen
   (γ, λ) has the best of those val WGAs; ties → the earliest in grid order, γ outer and λ inner
   ← the notebooks' `sweep` (`if val_wga > best_vwga`, grid order `for gamma: for reg_coeff:`).
   Test is never read.
7. Grids and presets. `default`: γ ∈ {1, 2, 3, 4, 6, 8, 10, 12, 15, 20} (the ranges of the paper's
   CelebA and Waterbirds grids, joined and thinned), λ ∈ {0, 0.01, 0.1, 0.3} (values of both), 500
   steps, lr 1e-2: 40 heads, a few seconds for 3 seeds on 5,000 × 64-d features on one CPU core
   (`benchmarks/bench_afr.py`). `waterbirds`, `celeba` and `multinli` are the notebooks' sweeps
   verbatim (γ = linspace(4, 20, 33), λ ∈ {0, .1, .2, .3}, 500 steps, lr 1e-2 · γ = linspace(1, 3, 10),
   λ ∈ {1e-3, 1e-2, 1e-1}, 1000 steps, lr 2e-2 · γ = logspace(2, 5, 10), λ = linspace(0, 50, 26),
   200 steps, lr 1e-2).

Recipes (the `recipe` setting). `official` (the default, in every preset but `zero_init`) reproduces the notebooks' `train` inside `sweep` seed for
seed (`fit_afr_official`; checked against their code transcribed in tests/reference_afr.py): Δ starts at
`nn.Linear(d, C)`'s random initialisation, U(±1/√d) for weight then bias, drawn for each (γ, λ) in grid
order from one CPU generator seeded with the run's seed (their `sweep` calls `torch.manual_seed(seed)`
once and builds one `nn.Linear` per trial), and the L2 pull is taken in the explicit clipped step. The
random start is the difference that matters (with λ small the steps do not remove it; with Δ = 0 the
notebook and `zero_init` choose the same (γ, λ, step) and predict alike): measured by
`benchmarks/bench_dfr_official.py` over seeds 0–9, test WGA 84.3 ± 3.0 (`official`) against
77.6 ± 9.0 (`zero_init`) on the demo, official ahead on every seed, and 78.5 ± 1.7 against 79.6 ± 0.7 on
a generated Gaussian world (within one std): so the published recipe is the default, and every preset
(the notebooks' grids included) runs it. `zero_init` (preset `zero_init`, or `--set recipe=zero_init`
with any grid) is the recipe above, with Δ starting at 0.

Features are used as stored (the reference trains on raw embeddings, no standardisation). Any
number of classes C ≥ 2: the head is C × d and the weights use the softmax probability of the
true class. Group labels of train are read only to report how much weight each group received.

What to expect: AFR learns the new head from the reweighting set alone, so it needs minority rows
there. On Waterbirds-shaped train (56 rows in the smallest group) a 0.2 share holds ~11 of them, and
on the demo workspace AFR's test WGA over seeds 0–2 is 73 ± 15 % at 0.2 (DFR 87 ± 0.4 %), 83 ± 2 %
at `reweight_fraction=0.5`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hsfm_core.errors import InputError
from hsfm_core.methods.base import MIN_VAL_ROWS_PER_GROUP, FittedHead, Method, check_positive
from hsfm_core.methods.erm import initial_head, require_all_classes

# γ: the range of the paper's CelebA grid (1–3) joined to that of its Waterbirds grid (4–20), in 10
# steps (a probe θ₀ is less confident than a fine-tuned network, so the low end matters); λ: 0 and
# the values of both notebooks' grids, 1e-2 … 0.3. 40 heads, trained together.
DEFAULT_GAMMAS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
DEFAULT_LAMBDAS = (0.0, 1e-2, 0.1, 0.3)
RECIPES = ("official", "zero_init")


@dataclass(frozen=True)
class AFRSettings:
    gamma_grid: tuple = DEFAULT_GAMMAS  # γ tried (weights exp(−γ·p̂)), ≥ 0
    lambda_grid: tuple = DEFAULT_LAMBDAS  # λ tried (pull λ‖θ − θ₀‖²), ≥ 0
    steps: int = 500  # full-batch gradient steps per (γ, λ)
    lr: float = 1e-2  # SGD step size (momentum 0)
    clip_norm: float = 1.0  # clip of ‖∇L‖ over (W, b), per head; 0 turns clipping off
    reweight_fraction: float = 0.2  # share of train held out as the reweighting set
    balance_classes: bool = True  # weights × 1/N_y (class counts of the reweighting set)
    recipe: str = field(default="official", metadata={
        "help": "official (the authors' notebook, seed for seed) or zero_init (Δ from 0, proximal L2 step)"})

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"AFR setting recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name in ("gamma_grid", "lambda_grid"):
            values = getattr(self, name)
            values = (values,) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
            if not values or not all(np.isfinite(v) and v >= 0 for v in values):
                raise InputError(f"AFR setting {name} must list one or more finite numbers ≥ 0, got {list(values)}")
            if len(set(values)) != len(values):
                raise InputError(f"AFR setting {name} lists a value twice: {list(values)}")
            object.__setattr__(self, name, values)
        check_positive(self, ints=("steps",), floats=("lr", "reweight_fraction"), what="AFR")
        if self.reweight_fraction > 1:
            raise InputError(f"AFR setting reweight_fraction must be in (0, 1], got {self.reweight_fraction}")
        if not (np.isfinite(self.clip_norm) and self.clip_norm >= 0):
            raise InputError(f"AFR setting clip_norm must be a finite number ≥ 0 (0: no clipping), "
                             f"got {self.clip_norm}")

    @property
    def grid(self) -> list[tuple[float, float]]:
        """(γ, λ) pairs in selection order: γ outer, λ inner (ties go to the earlier pair)."""
        return [(g, lam) for g in self.gamma_grid for lam in self.lambda_grid]


PRESETS = {
    "default": AFRSettings(),
    "waterbirds": AFRSettings(gamma_grid=tuple(np.linspace(4, 20, 33).tolist()), lambda_grid=(0.0, 0.1, 0.2, 0.3),
                              steps=500, lr=1e-2),
    "celeba": AFRSettings(gamma_grid=tuple(np.linspace(1, 3, 10).tolist()), lambda_grid=(1e-3, 1e-2, 1e-1),
                          steps=1000, lr=2e-2),
    "multinli": AFRSettings(gamma_grid=tuple(np.logspace(2, 5, 10).tolist()),
                            lambda_grid=tuple(np.linspace(0, 50, 26).tolist()), steps=200, lr=1e-2),
    "official": AFRSettings(recipe="official"),  # = default; named like the recipe (docs/ARCHITECTURE.md §Methods)
    "zero_init": AFRSettings(recipe="zero_init"),
}
ALIASES = {"gamma": "gamma_grid", "lambda": "lambda_grid"}  # the paper's symbols


# -- the pieces -------------------------------------------------------------------------------
def afr_weights(logits: torch.Tensor, y: torch.Tensor, gamma, balance_classes: bool = True,
                n_classes: int | None = None) -> torch.Tensor:
    """Normalised AFR weights: exp(−γ·p̂(y|x)) (× 1/N_y with `balance_classes`), summing to 1.

    logits: N × C under θ₀; y: N; gamma: a number, or P numbers → P × N (one row per γ).
    """
    p_true = logits.double().softmax(-1).gather(-1, y[:, None]).squeeze(-1)  # N
    gammas = torch.as_tensor(gamma, dtype=torch.float64, device=logits.device)
    w = torch.exp(-gammas.reshape(-1, 1) * p_true)  # P × N
    if balance_classes:
        counts = torch.bincount(y, minlength=n_classes or logits.shape[-1]).double()
        w = w / counts[y]
    w = w / w.sum(dim=1, keepdim=True)
    return w if gammas.dim() else w[0]


def reweighting_split(n_train: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, reweighting) positions in train, each ascending: a seeded shuffle, the last share reweights."""
    order = np.random.default_rng(seed).permutation(n_train)
    n_rest = int((1 - fraction) * n_train)
    rest, reweight = np.sort(order[:n_rest]), np.sort(order[n_rest:])
    if len(reweight) == 0:
        raise InputError(f"AFR: reweight_fraction {fraction} of {n_train} train rows leaves no reweighting set")
    return rest, reweight


@dataclass
class AFRFit:
    weight: torch.Tensor  # C × d, the selected head
    bias: torch.Tensor
    gamma: float
    lam: float
    step: int  # the selected (early-stopping) step, 1 … steps
    val_wga: float
    grid: list[dict]  # per (γ, λ): its best val WGA and step, in grid order
    weights: torch.Tensor  # N, the selected γ's weights on the reweighting set


def fit_afr(x_rw, y_rw, x_val, y_val, g_val, init_weight: torch.Tensor, init_bias: torch.Tensor,
            settings: AFRSettings, n_groups: int, device: str | torch.device = "cpu") -> AFRFit:
    """Every (γ, λ) of the grid at once (P heads, batched), early-stopped and selected on val WGA.

    Layout: class-major, C × rows × P, so that softmax and argmax over the C classes are elementwise
    operations between C slabs (on the CPU, a softmax over a last dimension of 2 costs ~50× more).
    The softmax-CE gradient of every row sums to 0 over the classes, and the L2 pull shrinks all
    classes alike, so Δ = θ − θ₀ (which starts at 0) keeps a zero class-sum: only its first C − 1
    rows are stored and multiplied (half the matrix products for two classes), the last is minus
    their sum. This is the full C × d update, not a reparameterisation.
    """
    device = torch.device(device)
    n_classes, d = init_weight.shape
    X = _finite(x_rw, "reweighting-set features").to(device)  # N × d
    Xv = _finite(x_val, "validation features").to(device)  # V × d
    y = torch.from_numpy(np.array(y_rw, dtype=np.int64)).to(device)
    yv = torch.from_numpy(np.array(y_val, dtype=np.int64)).to(device)
    gv = torch.from_numpy(np.array(g_val, dtype=np.int64)).to(device)
    if X.shape[1] != d or Xv.shape[1] != d:
        raise InputError(f"AFR: features are {X.shape[1]}-d (val {Xv.shape[1]}-d) but θ₀ is {n_classes} × {d}")
    W0 = init_weight.detach().float().to(device)  # C × d
    b0 = init_bias.detach().float().to(device)  # C

    grid = settings.grid
    P, free = len(grid), n_classes - 1
    gammas = torch.tensor([g for g, _ in grid], dtype=torch.float64, device=device)
    lams = torch.tensor([lam for _, lam in grid], device=device)  # P
    base = (X @ W0.T + b0).T[:, :, None]  # C × N × 1: θ₀'s logits
    base_val = (Xv @ W0.T + b0).T[:, :, None]  # C × V × 1
    weights = afr_weights(base[:, :, 0].T, y, gammas, settings.balance_classes, n_classes)  # P × N
    weights_np = weights.float().T.contiguous()  # N × P
    onehot = torch.nn.functional.one_hot(y, n_classes).float().T[:, :, None]  # C × N × 1
    group_onehot_t = torch.nn.functional.one_hot(gv, n_groups).double().T.contiguous()  # G × V (exact counts)
    group_n = group_onehot_t.sum(1)  # G
    present = group_n > 0
    # argmax (first index on ties, as `heads.predict`) returns the true class y iff its logit beats
    # every class c < y strictly and every class c > y or ties it; before[c]: rows with c < y
    before = [(yv > c)[:, None] for c in range(n_classes)]  # V × 1 each

    def logits_of(rows, base_logits, dW, db):  # C × rows × P
        z = rows @ dW.transpose(1, 2) + db[:, None, :]  # (C − 1) × rows × P
        return base_logits + torch.cat([z, -z.sum(0, keepdim=True)])

    dW = torch.zeros(free, P, d, device=device)  # Δ for classes 0 … C − 2
    db = torch.zeros(free, P, device=device)
    best_wga = torch.full((P,), -1.0, dtype=torch.float64, device=device)
    best_step = torch.zeros(P, dtype=torch.long, device=device)
    best_dW, best_db = dW.clone(), db.clone()
    with torch.no_grad():
        for step in range(1, settings.steps + 1):
            # ∇ of Σᵢ wᵢ·CE(θ; xᵢ, yᵢ): wᵢ·(softmax − onehot) per row, through the linear map
            logits = logits_of(X, base, dW, db)
            top = logits[0]
            for c in range(1, n_classes):
                top = torch.maximum(top, logits[c])
            e = torch.exp(logits - top)
            grad_logits = ((e / e.sum(0) - onehot) * weights_np)[:free]  # (C − 1) × N × P
            gW = grad_logits.transpose(1, 2) @ X  # (C − 1) × P × d; the last class's is minus their sum
            gb = grad_logits.sum(1)
            # the reference's clipped step on CE + λ‖θ − θ₀‖², its L2 part taken implicitly (see 5.)
            if settings.clip_norm > 0:  # clip_grad_norm_ semantics: one norm per head over all of (W, b)
                tW, tb = gW + 2 * lams[:, None] * dW, gb + 2 * lams * db
                norm = torch.sqrt(tW.square().sum((0, 2)) + tW.sum(0).square().sum(1)
                                  + tb.square().sum(0) + tb.sum(0).square())
                step_size = settings.lr * torch.clamp(settings.clip_norm / (norm + 1e-6), max=1.0)  # P
            else:
                step_size = torch.full((P,), settings.lr, device=device)
            shrink = 1.0 / (1.0 + 2 * step_size * lams)
            dW = (dW - step_size[:, None] * gW) * shrink[:, None]
            db = (db - step_size * gb) * shrink

            # val worst-group accuracy of every head: is the true class the argmax?
            val_logits = logits_of(Xv, base_val, dW, db)  # C × V × P
            true = val_logits.gather(0, yv[None, :, None].expand(1, -1, P))[0]  # V × P
            correct = torch.ones_like(true, dtype=torch.bool)
            for c in range(n_classes):
                correct &= torch.where(before[c], true > val_logits[c], true >= val_logits[c])
            hits = group_onehot_t @ correct.double()  # G × P
            wga = (hits[present] / group_n[present, None]).min(dim=0).values  # P
            better = wga > best_wga  # strict: ties keep the earlier step
            if better.any():
                best_wga = torch.where(better, wga, best_wga)
                best_step = torch.where(better, step, best_step)
                best_dW[:, better], best_db[:, better] = dW[:, better], db[:, better]

    scores = best_wga.cpu().tolist()
    chosen = max(range(P), key=lambda p: (scores[p], -p))  # ties → the earlier (γ, λ) in grid order
    table = [{"gamma": g, "lambda": lam, "val_wga": scores[p], "step": int(best_step[p])}
             for p, (g, lam) in enumerate(grid)]
    delta_W, delta_b = best_dW[:, chosen], best_db[:, chosen]
    weight = W0 + torch.cat([delta_W, -delta_W.sum(0, keepdim=True)])
    bias = b0 + torch.cat([delta_b, -delta_b.sum(0, keepdim=True)])
    return AFRFit(weight=weight.cpu(), bias=bias.cpu(), gamma=grid[chosen][0],
                  lam=grid[chosen][1], step=int(best_step[chosen]), val_wga=scores[chosen], grid=table,
                  weights=weights[chosen].float().cpu())


def fit_afr_official(x_rw, y_rw, x_val, y_val, g_val, init_weight: torch.Tensor, init_bias: torch.Tensor,
                     settings: AFRSettings, n_groups: int, seed: int, device: str | torch.device = "cpu") -> AFRFit:
    """The authors' notebook recipe (`wb_celeba.ipynb`: `train` inside `sweep`; oracle: tests/reference_afr.py),
    every (γ, λ) at once: θ = θ₀ + Δ with Δ = `nn.Linear(d, C)`'s initialisation, drawn for each (γ, λ) in
    grid order from one CPU generator seeded with the run's seed (their `sweep` calls
    `torch.manual_seed(seed)` once, then one `nn.Linear` per trial); the loss Σᵢ wᵢ·CE + λ(‖Δ_W‖² + ‖Δ_b‖²);
    `clip_grad_norm_(1.)` semantics over (Δ_W, Δ_b) with `clip_norm`; the explicit SGD step on all of it;
    val WGA after every step, the first best step kept; the first best (γ, λ) in grid order."""
    device = torch.device(device)
    n_classes, d = init_weight.shape
    X = _finite(x_rw, "reweighting-set features").to(device)
    Xv = _finite(x_val, "validation features").to(device)
    y = torch.from_numpy(np.array(y_rw, dtype=np.int64)).to(device)
    yv = torch.from_numpy(np.array(y_val, dtype=np.int64)).to(device)
    gv = torch.from_numpy(np.array(g_val, dtype=np.int64)).to(device)
    if X.shape[1] != d or Xv.shape[1] != d:
        raise InputError(f"AFR: features are {X.shape[1]}-d (val {Xv.shape[1]}-d) but θ₀ is {n_classes} × {d}")
    W0, b0 = init_weight.detach().float().to(device), init_bias.detach().float().to(device)
    grid = settings.grid
    P = len(grid)
    # nn.Linear(d, C).reset_parameters(): kaiming_uniform_(a=√5) on the weight and U(±1/√fan_in) on the
    # bias, both bound = 1/√d, weight drawn before bias; one generator, trials in grid order
    generator, bound = torch.Generator().manual_seed(int(seed)), 1.0 / np.sqrt(d)
    dW, db = torch.empty(P, n_classes, d), torch.empty(P, n_classes)
    for p in range(P):
        dW[p].uniform_(-bound, bound, generator=generator)
        db[p].uniform_(-bound, bound, generator=generator)
    dW, db = dW.to(device), db.to(device)
    gammas = [g for g, _ in grid]
    lams = torch.tensor([lam for _, lam in grid], device=device)
    weights = afr_weights(X @ W0.T + b0, y, gammas, settings.balance_classes, n_classes).float()  # P × N
    onehot = torch.nn.functional.one_hot(y, n_classes).float()  # N × C
    base, base_val = X @ W0.T + b0, Xv @ W0.T + b0  # N × C, V × C
    group_n = torch.bincount(gv, minlength=n_groups).double()
    present = group_n > 0
    best_wga = torch.full((P,), -1.0, dtype=torch.float64, device=device)
    best_step = torch.zeros(P, dtype=torch.long, device=device)
    best_dW, best_db = dW.clone(), db.clone()
    with torch.no_grad():
        for step in range(1, settings.steps + 1):
            logits = base + X @ dW.transpose(1, 2) + db[:, None, :]  # P × N × C
            grad_logits = (logits.softmax(-1) - onehot) * weights[:, :, None]
            gW = grad_logits.transpose(1, 2) @ X + 2 * lams[:, None, None] * dW  # P × C × d
            gb = grad_logits.sum(1) + 2 * lams[:, None] * db
            if settings.clip_norm > 0:
                norm = torch.sqrt(gW.square().sum((1, 2)) + gb.square().sum(1))
                coef = torch.clamp(settings.clip_norm / (norm + 1e-6), max=1.0)
                gW, gb = gW * coef[:, None, None], gb * coef[:, None]
            dW, db = dW - settings.lr * gW, db - settings.lr * gb
            pred = (base_val + Xv @ dW.transpose(1, 2) + db[:, None, :]).argmax(-1)  # P × V
            hits = torch.zeros(P, n_groups, dtype=torch.float64, device=device)
            hits.index_add_(1, gv, (pred == yv).double())
            wga = (hits[:, present] / group_n[present]).min(dim=1).values
            better = wga > best_wga
            if better.any():
                best_wga = torch.where(better, wga, best_wga)
                best_step = torch.where(better, step, best_step)
                best_dW[better], best_db[better] = dW[better], db[better]
    scores = best_wga.cpu().tolist()
    chosen = max(range(P), key=lambda p: (scores[p], -p))
    table = [{"gamma": g, "lambda": lam, "val_wga": scores[p], "step": int(best_step[p])}
             for p, (g, lam) in enumerate(grid)]
    return AFRFit(weight=(W0 + best_dW[chosen]).cpu(), bias=(b0 + best_db[chosen]).cpu(), gamma=grid[chosen][0],
                  lam=grid[chosen][1], step=int(best_step[chosen]), val_wga=scores[chosen], grid=table,
                  weights=weights[chosen].cpu())


def _finite(x, what: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: store arrays are read-only memory maps
    if not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t).all(dim=1)).flatten()
        raise InputError(f"{what} contain NaN or inf ({len(bad)} row(s), first {bad[:5].tolist()})")
    return t


# -- the method entry -------------------------------------------------------------------------
class AFR(Method):
    name = "afr"
    label = "AFR"
    description = ("Automatic Feature Reweighting: retrain the head on held-out train rows weighted by "
                   "exp(−γ·p̂(y|x)) under θ₀, pulled to θ₀; γ, λ and the step chosen on val WGA")
    order = 2
    Settings = AFRSettings
    aliases = ALIASES
    presets = PRESETS
    needs = ("train", "val")
    val_rows_per_group = MIN_VAL_ROWS_PER_GROUP  # γ, λ and the step are chosen on val worst-group accuracy
    uses_device = True

    def default_preset(self, store=None):
        return "default", "the paper's Waterbirds and CelebA grids joined (see hsfm_core/methods/afr.py)"

    def fit(self, store, settings, seeds, *, device="cpu", progress=None):
        """One head per seed, each with its own reweighting split and θ₀. Like DFR, AFR reports no
        epochs (`progress` is not called): a seed takes seconds, and its steps are those of 40 heads."""
        groups = store.groups
        train, val = store.select("train"), store.select("val")
        checkpoint = store.init_head() is not None
        if settings.reweight_fraction >= 1 and not checkpoint:
            raise InputError("AFR setting reweight_fraction = 1 leaves no train rows for the ERM probe θ₀; "
                             "use a share below 1 (the paper holds out 0.2)")
        out = []
        for seed in seeds:
            rest, rw = reweighting_split(len(train.rows), settings.reweight_fraction, seed)
            require_all_classes(train.y[rw], groups.n_classes,
                                f"reweighting set ({settings.reweight_fraction:g} of train, seed {seed})")
            init, info = initial_head(store, train_rows=None if checkpoint else rest)
            if settings.recipe == "official":
                fit = fit_afr_official(train.features[rw], train.y[rw], val.features, val.y, val.g, init.weight,
                                       init.bias, settings, groups.n_groups, seed, device)
            else:
                fit = fit_afr(train.features[rw], train.y[rw], val.features, val.y, val.g, init.weight, init.bias,
                              settings, groups.n_groups, device)
            group_weight = np.bincount(train.g[rw], weights=fit.weights.double().numpy(),
                                       minlength=groups.n_groups)[: groups.n_groups]
            info = {**info, "reweighting_set": f"{settings.reweight_fraction:g} of train, shuffled by the run's seed",
                    "reweighting_rows": int(len(rw)), "split_seed": int(seed),
                    "theta0_saw_reweighting_set": checkpoint}
            if checkpoint:
                info["note"] = ("θ₀ is the checkpoint head, trained on all of train: the reweighting weights are "
                                "in-sample confidences")
            out.append(FittedHead(
                seed=seed, weight=fit.weight, bias=fit.bias, init_weight=init.weight.detach().float().clone(),
                init_bias=init.bias.detach().float().clone(), init_source=info,
                selected={"recipe": settings.recipe, "gamma": fit.gamma, "lambda": fit.lam, "best_step": fit.step, "best_val_wga": fit.val_wga,
                          "selection": "val WGA; ties → earlier step, then earlier (γ, λ), γ outer",
                          "grid_val_wga": fit.grid,
                          "reweighting_weight_by_group": dict(zip(groups.names, group_weight.tolist()))}))
        return out


METHOD = AFR()
