import numpy as np
import pytest
import torch

from hsfm_core import methods
from hsfm_core.errors import InputError
from hsfm_core.groups import binary
from hsfm_core.heads import LinearHead
from hsfm_core.methods.dfr import DFR
from hsfm_core.methods.erm import ERMProbe
from hsfm_core.methods.hsfm import HSFMSettings as HSFMConfig
from hsfm_core.methods.hsfm import fit_hsfm, hard_set, sample_support
from hsfm_core.methods.hsfm_unroll import (UnrolledSteps, _unroll_in_span, _unroll_in_weights, linear_logits, mean_ce,
                                           unrolled_outer_loss)


def hsfm_config(preset, overrides=()):
    return methods.get("hsfm").settings(preset, overrides)

UNROLLS = {"weights": _unroll_in_weights, "span": _unroll_in_span, "custom-backward": UnrolledSteps.apply}
from hsfm_core.metrics import group_metrics
from tests.gaussian import gaussian_problem

torch.set_default_dtype(torch.float32)


def reference_outer_loss(H, Y, W, b, Qx, Qy, steps, lr):
    """An independent numpy float64 version of docs/ARCHITECTURE.md §HSFM step 3 for one seed: T plain GD steps on
    mean CE(H, θ') from θ, then mean CE(Q, θ'_T)."""
    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    m = len(H)
    onehot = np.eye(2)[Y]
    for _ in range(steps):
        r = softmax(H @ W.T + b) - onehot
        W, b = W - lr * r.T @ H / m, b - lr * r.sum(0) / m
    p = softmax(Qx @ W.T + b)
    return -np.log(p[np.arange(len(Qy)), Qy]).mean()


