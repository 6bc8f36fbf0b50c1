"""The facade (docs/ARCHITECTURE.md §Instruments): every instrument is composed once, and the CLI's
`--json`, the public API and the pages' caches return the same answer. Also the layering: nothing
below the facade imports it, and the CLI is argparse and printing."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

import hsfm_core as hc
from hsfm_core.cli import main
from hsfm_core.errors import InputError
from hsfm_core.runs import list_runs

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hsfm_core"


def _normalised(value):
    """What `--json` makes of a value: NaN/Infinity → null, tuples → lists, numpy scalars → numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _normalised(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _cli_json(capsys, *argv) -> object:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def runs(app_workspace):
    by_method = {r["method"]: r for r in list_runs(app_workspace)}
    return by_method


INSTRUMENTS = {
    # name: (CLI arguments after --workspace W, API call)
    "eval": (lambda r: ["eval", "--run", r["erm"]["run_id"], "--json"],
             lambda ws, r: hc.evaluate(ws, r["erm"]["run_id"])),
    "runs": (lambda r: ["runs", "--json"],
             lambda ws, r: __import__("hsfm_core.instruments.tables", fromlist=["x"]).runs_overview(ws)),
    "decode": (lambda r: ["decode", "--run", r["hsfm"]["run_id"], "--top", "5", "--support", "0", "3"],
               lambda ws, r: hc.decode(ws, r["hsfm"]["run_id"], top=5, support=[0, 3])),
    "neighbors": (lambda r: ["neighbors", "--run", r["hsfm"]["run_id"], "--support", "2", "--edited", "-k", "6"],
                  lambda ws, r: hc.neighbors(ws, r["hsfm"]["run_id"], 2, edited=True, k=6)),
    "neighbors-row": (lambda r: ["neighbors", "--row", "7", "-k", "5", "--exclude-query"],
                      lambda ws, r: hc.neighbors(ws, row=7, k=5, exclude_query=True)),
    "edit-shift": (lambda r: ["edit-shift", "--run", r["hsfm"]["run_id"], "-k", "8"],
                   lambda ws, r: hc.edit_shift(ws, r["hsfm"]["run_id"], k=8)),
    "semantics": (lambda r: ["semantics", "--runs", r["hsfm"]["run_id"], "--null", "100", "--json"],
                  lambda ws, r: hc.edit_semantics(ws, [r["hsfm"]["run_id"]], null_draws=100)),
    "project": (lambda r: ["project", "--run", r["hsfm"]["run_id"], "--split", "val"],
                lambda ws, r: __import__("hsfm_core.instruments.projection", fromlist=["x"]).project_map(
                    ws, r["hsfm"]["run_id"], split="val")),
}


@pytest.mark.parametrize("name", list(INSTRUMENTS))
def test_cli_json_and_api_agree_key_for_key(name, app_workspace, runs, capsys):
    cli_args, api_call = INSTRUMENTS[name]
    command, *rest = cli_args(runs)
    printed = _cli_json(capsys, command, "--workspace", app_workspace, *rest)
    returned = _normalised(api_call(hc.open_workspace(app_workspace), runs))
    assert printed == returned


def test_table_text_is_the_api_table(app_workspace, tmp_path, capsys):
    for fmt in ("markdown", "latex", "csv"):
        capsys.readouterr()
        assert main(["table", "--workspace", str(app_workspace), "--format", fmt, "--split", "val"]) == 0
        assert capsys.readouterr().out == hc.summary_table(app_workspace, "val", fmt=fmt)
    out = tmp_path / "table.md"
    assert main(["table", "--workspace", str(app_workspace), "--out", str(out)]) == 0
    assert out.read_text() == hc.summary_table(app_workspace, fmt="markdown")


def test_project_frame_is_the_coordinates_file(app_workspace, runs):
    frame = hc.project(app_workspace, runs["hsfm"], split="val")
    answer = __import__("hsfm_core.instruments.projection", fromlist=["x"]).project_map(
        app_workspace, runs["hsfm"], split="val")
    assert frame.attrs["coordinates"] == answer["coordinates"] and len(frame) == answer["points"]
    assert {"original", "edited"} <= set(frame["kind"])  # val rows and the run's edited (train) support


@pytest.mark.parametrize("call, message", [
    (lambda ws, r: hc.decode(ws, r["hsfm"], top=0), "top must be an integer ≥ 1"),
    (lambda ws, r: hc.decode(ws, r["hsfm"], contrast=("water background", "no such words")), "not in the concept bank"),
    (lambda ws, r: hc.decode(ws, r["erm"]), "no support set"),
    (lambda ws, r: hc.neighbors(ws, r["hsfm"], 99), "support examples 0.."),
    (lambda ws, r: hc.neighbors(ws, r["hsfm"], 0, k=0), "k must be an integer ≥ 1"),
    (lambda ws, r: hc.neighbors(ws, r["hsfm"]), "exactly one query"),
    (lambda ws, r: hc.neighbors(ws, row=10**9), "the store has rows"),
    (lambda ws, r: hc.neighbors(ws, row=3, edited=True), "has no edited feature"),
    (lambda ws, r: hc.edit_shift(ws, r["erm"]), "no support set"),
    (lambda ws, r: hc.project(ws, split="training"), "split 'training'"),
    (lambda ws, r: hc.project(ws, n_neighbors=1), "n_neighbors"),
    (lambda ws, r: hc.summary_table(ws, "train"), "split 'train'"),
    (lambda ws, r: hc.summary_table(ws, fmt="html"), "fmt 'html'"),
    (lambda ws, r: hc.evaluate(ws, "no-such-run"), "no run 'no-such-run'"),
    (lambda ws, r: hc.edit_semantics(ws, group="no such group"), "run group 'no such group'"),
    (lambda ws, r: hc.edit_semantics(ws, [r["hsfm"]], group="x"), "not both"),
    (lambda ws, r: hc.edit_semantics(ws, [r["hsfm"]], null_draws=50), "100"),
    (lambda ws, r: hc.edit_semantics(ws, [r["hsfm"]], contrast=("water background", "zzz")), "zzz"),
    (lambda ws, r: hc.edit_semantics(ws, [r["erm"]]), "support set"),
    (lambda ws, r: hc.evaluate(ws, {"not": "a run"}), "expected a run id or a run dict"),
])
def test_each_instrument_checks_its_own_arguments(call, message, app_workspace, runs):
    with pytest.raises(InputError, match=message):
        call(hc.open_workspace(app_workspace), runs)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


ABOVE_THE_FACADE = ("hsfm_core.instruments", "hsfm_core.api", "hsfm_core.cli", "hsfm_core.studio")


def test_imports_point_one_way():
    """Nothing below the facade imports it (or the callers above it), and no module reaches up to the
    package's __init__ for the version (docs/ARCHITECTURE.md §Layers)."""
    above = [PACKAGE / "instruments", PACKAGE / "cli", PACKAGE / "studio", PACKAGE / "api.py",
             PACKAGE / "__init__.py", PACKAGE / "__main__.py"]
    below = [p for p in PACKAGE.rglob("*.py") if not any(p == a or p.is_relative_to(a) for a in above)]
    assert PACKAGE / "runs.py" in below and PACKAGE / "features" / "store.py" in below
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith(ABOVE_THE_FACADE))
                 for p in below}
    assert not {k: v for k, v in offenders.items() if v}
    reaching_up = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if "hsfm_core.__version__" in _imports(p)]
    assert not reaching_up
    # the instruments themselves call nothing above them
    for p in (PACKAGE / "instruments").glob("*.py"):
        assert not [m for m in _imports(p) if m.startswith(("hsfm_core.api", "hsfm_core.cli"))], p


def test_the_cli_is_argparse_and_printing():
    """No command opens a store, reads runs or builds a concept bank itself, and none is long."""
    for path in (PACKAGE / "cli").glob("*.py"):
        imported = _imports(path)
        if path.name == "analysis.py":
            assert not [m for m in imported if m.startswith(("hsfm_core.features", "hsfm_core.runs",
                                                             "hsfm_core.analysis.decode",
                                                             "hsfm_core.analysis.retrieval",
                                                             "hsfm_core.analysis.projection"))], imported
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("_run"):
                assert node.end_lineno - node.lineno + 1 <= 32, f"{path.name}:{node.name} is too long"
