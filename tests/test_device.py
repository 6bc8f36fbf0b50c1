"""The launch check and the device rules (hsfm_core/device.py), on fabricated facts of GPU machines this
one is not, and on this machine's real torch (a CUDA build without a driver or GPU). torch is never mocked."""

from pathlib import Path

import pytest
import torch

from hsfm_core import device
from hsfm_core.device import Choice, DeviceFacts, Gpu, GPU_MIN_STEP_WORK
from hsfm_core.errors import InputError

# torch 2.14's cu130 wheel, as installed here: no sm_70 (a V100)
WHEEL = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0), 79.6)
V100 = Gpu(0, "Tesla V100-SXM2-32GB", (7, 0), 31.7)


def facts(**fields) -> DeviceFacts:
    return DeviceFacts(**{"torch": "2.14.1+cu130", "cuda_build": "13.0", "cudnn": 92400, "arch_list": WHEEL,
                          "driver": "580.65", "driver_cuda": "13.0", **fields})


def test_requests_are_parsed():
    assert device.parse("auto") == ("auto", None) and device.parse("cuda") == ("cuda", None)
    assert device.parse("cuda:3") == ("cuda", 3) and device.parse("cpu") == ("cpu", None)
    for bad in ("gpu", "cuda:", "cuda:-1", "mps", "CUDA"):
        with pytest.raises(InputError, match="expected auto, cpu or cuda"):
            device.parse(bad)


def test_architecture_coverage():
    assert not device.covers(WHEEL, (7, 0))  # a V100 under this wheel
    assert device.covers(WHEEL, (8, 0)) and device.covers(WHEEL, (9, 0))
    assert device.covers(("sm_80",), (8, 6))  # a cubin runs on later minors of its major
    assert not device.covers(("sm_86",), (8, 0)) and not device.covers(("sm_80", "sm_86"), (9, 0))
    assert device.covers(("sm_80", "compute_86"), (9, 0))  # PTX, compiled by the driver
    assert device.covers(("sm_90a",), (9, 0))


def test_a_healthy_gpu_is_chosen_by_auto_and_by_name():
    healthy = facts(gpus=(H100,), probes={0: None})
    assert device.choose("auto", healthy) == Choice("cuda:0", "auto: cuda:0 (NVIDIA H100 80GB HBM3, sm_90) passed "
                                                              "the launch check")
    assert device.choose("cuda", healthy).device == "cuda:0" and device.choose("cuda:0", healthy).device == "cuda:0"
    assert device.choose("cpu", healthy) == Choice("cpu", "asked for")


def test_a_gpu_the_wheel_was_not_built_for_is_refused_with_what_to_install():
    v100 = facts(gpus=(V100,), probes={0: "RuntimeError: CUDA error: no kernel image is available for execution"})
    with pytest.raises(InputError, match=r"cuda:0 \(Tesla V100-SXM2-32GB, sm_70\) is not among the architectures.*"
                                         r"install a torch build compiled for sm_70"):
        device.choose("cuda", v100)
    auto = device.choose("auto", v100)  # never silently: the reason is recorded and a warning raised
    assert auto.device == "cpu" and "sm_70" in auto.reason and "sm_70" in auto.warning


def test_a_failing_test_kernel_is_the_reason():
    broken = facts(gpus=(H100,), probes={0: "RuntimeError: CUDA error: an illegal memory access was encountered\n..."})
    with pytest.raises(InputError, match="a test kernel on cuda:0 .* failed: RuntimeError: CUDA error: an illegal"):
        device.choose("cuda:0", broken)
    assert device.choose("auto", broken).device == "cpu"


