"""hsfm_core: data, features, method and analysis behind HSFM Studio.

HSFM (Hard-Set-Guided Feature-Space Meta-Learning) retrains only the linear head of a frozen
backbone on a handful of *edited* training features. This package holds everything the app
calls: dataset readers, the feature store, extraction and import, and (in later modules) the
method, baselines, metrics and analysis instruments.
"""

__version__ = "0.1.0"
