"""Which devices a study trains on, and which GPU each worker gets.

The machine's GPUs are counted with `nvidia-smi` (no TensorFlow, so the process that starts
several workers holds no GPU), and listed as TensorFlow sees them for the banner and the trial
runs' device tag: a CPU build of TensorFlow on a GPU machine trains on the CPU, and says so.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

from search.runtime.worker import WORKER_ENV

VISIBLE = "CUDA_VISIBLE_DEVICES"
# The environment each process starts with, unless the user set these already: CUDA numbers
# GPUs as nvidia-smi does (fastest-first otherwise), and TensorFlow takes GPU memory as it needs
# it instead of all of it, so several workers can share one GPU.
GPU_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
INSTALL_HINT = "pip install -r requirements-gpu.txt && pip install --no-deps -e . (README: GPU)"


@dataclass(frozen=True)
class Gpu:
    index: str  # as CUDA_VISIBLE_DEVICES and nvidia-smi name it
    name: str
    memory_mib: int | None = None

    def __str__(self) -> str:
        memory = f", {self.memory_mib / 1024:.0f} GiB" if self.memory_mib else ""
        return f"GPU {self.index} ({self.name}{memory})"


def nvidia_smi() -> str:
    """`index, name, memory.total` of each GPU as CSV lines; "" where there is no driver."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def machine_gpus(query: Callable[[], str] = nvidia_smi) -> list[Gpu]:
    """Every GPU of this machine (nvidia-smi ignores CUDA_VISIBLE_DEVICES)."""
    gpus = []
    for line in query().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            memory = parts[2] if len(parts) > 2 else ""
            gpus.append(Gpu(parts[0], parts[1], int(memory) if memory.isdigit() else None))
    return gpus


def visible_ids(env: MutableMapping[str, str]) -> list[str] | None:
    """The GPU ids CUDA_VISIBLE_DEVICES allows (a scheduler's choice), or None when unset.
    CUDA stops at the first invalid id, as "-1" is by convention."""
    if VISIBLE not in env:
        return None
    ids = []
    for item in env[VISIBLE].split(","):
        if not item.strip() or item.strip() == "-1":
            break
        ids.append(item.strip())
    return ids


def available_gpus(env: MutableMapping[str, str] | None = None,
                   query: Callable[[], str] = nvidia_smi) -> list[str]:
    """GPU ids workers may use: those CUDA_VISIBLE_DEVICES names, else all that nvidia-smi lists."""
    visible = visible_ids(os.environ if env is None else env)
    return visible if visible is not None else [g.index for g in machine_gpus(query)]


def parse_gpus(text: str | None) -> list[str] | None:
    """`--gpus 0,2` -> ["0", "2"]; None or "" -> None (every available GPU)."""
    if not text:
        return None
    ids = [g.strip() for g in text.replace(" ", ",").split(",") if g.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text}: a GPU is named twice")
    return ids or None


def assign_gpus(workers: int | None, chosen: Sequence[str] | None,
                available: Sequence[str]) -> list[str | None]:
    """The GPU each worker sees, one entry per worker; None: leave its devices as they are.

    `workers` None ("auto") is one worker per GPU (1 without GPUs); otherwise the workers take
    the chosen (else the available) GPUs round-robin. One worker with no GPU chosen keeps every
    device, as TensorFlow's default does.
    """
    if chosen:
        if not available:
            raise ValueError(f"--gpus {','.join(chosen)}: this machine has no GPU that "
                             "nvidia-smi lists (or CUDA_VISIBLE_DEVICES allows)")
        unknown = [g for g in chosen if g not in available]
        if unknown:
            raise ValueError(f"--gpus: no GPU {', '.join(unknown)} here; the GPUs are "
                             f"{', '.join(available)}")
    pool = list(chosen or available)
    n = (len(pool) or 1) if workers is None else workers
    if n < 1:
        raise ValueError(f"--workers {workers}: give at least 1, or auto")
    if not pool or (n == 1 and not chosen):
        return [None] * n
    return [pool[i % len(pool)] for i in range(n)]


def prepare_gpus(env: MutableMapping[str, str] | None = None) -> None:
    """Before TensorFlow first touches a GPU: PCI order and memory growth for this process and
    the workers it starts (the environment), and memory growth through TensorFlow's API."""
    env = os.environ if env is None else env
    for name, value in GPU_ENV.items():
        env.setdefault(name, value)
    if env is not os.environ:
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        # Raises once TensorFlow has initialized the GPU: the environment applied by then.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)


def tensorflow_gpus(query: Callable[[], str] = nvidia_smi) -> list[Gpu]:
    """The GPUs this process's TensorFlow trains on, by their machine index, with memory."""
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    if not found:
        return []
    visible = visible_ids(os.environ)
    memory = {g.index: g for g in machine_gpus(query)}
    gpus = []
    for i, device in enumerate(found):
        index = visible[i] if visible and i < len(visible) else str(i)
        name = tf.config.experimental.get_device_details(device).get("device_name")
        known = memory.get(index)
        gpus.append(Gpu(index, name or (known.name if known else device.name),
                        known.memory_mib if known else None))
    return gpus


@functools.cache
def device_tag() -> str:
    """What this process's trials train on, for each trial run's `device` tag:
    "GPU 2 (NVIDIA H200, 140 GiB)" (Keras places a model on the first visible GPU) or "CPU"."""
    gpus = tensorflow_gpus()
    return str(gpus[0]) if gpus else "CPU"


def banner_line(assignment: Sequence[str | None], query: Callable[[], str] = nvidia_smi,
                gpus: Sequence[Gpu] | None = None) -> str:
    """The `tune` banner's line: the devices TensorFlow trains on, and each worker's GPU.
    Warns when the machine has GPUs that this TensorFlow (a CPU build) cannot use."""
    gpus = tensorflow_gpus(query) if gpus is None else gpus
    if gpus:
        line = f"devices: {', '.join(str(g) for g in gpus)}"
    else:
        line = "devices: CPU"
        machine = machine_gpus(query)
        if machine and visible_ids(os.environ) != []:  # not hidden on purpose
            line += (f" -- this machine has {len(machine)} GPU(s) ({machine[0].name}) that this "
                     f"TensorFlow cannot use; for the GPU build: {INSTALL_HINT}")
    if len(assignment) > 1 and any(g is not None for g in assignment):
        line += f"; {len(assignment)} workers on GPU {', '.join(str(g) for g in assignment)}"
    return line


def plan_gpus(workers: int | None, gpus: str | None) -> list[str | None]:
    """Each worker's GPU (None: its devices as they are) for `--workers` and `--gpus`; as many
    as there will be workers. One worker runs in this process, which then sees only its GPU
    (before TensorFlow uses one)."""
    chosen = parse_gpus(gpus)
    available = available_gpus() if chosen or workers != 1 else []
    planned = assign_gpus(workers, chosen, available)
    if len(planned) == 1 and planned[0] is not None:
        os.environ[VISIBLE] = planned[0]
    prepare_gpus()
    return planned


def device_line(gpus: list[str | None], precision: str) -> str:
    return banner_line(gpus) + ("" if precision == "float32" else f", precision {precision}")


def worker_envs(gpus: list[str | None], base: dict[str, str]) -> list[dict[str, str]]:
    """The environment of each worker: its number, and only its GPU visible when it has one."""
    return [{**GPU_ENV, **base, WORKER_ENV: str(i), **({VISIBLE: gpu} if gpu is not None else {})}
            for i, gpu in enumerate(gpus)]