def test_a_driver_older_than_the_wheel_is_named_with_both_versions():
    old = facts(cuda_error="The NVIDIA driver on your system is too old (found version 12020). Please update your "
                           "GPU driver", driver="535.104", driver_cuda="12.2", smi_gpus=("NVIDIA A100-SXM4-40GB",))
    with pytest.raises(InputError, match=r"driver 535.104 \(it supports CUDA ≤ 12.2\) is older than this torch's CUDA "
                                         r"13.0 build needs: update the driver, or install a torch build"):
        device.choose("cuda", old)
    auto = device.choose("auto", old)
    assert auto.device == "cpu" and auto.warning and "too old" in auto.warning


def test_cuda_1_on_a_one_gpu_machine_is_refused_at_the_launch_check():
    one = facts(gpus=(H100,), probes={1: None}, visible_devices="3")
    with pytest.raises(InputError, match=r"cuda:1 asked for, but this process sees 1 GPU\(s\): cuda:0 \(NVIDIA H100.*"
                                         r"CUDA_VISIBLE_DEVICES='3'"):
        device.choose("cuda:1", one)


def test_machines_without_a_usable_gpu_fall_back_quietly_only_when_there_is_none():
    cpu_wheel = DeviceFacts(torch="2.14.1+cpu")
    with pytest.raises(InputError, match=r"this torch \(2.14.1\+cpu\) is a CPU-only build; install a CUDA build"):
        device.choose("cuda", cpu_wheel)
    assert device.choose("auto", cpu_wheel).warning is None
    hidden = DeviceFacts(torch="2.14.1+cpu", smi_gpus=("NVIDIA L4",))  # a GPU, but a CPU-only torch
    assert "nvidia-smi lists NVIDIA L4" in device.choose("auto", hidden).warning
    no_driver = facts(cuda_error="Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU "
                                 "and installed a driver from http://www.nvidia.com/Download/index.aspx",
                      driver=None, driver_cuda=None)
    assert device.choose("auto", no_driver).warning is None  # a CUDA wheel on a CPU machine: pip's default
    with pytest.raises(InputError, match="no NVIDIA driver is loaded"):
        device.choose("cuda", no_driver)
    with pytest.raises(InputError, match="no GPU is visible to this process \\(CUDA_VISIBLE_DEVICES=''\\)"):
        device.choose("cuda", facts(visible_devices=""))


def test_auto_keeps_small_work_on_the_cpu_and_says_why():
    gpu = Choice("cuda:0", "auto: cuda:0 (NVIDIA H100 80GB HBM3, sm_90) passed the launch check")
    waterbirds = (2 * 16 + 2 * 64) * 2048 * 2  # HSFM's waterbirds preset: (C·n + C·K_hard)·d·C per step
    small = device.auto_for_work(gpu, "auto", waterbirds, "each HSFM step")
    assert small.device == "cpu" and "each HSFM step is 6.6e+05 multiply-adds" in small.reason
    celeba = (2 * 1024 + 2 * 256) * 2048 * 2
    assert celeba >= GPU_MIN_STEP_WORK and device.auto_for_work(gpu, "auto", celeba) == gpu
    assert device.auto_for_work(gpu, "cuda", waterbirds) == gpu  # an explicit device is never overridden
    assert device.auto_for_work(gpu, "auto", None) == gpu
    cpu = Choice("cpu", "asked for")
    assert device.auto_for_work(cpu, "auto", celeba) == cpu


@pytest.mark.parametrize("request_, gpus, uses_device, expected", [
    (("auto", 0), 0, True, ("cpu", 0, "auto → cpu: the job asks Slurm for no GPU")),
    (("auto", 1), 1, True, ("auto", 1, None)),
    (("cuda", 1), 1, True, ("cuda", 1, None)),
    (("cuda:1", 2), 2, True, ("cuda:1", 2, None)),
    (("cpu", 0), 0, True, ("cpu", 0, None)),
    (("auto", 0), 0, False, ("cpu", 0, None)),
    (("cuda", 0), 0, False, ("cpu", 0, "dfr runs on the CPU whatever the device")),
])
def test_slurm_device_and_gpus_are_reconciled(request_, gpus, uses_device, expected):
    assert device.reconcile_slurm(request_[0], gpus, uses_device, "dfr" if not uses_device else "hsfm") == expected


