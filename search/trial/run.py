"""One trial, the same for every engine, the refit, the finalists and the export replay: build
the configuration's model, train it (seeded; early stopping; stopped when stuck, diverged or
NaN), score it on validation and log its artifacts. `Planned` is what it trains (its settings
worked out once); `trial_of_study` is one trial of a study, its child run around it.

Engines decide which configurations run, for how many epochs, and what a trial's end means to
them (`search.engines.optuna_engine`, `search.engines.keras_tuner_engine`); this module decides
what a trial is. The trial owns its history: the MLflow run and the checkpoints read it, nothing
keeps a copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import keras
import optuna

from search.outcomes import Stuck
from search.spec.study_files import StudySpec
from search.tracking.study_run import StudyTracker
from search.tracking.trial_run import TrialRecord, TrialRun
from search.trial.checkpoints import Checkpoint
from search.trial.problems import Classification, Segmentation
from search.trial.stopping import StuckOrDiverged
from search.trial.training import (
    EarlierTraining,
    EpochLines,
    best_epoch,
    check_finite,
    compiled_model,
    fit,
    fresh_keras_session,
)

# A continued trial (a Hyperband promotion, the champion's refit) starts from kept weights with a
# fresh optimizer, as Keras Tuner intends; Keras warns about the optimizer state it skips.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")

# Loads earlier training into the compiled model (a checkpoint, or a Hyperband parent's
# weights); returns what it stands for (epochs; a checkpoint's history and best weights).
Restore = Callable[[keras.Model], EarlierTraining]


@dataclass
class TrialResult:
    value: float  # the objective at the best epoch, whose weights the model holds
    best_epoch: int  # 1-based, counting the epochs a resumed trial did before
    model: keras.Model
    best_so_far: bool  # beat every earlier trial of the study (the test split judges it later)
    config: dict[str, Any]  # the model's and training's settings (`problem.config`)
    metrics: dict[str, float]  # every metric of the best epoch, the model's own


class TrialHistory(keras.callbacks.Callback):
    """Every epoch's metrics of one trial. Subscribers (the trial's MLflow run) see each epoch
    as it ends; `first` is the epoch the trial continued from when earlier epochs have no
    history here (a Hyperband promotion)."""

    def __init__(self, subscribers: Sequence[TrialRun] = ()):
        super().__init__()
        self.values: dict[str, list[float]] = {}
        self.subscribers = list(subscribers)
        self.first = 0

    def resume(self, epochs: int, earlier: Mapping[str, list[float]]) -> None:
        self.values.clear()  # in place: subscribers follow this dict
        self.values.update({k: list(v) for k, v in earlier.items()})
        self.first = epochs - self.epochs
        if earlier:  # a checkpoint's epochs; a promotion or a refit starts from weights alone
            for subscriber in self.subscribers:
                subscriber.resumed(earlier, self.epochs)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        for key, value in (logs or {}).items():
            self.values.setdefault(key, []).append(float(value))
        for subscriber in self.subscribers:
            subscriber.log_epoch(epoch + 1, logs or {})  # MLflow steps: 1-based, as Keras prints

    @property
    def epochs(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)

    def best(self, monitor: str) -> tuple[float, int]:
        value, epoch = best_epoch(self.values[monitor])
        return value, self.first + epoch

    def at(self, epoch: int) -> dict[str, float]:
        """Every metric of `epoch` (1-based, as `best` counts)."""
        return {k: v[epoch - self.first - 1] for k, v in self.values.items()
                if len(v) >= epoch - self.first}


@dataclass(frozen=True)
class Planned:
    """One configuration to train: its params, epochs and seed, and the model's and training's
    settings they make (`problem.config`, worked out once)."""

    spec: StudySpec
    problem: Classification | Segmentation
    params: Mapping[str, Any]
    epochs: int
    seed: int
    config: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", self.problem.config(self.params))

    def fixed(self, **extra: Any) -> dict[str, Any]:
        """What its run records beside the searched params: the study file's fixed settings,
        its epochs, the input shape the data gives, and `extra` (what the caller adds)."""
        return {**self.spec.fixed, "epochs": self.epochs,
                "input_shape": self.config["input_shape"], **extra}


@contextmanager
def trial_of_study(tracker: StudyTracker, trial: optuna.Trial | TrialRecord, plan: Planned, *,
                   name: str | None = None, kind: str = "trial",
                   extra: Mapping[str, Any] | None = None, checkpoint: Checkpoint | None = None,
                   **training: Any) -> Iterator[tuple[TrialRun, TrialResult]]:
    """One trial of a study, as Optuna's objective, Keras Tuner, the refit and the finalists
    all run it: its child run (ended by how the trial ends), a fresh Keras session, the
    checkpoint removed when it ends (unless by Ctrl-C), and the training (`run_trial`, with
    `training`'s arguments). The body keeps what it needs while the run is still open."""
    with (tracker.trial_run(trial, plan.params, plan.fixed(**(extra or {})), name=name,
                            kind=kind) as run,
          fresh_keras_session()):
        if checkpoint is None:
            yield run, run_trial(plan, run, **training)
        else:
            with checkpoint.removed_unless_interrupted():
                yield run, run_trial(plan, run, checkpoint=checkpoint, **training)


def run_trial(
    plan: Planned,
    run: TrialRun,
    *,
    restore: Restore | None = None,
    checkpoint: Checkpoint | None = None,
    pruning: keras.callbacks.Callback | None = None,
    is_best: Callable[[float], bool] = lambda value: True,
    baseline: bool = False,
    verbose: bool = True,
) -> TrialResult:
    """Train `plan` for up to its epochs and return the best epoch's value and model.

    Raises `Stuck` (an Optuna TrialPruned) when the trial is stuck at chance, the pruner's
    TrialPruned when `pruning` stops it, and `TrialFailed` when its loss diverged or became NaN.
    `restore` continues earlier training; `checkpoint` saves epochs for a retry to resume.
    `baseline`: a lab recipe, which the stuck stop leaves alone longer (`search.trial.stopping`).
    """
    spec, problem, config, epochs, seed = (plan.spec, plan.problem, plan.config, plan.epochs,
                                           plan.seed)
    history = TrialHistory(subscribers=[run])
    run.follow(history.values)
    keras.utils.set_random_seed(seed)  # before building: the same seed, the same start
    model = compiled_model(spec, problem, config)
    run.log_summary(model)
    earlier = restore(model) if restore is not None else None
    if earlier is not None:
        history.resume(earlier.epochs, earlier.history)
    monitor = spec.objective
    watch = StuckOrDiverged(monitor, problem.chance().get(monitor.removeprefix("val_")),
                            spec.training, baseline)
    lines = [EpochLines(run.name, epochs)] if verbose else []
    saver = [checkpoint.callback(history.values, monitor)] if checkpoint else []
    val = fit(spec, problem, model, config, epochs=epochs, earlier=earlier, seed=seed,
              callbacks=[history, *lines, *saver, watch], pruning=pruning)
    check_finite(history.values)
    if watch.reason:  # its epochs are better spent on other trials
        raise Stuck(watch.reason)

    # The weights are the best epoch's (early stopping restored them): judge those.
    value, epoch = history.best(monitor)
    best_so_far = is_best(value)
    problem.log_artifacts(run, model, val, config, epoch, best_so_far)
    run.log_metrics({"trial.objective": value, "trial.best_epoch": epoch})
    return TrialResult(value, epoch, model, best_so_far, config, history.at(epoch))
