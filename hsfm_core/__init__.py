"""hsfm_core: data, features, methods and analysis behind HSFM Studio.

HSFM (Hard-Set-Guided Feature-Space Meta-Learning) retrains only the linear head of a frozen
backbone on a handful of *edited* training features. This package holds everything the app
calls — dataset readers, the feature store, extraction and import, the methods (ERM, DFR, AFR,
HSFM) behind one registry, runs, sweeps, metrics and the analysis instruments. The layers, the
on-disk formats and the contracts are described in docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