@pytest.mark.parametrize("request_, gpus, uses_device, message", [
    ("cuda", 0, True, "--device cuda needs 1 GPU\\(s\\) on the node but the job asks Slurm for 0; ask for --gpus 1"),
    ("cuda:1", 1, True, "--device cuda:1 needs 2 GPU\\(s\\)"),
    ("cpu", 2, True, "--device cpu with --gpus 2: the GPU\\(s\\) would sit idle"),
    ("auto", 1, False, "dfr never uses a GPU"),
    ("mps", 0, True, "unknown device 'mps'"),
])
def test_slurm_requests_that_cannot_agree_are_refused_before_submitting(request_, gpus, uses_device, message):
    with pytest.raises(InputError, match=message):
        device.reconcile_slurm(request_, gpus, uses_device, "dfr" if not uses_device else "hsfm")


def test_extraction_workers_follow_the_device_and_the_cores():
    assert device.extraction_workers("cuda", 16) == 8 and device.extraction_workers("cuda", 4) == 3
    assert device.extraction_workers("cuda", 1) == 0 and device.extraction_workers("cpu", 64) == 0
    assert 1 <= device.usable_cpus() <= (__import__("os").cpu_count() or 1)


def test_the_environment_record_names_the_gpu_and_the_builds():
    record = device.environment("cuda:0", facts(gpus=(H100,)), {"matmul": False, "cudnn": True})
    assert record == {"device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3", "gpu_arch": "sm_90", "gpu_memory_gb": 79.6,
                      "torch": "2.14.1+cu130", "cuda": "13.0", "cudnn": 92400, "driver": "580.65",
                      "tf32": {"matmul": False, "cudnn": True}}
    assert device.environment("cpu", facts(gpus=(H100,)), {"matmul": False, "cudnn": True})["gpu"] is None


def test_this_machines_real_facts():
    """The facts of this process's torch, read for real (no GPU here): the launch check refuses CUDA with
    the reason, `auto` takes the CPU, and the encoders' resolve_device goes through the same check."""
    from hsfm_core.features.encoders import resolve_device

    here = device.device_facts()
    assert here.torch == torch.__version__ and here.cuda_build == torch.version.cuda and not here.gpus
    assert device.choose("auto", here).device == "cpu"
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match=f"device '{asked}': "):
            resolve_device(asked)
    assert device.tf32_switches().keys() == {"matmul", "cudnn"}


def test_without_the_probe_the_check_reads_no_kernel_result():
    """`probe=False` (a process that only submits): the same refusals, without a test kernel."""
    assert device.device_facts(None).probes == {}
    with pytest.raises(InputError, match="device 'cuda:2'"):
        device.resolve("cuda:2", probe=False)
    assert device.resolve("auto", probe=False).device == "cpu"


# -- wired in: training, Slurm and local launches, the Retrain page -------------------------------------------------
WATERBIRDS_STEP = (2 * 16 + 2 * 64) * 2048 * 2
CELEBA_STEP = (2 * 1024 + 2 * 256) * 2048 * 2


