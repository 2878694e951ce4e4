"""The objective: one trial builds a model from its params, trains it, and logs what happened.

The data arrives already decoded (once per study, in `datasets.loader`); a trial only builds,
trains and logs. What differs between kinds of task (the data fed, the artifacts logged) is in
`search.problems`.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna_integration import KerasPruningCallback

from search import holdout
from search.checkpoints import Checkpoint
from search.problems import Classification, Segmentation
from search.recovery import OWNER_ATTR, retried_from
from search.spec import StudySpec, suggest
from search.stopping import StuckOrDiverged
from search.tracking import StudyTracker
from search.training import (
    EpochLines,
    best_epoch,
    check_finite,
    fit,
    fresh_keras_session,
)
from search.worker import owner_id


def make_objective(
    spec: StudySpec,
    problem: Classification | Segmentation,
    tracker: StudyTracker,
    *,
    epochs: int,
    seed: int,
    storage: str,
    verbose: bool = True,
) -> Callable[[optuna.Trial], float]:
    monitor = spec.objective
    chance = problem.chance().get(monitor.removeprefix("val_"))  # a constant guess's score

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(OWNER_ATTR, owner_id())  # first: a dead owner fails the trial
        params = suggest(trial, spec)
        config = problem.config(params)
        fixed = {**spec.fixed, "epochs": epochs, "input_shape": config["input_shape"]}
        # A retry of a dead worker's trial keeps the trial's seed and resumes its checkpoint.
        origin = retried_from(trial)
        number = trial.number if origin is None else origin
        checkpoint = Checkpoint.of_trial(storage, trial.study.study_name, number,
                                         spec.recovery["checkpoint_every_s"])
        with tracker.trial_run(trial, params, fixed) as run, fresh_keras_session():
            trial_seed = seed + number  # a replay with the same seed retrains the same way
            trial.set_user_attr("seed", trial_seed)

            def resume(model) -> int:
                done = checkpoint.restore(model)
                run.resumed(checkpoint.history, done)
                return done

            lines = [EpochLines(run.name, epochs)] if verbose else []
            watch = StuckOrDiverged(monitor, chance, spec.training)
            try:
                model, _, val = fit(
                    spec, problem, config, epochs=epochs, seed=trial_seed,
                    callbacks=[*lines, run.keras_callback(), checkpoint.callback(), watch],
                    pruning=KerasPruningCallback(trial, monitor),
                    restore=resume if origin is not None and checkpoint.exists() else None,
                )
            except KeyboardInterrupt:
                raise  # Ctrl-C: the trial is retried on the next run, from this checkpoint
            except BaseException:
                checkpoint.remove()
                raise
            checkpoint.remove()  # only a killed or interrupted worker leaves it behind
            check_finite(run.history)
            if watch.reason:  # its epochs are better spent on other trials
                trial.set_user_attr("stopped_because", watch.reason)
                raise optuna.TrialPruned(watch.reason)
            value, epoch = best_epoch(run.history[monitor])

            # The weights are the best epoch's (EarlyStopping restored them): judge those.
            best_so_far = improves(trial, value)
            problem.log_artifacts(run, model, val, config, epoch, best_so_far)
            if best_so_far:  # the test split judges the study's pick once, at the end
                holdout.keep_best(model, storage, trial.study, trial.number)
            run.log_metrics({"trial.objective": value, "trial.best_epoch": epoch})
            trial.set_user_attr("best_epoch", epoch)
            return value

    return objective


def improves(trial: optuna.Trial, value: float) -> bool:
    """Whether `value` beats every trial completed so far (the first one always does)."""
    try:
        return value > trial.study.best_value
    except ValueError:  # no completed trial yet
        return True