def _fd_problem(m=6, d=4):
    rng = np.random.default_rng(0)
    H = rng.normal(size=(m, d))
    Y = np.repeat([0, 1], m // 2)
    W, b = rng.normal(size=(2, d)) * 0.3, rng.normal(size=2) * 0.1
    Qx, Qy = rng.normal(size=(10, d)), rng.integers(0, 2, 10)
    return H, Y, W, b, Qx, Qy


@pytest.mark.parametrize("name", list(UNROLLS))
def test_hypergradient_matches_central_finite_differences(name):
    H, Y, W, b, Qx, Qy = _fd_problem()
    steps, lr = 4, 0.7
    Ht = torch.tensor(H[None], requires_grad=True)
    onehot = torch.nn.functional.one_hot(torch.tensor(Y), 2).double()
    w_final, b_final = UNROLLS[name](Ht, onehot, torch.tensor(W[None]), torch.tensor(b[None]), steps, lr)
    loss = mean_ce(linear_logits(torch.tensor(Qx[None]), w_final, b_final), torch.tensor(Qy[None]))
    assert loss.item() == pytest.approx(reference_outer_loss(H, Y, W, b, Qx, Qy, steps, lr), rel=1e-12)
    (dH,) = torch.autograd.grad(loss.sum(), Ht)

    eps = 1e-6
    numeric = np.zeros_like(H)
    for i in range(H.shape[0]):
        for j in range(H.shape[1]):
            Hp, Hm = H.copy(), H.copy()
            Hp[i, j] += eps
            Hm[i, j] -= eps
            numeric[i, j] = (reference_outer_loss(Hp, Y, W, b, Qx, Qy, steps, lr)
                             - reference_outer_loss(Hm, Y, W, b, Qx, Qy, steps, lr)) / (2 * eps)
    np.testing.assert_allclose(dH[0].numpy(), numeric, rtol=1e-6, atol=1e-9)
    assert np.abs(numeric).max() > 1e-3  # the check is not vacuous


@pytest.mark.parametrize("m", [6, 40])  # both sides of the switch m < 2·T·C (= 16 here)
def test_outer_loss_uses_an_exact_unroll_on_both_sides_of_the_switch(m):
    H, Y, W, b, Qx, Qy = _fd_problem(m=m)
    onehot = torch.nn.functional.one_hot(torch.tensor(Y), 2).double()
    loss = unrolled_outer_loss(torch.tensor(H[None]), onehot, torch.tensor(W[None]), torch.tensor(b[None]),
                               torch.tensor(Qx[None]), torch.tensor(Qy[None]), 4, 0.7)
    assert loss.item() == pytest.approx(reference_outer_loss(H, Y, W, b, Qx, Qy, 4, 0.7), rel=1e-12)


@pytest.mark.parametrize("name", ["span", "custom-backward"])
def test_fast_unrolls_match_the_autograd_reference(name):
    torch.manual_seed(0)
    H = torch.randn(3, 8, 16, dtype=torch.float64, requires_grad=True)
    onehot = torch.nn.functional.one_hot(torch.arange(2).repeat_interleave(4), 2).double()
    W, b = torch.randn(3, 2, 16, dtype=torch.float64) * 0.1, torch.randn(3, 2, dtype=torch.float64)
    w1, b1 = _unroll_in_weights(H, onehot, W, b, 7, 0.3)
    w2, b2 = UNROLLS[name](H, onehot, W, b, 7, 0.3)
    torch.testing.assert_close(w1, w2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b1, b2, rtol=1e-10, atol=1e-12)
    g1 = torch.autograd.grad(w1.square().sum() + b1.square().sum(), H)[0]
    g2 = torch.autograd.grad(w2.square().sum() + b2.square().sum(), H)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_support_sampling_follows_the_reference_rule():
    labels = torch.tensor(np.random.default_rng(3).integers(0, 2, 200))
    n, seed = 7, 11
    g = torch.Generator()
    g.manual_seed(seed)
    expected = []
    for c in (0, 1):  # class 0 then class 1, one generator
        class_rows = torch.nonzero(labels == c).flatten()
        expected.append(class_rows[torch.randperm(len(class_rows), generator=g)[:n]])
    picked = sample_support(labels, n, seed)
    assert picked.tolist() == torch.cat(expected).tolist()
    assert labels[picked].tolist() == [0] * n + [1] * n
    assert sample_support(labels, n, seed + 1).tolist() != picked.tolist()
    with pytest.raises(InputError, match="class 1 has"):
        sample_support(torch.tensor([0] * 10 + [1] * 3), 5, 0)


def test_hard_set_is_the_highest_loss_rows_of_each_class():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 2, 50))
    logits = torch.tensor(rng.normal(size=(2, 50, 2)), dtype=torch.float32)  # two seeds
    picked = hard_set(logits, labels, k=5)
    for s in range(2):
        ce = torch.nn.functional.cross_entropy(logits[s], labels, reduction="none").numpy()
        for c in (0, 1):
            rows = np.flatnonzero(labels.numpy() == c)
            top = set(rows[np.argsort(-ce[rows])[:5]].tolist())
            chosen = {int(i) for i in picked[s] if labels[i] == c}
            assert chosen == top
    assert hard_set(logits, labels, k=10_000).shape[1] == 50  # capped at the class sizes


def _small_problem(d=16):
    p = gaussian_problem(d, (400, 300, 300))
    (xt, yt, _), (xv, yv, av) = p["train"], p["val"]
    init = ERMProbe().fit(xt, yt).head_
    return xt, yt, xv, yv, 2 * yv + av, init


def test_ties_in_model_selection_go_to_the_later_epoch():
    xt, yt, xv, yv, gv, init = _small_problem()
    # a head learning rate this small never changes a prediction: every epoch ties
    config = HSFMConfig(n_support=4, inner_steps=2, inner_lr=1e-12, outer_steps=1, hard_per_class=8, epochs=5)
    (result,) = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config)
    assert len({h["val_wga"] for h in result.history}) == 1
    assert result.best_epoch == 5


