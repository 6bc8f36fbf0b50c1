"""Which device a run or an extraction uses, checked before any work (docs/ARCHITECTURE.md §Devices).

Facts, then rules. `device_facts()` reads, once per process, what this process's torch can use: its
build (version, CUDA version, cuDNN, the GPU architectures it was compiled for), why CUDA could not
start if it could not, the visible GPUs, and a tiny kernel run on the GPU asked for — a wheel built
without the GPU's architecture, or a driver older than the wheel's CUDA, fails there, not at the first
kernel of a run. Every decision is a pure function over those facts (`choose`, `reconcile_slurm`,
`auto_for_work`, `extraction_workers`, `environment`): the tests fabricate the facts of machines this
one is not (a V100 under a build without sm_70, a driver too old, one GPU asked for `cuda:1`), and torch
is never mocked.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field

from hsfm_core.errors import InputError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")
INSTALL_HELP = ("pytorch.org/get-started/locally lists the builds for each CUDA version; "
                "`python -c 'import torch; print(torch.version.cuda, torch.cuda.get_arch_list())'` shows this one's")
# `auto` keeps a run on the CPU when each of its steps is smaller than this many multiply-adds: a step
# of HSFM's unrolled loop is a few dozen tiny kernels, and on a GPU each costs a launch (several µs)
# whatever its size. Provisional (no GPU has run this code yet): benchmarks/gpu_check.py measures HSFM's
# waterbirds (6.6e5 per step) and celeba (1.0e7) presets on both devices; set it between them from there.
GPU_MIN_STEP_WORK = 1 << 22


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    memory_gb: float = 0.0

    @property
    def arch(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    def __str__(self) -> str:
        return f"cuda:{self.index} ({self.name}, {self.arch})"


@dataclass(frozen=True)
class DeviceFacts:
    """What this process's torch can use. Collected by `device_facts()`; fabricated in tests."""

    torch: str
    cuda_build: str | None = None  # torch.version.cuda; None: a CPU-only build of torch
    cudnn: int | None = None
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): sm_XY binaries, compute_XY PTX
    gpus: tuple[Gpu, ...] = ()
    cuda_error: str | None = None  # why CUDA could not start (torch's own words), when it could not
    probes: dict = field(default_factory=dict)  # GPU index → None (the test kernel ran) or its error
    driver: str | None = None  # the NVIDIA driver, from nvidia-smi when it is on PATH
    driver_cuda: str | None = None  # the newest CUDA that driver supports ("CUDA Version" of nvidia-smi)
    smi_gpus: tuple[str, ...] = ()  # GPU names nvidia-smi lists (seen even by a CPU-only torch)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES


@dataclass(frozen=True)
class Choice:
    device: str  # "cpu" or "cuda:N"
    reason: str  # why, in a sentence: recorded in the run's config
    warning: str | None = None  # a GPU was there but cannot be used: say so, never fall back silently


def parse(requested: str) -> tuple[str, int | None]:
    """'auto' / 'cpu' / 'cuda' / 'cuda:N' → (kind, index or None); InputError otherwise."""
    text = str(requested).strip()
    if not DEVICE_PATTERN.match(text):
        raise InputError(f"unknown device {requested!r}; expected auto, cpu or cuda[:N]")
    kind, _, index = text.partition(":")
    return kind, int(index) if index else None


