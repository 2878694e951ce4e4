"""One worker process over a long study: what it keeps in memory, and when it starts afresh.

TensorFlow keeps a little of every trial after `clear_session`; over hundreds of trials that
slows the garbage collector (`FreezeSurvivors`) and grows the process (`MemoryGuard`), until the
worker restarts itself between trials (`restart`) and carries on with the same study.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import psutil

RESTART = 75  # `medtune tune` asks its caller to restart this process (see MemoryGuard)
WORKER_ENV = "MEDTUNE_WORKER"  # set in the processes `--workers N` starts
STARTED_ENV = "MEDTUNE_STARTED"  # when a restarted worker first started (its timeout counts on)
PROCESS_STARTED = time.time()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """What is alive now (modules, data, storage) lives as long as the study: keep it out of
    the collection each trial ends with, which then takes milliseconds instead of seconds."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class FreezeSurvivors:
    """Keep what outlived a trial out of later trials' collections. TensorFlow keeps each
    trial's traced functions after `clear_session` (see MemoryGuard); scanned again by every
    later collection, they made the one per trial grow from 0.05 to 1.3 s over 200 trials.
    Frozen, a collection scans one trial's objects. What is frozen and only later becomes
    garbage stays until a full collection: every `every` trials (and at the study's end) all
    is unfrozen and collected once, which bounds that memory to a few trials' worth."""

    def __init__(self, every: int = 20):
        self.every, self.trials = every, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.trials += 1
        if self.trials % self.every == 0:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)  # young garbage is not frozen
        gc.freeze()


def _started(pid: int) -> float | None:
    """When the process started (seconds since the epoch), which tells a reused pid apart; None:
    no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


# This process's own id, read once: the start time psutil derives moves with the wall clock
# (an NTP step), and a process must always recognise its own trials.
_OWN: dict[int, str] = {}
SAME_START_S = 1.0  # start times this close are one process (a reused pid starts later)


def owner_id(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    if pid == os.getpid() and pid in _OWN:
        return _OWN[pid]
    started = _started(pid)
    owner = f"{socket.gethostname()}:{pid}:{'' if started is None else f'{started:.2f}'}"
    if pid == os.getpid():
        _OWN[pid] = owner
    return owner


def owner_alive(owner: str) -> bool | None:
    """False when the owner ran on this host and is gone; None when this host cannot tell."""
    host, pid, started = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return None  # another machine's worker: the heartbeat decides
    now = _started(int(pid))
    try:
        return now is not None and abs(now - float(started)) < SAME_START_S
    except ValueError:  # no start time recorded
        return False


def resident_mb() -> float:
    """This process's resident memory in MB."""
    return psutil.Process().memory_info().rss / 2**20


class MemoryGuard:
    """Stops the worker's study loop once its memory has grown by `limit_mb` since its first
    trial, so the worker can restart itself and carry on with fresh memory.

    Keras 3 on TensorFlow keeps a few MB per `fit` even after `clear_session()` and `gc`
    (keras-team/keras#17458, #20552; measured here: 5 MB per trial for a tiny model, 11 MB for a
    LeNet trial), which over hundreds of trials is an out-of-memory crash.
    """

    def __init__(self, limit_mb: float):
        self.limit_mb = limit_mb
        self.first: float | None = None
        self.exceeded: str | None = None  # why the worker should restart

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        now = resident_mb()
        if not self.limit_mb:
            return
        if self.first is None:
            self.first = now
        elif now - self.first > self.limit_mb:
            self.exceeded = (f"worker memory grew from {self.first:.0f} MB to {now:.0f} MB "
                             f"(limit +{self.limit_mb:.0f} MB, [recovery] restart_after_growth_mb)")
            study.stop()


def restart(argv: list[str]) -> None:
    """Replace this process with a fresh one running the same command (same pid, so the
    trials it owns stay its own), remembering when the first one started."""
    os.environ.setdefault(STARTED_ENV, str(PROCESS_STARTED))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "search.cli", *argv])


def seconds_since_start() -> float:
    """Wall time since this command started, across the worker's restarts."""
    return time.time() - float(os.environ.get(STARTED_ENV, PROCESS_STARTED))


def timeout_left(timeout: float | None) -> float | None:
    """A restarted worker keeps its first start's deadline."""
    if not timeout or STARTED_ENV not in os.environ:
        return timeout
    return max(1.0, timeout - (time.time() - float(os.environ[STARTED_ENV])))


def worker_argv(argv: list[str]) -> list[str]:
    """This command without --workers, --gpus and --refit-epochs: what each worker runs (the
    refit, like the finalists' re-check, runs once, in this process, when the workers are
    done)."""
    flags = ("--workers", "--gpus", "--refit-epochs")
    return [a for i, a in enumerate(argv)
            if a not in flags and (i == 0 or argv[i - 1] not in flags)
            and not a.startswith(tuple(f"{f}=" for f in flags))]


def run_workers(envs: list[dict[str, str]], argv: list[str]) -> int:
    """Start one process of this same command per environment of `envs` (each worker's, which
    sees only its GPU: `devices.worker_envs`); wait; count failures."""
    command = [sys.executable, "-m", "search.cli", *worker_argv(argv)]
    workers = [subprocess.Popen(command, env=env) for env in envs]
    print(f"medtune: {len(workers)} workers started (pids "
          f"{', '.join(str(w.pid) for w in workers)})", flush=True)
    return sum(w.wait() != 0 for w in workers)
