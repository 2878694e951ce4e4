"""Compiling and fitting one trial's model: the Keras side of a trial, no tracking in here."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from models import build_model, settings_from
from search.outcomes import TrialFailed
from search.spec.consumers import PRECISIONS

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


@dataclass
class EarlierTraining:
    """What a trial continues from: the epochs already trained and, from a checkpoint, their
    history and the best of them's weights (a promotion or a refit starts from weights alone)."""

    epochs: int
    history: Mapping[str, list[float]] = field(default_factory=dict)
    best_weights: list[np.ndarray] | None = None


def compile_model(model: keras.Model, config: Mapping, loss, metrics: list) -> None:
    try:
        optimizer = OPTIMIZERS[config["optimizer"]](learning_rate=config["learning_rate"])
    except KeyError:
        raise ValueError(
            f"unknown optimizer {config['optimizer']!r}; choose one of: {', '.join(OPTIMIZERS)}"
        ) from None
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def compiled_model(spec, problem, config: Mapping) -> keras.Model:
    """The configuration's model, built in the study's precision and compiled with its loss,
    optimizer and metrics (for training, and to reload a trial's kept weights)."""
    with precision_policy(spec.training.get("precision", "float32")):
        model = build_model(spec.model, **settings_from(spec.model, config))
        compile_model(model, config, *problem.loss_and_metrics(config))
    return model


def fit(
    spec, problem, model: keras.Model, config: Mapping, *, epochs: int, seed: int,
    earlier: EarlierTraining | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    pruning: keras.callbacks.Callback | None = None,
) -> tf.data.Dataset:
    """Train a compiled model the way every trial does (`search.trial.run.run_trial`): stopped
    early on the objective with the best epoch's weights restored, and stopped on NaN.

    `callbacks` see every epoch first (history, loggers); `pruning` goes last, so a pruned epoch
    is still logged. `earlier` continues from epochs trained before, and from a checkpoint's
    best epoch. Returns the validation data the model was judged on.
    """
    train, val = problem.datasets(config, seed)
    model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        initial_epoch=earlier.epochs if earlier else 0,
        shuffle=False,  # `train` reshuffles itself every epoch
        verbose=0,
        callbacks=[
            *callbacks,
            StopOnNonFinite(),
            EarlyStoppingFrom(
                earlier, spec.objective, mode="max", restore_best_weights=True,
                patience=spec.training["early_stopping_patience"],
            ),
            *([pruning] if pruning is not None else []),
        ],
    )
    return val


class EarlyStoppingFrom(keras.callbacks.EarlyStopping):
    """Keras' early stopping, picking up a checkpointed trial's: its best epoch so far, that
    epoch's weights and the epochs waited since. So a retried trial ends on its best epoch's
    weights (the value it reports) even when that epoch came before the retry."""

    def __init__(self, earlier: EarlierTraining | None, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.earlier = earlier

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        super().on_train_begin(logs)
        earlier = self.earlier
        if earlier is None or earlier.best_weights is None or not earlier.history.get(self.monitor):
            return
        self.best, epoch = best_epoch(earlier.history[self.monitor])
        self.best_epoch, self.best_weights = epoch - 1, earlier.best_weights  # Keras: 0-based
        self.wait = earlier.epochs - epoch


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training after an epoch whose loss is NaN or infinite (`check_finite` then fails the
    trial with the reason). Keras' TerminateOnNaN checks every batch, and a callback with a batch
    hook makes Keras run every batch's callbacks in step: on a GPU, a wait for each batch's loss
    that plain `fit` does not have."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.model.stop_training = True


@contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Layers made in this block compute in `name`: "mixed_float16" is float16 math on float32
    weights (output layers stay float32), and compile() then scales the loss. Layers keep the
    policy they were made with, so the input pipeline and later trials stay float32."""
    if name not in PRECISIONS:
        raise ValueError(f"[training] precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextmanager
def fresh_keras_session() -> Iterator[None]:
    """Free the trial's graph and tensors when it ends (`clear_session` also runs the garbage
    collector: once per trial is enough, more cost seconds on a large heap)."""
    try:
        yield
    finally:
        keras.backend.clear_session()


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