def covers(arch_list: tuple[str, ...], capability: tuple[int, int]) -> bool:
    """Whether a torch built for `arch_list` runs kernels on a GPU of `capability`: a cubin of the same
    major version and an equal or lower minor one, or PTX (compute_XY) of an equal or lower version,
    which the driver compiles."""
    major, minor = capability
    for arch in arch_list:
        found = re.match(r"^(sm|compute)_(\d+)(\d)[a-z]?$", arch)
        if not found:
            continue
        kind, arch_major, arch_minor = found.group(1), int(found.group(2)), int(found.group(3))
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def cuda_problem(facts: DeviceFacts, index: int) -> str | None:
    """Why `cuda:index` cannot be used here, with what to install or change; None when it can."""
    if facts.cuda_build is None:
        seen = f" although nvidia-smi lists {', '.join(facts.smi_gpus)}" if facts.smi_gpus else ""
        return (f"this torch ({facts.torch}) is a CPU-only build{seen}; install a CUDA build of torch "
                f"({INSTALL_HELP})")
    if facts.cuda_error:
        if "no nvidia driver" in facts.cuda_error.lower():
            seen = f" although nvidia-smi lists {', '.join(facts.smi_gpus)}" if facts.smi_gpus else ""
            return (f"no NVIDIA driver is loaded{seen} (torch: {_first_sentence(facts.cuda_error)}); on a GPU machine "
                    f"install the NVIDIA driver, else use the CPU")
        if "too old" in facts.cuda_error.lower():
            driver = f"the NVIDIA driver{f' {facts.driver}' if facts.driver else ''}"
            newest = f" (it supports CUDA ≤ {facts.driver_cuda})" if facts.driver_cuda else ""
            return (f"CUDA could not start: {facts.cuda_error.strip()} — {driver}{newest} is older than this torch's "
                    f"CUDA {facts.cuda_build} build needs: update the driver, or install a torch build for a CUDA "
                    f"version the driver supports ({INSTALL_HELP})")
        return f"CUDA could not start: {facts.cuda_error.strip()}"
    if not facts.gpus:
        where = f" (CUDA_VISIBLE_DEVICES={facts.visible_devices!r})" if facts.visible_devices is not None else ""
        return f"no GPU is visible to this process{where}"
    if index >= len(facts.gpus):
        listed = ", ".join(str(g) for g in facts.gpus)
        where = f"; CUDA_VISIBLE_DEVICES={facts.visible_devices!r}" if facts.visible_devices is not None else ""
        return (f"cuda:{index} asked for, but this process sees {len(facts.gpus)} GPU(s): {listed}{where}; "
                f"GPUs are numbered from 0")
    gpu = facts.gpus[index]
    if facts.arch_list and not covers(facts.arch_list, gpu.capability):
        return (f"{gpu} is not among the architectures this torch ({facts.torch}, CUDA {facts.cuda_build}) was built "
                f"for ({' '.join(facts.arch_list)}); install a torch build compiled for {gpu.arch} ({INSTALL_HELP})")
    error = facts.probes.get(index)
    if error:
        return f"a test kernel on {gpu} failed: {error.strip().splitlines()[0]}"
    return None


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s", text.strip(), maxsplit=1)[0]


def choose(requested: str, facts: DeviceFacts) -> Choice:
    """The device for `requested` on a machine with these facts. 'cpu': the CPU. 'cuda[:N]': that GPU,
    or InputError saying what is wrong and what to install. 'auto': GPU 0 when it passes every check,
    else the CPU, with the reason — and a warning when a GPU is there but cannot be used."""
    kind, index = parse(requested)
    if kind == "cpu":
        return Choice("cpu", "asked for")
    if kind == "cuda":
        problem = cuda_problem(facts, index or 0)
        if problem:
            raise InputError(f"device {requested!r}: {problem}")
        return Choice(f"cuda:{index or 0}", f"asked for: {facts.gpus[index or 0]}")
    problem = cuda_problem(facts, 0)
    if problem is None:
        return Choice("cuda:0", f"auto: {facts.gpus[0]} passed the launch check")
    gpu_there = bool(facts.smi_gpus or facts.gpus) or "too old" in (facts.cuda_error or "").lower()
    return Choice("cpu", f"auto: CPU, because {problem}",
                  warning=f"a GPU seems present but is not used: {problem}" if gpu_there else None)


def auto_for_work(choice: Choice, requested: str, work: int | None, what: str = "each step") -> Choice:
    """`auto`'s choice refined by the size of the work: back to the CPU when `work` (multiply-adds of
    `what`) is below GPU_MIN_STEP_WORK. An explicit device is never overridden."""
    if requested != "auto" or not choice.device.startswith("cuda") or work is None or work >= GPU_MIN_STEP_WORK:
        return choice
    return Choice("cpu", f"auto: CPU, because {what} is {work:.2g} multiply-adds (< {GPU_MIN_STEP_WORK:.2g}): on the "
                         f"GPU kernel launches would cost more than the arithmetic (the GPU, {choice.reason}, stays free)")