def test_a_training_run_records_its_device_why_and_where():
    """`training_device`: the launch check, then `auto`'s size rule; the config's device, device_reason and
    environment (GPU model, CUDA, cuDNN, torch, TF32) — on fabricated machines."""
    healthy, tf32 = facts(gpus=(H100,), probes={0: None}), {"matmul": False, "cudnn": True}
    where, record = device.training_device("auto", True, WATERBIRDS_STEP, method="HSFM", facts=healthy, tf32=tf32)
    assert where == torch.device("cpu") and record["device"] == "cpu"
    assert "each HSFM step is 6.6e+05 multiply-adds" in record["device_reason"]
    assert record["environment"]["gpu"] is None and record["environment"]["tf32"] is None
    assert record["environment"]["torch"] == "2.14.1+cu130" and record["environment"]["cuda"] == "13.0"
    where, record = device.training_device("auto", True, CELEBA_STEP, method="HSFM", facts=healthy, tf32=tf32)
    assert where == torch.device("cuda:0") and record["device_reason"].startswith("auto: cuda:0 (NVIDIA H100")
    assert record["environment"] == device.environment("cuda:0", healthy, tf32)
    assert record["environment"]["gpu"] == "NVIDIA H100 80GB HBM3" and record["environment"]["cudnn"] == 92400
    where, _ = device.training_device("cuda", True, WATERBIRDS_STEP, facts=healthy, tf32=tf32)
    assert where == torch.device("cuda:0")  # asked for by name: the size rule never overrides it
    v100 = facts(gpus=(V100,), probes={0: None})
    with pytest.raises(InputError, match="install a torch build compiled for sm_70"):
        device.training_device("cuda", True, CELEBA_STEP, facts=v100)
    with pytest.warns(RuntimeWarning, match="a GPU seems present but is not used: .*sm_70"):
        where, record = device.training_device("auto", True, CELEBA_STEP, facts=v100)
    assert where == torch.device("cpu") and "sm_70" in record["device_reason"]
    with pytest.raises(InputError, match=r"cuda:1 asked for, but this process sees 1 GPU"):
        device.training_device("cuda:1", True, None, facts=healthy)


def test_a_method_without_a_device_and_a_reconciled_request_say_why_they_run_on_the_cpu():
    healthy = facts(gpus=(H100,), probes={0: None})
    where, record = device.training_device("cuda:3", False, None, method="DFR", facts=healthy)
    assert where == torch.device("cpu") and record["device_reason"] == "DFR never uses a device: it computes on the CPU"
    note = "auto → cpu: the job asks Slurm for no GPU"
    assert device.training_device("cpu", True, None, note=note, facts=healthy)[1]["device_reason"] == note
    assert device.training_device("cpu", True, None, facts=healthy)[1]["device_reason"] == "asked for"


def test_this_machines_training_device():
    where, record = device.training_device("auto", True, CELEBA_STEP, method="HSFM")
    assert where == torch.device("cpu") and record["environment"]["torch"] == torch.__version__
    assert record["device_reason"].startswith("auto: CPU, because")
    with pytest.raises(InputError, match="device 'cuda'"):
        device.training_device("cuda", True, None)
    assert device.may_probe()  # a test process is not the app's server


