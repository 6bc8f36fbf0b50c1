"""Feature store, extraction (images → store) and importers (existing caches → store)."""

from hsfm_core.features.store import FeatureStore, Selection, StoreWriter, write_store

__all__ = ["FeatureStore", "Selection", "StoreWriter", "write_store"]
