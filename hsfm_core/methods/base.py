"""The method contract (docs/ARCHITECTURE.md §Methods) and the one `key=value` settings parser.

A method is one module in `hsfm_core/methods/` that defines `METHOD`, an instance of a `Method`
subclass. The registry (`hsfm_core.methods`) finds it; `train`, the CLI, the Retrain form, the
run pickers and the Lesson read the registry, so adding a method touches no other file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch

from hsfm_core.errors import InputError

MAX_SEED = 2**32 - 1  # scikit-learn's random_state and numpy's RandomState take 0…2**32−1 (torch more)
MIN_VAL_ROWS_PER_GROUP = 2  # the fewest validation rows of every group a method that selects on val groups needs

# progress(epoch, epochs, entries): called with epoch 0 and no entries when fitting starts, then
# after every epoch with one history entry per seed, None for a seed not training in that epoch
# (when seeds run one after another, `epoch` counts over all of them); methods without epochs never call it.
Progress = Callable[[int, int, list[dict]], None]


@dataclass
class FittedHead:
    """One seed's outcome of any method: a linear head on the raw stored features, and its story."""

    seed: int
    weight: torch.Tensor  # C × d, the final head
    bias: torch.Tensor  # C
    init_weight: torch.Tensor | None = None  # θ₀, when the method starts from one
    init_bias: torch.Tensor | None = None
    support: dict[str, torch.Tensor] | None = None  # before, after, indices (store rows), labels: feature editors
    history: list[dict] = field(default_factory=list)  # one entry per epoch (already written while fitting)
    selected: dict = field(default_factory=dict)  # what model selection chose (best epoch, C, γ and λ, …)
    init_source: dict | None = None  # how θ₀ was obtained, for the run's config

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """`head.safetensors` content (docs/ARCHITECTURE.md §Runs)."""
        out = {"weight": self.weight, "bias": self.bias}
        if self.init_weight is not None:
            out |= {"init.weight": self.init_weight, "init.bias": self.init_bias}
        return out


