"""The one training request (docs/ARCHITECTURE.md §Requests): `TrainSpec`.

The CLI and the Retrain page build a `TrainSpec`; it travels unchanged, as JSON, through
`jobs.launch`, the submitit worker and `train`. `TrainSpec.create` checks everything that can be
checked without reading a file, so a bad request fails before anything is registered.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Sequence

from hsfm_core import methods
from hsfm_core.device import parse as parse_device, reconcile_slurm
from hsfm_core.errors import InputError
from hsfm_core.methods.base import check_seeds

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how a job runs on Slurm. `extra` = more `#SBATCH --key=value` lines, e.g. {"qos": "high"}."""

    partition: str
    time_min: int = 60
    gpus: int = 0
    cpus: int | None = None
    mem_gb: float | None = None
    extra: dict = field(default_factory=dict)
    setup: tuple = ()  # shell lines before the worker starts (module load, …)

    def check(self) -> "SlurmOptions":
        if not self.partition or not re.match(r"^[A-Za-z0-9_.,-]+$", str(self.partition)):
            raise InputError(f"Slurm partition {self.partition!r}: expected a partition name")
        if int(self.time_min) < 1:
            raise InputError(f"Slurm time limit must be ≥ 1 minute, got {self.time_min}")
        if int(self.gpus) < 0 or (self.cpus is not None and int(self.cpus) < 1):
            raise InputError(f"Slurm gpus must be ≥ 0 and cpus ≥ 1, got gpus={self.gpus}, cpus={self.cpus}")
        if self.mem_gb is not None and not float(self.mem_gb) > 0:
            raise InputError(f"Slurm memory must be > 0 GB, got {self.mem_gb}")
        for key in self.extra:
            if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", str(key)):
                raise InputError(f"Slurm parameter {key!r}: expected an sbatch option name such as qos or account")
        return self

    @classmethod
    def from_value(cls, value: "SlurmOptions | dict | None") -> "SlurmOptions":
        if isinstance(value, SlurmOptions):
            return value.check()
        if not value or not value.get("partition"):
            raise InputError("a Slurm job needs a partition")
        try:
            return cls(**{**value, "setup": tuple(value.get("setup") or ())}).check()
        except TypeError as exc:
            raise InputError(f"Slurm options: {exc}") from None


@dataclass(frozen=True)
class TrainSpec:
    """Method, settings, seeds, device and placement of one training request."""

    method: str
    preset: str | None = None  # None: the method's default for the store (see Method.default_preset)
    overrides: tuple[str, ...] = ()  # `key=value`, field names or aliases
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda[:N]
    executor: str = "local"  # placement when launched as a job: this machine or Slurm
    slurm: SlurmOptions | None = None
    time_limit_min: float | None = None
    max_parallel: int | None = None  # local jobs of the workspace training at once (None: the workspace's limit)
    tags: dict = field(default_factory=dict)  # e.g. {"sweep": id}; copied into each run's config
    device_note: str | None = None  # why `device` is not what was asked for (a Slurm request reconciled, §Devices)

    @classmethod
    def create(cls, method: str, *, preset: str | None = None, overrides: Iterable[str] = (),
               seeds: Sequence[int] = (0,), device: str = "auto", executor: str = "local",
               slurm: SlurmOptions | dict | None = None, time_limit_min: float | None = None,
               max_parallel: int | None = None, tags: dict | None = None,
               device_note: str | None = None) -> "TrainSpec":
        """A checked request; InputError with the one-line reason for anything wrong. A Slurm request's
        device and GPU count are made to agree here (`check`), so `device` may differ from the one given."""
        try:
            seeds = tuple(dict.fromkeys(int(s) for s in seeds))
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"seeds must be one or more integers 0…2**32 − 1, got {list(seeds)!r:.80}") from None
        spec = cls(method=method, preset=preset, overrides=tuple(str(o) for o in overrides), seeds=seeds,
                   device=str(device), executor=executor,
                   slurm=SlurmOptions.from_value(slurm) if executor == "slurm" else None,
                   time_limit_min=time_limit_min, max_parallel=max_parallel, tags=dict(tags or {}),
                   device_note=None if device_note is None else str(device_note))
        return spec.check()

    def check(self) -> "TrainSpec":
        """This request checked → itself, or, on Slurm, itself with the device and GPU count reconciled
        (`device.reconcile_slurm`, docs/ARCHITECTURE.md §Devices): `--device cuda` with `--gpus 0` and a GPU
        asked for a method that never uses one are refused here, before anything is queued; `auto` with no
        GPU becomes `cpu` with the reason in `device_note`."""
        method = methods.get(self.method)
        parse_device(self.device)
        check_seeds(self.seeds)  # 0…2**32 − 1: refused here, before any run folder exists
        if self.executor not in EXECUTORS:
            raise InputError(f"unknown executor {self.executor!r}; expected local or slurm")
        if self.executor == "slurm" and self.slurm is None:
            raise InputError("a Slurm job needs a partition")
        if self.max_parallel is not None and int(self.max_parallel) < 1:
            raise InputError(f"the job limit must be ≥ 1, got {self.max_parallel}")
        if self.preset != "auto":
            method.settings(self.preset, self.overrides)
        elif not method.has_auto:
            raise InputError(f"{self.method} has no 'auto' preset; presets: {', '.join(method.presets) or 'none'}")
        else:  # `auto` is derived from the store when training starts; the overrides are checked now
            method.parse(self.overrides)
        if self.executor == "slurm":
            device, gpus, note = reconcile_slurm(self.device, self.slurm.gpus, method.uses_device, method.name)
            if (device, gpus) != (self.device, int(self.slurm.gpus)) or (note and note != self.device_note):
                return replace(self, device=device, slurm=replace(self.slurm, gpus=gpus),
                               device_note=note or self.device_note)
        return self

    def check_device_here(self, probe: bool | None = None):
        """The launch check of a local request on this machine (`device.resolve`): `cuda:1` on a one-GPU
        machine, a torch wheel without the GPU's architecture or a driver too old are refused with what to
        install, before the job is registered. → the `device.Choice`, or None where no device is checked (a
        Slurm request: its node cannot be seen from here; a method that never uses a device). `probe`: run the
        test kernel (None: unless this process is the app's server, `device.may_probe`)."""
        from hsfm_core import device

        if self.executor != "local" or not methods.get(self.method).uses_device:
            return None
        return device.resolve(self.device, probe=device.may_probe() if probe is None else probe)

    def resolve(self, store=None):
        """(settings, preset name, why): the settings this request trains with on `store`."""
        method = methods.get(self.method)
        if self.preset is None:
            name, why = method.default_preset(store)
        else:
            name, why = self.preset, "asked for"
        if name == "auto":
            settings, why_auto = method.auto_settings(store)
            settings = replace(settings, **method.parse(self.overrides))
            return settings, name, f"{why}; {why_auto}"
        return method.settings(name, self.overrides), name, why

    def to_dict(self) -> dict:
        out = asdict(self)
        out["seeds"], out["overrides"] = list(self.seeds), list(self.overrides)
        if self.slurm is not None:
            out["slurm"]["setup"] = list(self.slurm.setup)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSpec":
        return cls.create(data["method"], preset=data.get("preset"), overrides=data.get("overrides", ()),
                          seeds=data.get("seeds", (0,)), device=data.get("device", "auto"),
                          executor=data.get("executor", "local"), slurm=data.get("slurm"),
                          time_limit_min=data.get("time_limit_min"), max_parallel=data.get("max_parallel"),
                          tags=data.get("tags"), device_note=data.get("device_note"))
