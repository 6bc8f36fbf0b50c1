"""HSFM's training loop written the way the authors' script writes it: one seed, an `nn.Linear` head,
fast weights unrolled with `torch.autograd.grad(create_graph=True)`, `clip_grad_norm_`, two
`torch.optim.Adam`. A test oracle and the benchmark's yardstick (benchmarks/bench_hsfm.py).

The authors' script itself is not in this repository (docs: ../shared/DESIGN.md §1 describes it and
asks to keep its numbers, not its shape); this is that algorithm step for step in the script's
idiom, written independently of `hsfm_core/methods/hsfm.py` (no import from it). The steps are
docs/ARCHITECTURE.md §HSFM's: support set by the reference sampling rule; per epoch the hard set
(K_hard highest-CE val rows per class), K_H bilevel steps on H, T head Adam steps, selection on val
worst-group accuracy with ties to the later epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reference_hsfm(train_x, train_y, val_x, val_y, val_g, init_weight, init_bias, *, n, T, alpha, eta, K_H, K_hard,
                   E, clip=10.0, seed=0, n_groups=4, dtype=torch.float32):
    """→ {weight, bias, H_before, H_after, support, best_epoch, history} for one seed."""
    train_x, val_x = torch.as_tensor(train_x).to(dtype), torch.as_tensor(val_x).to(dtype)
    train_y, val_y, val_g = (torch.as_tensor(v).long() for v in (train_y, val_y, val_g))
    n_classes, d = init_weight.shape

    generator = torch.Generator()
    generator.manual_seed(seed)
    support = []
    for c in range(n_classes):
        rows = torch.nonzero(train_y == c).flatten()
        support.append(rows[torch.randperm(len(rows), generator=generator)[:n]])
    support = torch.cat(support)
    H = train_x[support].clone().requires_grad_(True)
    H_before = H.detach().clone()
    H_y = torch.arange(n_classes).repeat_interleave(n)

    head = nn.Linear(d, n_classes).to(dtype)
    with torch.no_grad():
        head.weight.copy_(init_weight)
        head.bias.copy_(init_bias)
    opt_H = torch.optim.Adam([H], lr=eta)
    opt_head = torch.optim.Adam(head.parameters(), lr=alpha)

    best, history = {"wga": -1.0}, []
    for epoch in range(1, E + 1):
        with torch.no_grad():
            ce = F.cross_entropy(head(val_x), val_y, reduction="none")
        hard = []
        for c in range(n_classes):
            rows = torch.nonzero(val_y == c).flatten()
            hard.append(rows[ce[rows].topk(min(K_hard, len(rows))).indices])
        hard = torch.cat(hard)
        Q_x, Q_y = val_x[hard], val_y[hard]

        outer_total = 0.0
        for _ in range(K_H):
            fast_w = head.weight.detach().clone().requires_grad_(True)
            fast_b = head.bias.detach().clone().requires_grad_(True)
            w, b = fast_w, fast_b
            for _ in range(T):
                inner = F.cross_entropy(F.linear(H, w, b), H_y)
                grad_w, grad_b = torch.autograd.grad(inner, (w, b), create_graph=True)
                w, b = w - alpha * grad_w, b - alpha * grad_b
            outer = F.cross_entropy(F.linear(Q_x, w, b), Q_y)
            opt_H.zero_grad()
            outer.backward()
            nn.utils.clip_grad_norm_([H], clip)
            opt_H.step()
            outer_total += outer.item()

        for _ in range(T):
            opt_head.zero_grad()
            head_loss = F.cross_entropy(head(H.detach()), H_y)
            head_loss.backward()
            opt_head.step()

        with torch.no_grad():
            pred = head(val_x).argmax(dim=1)
        accs = []
        for g in range(n_groups):
            in_group = val_g == g
            accs.append(float((pred[in_group] == val_y[in_group]).double().mean()) if in_group.any() else None)
        wga = min(a for a in accs if a is not None)
        history.append({"epoch": epoch, "outer_loss": outer_total / K_H, "head_loss": head_loss.item(),
                        "val_avg": float((pred == val_y).double().mean()), "val_wga": wga, "val_group_acc": accs})
        if wga >= best["wga"]:
            best = {"wga": wga, "epoch": epoch, "weight": head.weight.detach().clone(),
                    "bias": head.bias.detach().clone(), "H": H.detach().clone()}
    return {"weight": best["weight"], "bias": best["bias"], "H_before": H_before, "H_after": best["H"],
            "support": support, "best_epoch": best["epoch"], "history": history}
