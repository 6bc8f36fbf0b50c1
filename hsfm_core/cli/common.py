"""What every command group shares: the exit status of bad input, number formats, JSON printing, the
registry's method names as lazy argparse choices, and a parser whose epilog may be computed."""

from __future__ import annotations

import argparse
import json
import math

EXIT_BAD_INPUT = 2


def pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def seconds(x) -> str:
    return "—" if x is None else f"{x:.0f}s"


def _finite(value):
    """NaN and ±Infinity as null: `--json` output is standard JSON (RFC 8259) whatever a file held."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(value, **kwargs) -> None:
    print(json.dumps(_finite(value), allow_nan=False, default=str, **kwargs))


class MethodNames:
    """The registry's method names as argparse `choices`, read only when a command line uses them: the
    registry imports every method (torch), which `hsfm --help` must not pay for. (The argument needs a
    metavar: argparse formats the choices of an argument without one when it is added.)"""

    def __iter__(self):
        from hsfm_core import methods

        return iter(methods.names())

    def __contains__(self, name) -> bool:
        return name in list(self)


def methods_epilog() -> str:
    from hsfm_core import methods

    return "methods:\n" + "\n".join(
        f"  {m.name:6} {m.description}\n         settings: {', '.join(m.field_types())}"
        + (f"; presets: {', '.join(m.presets)}" if m.presets else "")
        for m in methods.all_methods())


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called when the help is shown (see MethodNames)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()
