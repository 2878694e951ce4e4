"""Epoch checkpoints of a trial (weights, optimizer state, epoch and history), so a trial whose
worker died is retried from its last checkpointed epoch instead of epoch 0.

A checkpoint is a folder per saved epoch plus a `latest` file naming it, replaced atomically:
a worker killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np


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
    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: int = 0  # epochs done, as of the last save or restore

    @classmethod
    def of_trial(cls, storage: str, study: str, number: int, every_s: float) -> Checkpoint:
        return cls(study_folder(storage, study) / f"t{number:04d}", every_s)

    def exists(self) -> bool:
        return (self.folder / "latest").is_file()

    def restore(self, model: keras.Model) -> int:
        """Load the latest checkpoint into a compiled `model`; returns the epochs done."""
        saved = self.folder / (self.folder / "latest").read_text().strip()
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
        self.history, self.epoch = state["history"], state["epoch"]
        return self.epoch

    def save(self, model: keras.Model, epoch: int, logs: Mapping[str, float]) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.epoch = epoch
        target = self.folder / f"epoch-{epoch:04d}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        model.save_weights(target / "model.weights.h5")
        np.savez(target / "optimizer.npz", *[v.numpy() for v in model.optimizer.variables])
        (target / "state.json").write_text(json.dumps({"epoch": epoch, "history": self.history}))
        pointer = self.folder / "latest.tmp"
        pointer.write_text(target.name)
        os.replace(pointer, self.folder / "latest")  # the checkpoint switches in one step
        for old in self.folder.glob("epoch-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def callback(self) -> keras.callbacks.Callback:
        return _Saver(self)


class _Saver(keras.callbacks.Callback):
    def __init__(self, checkpoint: Checkpoint):
        super().__init__()
        self.checkpoint = checkpoint
        self.last = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if time.monotonic() - self.last >= self.checkpoint.every_s:
            self.checkpoint.save(self.model, epoch + 1, logs or {})
            self.last = time.monotonic()
        else:  # not saved this epoch, but the next save carries its metrics
            for key, value in (logs or {}).items():
                self.checkpoint.history.setdefault(key, []).append(float(value))
