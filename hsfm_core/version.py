"""The package's version, at the bottom of the layers (docs/ARCHITECTURE.md §Layers): the store and the
runs record it, and no low module may import the package's `__init__` (the public API's top) for it."""

__version__ = "0.1.0"
