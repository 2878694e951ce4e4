"""The second engine: Keras Tuner's Hyperband over the same task, search space and data.

Hyperband proposes the trials and decides their epochs (successive halving, continuing a
promoted trial from its checkpoint). Each trial is logged to MLflow exactly as an Optuna trial is
(a child run with params and per-epoch metrics), and recorded into the task's Optuna study as a
finished trial, so trials tables, study plots, `compare` and `export` work the same for both.
Keras Tuner keeps its own state in `.medtune/keras_tuner/<study>` ($MEDTUNE_KERAS_TUNER_DIR), so
a rerun continues.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import optuna

from models import build_model
from search.limits import counted_trials, epochs_spent
from search.problems import Classification, Segmentation
from search.settings import TuneSettings
from search.spec import StudySpec
from search.tracking import StudyTracker
from search.training import (
    EpochLines,
    StopOnNonFinite,
    best_epoch,
    check_finite,
    compile_model,
    precision_policy,
)


def state_dir() -> Path:
    return Path(os.environ.get("MEDTUNE_KERAS_TUNER_DIR", Path(".medtune") / "keras_tuner"))


# A promoted trial continues from its checkpoint's weights with a fresh optimizer, as Keras
# Tuner intends; Keras warns about the optimizer state it skips each time.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
FACTOR = 3  # Hyperband's halving rate, Keras Tuner's default
TS = optuna.trial.TrialState


def hyperparameters(hp: keras_tuner.HyperParameters, spec: StudySpec) -> dict[str, Any]:
    """The spec's search space as Keras Tuner hyperparameters; returns this trial's values.

    A conditional dimension (`when = "augment"`) lives in a conditional scope of its parent.
    """
    params: dict[str, Any] = {}
    for name, dist in spec.space.items():
        parent = spec.conditions.get(name)
        if parent is not None:
            with hp.conditional_scope(parent, [True]):
                value = _define(hp, name, dist)
            if params.get(parent):
                params[name] = value
        else:
            params[name] = _define(hp, name, dist)
    return params


def _define(hp: keras_tuner.HyperParameters, name: str, dist) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        if set(dist.choices) == {False, True}:
            return hp.Boolean(name)
        return hp.Choice(name, list(dist.choices))
    sampling = "log" if dist.log else "linear"
    if isinstance(dist, optuna.distributions.IntDistribution):
        return hp.Int(name, dist.low, dist.high, step=None if dist.log else dist.step,
                      sampling=sampling)
    return hp.Float(name, dist.low, dist.high, step=dist.step, sampling=sampling)


class _Recorded:
    """What `StudyTracker.trial_run` needs of a trial: a number and user attributes (which
    then go with the trial into the Optuna study)."""

    def __init__(self, number: int):
        self.number = number
        self.user_attrs: dict[str, Any] = {}

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


class _Hyperband(keras_tuner.Hyperband):
    def __init__(self, spec, settings, study, problem, tracker, verbose, **kwargs):
        self.spec, self.settings, self.study = spec, settings, study
        self.problem, self.tracker, self.verbose = problem, tracker, verbose
        self.started = time.monotonic()
        super().__init__(**kwargs)

    def pre_create_trial(self) -> None:
        # n_trials counts the study's complete and pruned trials, earlier runs included; the
        # epoch budget all their epochs; and the timeout.
        timed_out = (self.settings.timeout is not None
                     and time.monotonic() - self.started > self.settings.timeout)
        budget = self.settings.epoch_budget
        spent = budget is not None and epochs_spent(self.study) >= budget
        if timed_out or spent or counted_trials(self.study) >= self.settings.n_trials:
            self.oracle.max_trials = len(self.oracle.trials)  # the oracle then says STOPPED

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        record = _Recorded(len(self.study.trials))
        params = {k: hp.values[k] for k in hp.values if k in self.spec.space and hp.is_active(k)}
        epochs = hp.values.get("tuner/epochs", self.settings.epochs)
        initial = hp.values.get("tuner/initial_epoch", 0)
        fixed = {**self.spec.fixed, "epochs": epochs, "initial_epoch": initial,
                 "keras_tuner_trial": trial.trial_id,
                 "continues_trial": hp.values.get("tuner/trial_id", "")}
        seed = self.settings.seed + record.number
        name = f"{self.study.study_name}-t{record.number:04d}"
        lines = [EpochLines(name, epochs)] if self.verbose else []
        started = time.monotonic()
        value, history = None, {}
        try:
            with self.tracker.trial_run(record, params, fixed) as run:
                history = run.history
                kwargs["callbacks"] = [*lines, *kwargs.get("callbacks", []), run.keras_callback()]
                keras.utils.set_random_seed(seed)
                self.hypermodel.seed = seed
                results = super().run_trial(trial, *args, **kwargs)
                check_finite(run.history)
                value, epoch = best_epoch(run.history[self.spec.objective])
                run.log_metrics({"trial.objective": value, "trial.best_epoch": initial + epoch})
                record.set_user_attr("best_epoch", initial + epoch)
            return results
        finally:  # failed trials too: Keras Tuner goes on, and so does the record
            curve = history.get(self.spec.objective, [])
            self.study.add_trial(optuna.trial.create_trial(
                params=params,
                distributions={k: self.spec.space[k] for k in params},
                value=value,
                state=TS.COMPLETE if value is not None else TS.FAIL,
                intermediate_values={initial + i + 1: v for i, v in enumerate(curve)},
                user_attrs={**record.user_attrs, "engine": "keras-tuner", "seed": seed,
                            "trial_seconds": round(time.monotonic() - started, 1)},
            ))
            keras.backend.clear_session()


class _LabModel(keras_tuner.HyperModel):
    """Builds and fits a lab model from Keras Tuner's hyperparameters, like a trial does."""

    def __init__(self, spec: StudySpec, problem: Classification | Segmentation):
        super().__init__()
        self.spec, self.problem = spec, problem
        self.seed = 0

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        config = self.problem.config(hyperparameters(hp, self.spec))
        with precision_policy(self.spec.training.get("precision", "float32")):
            model = build_model(self.spec.model, config)
            compile_model(model, config, *self.problem.loss_and_metrics(config))
        return model

    def fit(self, hp, model, *args, **kwargs):
        config = self.problem.config(hyperparameters(hp, self.spec))
        train, val = self.problem.datasets(config, self.seed)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), StopOnNonFinite()]
        kwargs |= {"shuffle": False, "verbose": 0}  # `train` reshuffles itself; lines print
        return model.fit(train, validation_data=val, **kwargs)


def search(
    spec: StudySpec,
    settings: TuneSettings,
    study: optuna.Study,
    problem: Classification | Segmentation,
    tracker: StudyTracker,
    *,
    verbose: bool = True,
) -> None:
    """Run Hyperband until the study has `n_trials` trials (or the timeout, or Hyperband ends)."""
    tuner = _Hyperband(
        spec, settings, study, problem, tracker, verbose,
        hypermodel=_LabModel(spec, problem),
        objective=keras_tuner.Objective(spec.objective, direction="max"),
        max_epochs=settings.epochs,
        factor=FACTOR,
        seed=settings.seed,
        directory=str(state_dir()),
        project_name=settings.study_name,
        overwrite=False,  # a rerun continues the search
        max_consecutive_failed_trials=settings.n_trials,  # failures are recorded; go on
    )
    tuner.search(verbose=0)
