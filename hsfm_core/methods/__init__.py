"""The method registry (docs/ARCHITECTURE.md §Methods): every module here that defines `METHOD`.

Like open_clip's factory, one name goes in and one object comes out: `get("hsfm")`. Nothing
outside this package names a method; views and the CLI iterate `all_methods()` in `order`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from hsfm_core.errors import InputError
from hsfm_core.methods.base import FittedHead, Method, parse_seeds

__all__ = ["FittedHead", "Method", "all_methods", "get", "names", "order_of", "parse_seeds"]


@lru_cache(maxsize=1)
def _registry() -> dict[str, Method]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if isinstance(method, Method):
            if method.name in found:
                raise RuntimeError(f"two methods are named {method.name!r}")
            found[method.name] = method
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


def all_methods() -> list[Method]:
    """Every registered method, baselines first (by `order`)."""
    return list(_registry().values())


def names() -> list[str]:
    return list(_registry())


def get(name: str) -> Method:
    """The method called `name`; InputError listing the known ones otherwise."""
    registry = _registry()
    if name not in registry:
        raise InputError(f"unknown method {name!r}; expected one of {', '.join(registry)}")
    return registry[name]


def order_of(name: str | None) -> int:
    """Sort key for a run's method: registered order, unknown methods last."""
    registry = _registry()
    return registry[name].order if name in registry else len(registry) + 100
