"""The bilevel inner unroll of HSFM (docs/ARCHITECTURE.md §HSFM): T plain gradient steps of a linear head
on the support features, differentiable with respect to them — three exact implementations behind
`unrolled_outer_loss`, kept out of `hsfm.py` so that the training loop reads as Algorithm 1.

Shapes: S seeds, m support rows, C classes, d features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x: S × r × d (or r × d, shared by all seeds), weight: S × C × d, bias: S × C → S × r × C.

    Computed as W·xᵀ: with C = 2 that layout is ~7× faster on the CPU than x·Wᵀ, backward included.
    """
    if x.dim() == 2:
        s, c, d = weight.shape
        return (weight.reshape(s * c, d) @ x.T).reshape(s, c, -1).transpose(1, 2) + bias[:, None, :]
    return torch.bmm(weight, x.transpose(1, 2)).transpose(1, 2) + bias[:, None, :]


def mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-seed mean cross-entropy: S × r × C logits, S × r (or r) labels → S losses.

    Callers minimise their sum: seeds share no parameters, so each seed's gradient is its own.
    """
    labels = labels.expand(logits.shape[:2])
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)


def unrolled_outer_loss(H, onehot, weight, bias, hard_x, hard_y, steps: int, lr: float) -> torch.Tensor:
    """θ' ← θ; T plain gradient steps θ' ← θ' − α∇CE(H, θ') keeping the graph; return CE(Q, θ'_T) per seed.

    Three exact implementations of the same steps are kept: `_unroll_in_weights` (the readable
    reference), `_unroll_in_span` and `UnrolledSteps` (the fast ones; all three are tested against
    each other and against finite differences). Small supports are bound by per-op overhead and
    the span form, with the fewest ops, wins (Waterbirds, m = 32: 2.1 s vs 3.3 s a run); large
    supports are bound by memory traffic over H and `UnrolledSteps` wins (CelebA, m = 2048:
    61 ms vs 280 ms an outer step). The switch is where the span form's m × m Gram matrix starts
    to cost more than the T steps it saves: m ≥ 2·T·C.
    """
    m, n_classes = H.shape[1], weight.shape[1]
    if m < 2 * steps * n_classes:
        w_final, b_final = _unroll_in_span(H, onehot, weight, bias, steps, lr)
    else:
        w_final, b_final = UnrolledSteps.apply(H, onehot, weight, bias, steps, lr)
    return mean_ce(linear_logits(hard_x, w_final, b_final), hard_y)


def _unroll_in_weights(H, onehot, weight, bias, steps: int, lr: float):
    """The textbook unroll, differentiated by autograd: the mean-CE gradient of a linear head is
    (1/m)·Rᵀ[H 1] with residuals R = softmax(logits) − onehot. `UnrolledSteps` computes the same."""
    m = H.shape[1]
    w, b = weight, bias
    for _ in range(steps):
        residual = torch.softmax(linear_logits(H, w, b), dim=-1) - onehot  # S × m × C
        w = w - (lr / m) * torch.bmm(residual.transpose(1, 2), H)
        b = b - (lr / m) * residual.sum(dim=1)
    return w, b


def _unroll_in_span(H, onehot, weight, bias, steps: int, lr: float):
    """The same steps tracked through the support logits: θ'_t = θ − (α/m)·A_tᵀ[H 1], where A_t sums
    the residuals so far, so Z_t = Z_0 − (α/m)·K·A_t with the Gram matrix K = HHᵀ + 1 (m × m)."""
    m = H.shape[1]
    gram = torch.bmm(H, H.transpose(1, 2)) + 1  # "+ 1" is the bias column
    logits0 = linear_logits(H, weight, bias)
    residual_sum = torch.zeros_like(logits0)
    logits = logits0
    for _ in range(steps):
        residual_sum = residual_sum + (torch.softmax(logits, dim=-1) - onehot)
        logits = logits0 - (lr / m) * torch.bmm(gram, residual_sum)
    w = weight - (lr / m) * torch.bmm(residual_sum.transpose(1, 2), H)
    b = bias - (lr / m) * residual_sum.sum(dim=1)
    return w, b


class UnrolledSteps(torch.autograd.Function):
    """`_unroll_in_weights` with a hand-written backward for ∂(w_T, b_T)/∂H — exact, not approximate.

    Autograd would materialise two m × d gradient tensors per inner step and add them into ∇H;
    for CelebA (m = 2048) that memory traffic is most of the run. Every one of those terms is a
    rank-C product (m × C)·(C × d), so the backward collects the 2T factor pairs and forms ∇H with
    one (m × 2TC)·(2TC × d) product. Tested against autograd and central finite differences.
    """

    @staticmethod
    def forward(ctx, H, onehot, weight, bias, steps, lr):
        scale = lr / H.shape[1]
        w, b = weight, bias
        weights, probs = [], []
        for _ in range(steps):
            p = torch.softmax(linear_logits(H, w, b), dim=-1)
            weights.append(w)
            probs.append(p)
            residual = p - onehot
            w = w - scale * torch.bmm(residual.transpose(1, 2), H)
            b = b - scale * residual.sum(dim=1)
        ctx.save_for_backward(H, onehot, *weights, *probs)
        ctx.steps, ctx.scale = steps, scale
        return w, b

    @staticmethod
    def backward(ctx, grad_w, grad_b):
        H, onehot, *saved = ctx.saved_tensors
        weights, probs = saved[: ctx.steps], saved[ctx.steps :]
        left, right = [], []  # ∇H = Σ left_k · right_kᵀ
        for t in reversed(range(ctx.steps)):
            p = probs[t]
            # w_{t+1} = w_t − scale·R_tᵀH,  b_{t+1} = b_t − scale·1ᵀR_t
            left.append(-ctx.scale * (p - onehot))
            right.append(grad_w)
            grad_residual = -ctx.scale * (torch.bmm(grad_w, H.transpose(1, 2)).transpose(1, 2) + grad_b[:, None, :])
            # R_t = softmax(Z_t) − Y
            grad_logits = p * (grad_residual - (grad_residual * p).sum(dim=-1, keepdim=True))
            # Z_t = H w_tᵀ + b_t
            left.append(grad_logits)
            right.append(weights[t])
            grad_w = grad_w + torch.bmm(grad_logits.transpose(1, 2), H)
            grad_b = grad_b + grad_logits.sum(dim=1)
        grad_H = torch.bmm(torch.cat(left, dim=2), torch.cat(right, dim=1))
        return grad_H, None, None, None, None, None


# -- the fused closed form: loss and ∇H by hand, no autograd ------------------------------------------------
# docs/ARCHITECTURE.md §HSFM. HSFM's work is small matrices in a long chain of small steps, so its time
# is the number of operations dispatched. These functions compute the outer loss and its exact
# gradient with respect to the support features in about half the operations autograd dispatches for
# the same steps, and accept one step size per row (configurations that differ only in α train
# together). They work in *augmented* coordinates: a support or hard row is [x 1 0…] and the head is
# θ = [W b 0…] (C × D, D ≥ d + 1; the zero padding keeps MKL's products fast), so every affine map is
# one matrix product and the Gram matrix H̃H̃ᵀ = HHᵀ + 1 carries the bias. Shapes: R rows
# (configurations × seeds), m support rows, q hard rows, C classes. `neg_scale` is −α/m per row
# (R × 1 × 1). Tested against autograd through `_unroll_in_weights` in float64 (tests/test_hsfm.py).


def fused_outer_loss_and_grad(H1, onehot, theta, hard_x1, hard_y, hard_onehot, steps: int, neg_scale, out=None):
    """(R outer losses, R × m × D gradient with respect to H̃) of `unrolled_outer_loss`.

    H1: R × m × D support rows [H 1 0…]; onehot: C × m (class-major, as every logit here: C × rows);
    theta: R × C × D, the head the unroll starts from; hard_x1: R × q × D, hard rows [Q 1 0…]; hard_y:
    R × q labels, hard_onehot: R × C × q. The gradient's columns from d on are the constant's and the
    padding's: callers that keep them fixed zero them. `out`: a tensor like H1 to write the gradient
    into. The switch between the two forms is `unrolled_outer_loss`'s (m < 2·T·C: the span form).
    Logits are kept class-major (θ·H̃ᵀ, C × m): MKL's skinny products ran 1.3–2× faster that way.
    """
    if not large_support(H1.shape[1], steps, theta.shape[1]):
        return _span_loss_and_grad(H1, onehot, theta, hard_x1, hard_y, hard_onehot, steps, neg_scale, out)
    return _weights_loss_and_grad(H1, onehot, theta, hard_x1, hard_y, hard_onehot, steps, neg_scale, out)


def _outer_loss(outer_logits, hard_y, hard_onehot):
    """Mean CE on the hard rows (logits R × C × q) and its gradient with respect to their logits."""
    losses = F.cross_entropy(outer_logits, hard_y, reduction="none").mean(dim=1)
    return losses, torch.softmax(outer_logits, dim=1).sub_(hard_onehot).div_(outer_logits.shape[2])


def _softmax_backward(p, grad_p):
    """∂ℓ/∂Z = p ⊙ (g − ⟨p, g⟩) for p = softmax(Z) over the class axis (dim 1), given g = ∂ℓ/∂p."""
    pg = p * grad_p
    return torch.addcmul(pg, p, pg.sum(dim=1, keepdim=True), value=-1)


def _span_loss_and_grad(H1, onehot, theta, hard_x1, hard_y, hard_onehot, steps, neg_scale, out=None):
    """`_unroll_in_span` and its adjoint, class-major (every Z, R, A below is C × m). Forward:
    Z_0 = θH̃ᵀ; R_t = softmax(Z_{t−1}) − Y; Z_t = Z_{t−1} − (α/m)·R_t·K with K = H̃H̃ᵀ (m × m);
    θ_T = θ − (α/m)·A_T·H̃ with A_T = Σ R_t; hard logits L = θ_T·Q̃ᵀ. ∇H̃ collects the three places H̃
    enters: K, Z_0 and θ_T. Nothing of size q × m is formed: the hard rows meet H̃ only through C × D
    products."""
    r, m = H1.shape[0], H1.shape[1]
    H1t = H1.transpose(1, 2)
    step_gram = torch.bmm(H1, H1t).mul_(neg_scale)  # −(α/m)·K, symmetric
    logits = torch.bmm(theta, H1t)
    probs, residuals = [], []
    for t in range(steps):
        p = torch.softmax(logits, dim=1)
        residual = p - onehot
        probs.append(p)
        residuals.append(residual)
        if t + 1 < steps:
            logits = torch.baddbmm(logits, residual, step_gram)
    if steps > 1:
        A = torch.stack(residuals[:-1], dim=1).cumsum_(dim=1)  # R × (T−1) × C × m: A[:, t−1] = A_t
        scaled_A_T = (A[:, -1] + residuals[-1]).mul_(neg_scale)  # −(α/m)·A_T
    else:
        scaled_A_T = residuals[0] * neg_scale
    theta_T = torch.baddbmm(theta, scaled_A_T, H1)
    losses, grad_outer = _outer_loss(torch.bmm(theta_T, hard_x1.transpose(1, 2)), hard_y, hard_onehot)

    grad_theta_T = torch.bmm(grad_outer, hard_x1)  # ∂ℓ/∂θ_T: C × D
    grad_A = torch.bmm(grad_theta_T, H1t).mul_(neg_scale)  # ∂ℓ/∂A_T
    grad_logits = [None] * steps  # ∂ℓ/∂Z_t, t = 0 … T−1
    for t in reversed(range(steps)):
        grad_logits[t] = _softmax_backward(probs[t], grad_A)  # A_{t+1} = A_t + softmax(Z_t) − Y
        if t > 0:
            grad_A = torch.baddbmm(grad_A, grad_logits[t], step_gram)  # Z_t = Z_0 − (α/m)·A_t·K
    if steps > 1:
        grad_Z = torch.stack(grad_logits[1:], dim=1)  # R × (T−1) × C × m
        # ∂ℓ/∂K = −(α/m)·Σ_{t≥1} ∂Z_tᵀ·A_t; K = H̃H̃ᵀ gives (∂K + ∂Kᵀ)·H̃
        grad_K = torch.bmm(grad_Z.view(r, -1, m).transpose(1, 2), A.view(r, -1, m))
        grad = torch.bmm((grad_K + grad_K.transpose(1, 2)).mul_(neg_scale), H1, out=out)
        grad.baddbmm_(grad_Z.sum(dim=1).add_(grad_logits[0]).transpose(1, 2), theta)  # Z_0 = θH̃ᵀ (and every Z_t)
    else:
        grad = torch.bmm(grad_logits[0].transpose(1, 2), theta, out=out)
    grad.baddbmm_(scaled_A_T.transpose(1, 2), grad_theta_T)  # θ_T = θ − (α/m)·A_T·H̃
    return losses, grad


def _weights_loss_and_grad(H1, onehot, theta, hard_x1, hard_y, hard_onehot, steps, neg_scale, out=None):
    """`UnrolledSteps` in augmented coordinates, class-major, moving the head only where it can move.

    Every inner step adds −(α/m)·R_t·H̃ to θ, and each column of R_t = softmax − Y sums to zero over
    the classes, so θ_t = θ + P·Φ_t with P = [I; −1ᵀ] (C × k, k = C − 1) and Φ_t = −(α/m)·Σ_{τ<t} R'_τ·H̃
    (R' = R's first k rows): the unroll tracks Φ (k × D), and the logits less the last class's (all the
    softmax sees). Each pass over H̃, the support (17 MB a row at CelebA size), is then a product with
    k rows instead of C: for the binary case a matrix-vector product where there was a two-row one:
    21–28 instead of 37–54 ms an outer step at m = 2048 (`benchmarks/bench_hsfm_unroll.py`). The backward
    collects ∇H̃ as 2T rank-k terms and forms it with one (m × 2Tk)·(2Tk × D) product
    (docs/ARCHITECTURE.md §HSFM)."""
    k = theta.shape[1] - 1
    H1t = H1.transpose(1, 2)
    pivot = _pivot_basis(theta)  # P, R × C × k
    # The softmax sees the logits less the last class's, L = D·Z with D = [I −1] (k × C): L_t = L_0 + DP·Φ_tH̃ᵀ,
    # L_0 = (Dθ)H̃ᵀ, DP = I + 11ᵀ; the softmax runs on [L_t; 0], a buffer whose last row stays zero.
    theta_contrast = theta[:, :k] - theta[:, k:]  # Dθ
    l0 = _times_support_t(theta_contrast, H1, H1t)
    logits = H1.new_zeros(H1.shape[0], k + 1, H1.shape[1])
    logits[:, :k] = l0
    pivot_contrast = pivot[:, :k] - pivot[:, k:]  # DP
    phi = None
    probs, steps_taken, phis = [], [], []
    for t in range(steps):
        p = torch.softmax(logits, dim=1)
        step = (p[:, :k] - onehot[:k]).mul_(neg_scale)  # −(α/m)·R'_t
        phi = torch.bmm(step, H1) if phi is None else torch.baddbmm(phi, step, H1)  # Φ_{t+1}
        probs.append(p)
        steps_taken.append(step)
        phis.append(phi)
        if t + 1 < steps:  # L_{t+1}
            torch.baddbmm(l0, pivot_contrast, _times_support_t(phi, H1, H1t), out=logits[:, :k])
    theta_T = torch.baddbmm(theta, pivot, phi)
    losses, grad_outer = _outer_loss(torch.bmm(theta_T, hard_x1.transpose(1, 2)), hard_y, hard_onehot)

    grad_theta_T = torch.bmm(grad_outer, hard_x1)  # ∂ℓ/∂θ_T
    grad_phi = grad_theta_T[:, :k] - grad_theta_T[:, k:]  # ∂ℓ/∂Φ_T = Pᵀ·∂ℓ/∂θ_T
    left, right = [], []  # ∇H̃ = Σ left_iᵀ · right_i
    grad_z_sum = None
    for t in reversed(range(steps)):  # grad_phi holds ∂ℓ/∂Φ_{t+1}
        left.append(steps_taken[t])  # Φ_{t+1} = Φ_t + step_t·H̃
        right.append(grad_phi)
        grad_residual = _times_support_t(grad_phi, H1, H1t).mul_(neg_scale)  # ∂ℓ/∂R'_t
        # ∂ℓ/∂Z_t = p ⊙ (g − ⟨p, g⟩) with g = [∂ℓ/∂R'_t; 0] (the last class's residual enters nowhere):
        # rows :k are grad_z, row k is −p_k·⟨p, g⟩, so the columns sum to zero and ∂ℓ/∂Z_t = P·grad_z
        p_first = probs[t][:, :k]
        pg = p_first * grad_residual
        p_dot_g = pg.sum(dim=1, keepdim=True)
        grad_z = torch.addcmul(pg, p_first, p_dot_g, value=-1)
        grad_z_sum = grad_z if grad_z_sum is None else grad_z_sum + grad_z
        if t > 0:
            grad_zp = torch.addcmul(grad_z, probs[t][:, k:], p_dot_g)  # Pᵀ·∂ℓ/∂Z_t
            left.append(grad_zp)  # Z_t = Z_0 + P·Φ_t·H̃ᵀ
            right.append(phis[t - 1])
            grad_phi = torch.baddbmm(grad_phi, grad_zp, H1)
    left.append(grad_z_sum)  # L_0 = (Dθ)H̃ᵀ in every L_t, and ∂ℓ/∂L_t = grad_z_t
    right.append(theta_contrast)
    return losses, torch.bmm(torch.cat(left, dim=1).transpose(1, 2), torch.cat(right, dim=1), out=out)


def large_support(m: int, steps: int, n_classes: int) -> bool:
    """Whether passes over H̃, not the number of operations, set the time of an unroll or a head step:
    m ≥ 2·T·C, where the weights form takes over from the span form (`unrolled_outer_loss`)."""
    return m >= 2 * steps * n_classes


def head_logits_and_grad(theta, H1, onehot, contrast_buffer=None):
    """The head's logits on the support (R × C × m, up to a shift per column: softmax-ready) and the
    mean-CE gradient with respect to θ (R × C × D). With `contrast_buffer` (R × C × m, last row zero;
    for large supports) both take one pass over H̃ with C − 1 rows instead of C: the logits less the
    last class's, and the gradient's first C − 1 rows (its rows sum to zero over the classes)."""
    m, k = H1.shape[1], theta.shape[1] - 1
    if contrast_buffer is None:
        logits = torch.bmm(theta, H1.transpose(1, 2))
        return logits, torch.bmm(torch.softmax(logits, dim=1).sub_(onehot).div_(m), H1)
    contrast_buffer[:, :k] = _times_support_t(theta[:, :k] - theta[:, k:], H1, H1.transpose(1, 2))
    grad_first = torch.bmm(torch.softmax(contrast_buffer, dim=1)[:, :k].sub_(onehot[:k]).div_(m), H1)
    return contrast_buffer, torch.bmm(_pivot_basis(theta), grad_first)


def _pivot_basis(theta):
    """P = [I; −1ᵀ] (C × (C − 1)), one per row of `theta` (R × C × D): θ + P·Φ moves θ in the directions whose
    class sum is zero, the only ones a gradient step of a softmax cross-entropy takes."""
    k = theta.shape[1] - 1
    basis = torch.cat([torch.eye(k, dtype=theta.dtype, device=theta.device),
                       torch.full((1, k), -1.0, dtype=theta.dtype, device=theta.device)])
    return basis.expand(theta.shape[0], -1, -1)


def _times_support_t(a, H1, H1t):
    """a·H̃ᵀ (R × k × D by R × D × m): with one row it is a matrix-vector product, which MKL runs 1.4×
    faster as H̃·aᵀ (the same m numbers, the same memory)."""
    if a.shape[1] == 1:
        return torch.bmm(H1, a.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(a, H1t)
