"""hsfm_core: data, features, methods and analysis behind HSFM Studio.

HSFM (Hard-Set-Guided Feature-Space Meta-Learning) retrains only the linear head of a frozen
backbone on a handful of *edited* training features. This package holds everything the app
calls — dataset readers, the feature store, extraction and import, the methods (ERM, DFR, AFR,
HSFM) behind one registry, runs, sweeps, metrics and the analysis instruments. The layers, the
on-disk formats and the contracts are described in docs/ARCHITECTURE.md.

The public API, for scripts and notebooks (each name documented in `hsfm_core/api.py`)::

    import hsfm_core as hc

    ws = hc.demo_workspace()                       # or hc.open_workspace("ws/waterbirds-vitb32")
    dfr = hc.train_runs(ws, "dfr", seeds=[0, 1, 2])
    hsfm = hc.train_runs(ws, "hsfm", settings={"alpha": 2e-4, "eta": 0.1, "K_hard": 64}, seeds=[0, 1, 2])
    print(hc.summary_table(ws, runs=dfr + hsfm, fmt="markdown"))
    hc.decode(ws, hsfm[0])["per_class"]            # what the edits point to, in CLIP words
    hc.group_figure(ws, runs=dfr + hsfm).show()    # plotly figures for notebooks

Open a workspace: `open_workspace`, `demo_workspace` (→ `Workspace`: .store, .runs, .run_groups).
Train and select: `train_runs`, `sweep`, `evaluate`. Tables: `group_table`, `summary_table`.
Analysis (the facade's instruments, `hsfm_core/instruments/`: each returns what the CLI's JSON prints):
`project`, `decode`, `neighbors`, `edit_shift`, `edit_semantics` (what a run group's edits encode, against
a null), `render` (edited features as pictures, with the attribute flip rate). Figures: `group_figure`, `projection_figure`,
`concept_figure`, `training_figure`. Bad input raises `InputError`.

These names load on first use (module `__getattr__`), so `import hsfm_core` imports neither torch
nor the rest of the package; the `hsfm` command's `--help` stays fast for the same reason.
"""

from hsfm_core.version import __version__  # noqa: F401  (one definition, see version.py)

__all__ = [
    "InputError",
    "Workspace",
    "concept_figure",
    "decode",
    "demo_workspace",
    "edit_semantics",
    "edit_shift",
    "evaluate",
    "group_figure",
    "group_table",
    "neighbors",
    "open_workspace",
    "project",
    "projection_figure",
    "render",
    "summary_table",
    "sweep",
    "train_runs",
    "training_figure",
]


def __getattr__(name: str):
    if name == "InputError":
        from hsfm_core.errors import InputError

        return InputError
    if name in __all__:
        from hsfm_core import api

        globals().update({n: getattr(api, n) for n in __all__ if n != "InputError"})  # later lookups skip this hook
        return globals()[name]
    raise AttributeError(f"module 'hsfm_core' has no attribute {name!r}")  # submodules are imported as usual


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
