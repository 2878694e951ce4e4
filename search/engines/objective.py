"""The Optuna objective: one trial of the study, as `search.trial.run.run_trial` defines it, with
what Optuna adds: suggested params, the pruner, and a retry that resumes a dead worker's trial.

The data arrives already decoded (once per study, in `datasets.loader`); a trial only builds,
trains and logs.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna_integration import KerasPruningCallback

from search.champion.kept import Keeper
from search.records import facts, note
from search.runtime.worker import owner_id
from search.spec.space import suggest
from search.spec.study_files import StudySpec
from search.tracking.study_run import StudyTracker
from search.trial.checkpoints import Checkpoint
from search.trial.problems import Classification, Segmentation
from search.trial.run import Planned, trial_of_study


def make_objective(
    spec: StudySpec,
    problem: Classification | Segmentation,
    tracker: StudyTracker,
    keeper: Keeper,
    *,
    epochs: int,
    seed: int,
    storage: str,
    verbose: bool = True,
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        note(trial, owner=owner_id())  # first: a dead owner fails the trial
        params = suggest(trial, spec.space, spec.conditions)
        # A retry of a dead worker's trial keeps the trial's seed and resumes its checkpoint.
        origin = facts(trial).retry_of
        number = trial.number if origin is None else origin
        checkpoint = Checkpoint.of_trial(storage, trial.study.study_name, number,
                                         spec.recovery["checkpoint_every_s"])
        resume = origin is not None and checkpoint.exists()
        # A replay with the same seed retrains the same way.
        plan = Planned(spec, problem, params, epochs, seed + number)
        note(trial, seed=plan.seed)
        with trial_of_study(
            tracker, trial, plan, checkpoint=checkpoint,
            restore=checkpoint.restore if resume else None,
            pruning=KerasPruningCallback(trial, spec.objective),
            is_best=lambda value: improves(trial.study, value),
            baseline=bool(facts(trial).baseline), verbose=verbose,
        ) as (run, result):
            # Among the study's best? Its model is kept in MLflow (the test split, the refit
            # and export load it from there).
            keeper.keep_if_top(trial.study, trial, run, result)
            note(trial, best_epoch=result.best_epoch)
        return result.value

    return objective


def improves(study: optuna.Study, value: float) -> bool:
    """Whether `value` beats every trial completed so far (the first one always does)."""
    try:
        return value > study.best_value
    except ValueError:  # no completed trial yet
        return True
