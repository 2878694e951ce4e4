"""When a study has done enough: what `n_trials` counts, the epoch budget, the failure limit.

Each is an Optuna callback (called after every trial of this worker) that stops the study.
"""

from __future__ import annotations

import optuna

# What `n_trials` counts: trials that gave the search an answer. A failed trial does not count:
# one whose worker died or was interrupted is retried, one that failed on its own is not.
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def epochs_spent(study: optuna.Study) -> int:
    """Epochs trained by all of the study's trials (a pruned trial counts those it ran)."""
    return sum(t.user_attrs.get("epochs_run", 0) for t in study.get_trials(deepcopy=False))


class EpochBudget:
    """Stops the study once its trials have trained `budget` epochs in all (None: no limit)."""

    def __init__(self, budget: int | None):
        self.budget = budget

    def spent(self, study: optuna.Study) -> bool:
        return bool(self.budget) and epochs_spent(study) >= self.budget

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