def test_the_apps_server_never_runs_the_test_kernel():
    """Inside a Streamlit app (AppTest runs one) `may_probe` is False: the server holds no CUDA context."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string("import streamlit as st\nfrom hsfm_core.device import may_probe\n"
                             "st.write(f'probe {may_probe()}')").run()
    assert not at.exception and [m.value for m in at.markdown] == ["probe False"]
    assert device.may_probe()


def test_hsfm_step_work_is_the_size_auto_weighs():
    from hsfm_core.methods.base import Method
    from hsfm_core.methods.hsfm import METHOD, PRESETS

    assert METHOD.work_per_step(2, 2048, PRESETS["waterbirds"]) == WATERBIRDS_STEP
    assert METHOD.work_per_step(2, 2048, PRESETS["celeba"]) == CELEBA_STEP
    assert WATERBIRDS_STEP < GPU_MIN_STEP_WORK <= CELEBA_STEP
    assert Method.step_work(METHOD, None, PRESETS["waterbirds"]) is None  # the default: unknown


def test_hsfm_step_work_on_a_store(tmp_path):
    from hsfm_core.methods.hsfm import METHOD, PRESETS
    from tests.gaussian import gaussian_workspace

    store = gaussian_workspace(tmp_path / "ws")
    assert METHOD.step_work(store, PRESETS["waterbirds"]) == (2 * 16 + 2 * 64) * store.dim * 2


SLURM = {"partition": "gpu", "time_min": 30}


def test_slurm_requests_are_reconciled_when_they_are_made():
    """`TrainSpec.create` (the CLI's, the Retrain page's and every sweep configuration's request): a Slurm
    request's device and GPUs agree before anything is queued."""
    from hsfm_core.spec import TrainSpec

    auto = TrainSpec.create("hsfm", executor="slurm", slurm={**SLURM, "gpus": 0})
    assert (auto.device, auto.slurm.gpus, auto.device_note) == ("cpu", 0, "auto → cpu: the job asks Slurm for no GPU")
    assert TrainSpec.from_dict(auto.to_dict()) == auto  # the note travels with the request (job.json, the worker)
    gpu = TrainSpec.create("hsfm", device="cuda", executor="slurm", slurm={**SLURM, "gpus": 1})
    assert (gpu.device, gpu.slurm.gpus, gpu.device_note) == ("cuda", 1, None)
    assert TrainSpec.create("hsfm", device="auto", executor="slurm", slurm={**SLURM, "gpus": 2}).device == "auto"
    dfr = TrainSpec.create("dfr", device="cuda", executor="slurm", slurm=SLURM)
    assert (dfr.device, dfr.device_note) == ("cpu", "dfr runs on the CPU whatever the device")
    for method, asked, gpus, message in [
        ("hsfm", "cuda", 0, "--device cuda needs 1 GPU\\(s\\) on the node but the job asks Slurm for 0; ask for --gpus 1"),
        ("hsfm", "cuda:1", 1, "--device cuda:1 needs 2 GPU\\(s\\)"),
        ("hsfm", "cpu", 1, "--device cpu with --gpus 1"),
        ("dfr", "auto", 1, "dfr never uses a GPU"),
        ("erm", "cpu", 4, "erm never uses a GPU"),
    ]:
        with pytest.raises(InputError, match=message):
            TrainSpec.create(method, device=asked, executor="slurm", slurm={**SLURM, "gpus": gpus})
    assert TrainSpec.create("hsfm", device="cuda:7").device == "cuda:7"  # local: checked at launch, on this machine
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        TrainSpec.create("hsfm", device="gpu")


def test_a_slurm_job_that_cannot_get_its_device_is_refused_before_it_is_queued(tmp_path):
    """`jobs.launch` and `launch_array` check a request that skipped `create`, and sweeps check every
    configuration: nothing is registered, nothing reaches sbatch."""
    from hsfm_core import jobs, sweeps
    from hsfm_core.spec import SlurmOptions, TrainSpec
    from tests.gaussian import gaussian_workspace

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    unchecked = TrainSpec("hsfm", device="cuda", executor="slurm", slurm=SlurmOptions("gpu", gpus=0))
    with pytest.raises(InputError, match="--device cuda needs 1 GPU"):
        jobs.launch(ws, unchecked)
    with pytest.raises(InputError, match="--device cuda needs 1 GPU"):
        jobs.launch_array(ws, [(unchecked, "run-a")])
    request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", ["alpha=1e-4,2e-4"]), seeds=(0,),
                                  device="cuda", executor="slurm", slurm={**SLURM, "gpus": 0})
    with pytest.raises(InputError, match="--device cuda needs 1 GPU"):
        sweeps.check(ws, request)
    with pytest.raises(InputError, match="dfr never uses a GPU"):
        sweeps.check(ws, sweeps.SweepRequest(method="dfr", grid=sweeps.parse_grid("dfr", ["n_refits=2,4"]), seeds=(0,),
                                             executor="slurm",
                                             slurm={**SLURM, "gpus": 1}))
    assert jobs.list_jobs(ws) == [] and not (ws / "sweeps").exists()


