"""A sweep trains configurations that differ only in the method's row scalars (HSFM: α, η, clip norm) in one
pass (`sweeps.passes`, `train.train_many`; docs/ARCHITECTURE.md §Sweeps): every run must be the run a
separate `train` writes — heads, supports and whole histories, compared in float64 — and settings that
change shapes (n, K_hard, T) must never share a pass."""

import functools
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import hsfm_core.methods.hsfm as hsfm_module
from hsfm_core import sweeps
from hsfm_core.train import train
from tests.gaussian import gaussian_workspace
from tests.test_hsfm import _same_history

TINY = ("E=3", "K_H=2", "T=2", "n=4")
VOLATILE = {"run_id", "started_at", "finished_at"}  # what differs between two trainings of one request


def request_of(grid: list[str], seeds=(0, 1), overrides=TINY, method="hsfm", **changes) -> sweeps.SweepRequest:
    return sweeps.SweepRequest(method=method, grid=sweeps.parse_grid(method, grid), seeds=seeds,
                               overrides=overrides, device="cpu", **changes)


def units(request, todo=None, **kwargs) -> list[list[int]]:
    todo = [(k, c, list(request.seeds)) for k, c in enumerate(request.configurations())] if todo is None else todo
    return [ks for ks, _ in sweeps.passes(request, todo, **kwargs)]


def test_only_row_scalars_share_a_pass():
    # α × η × K_hard: K_hard varies fastest in grid order, so each K_hard value is every other configuration
    assert units(request_of(["alpha=1e-3,3e-3", "eta=0.1,1", "K_hard=4,8"])) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    for shape in ("n=4,6", "K_hard=4,8", "T=1,2", "K_H=1,2", "E=1,2"):  # every shape setting keeps them apart
        assert units(request_of(["alpha=1e-3,3e-3", shape], overrides=())) == [[0, 2], [1, 3]], shape
    assert units(request_of(["clip_norm=1,10", "eta=0.1,1"])) == [[0, 1, 2, 3]]  # scalars alone: one pass
    # a resumed sweep: configurations with other unfinished seeds train apart
    request = request_of(["alpha=1e-3,3e-3,1e-2"])
    c = request.configurations()
    assert units(request, [(0, c[0], [1]), (1, c[1], [0, 1]), (2, c[2], [1])]) == [[0, 2], [1]]
    # a method without row scalars: one configuration per unit, as before passes
    erm = request_of(["C=0.1,1,10"], seeds=(0,), overrides=(), method="erm")
    assert units(erm) == [[0], [1], [2]]


