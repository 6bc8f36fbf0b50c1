"""HSFM hyper-parameters: one dataclass, the paper's presets, and `key=value` overrides.

Keys are the field names below; the paper's symbols are accepted as aliases
(`n, T, alpha, eta, K_H, K_hard, E`), so `--set T=10 eta=0.5` works as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable

from hsfm_core.errors import InputError


@dataclass(frozen=True)
class HSFMConfig:
    n_support: int = 16  # n: support examples per class
    inner_steps: int = 15  # T: unrolled inner gradient steps (and head Adam steps per epoch)
    inner_lr: float = 5e-5  # α: inner step size and head Adam learning rate
    outer_lr: float = 1.0  # η: Adam learning rate on the support features H
    outer_steps: int = 15  # K_H: bilevel steps on H per epoch
    hard_per_class: int = 64  # K_hard: hardest validation examples per class
    epochs: int = 40  # E
    clip_norm: float = 10.0  # gradient-norm clip on ∇H

    def __post_init__(self) -> None:
        for name in ("n_support", "inner_steps", "outer_steps", "hard_per_class", "epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"HSFM setting {name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("inner_lr", "outer_lr", "clip_norm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise InputError(f"HSFM setting {name} must be a finite number > 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


# Paper presets (ResNet-50 features): n, T, α, η, K_H, K_hard, E.
PRESETS = {
    "waterbirds": HSFMConfig(16, 15, 5e-5, 1.0, 15, 64, 40),
    "celeba": HSFMConfig(1024, 10, 5e-5, 1.0, 5, 256, 20),
    "metashift": HSFMConfig(32, 15, 5e-5, 1e-2, 10, 64, 10),
    "dominoes": HSFMConfig(16, 10, 1e-4, 1.0, 15, 256, 40),
}
ALIASES = {"n": "n_support", "T": "inner_steps", "alpha": "inner_lr", "eta": "outer_lr", "K_H": "outer_steps",
           "K_hard": "hard_per_class", "E": "epochs"}


def preset(name: str) -> HSFMConfig:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_overrides(pairs: Iterable[str], allowed: dict[str, type]) -> dict:
    """['T=10', 'eta=0.5'] → {'inner_steps': 10, 'outer_lr': 0.5}, checked against `allowed` {key: type}."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = ALIASES.get(key.strip(), key.strip())
        if not sep or not raw.strip():
            raise InputError(f"--set {pair!r}: expected key=value")
        if key not in allowed:
            raise InputError(f"--set {pair!r}: unknown key {key!r}; known keys: {', '.join(allowed)} "
                             f"(aliases {', '.join(ALIASES)})")
        kind = allowed[key]
        try:
            value = _coerce(raw.strip(), kind)
        except ValueError:
            raise InputError(f"--set {pair!r}: {key} must be {kind.__name__}, got {raw!r}") from None
        out[key] = value
    return out


def _coerce(raw: str, kind: type):
    if kind is int:  # accept "1e3" but not "2.5"
        value = float(raw)
        if not value.is_integer():
            raise ValueError(raw)
        return int(value)
    return kind(raw)


def hsfm_config(preset_name: str = "waterbirds", overrides: Iterable[str] = ()) -> HSFMConfig:
    defaults = HSFMConfig()
    allowed = {f.name: type(getattr(defaults, f.name)) for f in fields(HSFMConfig)}
    return replace(preset(preset_name), **parse_overrides(overrides, allowed))


def overrides_from(preset_name: str, values: dict) -> list[str]:
    """`key=value` overrides for the settings in `values` ({field or alias: value}) that differ from
    the preset — what a form with one box per hyper-parameter submits."""
    base = preset(preset_name).to_dict()
    out = []
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name not in base:
            raise InputError(f"unknown HSFM setting {key!r}; known: {', '.join(base)} (aliases {', '.join(ALIASES)})")
        if value != base[name]:
            out.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
    return out


def parse_seeds(text: str) -> list[int]:
    """'0, 1, 2' or '0-4' → [0, 1, 2] / [0, 1, 2, 3, 4]; InputError on anything else."""
    seeds = []
    for part in text.replace(",", " ").split():
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last) if dash else int(first)
        except ValueError:
            raise InputError(f"seeds {text!r}: expected integers such as 0, 1, 2 or a range 0-4") from None
        if lo < 0 or hi < lo:
            raise InputError(f"seeds {text!r}: {part!r} is not a non-negative integer or an increasing range")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise InputError("give at least one seed, e.g. 0")
    return list(dict.fromkeys(seeds))
