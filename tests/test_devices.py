"""Devices without a GPU: nvidia-smi's listing is injected, and the workers' environments are
built without starting a worker."""

from pathlib import Path

import pytest

from search import cli
from search.runtime import devices, worker

REPO = Path(__file__).resolve().parents[1]
TWO_GPUS = "0, NVIDIA H200, 143771\n1, NVIDIA H200, 143771\n"


def smi(text: str = TWO_GPUS):
    return lambda: text


def test_machine_gpus_read_nvidia_smi():
    assert devices.machine_gpus(smi()) == [devices.Gpu("0", "NVIDIA H200", 143771),
                                           devices.Gpu("1", "NVIDIA H200", 143771)]
    assert devices.machine_gpus(smi("")) == []
    assert str(devices.Gpu("2", "NVIDIA H200", 143771)) == "GPU 2 (NVIDIA H200, 140 GiB)"


@pytest.mark.parametrize("env,expected", [
    ({}, ["0", "1"]),                                   # all that nvidia-smi lists
    ({"CUDA_VISIBLE_DEVICES": "1"}, ["1"]),             # a scheduler's choice wins
    ({"CUDA_VISIBLE_DEVICES": "0, 1"}, ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),                 # hidden on purpose
    ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
])
def test_available_gpus(env, expected):
    assert devices.available_gpus(env, smi()) == expected


@pytest.mark.parametrize("workers,chosen,available,expected", [
    (None, None, ["0", "1"], ["0", "1"]),               # auto: one worker per GPU
    (None, None, [], [None]),                           # auto on a CPU machine: one worker
    (None, ["0", "2"], ["0", "1", "2"], ["0", "2"]),
    (3, ["0", "2"], ["0", "1", "2"], ["0", "2", "0"]),  # round-robin over the chosen GPUs
    (4, None, ["0", "1"], ["0", "1", "0", "1"]),
    (2, None, [], [None, None]),                        # CPU workers
    (1, None, ["0", "1"], [None]),                      # one worker keeps TensorFlow's default
    (1, ["1"], ["0", "1"], ["1"]),
])
def test_assign_gpus(workers, chosen, available, expected):
    assert devices.assign_gpus(workers, chosen, available) == expected


@pytest.mark.parametrize("workers,chosen,available,message", [
    (None, ["3"], ["0", "1"], "no GPU 3 here; the GPUs are 0, 1"),
    (2, ["0"], [], "this machine has no GPU"),
    (0, None, [], "give at least 1, or auto"),
])
def test_assign_gpus_refuses_what_cannot_run(workers, chosen, available, message):
    with pytest.raises(ValueError, match=message):
        devices.assign_gpus(workers, chosen, available)


def test_gpus_and_workers_arguments():
    assert devices.parse_gpus("0,2") == ["0", "2"] and devices.parse_gpus("") is None
    with pytest.raises(ValueError, match="named twice"):
        devices.parse_gpus("1,1")
    tune = ["tune", "--task", "vgg_skin"]
    args = cli.parser().parse_args([*tune, "--workers", "auto", "--gpus", "0,2"])
    assert args.workers is None and args.gpus == "0,2"
    args = cli.parser().parse_args([*tune, "--workers", "2", "--gpus", ""])  # as MLproject
    assert args.workers == 2 and args.gpus is None
    assert cli.parser().parse_args(tune).workers == 1


def test_each_worker_sees_only_its_gpu():
    base = {"PATH": "/bin", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    envs = devices.worker_envs(["0", "2", "0"], base)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "2", "0"]
    assert [e[worker.WORKER_ENV] for e in envs] == ["0", "1", "2"]
    assert all(e["PATH"] == "/bin" and e["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for e in envs)
    assert envs[0]["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"  # the user's setting stays
    (cpu,) = devices.worker_envs([None], base)
    assert "CUDA_VISIBLE_DEVICES" not in cpu and cpu[worker.WORKER_ENV] == "0"


def test_workers_run_the_command_without_workers_gpus_and_the_refit():
    argv = ["tune", "--task", "vgg_skin", "--workers", "auto", "--gpus", "0,2", "--seed", "1",
            "--workers=3", "--gpus=", "--finalists", "3", "--refit-epochs=9"]
    # The refit runs once, in the command's own process, after the workers; the workers keep
    # --finalists, to keep their epochs in the budget, and leave the re-check to it.
    assert worker.worker_argv(argv) == ["tune", "--task", "vgg_skin", "--seed", "1",
                                      "--finalists", "3"]


def test_plan_gpus_resolves_auto_and_restricts_a_single_worker(monkeypatch):
    monkeypatch.setattr(devices, "available_gpus", lambda: ["0", "1", "2"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.plan_gpus(None, "0,2") == ["0", "2"]
    import os

    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the workers get theirs
    assert devices.plan_gpus(1, "2") == ["2"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.plan_gpus(None, None) == ["0", "1", "2"]


def test_banner_line_says_where_the_study_trains(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = devices.machine_gpus(smi())
    assert devices.banner_line([None], gpus=gpus[:1]) == \
        "devices: GPU 0 (NVIDIA H200, 140 GiB)"
    assert devices.banner_line(["0", "1"], gpus=gpus).endswith("; 2 workers on GPU 0, 1")
    assert devices.banner_line([None], smi(""), gpus=[]) == "devices: CPU"
    # A GPU machine with TensorFlow's CPU build: trains on the CPU, and says how to change it.
    warned = devices.banner_line([None], smi(), gpus=[])
    assert warned.startswith("devices: CPU -- this machine has 2 GPU(s) (NVIDIA H200)")
    assert "requirements-gpu.txt" in warned
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden on purpose: no warning
    assert devices.banner_line([None], smi(), gpus=[]) == "devices: CPU"


def test_device_tag_on_this_machine():
    """CI machines have no GPU (and tensorflow-cpu): trials are tagged CPU."""
    import tensorflow as tf

    expected = "CPU" if not tf.config.list_physical_devices("GPU") else "GPU "
    assert devices.device_tag().startswith(expected)


def test_gpu_requirements_are_the_cpu_pins_with_tensorflows_cuda_build():
    def pins(name: str) -> list[str]:
        lines = (REPO / name).read_text().splitlines()
        return [line for line in lines if line.strip() and not line.startswith("#")]

    cpu, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
    (tf_cpu,) = [p for p in cpu if p.startswith("tensorflow-cpu==")]
    version = tf_cpu.split("==")[1]
    # The GPU stack adds only the driver's metrics library (GPU system metrics in MLflow).
    assert gpu == [f"tensorflow[and-cuda]=={version}" if p == tf_cpu else p for p in cpu] + [
        "nvidia-ml-py==13.615.71"]