def test_passes_are_capped_and_fill_the_workers():
    request = request_of(["alpha=1e-4,3e-4,1e-3,3e-3,1e-2", "eta=0.1,1"])  # 10 configurations × 2 seeds
    assert units(request, max_rows=8) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]  # ≤ 4 configurations × 2 seeds
    assert units(request, workers=2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # halved: both workers train
    assert sorted(len(ks) for ks in units(request, workers=3)) == [2, 3, 5]
    shaped = request_of(["alpha=1e-3,3e-3", "K_hard=4,8"])
    assert units(shaped, workers=8) == [[0], [1], [2], [3]]  # never more units than configurations


def _files(path: Path) -> dict:
    return {"config": {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k not in VOLATILE},
            "history": [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()],
            "metrics": json.loads((path / "metrics.json").read_text()),
            "head": load_file(path / "head.safetensors"), "support": load_file(path / "support.safetensors"),
            "status": (path / "status").read_text()}


def assert_same_run(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a["status"] == b["status"] == "done\n"
    assert a["config"] == b["config"]  # the same request, settings, selected epoch, store, tags
    _same_history(a["history"], b["history"], rtol=rtol, atol=atol)  # every epoch, every figure (not the clock)
    assert [h["epoch"] for h in a["history"]] == [h["epoch"] for h in b["history"]]
    assert a["metrics"] == b["metrics"]
    for part in ("head", "support"):
        assert set(a[part]) == set(b[part])
        for key in b[part]:
            if b[part][key].is_floating_point():
                torch.testing.assert_close(a[part][key], b[part][key], rtol=rtol, atol=atol, msg=f"{part} {key}")
            else:
                assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_a_sweep_in_passes_equals_separate_runs_in_float64(tmp_path, monkeypatch):
    """The sweep's own unit of work (`_train_pass`, what its worker processes run), in this process so that
    HSFM can be asked for float64: every run of a pass equals the same request trained alone by `train`."""
    monkeypatch.setattr(hsfm_module, "fit_hsfm", functools.partial(hsfm_module.fit_hsfm, dtype=torch.float64))
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    request = request_of(["alpha=1e-3,4e-3", "eta=0.1,1", "K_hard=4,8", "clip_norm=1e-4,10"])
    todo = sweeps.pending(ws, request)
    plan = sweeps.passes(request, todo)
    assert [ks for ks, _ in plan] == [[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]]  # by K_hard
    for ks, seeds in plan:
        assert sweeps._train_pass(str(ws), sweeps._request_dict(request), ks, seeds, 1) == {k: "done" for k in ks}
    configurations = request.configurations()
    heads = []
    for k, configuration in enumerate(configurations):
        alone = train(ws, request.spec(configuration, list(request.seeds), k), run_id=f"alone-c{k:02d}")
        for run, seed in zip(alone, request.seeds):
            together = _files(ws / "runs" / sweeps.run_id_of(request, k, seed))
            assert_same_run(together, _files(run.path), rtol=1e-11, atol=1e-13)
            assert together["head"]["weight"].dtype == torch.float64
            heads.append(together["head"]["weight"])
    # the rows really differ: not one run written sixteen times
    assert len({tuple(np.round(h.flatten().tolist(), 9)) for h in heads}) == len(heads)
    table = sweeps.results(ws, request)
    assert table["seeds_done"].tolist() == [2] * len(configurations) and table["selected"].sum() == 1


def _interval(path: Path) -> tuple[int, int]:
    """When a run was created (its process record, written once) and when its last epoch was written."""
    return (path / "process.json").stat().st_mtime_ns, (path / "history.jsonl").stat().st_mtime_ns


def test_the_sweep_runner_trains_in_passes_and_matches_train(tmp_path):
    """`sweeps.run` (spawned workers, float32): one worker trains the α configurations of each K_hard together —
    their runs are created before either's last epoch — and one K_hard after the other; every run has the head,
    support and history of a separate `train`, and a diverging configuration fails alone."""
    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    request = request_of(["eta=0.1,1e30", "K_hard=4,8"], max_parallel=1)  # η = 1e30 overflows the edits
    outcomes = []
    table = sweeps.run(ws, request, lambda done, total, outcome: outcomes.append((done, total, outcome)))
    assert [(d, t) for d, t, _ in outcomes] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert sorted(o.split(":")[0] for _, _, o in outcomes) == ["done", "done", "failed", "failed"]
    assert table["seeds_done"].tolist() == [2, 2, 0, 0] and sweeps.status(ws, request.sweep_id) == "failed"
    runs = {k: [ws / "runs" / sweeps.run_id_of(request, k, s) for s in request.seeds] for k in range(4)}
    assert {(p / "status").read_text() for k in (2, 3) for p in runs[k]} == {"failed\n"}
    assert "non-finite" in (runs[2][0] / "error.txt").read_text()
    spans = {k: _interval(runs[k][0]) for k in runs}
    for a, b in ((0, 2), (1, 3)):  # one pass: both created before either ended
        assert max(spans[a][0], spans[b][0]) < min(spans[a][1], spans[b][1]), (a, b)
    for a, b in ((0, 1), (2, 3), (0, 3)):  # K_hard = 4, then K_hard = 8: one after the other
        assert spans[a][1] <= spans[b][0] or spans[b][1] <= spans[a][0], (a, b)  # ≤: one clock tick may hold both
    for k in (0, 1):
        alone = train(ws, request.spec(request.configurations()[k], list(request.seeds), k), run_id=f"alone-c{k}")
        for path, run in zip(runs[k], alone):
            assert_same_run(_files(path), _files(run.path), rtol=1e-5, atol=1e-6)
    assert sweeps.pending(ws, request) == [(k, request.configurations()[k], [0, 1]) for k in (2, 3)]


def test_a_local_background_sweep_trains_a_pass_as_one_job(tmp_path):
    """`submit` (the Sweep view's way): the queue launches one job per pass; the job's worker trains its
    configurations in one `train_many` call, its record lists every run (cancel and kill recovery reach them)."""
    import time

    from hsfm_core import jobs

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    request = request_of(["alpha=1e-3,4e-3", "eta=0.1,1"], max_parallel=1)
    assert sweeps.submit(ws, request) == {"0": None, "1": None, "2": None, "3": None}
    deadline = time.monotonic() + 300
    while sweeps.status(ws, request.sweep_id) in ("running", "submitted") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sweeps.status(ws, request.sweep_id) == "done"
    launched = json.loads((sweeps.sweep_dir(ws, request.sweep_id) / "jobs.json").read_text())
    assert sorted(launched) == ["0", "1", "2", "3"] and len(set(launched.values())) == 1  # one pass, one job
    job = jobs.get_job(ws, launched["0"])
    assert job["status"] == "done" and job["run_ids"] == [sweeps.run_id_of(request, k, s) for k in range(4) for s in (0, 1)]
    assert sweeps.results(ws, request)["seeds_done"].tolist() == [2, 2, 2, 2]
    runs = {k: ws / "runs" / sweeps.run_id_of(request, k, 0) for k in range(4)}
    spans = {k: _interval(path) for k, path in runs.items()}
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values())  # trained together
    alone = train(ws, request.spec(request.configurations()[3], list(request.seeds), 3), run_id="alone-c3")
    assert_same_run(_files(runs[3]), _files(alone[0].path), rtol=1e-5, atol=1e-6)


def test_a_pass_jobs_curves_are_one_line_per_run():
    """The Retrain page's curves: a job of one request draws a line per seed; a pass (two configurations, the same
    seed) a line per run, named by its run id, never two configurations merged into one line."""
    import pandas as pd

    from hsfm_core.studio.figures import training_curves

    rows = [{"epoch": e, "seed": 0, "run_id": rid, "outer_loss": float(e + k), "val_wga": 0.5, "val_avg": 0.6}
            for k, rid in enumerate(["sweep-a-c0-s0", "sweep-a-c1-s0"]) for e in (1, 2)]
    names = [t.name for t in training_curves(pd.DataFrame(rows)).data if t.name.startswith("outer loss")]
    assert names == ["outer loss (sweep-a-c0-s0)", "outer loss (sweep-a-c1-s0)"]
    one = [{**r, "seed": s, "run_id": f"hsfm-x-s{s}"} for s, r in enumerate(rows[:2])]
    names = [t.name for t in training_curves(pd.DataFrame(one)).data if t.name.startswith("outer loss")]
    assert names == ["outer loss (seed 0)", "outer loss (seed 1)"]
