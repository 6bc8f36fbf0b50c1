"""The semantics of a run group (hsfm_core/analysis/semantics.py): the null, p-values and BH against
brute force, the text geometry by hand, small calibration and planted-truth runs, the JSON and the
bad-input errors. The large calibration and planted-truth runs are in benchmarks/bench_semantics.py."""

import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats

from hsfm_core.analysis import semantics as sem
from hsfm_core.errors import InputError

# -- a synthetic CLIP-like world --------------------------------------------------------------------
# Features live in the text space (D = d). The bank's raw embeddings share a common component (the
# modality gap). Inside each class the attribute moves features along the centred embedding of the
# concept "planted", which is also the largest direction of within-class variance.


def semantic_world(seed: int = 0, d: int = 64, n_concepts: int = 40, n_train: int = 2000, strength: float = 2.0):
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)
    common /= np.linalg.norm(common)
    raw = rng.normal(size=(n_concepts + 2, d)) / math.sqrt(d) + 0.8 * common
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    bank, class_embeddings = raw[:n_concepts], raw[n_concepts:]
    names = ["planted"] + [f"concept {k}" for k in range(1, n_concepts)]
    space = sem.text_space(names, bank, class_embeddings, "centred")
    along = space.vectors[0]  # the attribute's direction: the planted concept as scored
    y = rng.integers(0, 2, n_train)
    a = np.where(rng.random(n_train) < 0.95, y, 1 - y)  # class c mostly shows attribute c
    centres = rng.normal(size=(2, d))
    features = centres[y] + strength * (2 * a - 1)[:, None] * along + rng.normal(size=(n_train, d))
    return {"features": features, "y": y, "a": a, "space": space, "along": along, "raw_bank": bank}


def world_references(world, seed: int = 0, pool: int = sem.POOL_DIFFERENCES):
    return sem.class_references(world["features"], world["y"], world["a"], np.ones(len(world["y"]), bool),
                                ["landbird", "waterbird"], ["land", "water"], [0, 1], seed, pool)


def within_class_differences(world, c: int, count: int, rng) -> np.ndarray:
    """Random differences of two train features of class c (the null's own kind of direction)."""
    rows = np.flatnonzero(world["y"] == c)
    j = rng.integers(0, len(rows), count)
    k = (j + rng.integers(1, len(rows), count)) % len(rows)  # another row
    diff = world["features"][rows[j]] - world["features"][rows[k]]
    return diff / np.linalg.norm(diff, axis=1, keepdims=True)


def group_of_edits(world, rng, n: int = 16, seeds: int = 3, snr: float = 0.0, references=None) -> list:
    """Support edits per seed: unit within-class differences (noise) + snr · û_c (the planted truth)."""
    out = []
    for s in range(seeds):
        labels = np.repeat([0, 1], n)
        delta = np.concatenate([within_class_differences(world, c, n, rng) for c in (0, 1)])
        if snr:
            delta += snr * np.concatenate([np.repeat(references[c].direction[None], n, axis=0) for c in (0, 1)])
        delta *= rng.lognormal(0, 0.3, (len(delta), 1))  # edits of different sizes
        out.append(sem.SeedEdits(f"run-s{s}", s, delta, labels))
    return out


def identity(x):
    return np.asarray(x, dtype=np.float64)


# -- the null and its statistics against brute force ---------------------------------------------------

@pytest.mark.parametrize("n_support,pool_size", [(3, 400), (40, 50)])  # the gather path and the dense path
def test_null_mean_edits_match_a_loop(n_support, pool_size):
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(pool_size, 5))
    norms = rng.uniform(0.5, 2, n_support)
    indices, signs = sem.draw_null(rng, 30, n_support, pool_size)
    fast = sem.null_mean_edits(indices, signs, norms, pool)
    slow = np.zeros_like(fast)
    for b in range(30):
        for i in range(n_support):
            diff = pool[indices[b, i]]
            slow[b] += signs[b, i] * norms[i] * diff / np.linalg.norm(diff)
        slow[b] /= n_support
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)  # the dense path multiplies in float32
    assert set(np.unique(signs)) == {-1.0, 1.0}


