"""Configurations that differ only in scalar settings (α, η, clip norm) train together, a row each, like
seeds (docs/ARCHITECTURE.md §HSFM): every row must be exactly its own separate run — heads, supports
and whole histories, compared in float64 — and shape-changing settings must run separately."""

import dataclasses

import pytest
import torch

from hsfm_core import methods
from hsfm_core.methods.erm import ERMProbe
from hsfm_core.methods.hsfm import HSFMSettings, fit_hsfm
from tests.gaussian import TINY_HSFM, gaussian_problem, gaussian_workspace
from tests.test_hsfm import _same_history


def _problem():
    p = gaussian_problem(16, (400, 300, 300))
    (xt, yt, _), (xv, yv, av) = p["train"], p["val"]
    return xt, yt, xv, yv, 2 * yv + av, ERMProbe().fit(xt, yt).head_


def _configs(n):
    base = HSFMSettings(n_support=n, inner_steps=4, inner_lr=1e-3, outer_lr=0.1, outer_steps=3, hard_per_class=16,
                        epochs=5)
    return [base, dataclasses.replace(base, inner_lr=4e-3, outer_lr=0.5),
            dataclasses.replace(base, outer_lr=1.0, clip_norm=1e-4)]  # a clip that bites (0.05 never did here)


@pytest.mark.parametrize("n", [4, 24])  # m = 8 (span form) and m = 48 (weights form) at T = 4
def test_batched_configurations_equal_separate_runs_in_float64(n):
    xt, yt, xv, yv, gv, init = _problem()
    configs, seeds = _configs(n), [0, 3]
    together = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, configs, seeds=seeds, dtype=torch.float64)
    assert [(r.settings, r.seed) for r in together] == [(c, s) for c in configs for s in seeds]
    for r in together:
        (alone,) = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, r.settings, seeds=[r.seed],
                            dtype=torch.float64)
        torch.testing.assert_close(r.weight, alone.weight, rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(r.bias, alone.bias, rtol=1e-11, atol=1e-13)
        assert torch.equal(r.support_indices, alone.support_indices) and torch.equal(r.H_before, alone.H_before)
        torch.testing.assert_close(r.H_after, alone.H_after, rtol=1e-11, atol=1e-13)
        assert r.best_epoch == alone.best_epoch
        _same_history(r.history, alone.history, rtol=1e-11, atol=1e-13)
    # the rows really differ: the configurations are not the same run three times
    heads = [r.weight for r in together if r.seed == 0]
    assert not torch.allclose(heads[0], heads[1]) and not torch.allclose(heads[0], heads[2])


def test_shape_changing_settings_do_not_share_a_pass():
    xt, yt, xv, yv, gv, init = _problem()
    base = _configs(4)[0]
    for change in ({"hard_per_class": 8}, {"n_support": 5}, {"inner_steps": 2}, {"outer_steps": 1}, {"epochs": 2}):
        with pytest.raises(ValueError, match="differ only in inner_lr, outer_lr, clip_norm"):
            fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, [base, dataclasses.replace(base, **change)])


def test_fit_many_groups_by_shape_and_matches_separate_fits(tmp_path):
    """HSFM.fit_many on a store: two settings share a pass, the K_hard one runs after them; each head is
    the head its own `fit` gives, and progress fills every (settings, seed) slot in order."""
    store = gaussian_workspace(tmp_path / "ws")
    hsfm = methods.get("hsfm")
    base = hsfm.settings("waterbirds", TINY_HSFM)  # E = 2
    settings = [base, dataclasses.replace(base, inner_lr=3e-3), dataclasses.replace(base, hard_per_class=4)]
    seen = []
    many = hsfm.fit_many(store, settings, [0, 1],
                         progress=lambda epoch, epochs, entries: seen.append((epoch, epochs, [e is not None for e in entries])))
    assert seen[0] == (0, 4, [])
    assert seen[1:] == [(1, 4, [True] * 4 + [False] * 2), (2, 4, [True] * 4 + [False] * 2),
                        (3, 4, [False] * 4 + [True] * 2), (4, 4, [False] * 4 + [True] * 2)]
    for s, fitted in zip(settings, many):
        alone = hsfm.fit(store, s, [0, 1])
        for a, b in zip(fitted, alone):
            assert a.seed == b.seed
            torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
            assert torch.equal(a.support["indices"], b.support["indices"])
            assert [h["epoch"] for h in a.history] == [1, 2]


def test_a_pass_holds_at_most_its_memory_budget_of_support_features(tmp_path, monkeypatch):
    """PASS_SUPPORT_BYTES splits a pass of row-scalar settings into passes of whole rows (the progress shows
    the epochs of each), and every head is still the one its own fit gives."""
    from hsfm_core.methods import hsfm as hsfm_module

    store = gaussian_workspace(tmp_path / "ws")
    hsfm = methods.get("hsfm")
    base = hsfm.settings("waterbirds", TINY_HSFM)  # E = 2
    settings = [dataclasses.replace(base, inner_lr=lr) for lr in (1e-3, 2e-3, 3e-3)]
    row = store.groups.n_classes * base.n_support * (store.dim + 1) * 4  # one settings × seed row
    monkeypatch.setattr(hsfm_module, "PASS_SUPPORT_BYTES", 2 * 2 * row)  # two settings × two seeds a pass
    seen = []
    many = hsfm.fit_many(store, settings, [0, 1],
                         progress=lambda epoch, epochs, entries: seen.append((epoch, epochs, [e is not None for e in entries])))
    assert [s[:2] for s in seen] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]  # two passes of 2 epochs
    assert seen[1][2] == [True] * 4 + [False] * 2 and seen[3][2] == [False] * 4 + [True] * 2
    for s, fitted in zip(settings, many):
        for a, b in zip(fitted, hsfm.fit(store, s, [0, 1])):
            torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_the_default_fit_many_fits_each_settings_in_turn(tmp_path):
    store = gaussian_workspace(tmp_path / "ws")
    erm = methods.get("erm")
    settings = [erm.settings(None, []), erm.settings(None, ["C=0.01"])]
    many = erm.fit_many(store, settings, [0])
    for s, fitted in zip(settings, many):
        (alone,) = erm.fit(store, s, [0])
        assert torch.equal(fitted[0].weight, alone.weight)
    assert not torch.equal(many[0][0].weight, many[1][0].weight)


def test_a_diverging_configuration_leaves_the_others_exactly_their_own():
    xt, yt, xv, yv, gv, init = _problem()
    base = _configs(4)[0]
    wild = dataclasses.replace(base, outer_lr=1e30)  # the edits overflow float32 within a step
    rows = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, [base, wild], seeds=[0])
    (alone,) = fit_hsfm(xt, yt, xv, yv, gv, init.weight, init.bias, base, seeds=[0])
    assert not torch.isfinite(rows[1].H_after).all() or not all(
        torch.isfinite(torch.tensor(h["outer_loss"])) for h in rows[1].history)
    torch.testing.assert_close(rows[0].weight, alone.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows[0].H_after, alone.H_after, rtol=1e-5, atol=1e-6)
    assert [h["val_wga"] for h in rows[0].history] == pytest.approx([h["val_wga"] for h in alone.history], abs=1e-9)