def test_a_slurm_job_with_auto_and_no_gpu_is_queued_for_the_cpu(tmp_path, monkeypatch):
    """The reconciled request is the one recorded and submitted (sbatch faked: it records its script)."""
    from hsfm_core import jobs
    from hsfm_core.spec import TrainSpec
    from tests.gaussian import gaussian_workspace

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"sbatch": "echo 'Submitted batch job 77'", "sinfo": "echo gpu", "srun": "exit 0",
                       "squeue": "echo 'PENDING|Priority'"}.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    record = jobs.launch(ws, TrainSpec("hsfm", executor="slurm", slurm=TrainSpec.create(
        "hsfm", executor="slurm", slurm={**SLURM, "gpus": 0}).slurm))
    assert record["spec"]["device"] == "cpu" and record["spec"]["device_note"].startswith("auto → cpu")
    script = (Path(record["submitit_folder"]) / "77_submission.sh").read_text()
    assert "--gpus" not in script and "#SBATCH --partition=gpu" in script


def test_a_local_launch_checks_the_device_on_this_machine(tmp_path):
    """cuda:1 (no GPU here at all) is refused at launch, with the reason, before the job is registered; a method
    that never uses a device is not checked (it trains on the CPU whatever the request says)."""
    from hsfm_core import jobs
    from hsfm_core.spec import TrainSpec
    from tests.gaussian import gaussian_workspace

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    for probe in (True, False, None):
        with pytest.raises(InputError, match="device 'cuda:1': "):
            jobs.launch(ws, TrainSpec.create("hsfm", device="cuda:1"), probe=probe)
    assert jobs.list_jobs(ws) == []
    assert TrainSpec.create("dfr", device="cuda:1").check_device_here() is None
    assert TrainSpec.create("hsfm", device="auto").check_device_here().device == "cpu"
    assert TrainSpec.create("hsfm", device="cuda", executor="slurm",
                            slurm={**SLURM, "gpus": 1}).check_device_here() is None  # the node's, not ours


def test_a_local_sweep_checks_the_device_once_before_anything_is_written(tmp_path):
    """A local sweep with cuda:1 (no such GPU here) is refused by `sweeps.check`, before its folder exists, in
    the foreground and the background alike: not once in every worker."""
    from hsfm_core import sweeps
    from tests.gaussian import gaussian_workspace

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    request = sweeps.SweepRequest(method="hsfm", grid=sweeps.parse_grid("hsfm", ["alpha=1e-3,1e-2"]), seeds=(0,),
                                  overrides=("E=2", "K_H=2", "T=2", "n=4", "K_hard=8"), device="cuda:1")
    for start in (sweeps.run, sweeps.submit):
        with pytest.raises(InputError, match="device 'cuda:1': "):
            start(ws, request)
    assert not (ws / "sweeps").exists() or not any((ws / "sweeps").iterdir())


def test_the_retrain_page_offers_no_device_or_gpu_to_a_method_that_never_uses_one(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from hsfm_core import jobs
    from tests.gaussian import gaussian_workspace
    from tests.test_pages import APP

    ws = tmp_path / "ws"
    gaussian_workspace(ws)
    monkeypatch.setenv("HSFM_WORKSPACE", str(ws))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/5_Retrain.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="retrain.method").set_value("dfr").run()
    assert at.radio(key="retrain.device").disabled
    gpus = at.number_input(key="retrain.gpus.none")
    assert gpus.disabled and gpus.value == 0 and "DFR never uses a device" in gpus.help
    assert any("DFR never uses a device" in c.value for c in at.caption)
    at.selectbox(key="retrain.method").set_value("hsfm").run()
    assert not at.radio(key="retrain.device").disabled and not at.number_input(key="retrain.gpus").disabled
    at.radio(key="retrain.device").set_value("cuda")
    at.radio(key="retrain.where").set_value("a Slurm cluster")
    at.text_input(key="retrain.partition").set_value("gpu")
    at.number_input(key="retrain.gpus").set_value(0)
    next(b for b in at.get("form_submit_button") if b.label == "Launch run").click().run()
    assert not at.exception, at.exception
    assert any("--device cuda needs 1 GPU(s) on the node but the job asks Slurm for 0" in e.value for e in at.error)
    assert jobs.list_jobs(ws) == []