def test_difference_pool_holds_within_class_differences():
    features = np.arange(20, dtype=np.float64).reshape(10, 2) ** 2
    rows = np.array([1, 4, 6, 7])
    pool = sem.difference_pool(features, rows, 200, np.random.default_rng(0))
    possible = {tuple(features[j] - features[k]) for j in rows for k in rows if j != k}
    assert {tuple(p) for p in pool} <= possible and len({tuple(p) for p in pool}) > 6
    with pytest.raises(InputError, match="≥ 2 train rows"):
        sem.difference_pool(features, rows[:1], 10, np.random.default_rng(0))
    with pytest.raises(InputError, match="identical"):
        sem.difference_pool(np.ones((5, 3)), np.arange(5), 10, np.random.default_rng(0))


def test_p_values_fisher_and_bh_against_brute_force():
    rng = np.random.default_rng(2)
    null = rng.normal(size=(99, 6))
    observed = np.array([0.0, 0.5, -1.7, 2.5, -3.5, null[3, 5]])
    p = sem.permutation_p(observed, null)
    for k in range(6):
        count = sum(1 for b in range(99) if abs(null[b, k]) >= abs(observed[k]))
        assert p[k] == pytest.approx((1 + count) / 100)
    assert p[0] == 1.0 and p[4] == pytest.approx(1 / 100) and p[5] >= 2 / 100  # a tie counts

    seeds = rng.uniform(0.001, 1, (4, 6))
    fisher = sem.combine_seeds(seeds)
    for k in range(6):
        assert fisher[k] == pytest.approx(stats.chi2.sf(-2 * np.log(seeds[:, k]).sum(), 8))
    np.testing.assert_array_equal(sem.combine_seeds(seeds[:1]), seeds[0])

    flat = rng.uniform(0, 0.2, 12)
    q = sem.benjamini_hochberg(flat)
    order = np.argsort(flat)
    m = len(flat)
    for rank, k in enumerate(order, start=1):
        expected = min(1.0, min(m * flat[order[j - 1]] / j for j in range(rank, m + 1)))
        assert q[k] == pytest.approx(expected)


def test_sign_agreement_and_verdict_rule():
    np.testing.assert_allclose(sem.sign_agreement(np.array([[1, -1, 0.1], [2, 1, -0.3], [0.5, 1, -0.1]])),
                               [1.0, 2 / 3, 2 / 3])
    assert sem.verdict([0.3, 0.2, 0.4], 0.01, 0.05, 1.0) == "toward_minority"
    assert sem.verdict([-0.3, -0.2, -0.4], 0.01, 0.05, 1.0) == "away_from_minority"
    assert sem.verdict([0.3, -0.2, 0.4], 0.01, 0.05, 1.0) == "no_consistent_direction"
    assert sem.verdict([0.3, -0.2, 0.4], 0.01, 0.05, 0.6) == "toward_minority"  # a documented share of seeds
    assert sem.verdict([0.3, 0.2, 0.4], 0.2, 0.05, 1.0) == "no_consistent_direction"
    assert "every seed" in sem.verdict_rule(0.05, 1.0) and "α = 0.05" in sem.verdict_rule(0.05, 1.0)


# -- text geometry by hand --------------------------------------------------------------------------