def test_same_seed_is_bit_identical_on_cpu_and_seeds_batch_like_single_runs():
    xt, yt, xv, yv, gv, init = _small_problem()
    config = hsfm_config("waterbirds", ["E=6", "alpha=1e-3", "n=8"])
    a = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0, 1])
    b = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0, 1])
    for ra, rb in zip(a, b):
        assert torch.equal(ra.weight, rb.weight) and torch.equal(ra.H_after, rb.H_after)
        assert [h["val_wga"] for h in ra.history] == [h["val_wga"] for h in rb.history]
    (alone,) = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[1])
    assert alone.support_indices.tolist() == a[1].support_indices.tolist()
    torch.testing.assert_close(alone.H_after, a[1].H_after, rtol=1e-4, atol=1e-4)
    assert [h["val_wga"] for h in alone.history] == pytest.approx([h["val_wga"] for h in a[1].history], abs=2e-3)
    assert not torch.equal(a[0].H_after, a[0].H_before)  # the edits are real


def test_hsfm_and_dfr_beat_erm_on_a_gaussian_spurious_problem():
    p = gaussian_problem(64, (4000, 1200, 4000))
    (xt, yt, _), (xv, yv, av), (xs, ys, as_) = p["train"], p["val"], p["test"]
    erm = ERMProbe().fit(xt, yt).head_
    dfr = DFR(binary(), seed=0).fit(xv, yv, 2 * yv + av).head_
    config = hsfm_config("waterbirds", ["alpha=1e-3"])  # Gaussian features need a larger head step than ResNet's
    (r,) = fit_hsfm(xt, yt, xv, yv, 2 * yv + av, erm.weight, erm.bias, config)

    def test_wga(head):
        return group_metrics(head.predict(xs), ys, 2 * ys + as_, 4)["wga"]

    wga_erm, wga_dfr, wga_hsfm = test_wga(erm), test_wga(dfr), test_wga(LinearHead(r.weight, r.bias))
    assert wga_dfr >= wga_erm + 0.10, (wga_erm, wga_dfr)
    assert wga_hsfm >= wga_erm + 0.10, (wga_erm, wga_hsfm)


def test_bad_inputs_are_clear_errors():
    xt, yt, xv, yv, gv, init = _small_problem()
    config = HSFMConfig(n_support=4, epochs=1, outer_steps=1, inner_steps=1)
    with pytest.raises(InputError, match=r"initial head has weight \(2, 8\).*16-d"):
        fit_hsfm(xt, yt, xv, yv, gv, init.weight[:, :8], init.bias, config)
    with pytest.raises(InputError, match=r"the val split has classes \[0\]"):
        keep = yv == 0
        fit_hsfm(xt, yt, xv[keep], yv[keep], gv[keep], init.weight, init.bias, config)
    bad = xv.copy()
    bad[[3, 7], 2] = np.nan
    with pytest.raises(InputError, match=r"validation features contain NaN or inf \(2 row\(s\), first \[3, 7\]\)"):
        fit_hsfm(xt, yt, bad, yv, gv, init.weight, init.bias, config)
    with pytest.raises(InputError, match="unknown hsfm preset 'imagenet'"):
        hsfm_config("imagenet")
    with pytest.raises(InputError, match="unknown key 'lr'"):
        hsfm_config("waterbirds", ["lr=0.1"])
    with pytest.raises(InputError, match="epochs must be ≥ 1"):
        hsfm_config("waterbirds", ["E=0"])
    assert hsfm_config("celeba", ["T=3", "eta=0.5"]) == HSFMConfig(1024, 3, 5e-5, 0.5, 5, 256, 20)


def test_linear_logits_layouts_agree():
    x = torch.randn(5, 16)
    w, b = torch.randn(3, 2, 16), torch.randn(3, 2)
    shared = linear_logits(x, w, b)
    batched = linear_logits(x.expand(3, -1, -1), w, b)
    expected = torch.einsum("rd,scd->src", x, w) + b[:, None]
    torch.testing.assert_close(shared, expected)
    torch.testing.assert_close(batched, expected)


# -- the fused loop (docs/ARCHITECTURE.md §HSFM): the same computation as the plain loop and the reference ------