class Method:
    """What every method declares. Subclasses set the class attributes and implement `fit`."""

    name: ClassVar[str]  # the CLI's --method value and the run's "method"
    label: ClassVar[str]  # how views print it
    description: ClassVar[str]  # one line, for --help and the Retrain form
    order: ClassVar[int]  # position in pickers, tables and legends (baselines first)
    Settings: ClassVar[type]  # a frozen dataclass; its fields are the `key=value` names
    aliases: ClassVar[dict[str, str]] = {}  # other accepted names, e.g. the paper's symbols
    presets: ClassVar[dict[str, Any]] = {}  # name → Settings; empty: only the defaults
    needs: ClassVar[tuple[str, ...]] = ("val",)  # splits it reads (val is always needed for selection)
    # The fewest val rows each group g = 0…G−1 must have: a method that selects or balances on validation groups
    # would otherwise score a missing group as if it were there (issue 26). None: MIN_VAL_ROWS_PER_GROUP for
    # feature editors (HSFM selects its epoch on val worst-group accuracy), 0 for the others; DFR and AFR set it.
    val_rows_per_group: ClassVar[int | None] = None
    uses_device: ClassVar[bool] = False  # whether `device` matters (torch methods)
    edits_features: ClassVar[bool] = False  # whether runs carry a support set (before/after)

    # -- settings --------------------------------------------------------------------------
    def default_preset(self, store=None) -> tuple[str | None, str]:
        """(preset name or None, why): what a request without --preset uses."""
        return (next(iter(self.presets)) if self.presets else None), "the method's default settings"

    def settings(self, preset: str | None = None, overrides: Iterable[str] = ()) -> Any:
        """Settings from a preset (or the defaults) and `key=value` overrides: the one parser."""
        if preset is None or not self.presets:
            if preset not in (None, "default"):
                raise InputError(f"{self.name} has no presets; got --preset {preset!r}")
            base = self.presets[next(iter(self.presets))] if self.presets else self.Settings()
        elif preset not in self.presets:
            raise InputError(f"unknown {self.name} preset {preset!r}; expected one of {', '.join(self.presets)}")
        else:
            base = self.presets[preset]
        return dataclasses.replace(base, **self.parse(overrides))

    def auto_settings(self, store) -> tuple[Any, str]:
        """(settings, why) derived from the store's scale: the `auto` preset, for methods that have one."""
        raise InputError(f"{self.name} has no 'auto' preset; presets: {', '.join(self.presets) or 'none'}")

    @property
    def has_auto(self) -> bool:
        return type(self).auto_settings is not Method.auto_settings

    def field_types(self) -> dict[str, type]:
        defaults = self.Settings()
        return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(self.Settings)}

    def parse(self, pairs: Iterable[str]) -> dict:
        """['T=10', 'eta=0.5'] → {'inner_steps': 10, 'outer_lr': 0.5}, checked against the Settings fields."""
        out = {}
        for pair in pairs:
            key, sep, raw = str(pair).partition("=")
            if not sep or not raw.strip():
                raise InputError(f"--set {pair!r}: expected key=value")
            name = self.field_name(key.strip(), pair)
            out[name] = self.coerce(name, raw.strip(), pair)
        return out

    def field_name(self, key: str, context: str | None = None) -> str:
        """A field name or alias → the field name; InputError naming the known keys otherwise."""
        name = self.aliases.get(key, key)
        if name not in self.field_types():
            known = ", ".join(self.field_types())
            also = f" (aliases {', '.join(self.aliases)})" if self.aliases else ""
            raise InputError(f"{self.name} setting {context or key!r}: unknown key {key!r}; known keys: {known}{also}")
        return name

    def coerce(self, name: str, raw: str, context: str | None = None):
        kind = self.field_types()[name]
        try:
            if kind is tuple:  # a list of numbers, "1,0.3,0.1"
                return tuple(float(v) for v in raw.replace(";", ",").split(",") if v.strip())
            if kind is int:  # accept "1e3" but not "2.5"
                value = float(raw)
                if not value.is_integer():
                    raise ValueError(raw)
                return int(value)
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                return raw.lower() in ("true", "1", "yes")
            return kind(raw)
        except ValueError:
            raise InputError(f"{self.name} setting {context or name!r}: {name} must be {kind.__name__}, "
                             f"got {raw!r}") from None

    def overrides_from(self, preset: str | None, values: dict, base=None) -> list[str]:
        """`key=value` overrides for the settings in `values` ({field or alias: value}) that differ from
        the preset (or from `base` settings, e.g. `auto`'s for a store): what a form with one box per setting submits."""
        base = dataclasses.asdict(base if base is not None else self.settings(preset))
        out = []
        for key, value in values.items():
            name = self.field_name(key)
            if value != base[name]:
                text = ",".join(map(repr, value)) if isinstance(value, tuple) else repr(value) \
                    if isinstance(value, float) else str(value)
                out.append(f"{key}={text}")
        return out

    # -- fitting ---------------------------------------------------------------------------
    def min_val_rows_per_group(self) -> int:
        if self.val_rows_per_group is not None:
            return self.val_rows_per_group
        return MIN_VAL_ROWS_PER_GROUP if self.edits_features else 0

    def check_store(self, store) -> None:
        """What `fit` needs of the store beyond its splits (`needs`), checked before any run directory exists
        (train and jobs call it through `train.open_store_for`): every validation group 0…G−1 with at least
        `min_val_rows_per_group()` rows, for methods that select or balance on them."""
        minimum = self.min_val_rows_per_group()
        if minimum and "val" in self.needs and store.has_split("val"):
            store.groups.require_rows(store.select("val").g, minimum, f"{store.path}: the validation split",
                                      f"{self.label} selects or balances on validation groups")


    def step_work(self, store, settings) -> int | None:
        """Multiply-adds of one step of `fit` for one run on this store: what `auto` weighs against a GPU's
        kernel-launch cost (`hsfm_core.device.auto_for_work`, docs/ARCHITECTURE.md §Devices). None: unknown,
        `auto` takes a usable GPU."""
        return None

    def fit(self, store, settings, seeds: Sequence[int], *, device: str | torch.device = "cpu",
            progress: Progress | None = None) -> list[FittedHead]:
        """One `FittedHead` per seed, on the store's features (the caller checked `needs`)."""
        raise NotImplementedError

    def fit_many(self, store, settings_list: Sequence[Any], seeds: Sequence[int], *,
                 device: str | torch.device = "cpu", progress: Progress | None = None) -> list[list[FittedHead]]:
        """`fit` for each settings on the same seeds: one list of `FittedHead`s (one per seed) per settings.

        The default fits them one after another; a method whose settings differ only in scalars can
        train them together (HSFM: one pass, a row per settings × seed). `progress(epoch, epochs,
        entries)`: entries for every (settings, seed), settings-major, None for those not training."""
        settings_list, seeds = list(settings_list), list(seeds)
        out = []
        for k, settings in enumerate(settings_list):
            def report(epoch, epochs, entries, k=k):
                if progress is not None:
                    padded = [None] * (len(settings_list) * len(seeds))
                    padded[k * len(seeds): k * len(seeds) + len(entries)] = entries
                    progress(k * epochs + epoch, len(settings_list) * epochs, padded)

            out.append(self.fit(store, settings, seeds, device=device, progress=report))
        return out


def check_positive(settings, ints: Sequence[str] = (), floats: Sequence[str] = (), what: str = "") -> None:
    """Range checks shared by every Settings dataclass: ints ≥ 1, floats finite and > 0."""
    for name in ints:
        if getattr(settings, name) < 1:
            raise InputError(f"{what} setting {name} must be ≥ 1, got {getattr(settings, name)}")
    for name in floats:
        value = getattr(settings, name)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{what} setting {name} must be a finite number > 0, got {value}")


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """→ the distinct seeds, in order; InputError unless one or more integers 0…2**32−1 (what every method's
    generators take: a larger seed would end in a traceback inside scikit-learn or torch, after a run exists)."""
    out = tuple(dict.fromkeys(seeds))
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in out):
        shown = list(out)[:8]
        raise InputError(f"seeds must be one or more integers 0…{MAX_SEED} (2**32 − 1), got {shown}"
                         + ("…" if len(out) > 8 else ""))
    return out


def parse_seeds(text: str) -> list[int]:
    """'0, 1, 2' or '0-4' → [0, 1, 2] / [0, 1, 2, 3, 4]; InputError on anything else."""
    seeds = []
    for part in str(text).replace(",", " ").split():
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last) if dash else int(first)
        except ValueError:
            raise InputError(f"seeds {text!r}: expected integers such as 0, 1, 2 or a range 0-4") from None
        if lo < 0 or hi < lo:
            raise InputError(f"seeds {text!r}: {part!r} is not a non-negative integer or an increasing range")
        if hi > MAX_SEED or hi - lo >= 10_000:
            raise InputError(f"seeds {text!r}: {part!r} is out of range (seeds are 0…{MAX_SEED}, at most 10000 at once)")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise InputError("give at least one seed, e.g. 0")
    return list(dict.fromkeys(seeds))
