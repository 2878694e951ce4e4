"""Trials whose worker died: found, failed with the reason, and retried.

A killed, pre-empted or out-of-memory worker leaves its trial RUNNING for ever. Two detectors:

- the owner check: each trial records `host:pid:start` of its process; a RUNNING trial whose
  process is gone from this host is dead at once (any storage, journal files included);
- Optuna's heartbeat, with database storages: a trial without a heartbeat for `grace_period`
  seconds is dead, whichever host ran it.

A dead trial becomes FAIL in Optuna and FAILED in MLflow, with the reason, and is retried with
the same params (as Optuna's `RetryHeartbeatStaleTrialCallback` does, with the trial's own
attributes left out); the retry resumes from its last epoch checkpoint (`search.trial.checkpoints`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from search.records import attr_name, attrs, facts
from search.runtime.storages import open_storage
from search.runtime.worker import owner_alive, owner_id

if TYPE_CHECKING:
    from search.tracking.study_run import StudyTracker

# What a dead trial's run recorded on it, which its retry does not inherit
RUN_ATTRS = tuple(attr_name(f) for f in (
    "owner", "run_id", "fail_reason", "seed", "epochs_run", "pruned_at_epoch"))
INTERRUPTED = "KeyboardInterrupt"  # how the fail_reason of a trial cut by Ctrl-C starts


class Recovery:
    """Fails dead workers' trials with the reason, in Optuna and MLflow, and retries them."""

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = settings
        self.tracker: StudyTracker | None = None  # bound once the study's parent run is open

    def storage(self, url: str) -> optuna.storages.BaseStorage:
        """The Optuna storage for `url`, with heartbeats where the storage has them."""
        return open_storage(url, heartbeat=(self.settings["heartbeat_interval"],
                                            self.settings["grace_period"], self._stale))

    def _stale(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # Optuna has failed the trial already.
        self._failed(study, trial, f"worker lost: no heartbeat for {self.settings['grace_period']}"
                                   " s (killed, pre-empted or hung)")

    def fail_orphans(self, study: optuna.Study, *_: Any) -> None:
        """Fail the RUNNING trials whose process on this host is gone. Also an Optuna callback,
        so a worker checks after each of its trials."""
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner = facts(trial).owner
            if not owner or owner_alive(owner) is not False:
                continue
            reason = f"worker process {owner} died during the trial (killed or out of memory)"
            try:  # another worker may fail it first: then that worker reports and retries it
                study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue
            self._failed(study, trial, reason)

    def retry_interrupted(self, study: optuna.Study) -> int | None:
        """After Ctrl-C: queue again the trial this process was training (Optuna has failed it
        with the KeyboardInterrupt); its number, or None when no trial was cut."""
        me = owner_id()
        mine = [t for t in study.get_trials(deepcopy=False) if facts(t).owner == me]
        last = max(mine, key=lambda t: t.number, default=None)
        if (last is None or last.state != optuna.trial.TrialState.FAIL
                or not str(facts(last).fail_reason or "").startswith(INTERRUPTED)):
            return None  # Ctrl-C came between trials
        return last.number if self._retry(study, last) else None

    def _failed(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        if self.tracker is not None:
            self.tracker.end_dead_run(facts(trial).run_id, reason,
                                      epochs=len(trial.intermediate_values))
        self._retry(study, trial)

    def _retry(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Queue the trial again, as Optuna's retry callback does, but without the dead run's
        own attributes: a retry still carrying the dead owner would look dead itself. False
        when the trial has used up its `retries`."""
        history = [*facts(trial).retry_history, trial.number]
        if len(history) > self.settings["retries"]:
            return False
        kept = {k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS}
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={**kept, **attrs(retry_of=history[0], retry_history=history)},
            intermediate_values=trial.intermediate_values,  # the pruner sees the whole curve
        ))
        return True