from hsfm_core.methods.hsfm import _Adam  # noqa: E402
from hsfm_core.methods.hsfm_unroll import fused_outer_loss_and_grad  # noqa: E402
from tests.reference_hsfm import reference_hsfm  # noqa: E402


def _same_history(a, b, rtol=1e-9, atol=1e-11):
    assert len(a) == len(b)
    for ha, hb in zip(a, b):
        assert set(ha) >= set(hb) - {"elapsed_s"}
        for key, value in hb.items():
            if key == "elapsed_s":
                continue
            if isinstance(value, list):
                assert [v is None for v in ha[key]] == [v is None for v in value], key
                np.testing.assert_allclose([v for v in ha[key] if v is not None], [v for v in value if v is not None],
                                           rtol=rtol, atol=atol, err_msg=key)
            else:
                assert ha[key] == pytest.approx(value, rel=rtol, abs=atol), (key, ha[key], value)


@pytest.mark.parametrize("m, steps", [(8, 4), (40, 4), (2, 1), (6, 2), (12, 3)])  # span form when m < 2·T·C, else weights
def test_fused_closed_form_matches_autograd_through_the_textbook_unroll(m, steps):
    torch.manual_seed(m)
    rows, d, q = 3, 16, 10
    H = torch.randn(rows, m, d, dtype=torch.float64, requires_grad=True)
    onehot = torch.nn.functional.one_hot(torch.arange(2).repeat_interleave(m // 2), 2).double()
    W, b = torch.randn(rows, 2, d, dtype=torch.float64) * 0.3, torch.randn(rows, 2, dtype=torch.float64)
    Qx, Qy = torch.randn(rows, q, d, dtype=torch.float64), torch.randint(0, 2, (rows, q))
    alpha = torch.tensor([0.3, 0.7, 1.1], dtype=torch.float64)  # one step size per row
    losses = torch.cat([mean_ce(linear_logits(Qx[i : i + 1], *_unroll_in_weights(H[i : i + 1], onehot, W[i : i + 1],
                                                                                   b[i : i + 1], steps, float(alpha[i]))),
                                Qy[i : i + 1]) for i in range(rows)])
    (expected,) = torch.autograd.grad(losses.sum(), H)
    ones = torch.ones(rows, m, 1, dtype=torch.float64)
    fused_losses, grad = fused_outer_loss_and_grad(
        torch.cat([H.detach(), ones], 2), onehot.T, torch.cat([W, b[..., None]], 2),
        torch.cat([Qx, torch.ones(rows, q, 1, dtype=torch.float64)], 2), Qy,
        torch.nn.functional.one_hot(Qy, 2).double().transpose(1, 2), steps, (-alpha / m)[:, None, None])
    torch.testing.assert_close(fused_losses, losses.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad[..., :-1], expected, rtol=1e-10, atol=1e-14)
    assert expected.abs().max() > 1e-3


def test_adam_with_a_learning_rate_per_row_is_torch_adam_bit_for_bit():
    torch.manual_seed(0)
    start = torch.randn(3, 4, 5)
    lrs = [1e-3, 0.1, 1.0]
    ours = start.clone()
    adam = _Adam(ours, torch.tensor(lrs, dtype=torch.float64), max_steps=6)
    theirs = [start[i].clone().requires_grad_(True) for i in range(3)]
    opts = [torch.optim.Adam([p], lr=lr) for p, lr in zip(theirs, lrs)]
    for _ in range(6):
        grad = torch.randn(3, 4, 5)
        adam(grad)
        for i in range(3):
            theirs[i].grad = grad[i].clone()
            opts[i].step()
    for i in range(3):
        assert torch.equal(ours[i], theirs[i].detach())


@pytest.mark.parametrize("n", [4, 24])  # m = 8 (span form) and m = 48 (weights form) at T = 4
def test_fused_loop_equals_the_plain_loop_in_float64(n):
    xt, yt, xv, yv, gv, init = _small_problem()
    config = HSFMConfig(n_support=n, inner_steps=4, inner_lr=1e-3, outer_lr=0.1, outer_steps=3, hard_per_class=16,
                        epochs=5)
    fused = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0, 1], dtype=torch.float64)
    plain = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0, 1], dtype=torch.float64,
                     fused=False)
    for f, p in zip(fused, plain):
        torch.testing.assert_close(f.weight, p.weight, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f.bias, p.bias, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f.H_after, p.H_after, rtol=1e-10, atol=1e-12)
        assert f.best_epoch == p.best_epoch and torch.equal(f.support_indices, p.support_indices)
        _same_history(f.history, p.history)
    assert not torch.equal(fused[0].H_after, fused[0].H_before)


