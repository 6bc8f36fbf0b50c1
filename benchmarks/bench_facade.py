"""Issue 21's numbers: how many places compose each instrument, and the size of the three callers.

An instrument's *composition* is where its core analysis call is made, with the store opened and the
run checked around it. This script counts, in a checkout (default: this one; `--root` another, e.g.
a `git worktree` of an older commit), the files outside `hsfm_core/analysis/` (and the instruments'
own layer, listed separately) that call each instrument's core function, and the lines of the CLI,
the API and the Streamlit glue.

    python -m benchmarks.bench_facade [--root DIR]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

CORES = {  # instrument → the analysis calls that compose it
    "evaluate": ("evaluate_head",),
    "tables": ("paper_table", "seed_accuracy_table", "seed_averages_table", "averages_table", "accuracy_table"),
    "project": ("project",),
    "decode": ("decode_run", "decode_edit_selection", "describe_selection", "encode_concepts"),
    "neighbors": ("workspace_index", "search"),
    "edit-shift": ("edit_shift",),
    "diagnostics": ("run_diagnostics",),
    "semantics": ("edit_semantics",),
}
CALLERS = ("hsfm_core/cli.py", "hsfm_core/cli", "hsfm_core/api.py", "hsfm_core/studio/ui.py", "pages", "app.py",
           "hsfm_core/instruments")


def _files(root: Path, where: str) -> list[Path]:
    path = root / where
    return sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []


def _calls(path: Path) -> set[str]:
    """The functions of `hsfm_core.analysis` (and heads.evaluate_head) this file calls, by their own names:
    a local name counts only when it was imported from there (`from … import x as y` resolved), so a
    facade function of the same name is not counted as a composition."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {}  # local name → (module, original name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name)
    core_modules = ("hsfm_core.analysis", "hsfm_core.heads")
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in imported and imported[func.id][0].startswith(core_modules):
            names.add(imported[func.id][1])
        elif isinstance(func, ast.Attribute):
            base = func.value
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id in imported \
                    and imported[base.func.id][0].startswith(core_modules):  # workspace_index(store).search(…)
                names.add(func.attr)
            elif isinstance(base, ast.Name) and base.id in imported and imported[base.id][0].startswith(core_modules):
                names.add(func.attr)
    return names


def measure(root: Path) -> dict:
    places = {name: [] for name in CORES}
    for where in CALLERS:
        for path in _files(root, where):
            calls = _calls(path)
            for name, cores in CORES.items():
                if calls & set(cores):
                    places[name].append(str(path.relative_to(root)))
    lines = {where: sum(len(p.read_text(encoding="utf-8").splitlines()) for p in _files(root, where))
             for where in ("hsfm_core/cli.py", "hsfm_core/cli", "hsfm_core/api.py", "hsfm_core/studio/ui.py",
                           "hsfm_core/instruments")}
    return {"places": places, "lines": {k: v for k, v in lines.items() if v}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    result = measure(parser.parse_args().root)
    print("instrument: places that compose it (outside hsfm_core/analysis)")
    for name, places in result["places"].items():
        print(f"  {name:<12} {len(places)}: {', '.join(places) or '—'}")
    print("lines: " + ", ".join(f"{k} {v}" for k, v in result["lines"].items()))


if __name__ == "__main__":
    main()
