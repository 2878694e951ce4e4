"""The default engine: Optuna's loop over `search.engines.objective`, with the study file's
sampler and pruner (TPE + Hyperband over epochs), the lab baselines queued first."""

from __future__ import annotations

import time
from typing import Any

from optuna.study import MaxTrialsCallback

from search.champion.finalists import room
from search.engines.catalog import StudyRun
from search.engines.limits import COUNTED, EpochBudget, FailureCount, counted_trials
from search.engines.objective import make_objective
from search.runtime.worker import FreezeSurvivors, frozen_heap
from search.spec.study_files import StudySpec


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a study; `trial` is the trial that was cut and will be retried."""

    def __init__(self, trial: int | None):
        super().__init__(trial)
        self.trial = trial


def describe(spec: StudySpec) -> dict[str, Any]:
    return {"sampler": spec.sampler, "pruner": spec.pruner}


def search(job: StudyRun) -> None:
    """Optuna's loop: the sampler proposes, the pruner stops, until `n_trials` trials have
    completed or been pruned (counting every worker's trials: several processes may share the
    study). A failed trial does not count, so the loop goes on past it; a run whose own trials
    keep failing stops after as many failures as it was asked to finish trials."""
    settings, study = job.settings, job.study
    objective = make_objective(job.spec, job.problem, job.tracker, job.keeper,
                               epochs=settings.epochs, seed=settings.seed,
                               storage=settings.storage, verbose=job.verbose)
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    failures = FailureCount(max(1, settings.n_trials - counted_trials(study)))
    # A budgeted study keeps room for its finalists' re-runs.
    budget = EpochBudget(settings.epoch_budget,
                         room(job.spec, job.problem, settings.finalists, settings.epochs,
                              settings.epoch_budget))
    guard = [job.guard] if job.guard else []
    try:
        with frozen_heap():
            while (remaining := settings.n_trials - counted_trials(study)) > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or budget.spent(study) or failures.stopped:
                    break
                study.optimize(
                    objective,
                    n_trials=remaining,
                    timeout=left,
                    catch=(Exception,),  # a failed trial is recorded (FAIL, MLflow FAILED); go on
                    callbacks=[MaxTrialsCallback(settings.n_trials, states=COUNTED), budget,
                               failures, job.recovery.fail_orphans, *guard, FreezeSurvivors()],
                    show_progress_bar=job.show_progress_bar,
                    gc_after_trial=False,  # fresh_keras_session collects once per trial already
                )
                if job.guard is not None and job.guard.exceeded:
                    break
    except KeyboardInterrupt:
        raise Interrupted(job.recovery.retry_interrupted(study)) from None
    if failures.stopped:
        print(f"medtune: stopped after {failures.count} failed trials in this run (see their "
              "`error` tags in MLflow); fix the cause, then run again to continue", flush=True)
