"""What `medtune tune` prints when a study ends: its trials, why it stopped, the champion (with
its re-check, refit and test-split scores) and where to look at it in MLflow."""

from __future__ import annotations

import optuna

from search.champion.finalists import summary_lines
from search.engines.limits import COUNTED, counted_trials
from search.records import champion_trial, facts, study_facts
from search.tracking.study_run import StudyTracker


def print_summary(study: optuna.Study, tracker: StudyTracker, objective: str, target: int,
                  seconds: float, why: str) -> None:
    """The study as `medtune tune` ends it: counts, why it stopped, the champion and where
    to look."""
    TS = optuna.trial.TrialState
    failed = study.get_trials(deepcopy=False, states=(TS.FAIL,))
    retried = {n for t in study.get_trials(deepcopy=False)
               for n in facts(t).retry_history}
    counts = [(len(study.get_trials(deepcopy=False, states=(s,))), s.name.lower())
              for s in COUNTED]
    counts += [(sum(t.number not in retried for t in failed), "failed"),
               (sum(t.number in retried for t in failed), "retried (worker lost or interrupted)")]
    print(f"\n=== {study.study_name}: {counted_trials(study)} of {target} trials done: "
          f"{', '.join(f'{n} {what}' for n, what in counts)}; {duration(seconds)}")
    print(f"stopped because {why}")
    if counts[0][0]:
        record = study_facts(study)
        recheck = record.finalists
        if recheck:
            print("\n".join(summary_lines(recheck, objective)))
        best = champion_trial(study)
        print(f"{'champion' if recheck else 'best trial'}: #{best.number}  {objective} = "
              f"{best.value:.4f}" + (" in the search, {mean:.4f} ± {sd:.4f} over {n} runs".format(
                  **recheck["results"][str(best.number)]) if recheck else ""))
        for key, value in best.params.items():
            print(f"  {key:16} {value}")
        print(f"best trial's MLflow run: {facts(best).run_id}")
        refit = record.refit
        if refit and refit["trial"] == best.number:
            print(f"refit of trial #{best.number} from epoch {refit['from_epoch']} to "
                  f"{refit['epochs']}: {objective} {refit['value']:.4f} at epoch "
                  f"{refit['best_epoch']} ("
                  + ("the champion" if refit["champion"] else
                     "not above the trial's: the trial's weights stay the champion") + ")")
        test = record.test
        if test and test["trial"] == best.number:  # judged once, never used to select
            which = "refit" if test.get("model") == "refit" else "best trial"
            scores = ", ".join(f"{k} {v:.4f}" for k, v in test.items()
                               if k.startswith("test_") and k != "test_loss")
            print(f"{which} on the test split ({test['n_test']} images, never used to select): "
                  + scores)
    print(f"study's MLflow run:      {tracker.parent_run_id} "
          f"(experiment {tracker.experiment_id})")
    print(f"look at it:              {tracker.ui_hint()}")


def duration(seconds: float) -> str:
    """`37 s`, or `1684 s (28 min 4 s)`."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds:.0f} s ({int(seconds // 60)} min {seconds % 60:.0f} s)"