def reconcile_slurm(device: str, gpus: int, uses_device: bool, method: str) -> tuple[str, int, str | None]:
    """A Slurm request's device and GPU count made to agree before submitting → (device, gpus, note).

    A method that never uses a device runs on the CPU; asking a GPU for it is refused (it would hold
    the GPU idle). `cuda[:N]` needs at least N + 1 GPUs on the node, `cpu` none; `auto` with no GPU
    asked for becomes `cpu` (on a node without GPU confinement `auto` could otherwise take a GPU the job
    does not own); `auto` with GPUs is decided on the node by its launch check."""
    kind, index = parse(device)
    gpus = int(gpus)
    if not uses_device:
        if gpus > 0:
            raise InputError(f"{method} never uses a GPU (it computes on the CPU); ask Slurm for no GPU (--gpus 0)")
        return "cpu", 0, None if kind in ("cpu", "auto") else f"{method} runs on the CPU whatever the device"
    if kind == "cuda" and gpus < (index or 0) + 1:
        need = (index or 0) + 1
        raise InputError(f"--device {device} needs {need} GPU(s) on the node but the job asks Slurm for {gpus}; "
                         f"ask for --gpus {need}, or use --device cpu")
    if kind == "cpu" and gpus > 0:
        raise InputError(f"--device cpu with --gpus {gpus}: the GPU(s) would sit idle; ask for --gpus 0, or use "
                         f"--device auto or cuda")
    if kind == "auto" and gpus == 0:
        return "cpu", 0, "auto → cpu: the job asks Slurm for no GPU"
    return device, gpus, None


def extraction_workers(device_kind: str, cpus: int) -> int:
    """Image-decoding processes for extraction. On a GPU the encoder waits for decoded images: one
    process per core but one (kept for the main process), at most 8. On the CPU the encoder's threads
    already use every core; decoding in-process competes less than extra processes would."""
    if device_kind != "cuda":
        return 0
    return max(0, min(8, int(cpus) - 1))


def usable_cpus() -> int:
    """Cores this process may run on (Slurm's and taskset's affinity respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def environment(device: str, facts: DeviceFacts, tf32: dict | None = None) -> dict:
    """What a run's config records about where it ran, so a re-run elsewhere can say why it differs:
    the device and GPU model, torch, its CUDA and cuDNN builds, the driver and the TF32 switches."""
    kind, index = parse(device)
    gpu = facts.gpus[index or 0] if kind == "cuda" and (index or 0) < len(facts.gpus) else None
    return {"device": device, "gpu": gpu.name if gpu else None, "gpu_arch": gpu.arch if gpu else None,
            "gpu_memory_gb": round(gpu.memory_gb, 1) if gpu else None, "torch": facts.torch,
            "cuda": facts.cuda_build, "cudnn": facts.cudnn, "driver": facts.driver,
            "tf32": tf32 if kind == "cuda" else None}


# -- reading the facts (impure: torch, nvidia-smi, a test kernel) ------------------------------------

def _nvidia_smi() -> tuple[str | None, str | None, tuple[str, ...]]:
    """(driver version, newest CUDA it supports, GPU names) from nvidia-smi, or Nones when it is absent."""
    if shutil.which("nvidia-smi") is None:
        return None, None, ()
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20, check=False)
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None, None, ()
    rows = [[part.strip() for part in line.split(",", 1)] for line in query.stdout.splitlines() if "," in line]
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header.stdout)
    return (rows[0][0] if rows else None), (cuda.group(1) if cuda else None), tuple(r[1] for r in rows)


def _test_kernel(index: int) -> str | None:
    """Run a small matmul on cuda:index and compare it with the CPU's; None, or what went wrong."""
    import torch

    try:
        x = torch.arange(64, dtype=torch.float32).reshape(8, 8)
        on_gpu = (x.to(f"cuda:{index}") @ x.to(f"cuda:{index}")).cpu()
        torch.cuda.synchronize(index)
    except Exception as exc:  # "no kernel image is available for execution on the device", …
        return f"{type(exc).__name__}: {exc}"
    if not torch.allclose(on_gpu, x @ x):
        return "a test matmul gave a wrong result"
    return None


