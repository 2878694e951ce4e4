"""When a study has done enough: what `n_trials` counts, the epoch budget, the failure limit.

Each is an Optuna callback (called after every trial of this worker) that stops the study.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from search.records import facts, study_facts

# What `n_trials` counts: trials that gave the search an answer. A failed trial does not count:
# one whose worker died or was interrupted is retried, one that failed on its own is not.
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def epochs_spent(study: optuna.Study) -> int:
    """Epochs trained by all of the study's trials (a pruned trial counts those it ran) and
    by the re-check of its finalists (`search.champion.finalists`)."""
    finalists = study_facts(study).finalists or {}
    return (sum(facts(t).epochs_run or 0 for t in study.get_trials(deepcopy=False))
            + finalists.get("epochs", 0))


class EpochBudget:
    """Stops the study once its trials have trained `budget` epochs in all (None: no limit),
    less what `reserve` keeps for the study's end (the finalists' re-runs)."""

    def __init__(self, budget: int | None, reserve: Callable[[optuna.Study], int] | None = None):
        self.budget = budget
        self.reserve = reserve or (lambda study: 0)

    def spent(self, study: optuna.Study) -> bool:
        return bool(self.budget) and epochs_spent(study) + self.reserve(study) >= self.budget

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.spent(study):
            study.stop()


def counted_trials(study: optuna.Study) -> int:
    """The trials `n_trials` counts: complete and pruned ones."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


class FailureCount:
    """Counts this run's failed trials; stops the study once there are `limit` of them."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0

    @property
    def stopped(self) -> bool:
        return self.count >= self.limit

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            self.count += 1
            if self.stopped:
                study.stop()


def stop_reason(study: optuna.Study, *, n_trials: int, epoch_budget: int | None,
                timeout: float | None, seconds: float, engine: str,
                room: Callable[[optuna.Study], int] | None = None) -> str:
    """Why a study's run ended, for its summary (an interrupted one says so where it stops);
    `room`: what its search kept for the finalists, as `EpochBudget` takes it."""
    finalists = (study_facts(study).finalists or {}).get("epochs", 0)
    kept = room(study) if room else 0
    # The search stopped once its own epochs and the room reached the budget.
    if epoch_budget and epochs_spent(study) - finalists + kept >= epoch_budget:
        return (f"its epoch budget is spent ({epochs_spent(study)} of {epoch_budget} epochs"
                + (f", {finalists} of them by the finalists" if finalists else "") + ")")
    if counted_trials(study) >= n_trials:
        return f"n_trials reached ({n_trials} complete or pruned)"
    if timeout and seconds >= timeout:
        return (f"the timeout ({timeout:g} s) passed: no trial starts after it; run the same "
                "command again to go on")
    if engine == "keras-tuner":
        return "Keras Tuner's Hyperband ran all its brackets"
    return "its trials kept failing (see above)"