@pytest.mark.parametrize("n", [4, 24])
def test_fit_agrees_with_the_reference_loop_in_float64(n):
    """tests/reference_hsfm.py: the loop in the authors' idiom (fast weights through autograd.grad, nn.Linear,
    clip_grad_norm_, two Adams), one seed at a time."""
    xt, yt, xv, yv, gv, init = _small_problem()
    config = HSFMConfig(n_support=n, inner_steps=4, inner_lr=1e-3, outer_lr=0.1, outer_steps=3, hard_per_class=16,
                        epochs=5)
    ours = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[2, 5] if n == 4 else [5],
                    dtype=torch.float64)
    for r in ours:
        ref = reference_hsfm(xt, yt, xv, yv, gv, init.weight.double(), init.bias.double(), n=n, T=4, alpha=1e-3,
                             eta=0.1, K_H=3, K_hard=16, E=5, seed=r.seed, dtype=torch.float64)
        assert r.support_indices.tolist() == ref["support"].tolist()
        torch.testing.assert_close(r.weight, ref["weight"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r.bias, ref["bias"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r.H_after, ref["H_after"], rtol=1e-10, atol=1e-12)
        assert r.best_epoch == ref["best_epoch"]
        _same_history(r.history, ref["history"])


@pytest.mark.parametrize("n", [4, 24])
def test_rows_through_the_unroll_one_at_a_time_equal_the_batch(n, monkeypatch):
    """Large supports go through the fused unroll a few rows at a time (SUPPORT_BYTES_PER_PASS)."""
    import hsfm_core.methods.hsfm as hsfm_module

    xt, yt, xv, yv, gv, init = _small_problem()
    config = HSFMConfig(n_support=n, inner_steps=4, inner_lr=1e-3, outer_lr=0.1, outer_steps=3, hard_per_class=16,
                        epochs=3)
    batched = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0, 1, 2], dtype=torch.float64)
    monkeypatch.setattr(hsfm_module, "SUPPORT_BYTES_PER_PASS", 1)
    alone = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, config, seeds=[0, 1, 2], dtype=torch.float64)
    for a, b in zip(batched, alone):
        torch.testing.assert_close(a.H_after, b.H_after, rtol=1e-11, atol=1e-13)
        _same_history(a.history, b.history)


def test_a_fit_reads_the_stores_memory_mapped_rows_in_place_and_changes_nothing(tmp_path):
    """The fit reads the store's float32 validation rows in place (no copy, §HSFM): from a read-only memory map,
    with no warning about a non-writable array, and the file's rows are unchanged afterwards."""
    import warnings

    from hsfm_core.features import FeatureStore
    from hsfm_core.spec import TrainSpec
    from tests.gaussian import TINY_HSFM, gaussian_workspace

    gaussian_workspace(tmp_path / "ws")
    store = FeatureStore.open(tmp_path / "ws")
    assert isinstance(store.features, np.memmap) and not store.features.flags.writeable
    before = np.array(store.features)
    settings = TrainSpec.create("hsfm", overrides=TINY_HSFM, device="cpu").resolve(store)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a non-writable array it might write to
        (head,) = methods.get("hsfm").fit(store, settings, [0])
    assert torch.isfinite(head.weight).all()
    assert np.array_equal(np.asarray(FeatureStore.open(tmp_path / "ws").features), before)