def test_centring_and_class_name_projection_by_hand():
    """Bank e1, e2, e3 (mean (1,1,1)/3) with class name e1: centring gives u_k = unit(e_k − mean); the class
    direction is u1, so concept 1 is set aside and concepts 2, 3 become ±(0, 1, −1)/√2."""
    space = sem.text_space(["one", "two", "three"], np.eye(3), np.eye(3)[:1], "centred")
    assert space.kept.tolist() == [False, True, True]
    np.testing.assert_allclose(space.removed @ space.removed.T, [[1.0]])
    np.testing.assert_allclose(np.abs(space.removed[0]), np.abs([2, -1, -1]) / math.sqrt(6))
    np.testing.assert_allclose(space.vectors[1], np.array([0, 1, -1]) / math.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(space.vectors[2], np.array([0, -1, 1]) / math.sqrt(2), atol=1e-12)
    # Δ = e2: with u1 projected out it is (1/3, 5/6, −1/6), whose cosine with concept 2 is √(3/5)
    edit = np.array([[0.0, 1.0, 0.0]])
    np.testing.assert_allclose(space.project(edit), [[1 / 3, 5 / 6, -1 / 6]], atol=1e-12)
    np.testing.assert_allclose(space.scores(edit)[0, 1:], [math.sqrt(3 / 5), -math.sqrt(3 / 5)])
    # explained share: (1/2) / (30/36) inside span{(0,1,−1)}; a random direction gets rank / free dims = 1/2
    assert space.explained_share(edit)[0] == pytest.approx(0.6)
    assert space.chance_share == pytest.approx(0.5)
    raw = sem.text_space(["one", "two", "three"], np.eye(3) * 2, None, "raw")
    np.testing.assert_allclose(raw.scores(edit), [[0.0, 1.0, 0.0]])
    assert raw.explained_share(edit)[0] == pytest.approx(1.0)


def test_centring_removes_the_common_component():
    world = semantic_world()
    centred = world["space"]
    rng = np.random.default_rng(3)
    directions = rng.normal(size=(500, 64))
    raw_space = sem.text_space(centred.concepts, world["raw_bank"], None, "raw")
    raw = raw_space.scores(directions)
    fair = centred.scores(directions)
    # raw scores of one direction move together (the shared component); centred ones much less
    assert np.mean(np.corrcoef(raw.T)[np.triu_indices(40, 1)]) > 0.3
    assert abs(np.mean(np.corrcoef(fair.T)[np.triu_indices(40, 1)])) < 0.1


def test_sparse_explanation_finds_a_planted_combination():
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(30, 48))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"c{k}" for k in range(30)]
    target = 0.8 * vectors[3] - 0.5 * vectors[7] + 0.05 * rng.normal(size=48)
    out = sem.sparse_explanation(target, vectors, names)
    assert 1 <= len(out["concepts"]) <= sem.SPARSE_MAX_ACTIVE
    top = {c["concept"]: c["weight"] for c in out["concepts"][:2]}
    assert top.keys() == {"c3", "c7"} and top["c3"] > 0 > top["c7"]
    assert out["cosine"] > 0.9
    assert sem.sparse_explanation(np.zeros(48), vectors, names)["concepts"] == []
    assert sem.jaccard_across([{1, 2}, {2, 3}, {1, 2}]) == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert sem.jaccard_across([{1}]) is None


# -- small calibration and planted truth --------------------------------------------------------------

def test_pure_null_runs_are_calibrated_small():
    """Edits that are themselves random within-class differences: ~5% of concept p-values < 0.05 and
    almost never a verdict (the benchmark runs 200+ trials)."""
    world = semantic_world(seed=5)
    references = world_references(world)
    rng = np.random.default_rng(6)
    rejected, total, verdicts = 0, 0, []
    for trial in range(24):
        out = sem.group_semantics(group_of_edits(world, rng), references, text=world["space"], to_text=identity,
                                  contrast=("planted", "concept 1"), null_draws=200, seed=trial)
        for entry in out["per_class"]:
            p = np.array([row["p_value"] for row in entry["all_concepts"]])
            rejected += int((p < 0.05).sum())
            total += len(p)
            verdicts.append(entry["verdict"])
    assert 0.02 <= rejected / total <= 0.09, rejected / total
    assert verdicts.count("no_consistent_direction") / len(verdicts) >= 0.9


def test_planted_attribute_is_found_small():
    world = semantic_world(seed=7)
    references = world_references(world)
    rng = np.random.default_rng(8)
    right, planted_in_top3 = 0, 0
    for trial in range(10):
        out = sem.group_semantics(group_of_edits(world, rng, snr=0.5, references=references), references,
                                  text=world["space"], to_text=identity, contrast=("planted", "concept 1"),
                                  null_draws=200, seed=trial)
        for entry in out["per_class"]:
            right += entry["verdict"] == "toward_minority"
            planted_in_top3 += "planted" in [c["concept"] for c in entry["sparse"]["concepts"][:3]]
    assert right >= 19 and planted_in_top3 >= 18


def test_a_class_without_two_attributes_has_no_verdict():
    world = semantic_world(seed=9)
    world["a"] = world["y"].copy()  # each class shows one attribute
    references = world_references(world)
    assert all(r.direction is None and "one attribute" in r.why_no_direction for r in references)
    out = sem.group_semantics(group_of_edits(world, np.random.default_rng(0), seeds=2), references, text=None,
                              text_reason="no text here", null_draws=100)
    for entry in out["per_class"]:
        assert entry["verdict"] is None and entry["attribute_alignment"] is None
        assert entry["verdict_rule"].startswith("no verdict") and entry["text_reason"] == "no text here"
        assert entry["mean_edit_agreement"]["pairs"] == 1


# -- on a workspace: the JSON and bad input -----------------------------------------------------------