@functools.lru_cache(maxsize=None)
def device_facts(probe: int | None = 0) -> DeviceFacts:
    """This process's facts (cached), with the test kernel run on GPU `probe` when it exists."""
    import torch

    cuda_build = torch.version.cuda
    cuda_error, gpus, arch_list, probes = None, (), (), {}
    if cuda_build is not None:
        arch_list = tuple(torch.cuda.get_arch_list())  # the wheel's own list: known without a GPU
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            available = torch.cuda.is_available()
        if not available:
            try:
                torch.cuda.init()
            except Exception as exc:  # the driver is too old, no driver, no device
                cuda_error = str(exc)
            cuda_error = cuda_error or next((str(w.message) for w in caught), None)
            if cuda_error and "no CUDA GPUs are available" in cuda_error:
                cuda_error = None  # not an error: there are none (reported as "no GPU is visible")
        else:
            gpus = tuple(Gpu(i, torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)),
                             torch.cuda.get_device_properties(i).total_memory / 2**30)
                         for i in range(torch.cuda.device_count()))
            if probe is not None and probe < len(gpus):
                probes[probe] = _test_kernel(probe)
    driver, driver_cuda, smi_gpus = _nvidia_smi()
    cudnn = torch.backends.cudnn.version() if cuda_build is not None and torch.backends.cudnn.is_available() else None
    return DeviceFacts(torch=torch.__version__, cuda_build=cuda_build, cudnn=cudnn, arch_list=arch_list, gpus=gpus,
                       cuda_error=cuda_error, probes=probes, driver=driver, driver_cuda=driver_cuda,
                       smi_gpus=smi_gpus, visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


def tf32_switches() -> dict:
    """torch's TF32 switches now: matmuls (off by default) and cuDNN convolutions (on by default)."""
    import torch

    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def may_probe() -> bool:
    """Whether this process may run the test kernel: not when it is the app's server. A server that ran it
    would hold a CUDA context for its whole life — memory on the GPU, and on a GPU in exclusive-process
    mode (common on clusters) every job's worker would be refused the device. Its jobs' workers run the
    kernel themselves, before they create their runs."""
    import sys

    if "streamlit" not in sys.modules:
        return True
    from streamlit import runtime

    return not runtime.exists()


def training_device(requested: str, uses_device: bool, work: int | None, *, method: str = "this method",
                    note: str | None = None, facts: DeviceFacts | None = None,
                    tf32: dict | None = None) -> tuple["torch.device", dict]:
    """Where a training run computes, and what its config records about it → (torch.device,
    {"device", "device_reason", "environment"}) (docs/ARCHITECTURE.md §Devices).

    A method that never uses a device runs on the CPU. Otherwise the launch check (`choose`, with the test
    kernel on the GPU asked for) then, for `auto`, the size rule (`auto_for_work`: `work` = the method's
    `step_work`, multiply-adds of one step). `note`: why a request's device was changed before it got here
    (`TrainSpec.device_note`, e.g. `auto` → `cpu` on a Slurm job with no GPU), recorded as the reason of a
    device it explains. `facts` / `tf32`: this process's own (`device_facts`, `tf32_switches`) unless given —
    the tests give those of machines this one is not."""
    import torch

    if not uses_device:
        choice, facts = Choice("cpu", f"{method} never uses a device: it computes on the CPU"), facts or device_facts(None)
    else:
        kind, index = parse(requested)
        facts = facts or device_facts(None if kind == "cpu" else index or 0)
        choice = choose(requested, facts)
        if choice.warning:
            warnings.warn(choice.warning, RuntimeWarning, stacklevel=2)
        choice = auto_for_work(choice, requested, work, f"each {method} step")
    reason = note if note and choice.reason == "asked for" else choice.reason
    switches = (tf32 if tf32 is not None else tf32_switches()) if choice.device.startswith("cuda") else None
    return torch.device(choice.device), {"device": choice.device, "device_reason": reason,
                                        "environment": environment(choice.device, facts, switches)}


def resolve(requested: str, probe: bool = True) -> Choice:
    """`choose` on this process's facts (the launch check), warning when a present GPU is not used.
    `probe=False` skips the test kernel: for a process that only submits work elsewhere (a server
    launching a local job), which need not hold a CUDA context; the process that trains probes."""
    kind, index = parse(requested)
    if kind == "cpu":
        return Choice("cpu", "asked for")
    choice = choose(requested, device_facts(index or 0 if probe else None))
    if choice.warning:
        warnings.warn(choice.warning, RuntimeWarning, stacklevel=2)
    return choice
