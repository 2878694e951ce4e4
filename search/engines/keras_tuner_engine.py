"""The second engine: Keras Tuner's Hyperband over the same task, search space and data.

Hyperband proposes the trials and decides their epochs (successive halving, a promoted trial
continuing from its parent's best weights); each trial is `search.trial.run.run_trial`, as an Optuna
trial is: early stopping, the stuck stop, the same MLflow child run with curves, confusion
matrix and ROC. Each trial is also recorded into the task's Optuna study (complete, pruned when
stuck, or failed), so trials tables, study plots, `compare`, `export` and the test split work the
same for both. Hyperband's factor is the study file's `[pruner] reduction_factor`. Keras Tuner
keeps its own state in `.medtune/keras_tuner/<study>` ($MEDTUNE_KERAS_TUNER_DIR), so a rerun
continues.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import optuna

from search.champion.finalists import room
from search.engines.catalog import StudyRun
from search.engines.limits import EpochBudget, counted_trials
from search.engines.objective import improves
from search.outcomes import Stuck
from search.records import attrs, note
from search.spec.study_files import StudySpec
from search.tracking.trial_run import TrialRecord
from search.trial.run import Planned, Restore, trial_of_study
from search.trial.training import EarlierTraining, compiled_model


def state_dir() -> Path:
    return Path(os.environ.get("MEDTUNE_KERAS_TUNER_DIR", Path(".medtune") / "keras_tuner"))


TS = optuna.trial.TrialState
UNPROMOTABLE = -1.0


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


class _Recorded(TrialRecord):
    """A Keras Tuner trial as `StudyTracker.trial_run` needs it, then as the Optuna study
    records it."""

    def __init__(self, number: int, params: dict[str, Any]):
        super().__init__(number)
        self.params = params
        self.state, self.value = TS.FAIL, None
        self.started = time.monotonic()

    def end(self, state: optuna.trial.TrialState, value: float | None) -> None:
        self.state, self.value = state, value

    def curve(self, monitor: str) -> list[float]:
        return list(self.run.history.get(monitor, [])) if self.run else []

    def score(self, monitor: str) -> float:
        """What Hyperband ranks the trial by: its value; a stuck or failed trial (no weights
        kept, nothing to continue) below any value a metric in [0, 1] takes, so it is never
        promoted while another trial can be."""
        return self.value if self.value is not None else UNPROMOTABLE

    def add_to(self, study: optuna.Study, spec: StudySpec, initial: int, seed: int) -> None:
        study.add_trial(optuna.trial.create_trial(
            params=self.params,
            distributions={k: spec.space[k] for k in self.params},
            value=self.value,
            state=self.state,
            # Steps are epochs counted from 0, as Keras and Optuna's pruning callback count
            # them: a promoted trial's first is its initial_epoch.
            intermediate_values={initial + i: v
                                 for i, v in enumerate(self.curve(spec.objective))},
            user_attrs={**self.user_attrs, **attrs(
                engine="keras-tuner", seed=seed,
                trial_seconds=round(time.monotonic() - self.started, 1))},
        ))


class _Hyperband(keras_tuner.Hyperband):
    def __init__(self, job: StudyRun, **kwargs):
        self.job = job
        self.started = time.monotonic()
        super().__init__(**kwargs)

    def pre_create_trial(self) -> None:
        # n_trials counts the study's complete and pruned trials, earlier runs included; the
        # epoch budget all their epochs; and the timeout.
        settings, study = self.job.settings, self.job.study
        timed_out = (settings.timeout is not None
                     and time.monotonic() - self.started > settings.timeout)
        spent = EpochBudget(settings.epoch_budget, room(
            self.job.spec, self.job.problem, settings.finalists, settings.epochs,
            settings.epoch_budget)).spent(study)
        if timed_out or spent or counted_trials(study) >= settings.n_trials:
            self.oracle.max_trials = len(self.oracle.trials)  # the oracle then says STOPPED

    def run_trial(self, trial: keras_tuner.engine.trial.Trial, *args, **kwargs) -> dict:
        job, hp = self.job, trial.hyperparameters
        params = {k: hp.values[k] for k in hp.values if k in job.spec.space and hp.is_active(k)}
        record = _Recorded(len(job.study.trials), params)
        epochs = hp.values.get("tuner/epochs", job.settings.epochs)
        initial, parent = hp.values.get("tuner/initial_epoch", 0), hp.values.get("tuner/trial_id")
        plan = Planned(job.spec, job.problem, params, epochs, job.settings.seed + record.number)
        extra = {"initial_epoch": initial, "keras_tuner_trial": trial.trial_id,
                 "continues_trial": parent or ""}
        note(record, epochs=epochs)  # Hyperband's, not the study's: what export replays
        try:
            with trial_of_study(
                job.tracker, record, plan, extra=extra,
                restore=self._continue(parent, initial) if parent else None,
                is_best=lambda v: improves(job.study, v), verbose=job.verbose,
            ) as (run, result):
                self._keep(trial.trial_id, result.model)
                job.keeper.keep_if_top(job.study, record, run, result)
                note(record, best_epoch=result.best_epoch)
            record.end(TS.COMPLETE, result.value)
        except Stuck:  # recorded as pruned; Hyperband ranks it below every trial (see score)
            record.end(TS.PRUNED, None)
        finally:  # failed trials too: Keras Tuner goes on, and so does the record
            record.add_to(job.study, job.spec, initial, plan.seed)
        return {job.spec.objective: record.score(job.spec.objective)}

    def _continue(self, parent: str, initial_epoch: int) -> Restore:
        """A promoted trial starts from its parent's best weights, at the parent's epochs."""
        def restore(model: keras.Model) -> EarlierTraining:
            weights = self._get_checkpoint_fname(parent)
            if not os.path.isfile(weights):  # the parent was stuck or failed: no weights kept
                raise keras_tuner.errors.FailedTrialError(
                    f"Keras Tuner trial {parent} kept no weights to continue from")
            model.load_weights(weights)
            return EarlierTraining(initial_epoch)
        return restore

    def _keep(self, trial_id: str, model: keras.Model) -> None:
        """The trial's best weights, where a promotion of it continues from."""
        path = self._get_checkpoint_fname(trial_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        model.save_weights(path)


class _LabModel(keras_tuner.HyperModel):
    """The study's space as Keras Tuner hyperparameters (Keras Tuner builds it once, to learn
    the space; trials build their models in `run_trial`)."""

    def __init__(self, job: StudyRun):
        super().__init__()
        self.job = job

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        config = self.job.problem.config(hyperparameters(hp, self.job.spec))
        return compiled_model(self.job.spec, self.job.problem, config)


def hyperband_factor(spec: StudySpec) -> int:
    """Hyperband's halving rate: the study file's, as Optuna's Hyperband pruner uses it."""
    factor = spec.pruner.get("reduction_factor")
    if not isinstance(factor, int) or factor < 2:
        raise ValueError("the keras-tuner engine runs Hyperband: give it its factor as an integer "
                         f">= 2 in the study file's [pruner] reduction_factor (found {factor!r})")
    return factor


def describe(spec: StudySpec) -> dict[str, Any]:
    return {"sampler": {"type": "keras-tuner Hyperband"},
            "pruner": {"type": "keras-tuner Hyperband", "factor": hyperband_factor(spec)}}


def search(job: StudyRun) -> None:
    """Run Hyperband until the study has `n_trials` trials (or the timeout, or Hyperband ends)."""
    settings = job.settings
    tuner = _Hyperband(
        job,
        hypermodel=_LabModel(job),
        objective=keras_tuner.Objective(job.spec.objective, direction="max"),
        max_epochs=settings.epochs,
        factor=hyperband_factor(job.spec),
        seed=settings.seed,
        directory=str(state_dir()),
        project_name=settings.study_name,
        overwrite=False,  # a rerun continues the search
        max_consecutive_failed_trials=settings.n_trials,  # failures are recorded; go on
    )
    tuner.search(verbose=0)
