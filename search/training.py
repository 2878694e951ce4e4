"""Compiling and fitting one trial's model: the Keras side of a trial, no tracking in here."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import keras
from tqdm import tqdm

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


class TrialFailed(RuntimeError):
    """A trial that cannot give a value (e.g. its loss diverged); the message says why."""


def compile_model(model: keras.Model, config: Mapping, loss, metrics: list) -> None:
    try:
        optimizer = OPTIMIZERS[config["optimizer"]](learning_rate=config["learning_rate"])
    except KeyError:
        raise ValueError(
            f"unknown optimizer {config['optimizer']!r}; choose one of: {', '.join(OPTIMIZERS)}"
        ) from None
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


@contextmanager
def fresh_keras_session() -> Iterator[None]:
    """Free the trial's graph and tensors when it ends, so memory stays flat over a study."""
    try:
        yield
    finally:
        keras.backend.clear_session()
        gc.collect()


def best_epoch(values: list[float]) -> tuple[float, int]:
    """(best value, its 1-based epoch) of a maximized metric; the first epoch wins ties."""
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    return float(values[best]), best + 1


def check_finite(history: Mapping[str, list[float]]) -> None:
    for name, values in history.items():
        for epoch, value in enumerate(values, start=1):
            if value != value or value in (float("inf"), float("-inf")):
                raise TrialFailed(
                    f"{name} became {value} at epoch {epoch}: training diverged "
                    "(try a lower learning rate)"
                )


class EpochLines(keras.callbacks.Callback):
    """One line per epoch, written above Optuna's progress bar instead of through it."""

    def __init__(self, prefix: str, epochs: int):
        super().__init__()
        self.prefix = prefix
        self.epochs = epochs

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        values = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        seconds = time.monotonic() - self.started
        tqdm.write(f"{self.prefix} epoch {epoch + 1}/{self.epochs}  {values}  ({seconds:.1f} s)")