@pytest.fixture(scope="module")
def group_workspace(tmp_path_factory):
    """A 64-d store declared to be in the bundled CLIP's space, with 3 seeds of a tiny HSFM and an ERM run."""
    from hsfm_core.train import train
    from tests.gaussian import TINY_HSFM
    from tests.test_decode import clip_workspace

    ws = tmp_path_factory.mktemp("semantics") / "ws"
    clip_workspace(ws)
    train(ws, "hsfm", overrides=TINY_HSFM, seeds=[0, 1, 2])
    train(ws, "hsfm", overrides=[*TINY_HSFM[:-1], "alpha=2e-3"], seeds=[0])
    train(ws, "erm")
    return ws


def _runs(ws):
    from hsfm_core.runs import list_runs

    runs = list_runs(ws)
    hsfm = [r for r in runs if r["method"] == "hsfm"]
    main = [r for r in hsfm if r["config"]["hyperparameters"]["inner_lr"] == 1e-3]
    other = [r for r in hsfm if r["config"]["hyperparameters"]["inner_lr"] != 1e-3]
    return main, other, [r for r in runs if r["method"] == "erm"]


def _check_numbers(value, where=""):
    """Every number finite (no NaN reaches the JSON)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), where


def test_semantics_json_schema(group_workspace):
    from hsfm_core.features import FeatureStore

    store = FeatureStore.open(group_workspace)
    main, _, _ = _runs(group_workspace)
    out = sem.edit_semantics(store, main, null_draws=200)
    text = json.dumps(out, allow_nan=False)  # plain JSON types only
    _check_numbers(json.loads(text))
    assert out["scoring"] == "centred" and out["null_draws"] == 200 and out["alpha"] == 0.05
    assert out["runs"] == [r["run_id"] for r in main] and out["seeds"] == [0, 1, 2]
    assert out["text"]["available"] and "waterbird" in out["text"]["set_aside"]
    assert [c["name"] for c in out["per_class"]] == ["landbird", "waterbird"]
    for entry in out["per_class"]:
        assert entry["seeds"] == [0, 1, 2] and entry["n_support"] == [4, 4, 4]
        assert entry["verdict"] in sem.VERDICTS and "Fisher" in entry["verdict_rule"]
        align = entry["attribute_alignment"]
        assert len(align["per_seed"]) == 3 and all(-1 <= v <= 1 for v in align["per_seed"])
        assert 0 < align["p_value"] <= 1 and 0 <= align["sign_agreement"] <= 1
        assert len(align["null_histogram"]["counts"]) == 3 and sum(align["null_histogram"]["counts"][0]) == 200
        assert [x["seed"] for x in align["leave_one_seed_out"]] == [0, 1, 2]
        assert align["holds_without_any_one_seed"] == all(x["verdict"] == entry["verdict"]
                                                         for x in align["leave_one_seed_out"])
        agreement = entry["mean_edit_agreement"]
        assert -1 <= agreement["min_cosine"] <= agreement["mean_cosine"] <= 1 and agreement["chance"] == 1 / 8
        contrast = entry["contrast"]
        assert (contrast["positive"], contrast["negative"]) == ("water background", "land background")
        assert 0 <= contrast["random_pair_rank"] <= 1 and 0 < contrast["p_value"] <= 1
        assert len(entry["all_concepts"]) == out["text"]["bank_size"] - len(out["text"]["set_aside"])
        assert all(set(c) >= {"concept", "mean", "std", "sign_agreement", "q_value"} for c in entry["all_concepts"])
        assert all(0 <= c["q_value"] <= 1 and -1 <= c["mean"] <= 1 for c in entry["all_concepts"])
        assert [c["mean"] for c in entry["all_concepts"]] == sorted((c["mean"] for c in entry["all_concepts"]), reverse=True)
        assert all(c["significant"] for c in entry["concepts"])
        sparse = entry["sparse"]
        assert len(sparse["concepts"]) <= 10 and -1 <= sparse["cosine"] <= 1 and 0 <= sparse["jaccard_across_seeds"] <= 1
        assert 0 <= entry["explained_share"] <= 1 and 0 <= entry["explained_share_chance"] <= 1
        share = entry["per_example"]["share_agreeing"]
        assert share is None if entry["verdict"] == "no_consistent_direction" else 0 <= share <= 1
    assert [len(e["alignment"]) for e in out["per_example"]] == [8, 8, 8]
    assert all(isinstance(v, float) for e in out["per_example"] for v in e["alignment"])
    raw = sem.edit_semantics(store, main[:1], null_draws=100, scoring="raw")
    assert raw["scoring"] == "raw" and raw["text"]["set_aside"] == []
    assert raw["per_class"][0]["mean_edit_agreement"]["mean_cosine"] is None  # one seed: agreement unknown


def test_semantics_is_seeded(group_workspace):
    from hsfm_core.features import FeatureStore

    store = FeatureStore.open(group_workspace)
    main, _, _ = _runs(group_workspace)
    first = sem.edit_semantics(store, main[:2], null_draws=100, seed=3)
    assert sem.edit_semantics(store, main[:2], null_draws=100, seed=3) == first
    other = sem.edit_semantics(store, main[:2], null_draws=100, seed=4)
    assert other["per_class"][0]["attribute_alignment"]["p_per_seed"] != first["per_class"][0]["attribute_alignment"]["p_per_seed"]


def test_bad_run_groups_are_refused_by_name(group_workspace, tmp_path):
    from hsfm_core.features import FeatureStore
    from tests.gaussian import gaussian_workspace

    store = FeatureStore.open(group_workspace)
    main, other, (erm,) = _runs(group_workspace)
    before = sorted(p.name for p in (group_workspace / "cache").iterdir()) if (group_workspace / "cache").exists() else []
    with pytest.raises(InputError, match=f"run {other[0]['run_id']} is not a seed of the configuration.*inner_lr"):
        sem.check_run_group(store, [*main, other[0]])
    with pytest.raises(InputError, match=f"run {erm['run_id']} .*no support set"):
        sem.check_run_group(store, [erm])
    with pytest.raises(InputError, match="null draws must be an integer ≥ 100"):
        sem.edit_semantics(store, main, null_draws=99)
    with pytest.raises(InputError, match="'purple sky' is not in the concept bank"):
        sem.edit_semantics(store, main, contrast=("purple sky", "land background"))
    with pytest.raises(InputError, match="'water background' is not in the concept bank \\(the vocabulary"):
        sem.check_options(words=(["ocean", "forest"], ["bg", "bg"]))
    assert sem.check_options(words=(["ocean", "forest"], ["bg", "bg"]), contrast=("ocean", "forest"))[0] == ["ocean", "forest"]
    with pytest.raises(InputError, match="listed twice"):
        sem.check_run_group(store, [main[0], main[0]])
    with pytest.raises(InputError, match="at least one run"):
        sem.check_run_group(store, [])
    with pytest.raises(InputError, match="scoring must be"):
        sem.check_run_group(store, main, scoring="fancy")
    elsewhere = gaussian_workspace(tmp_path / "elsewhere", d=64)
    with pytest.raises(InputError, match=f"run {main[0]['run_id']} was trained on another store"):
        sem.check_run_group(elsewhere, main)
    after = sorted(p.name for p in (group_workspace / "cache").iterdir()) if (group_workspace / "cache").exists() else []
    assert after == before  # nothing written


def test_a_store_outside_clip_space_keeps_the_alignment(tmp_path):
    """No CLIP space: the attribute alignment alone, saying why; with a CLIP store of the same images as a
    bridge, the text readings too."""
    from hsfm_core.features import FeatureStore
    from hsfm_core.runs import list_runs
    from hsfm_core.train import train
    from tests.gaussian import TINY_HSFM
    from tests.test_decode import clip_workspace

    ws = tmp_path / "r50"
    clip_workspace(ws, transform=np.random.default_rng(5).normal(size=(64, 64)), clip_space=False)
    train(ws, "hsfm", overrides=TINY_HSFM, seeds=[0, 1])
    store = FeatureStore.open(ws)
    runs = list_runs(ws)
    out = sem.edit_semantics(store, runs, null_draws=100)
    assert not out["text"]["available"] and "not in a CLIP joint space" in out["text"]["reason"]
    for entry in out["per_class"]:
        assert entry["verdict"] in sem.VERDICTS and entry["attribute_alignment"]["p_value"] > 0
        assert entry["concepts"] is None and entry["sparse"] is None and entry["contrast"] is None
        assert "CLIP" in entry["text_reason"]
    json.dumps(out, allow_nan=False)
    with pytest.raises(InputError, match="not in a CLIP joint space"):
        sem.edit_semantics(store, runs, null_draws=100, require_text=True)
    bridge = clip_workspace(tmp_path / "clip")
    bridged = sem.edit_semantics(store, runs, null_draws=100, bridge_store=bridge)
    assert bridged["text"]["available"] and all(e["contrast"]["p_value"] > 0 for e in bridged["per_class"])
    assert [e["attribute_alignment"]["per_seed"] for e in bridged["per_class"]] == \
        [e["attribute_alignment"]["per_seed"] for e in out["per_class"]]  # §5 does not depend on text
    shutil.rmtree(ws)
