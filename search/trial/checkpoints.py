"""Epoch checkpoints of a trial (weights, optimizer state, epoch, history and the best epoch's
weights), so a trial whose worker died is retried from its last checkpointed epoch instead of
epoch 0, and still ends on its best epoch's weights.

A checkpoint is a folder per saved epoch plus a `latest` file naming it, replaced atomically:
a worker killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from search.trial.training import EarlierTraining, best_epoch


def checkpoint_root() -> Path:
    return Path(os.environ.get("MEDTUNE_CHECKPOINTS", Path(".medtune") / "checkpoints"))


def study_folder(storage: str, study: str) -> Path:
    # Studies of the same name in different storages must not share checkpoints.
    where = hashlib.sha1(storage.encode()).hexdigest()[:8]
    return checkpoint_root() / f"{study}-{where}"


@dataclass
class Checkpoint:
    """The checkpoints of one trial (and of its retries, which share its folder)."""

    folder: Path
    every_s: float = 60.0  # save at the end of an epoch once this long has passed since the last

    @classmethod
    def of_trial(cls, storage: str, study: str, number: int, every_s: float) -> Checkpoint:
        return cls(study_folder(storage, study) / f"t{number:04d}", every_s)

    def exists(self) -> bool:
        return (self.folder / "latest").is_file()

    def restore(self, model: keras.Model) -> EarlierTraining:
        """Load the latest checkpoint into a compiled `model`; returns the epochs done, their
        history and the best epoch's weights."""
        saved = self._latest()
        state = json.loads((saved / "state.json").read_text())
        model.load_weights(saved / "model.weights.h5")
        optimizer = model.optimizer
        optimizer.build(model.trainable_variables)
        with np.load(saved / "optimizer.npz") as arrays:
            values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        if len(values) != len(optimizer.variables):
            raise ValueError(f"checkpoint {saved} does not fit this model's optimizer")
        for variable, value in zip(optimizer.variables, values, strict=True):
            variable.assign(value)
        best = None
        if (saved / "best.npz").is_file():
            with np.load(saved / "best.npz") as arrays:
                best = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        return EarlierTraining(state["epoch"], state["history"], best)

    def _latest(self) -> Path:
        return self.folder / (self.folder / "latest").read_text().strip()

    def save(self, model: keras.Model, epoch: int, history: Mapping[str, list[float]],
             best_weights: list[np.ndarray] | None = None) -> None:
        """Save epoch `epoch`; `best_weights` are the best epoch's, None when the best epoch is
        one the previous checkpoint already holds (it is carried over)."""
        target = self.folder / f"epoch-{epoch:04d}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        model.save_weights(target / "model.weights.h5")
        np.savez(target / "optimizer.npz", *[v.numpy() for v in model.optimizer.variables])
        if best_weights is not None:
            np.savez(target / "best.npz", *best_weights)
        elif self.exists() and (self._latest() / "best.npz").is_file():
            shutil.copy2(self._latest() / "best.npz", target / "best.npz")
        (target / "state.json").write_text(json.dumps({"epoch": epoch, "history": dict(history)}))
        pointer = self.folder / "latest.tmp"
        pointer.write_text(target.name)
        os.replace(pointer, self.folder / "latest")  # the checkpoint switches in one step
        for old in self.folder.glob("epoch-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @contextmanager
    def removed_unless_interrupted(self) -> Iterator[None]:
        """Removed when the trial ends, however it ends, except by Ctrl-C: that trial is
        retried on the next run from here (as is one whose worker was killed)."""
        interrupted = False
        try:
            yield
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if not interrupted:
                self.remove()

    def callback(self, history: Mapping[str, list[float]], monitor: str
                 ) -> keras.callbacks.Callback:
        """Saves every `every_s` seconds, at an epoch's end, with the trial's `history` (which
        must already hold that epoch: put this callback after the trial's history) and the
        weights of the epoch best on `monitor`."""
        return _Saver(self, history, monitor)


class _Saver(keras.callbacks.Callback):
    def __init__(self, checkpoint: Checkpoint, history: Mapping[str, list[float]], monitor: str):
        super().__init__()
        self.checkpoint, self.history, self.monitor = checkpoint, history, monitor
        self.best_weights: list[np.ndarray] | None = None  # since the last save
        self.last = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        values = self.history.get(self.monitor)
        if values and best_epoch(values)[1] == len(values):  # this epoch is the best so far
            self.best_weights = self.model.get_weights()  # as early stopping keeps them
        if time.monotonic() - self.last >= self.checkpoint.every_s:
            self.checkpoint.save(self.model, epoch + 1, self.history, self.best_weights)
            self.best_weights = None
            self.last = time.monotonic()
