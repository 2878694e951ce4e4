"""Champion training: when a study ends, its best configuration continues from its kept weights
(its best epoch's) up to `--refit-epochs`, under early stopping, as the lab trains its chosen
recipe. The search judged configurations at the epochs the scheduler gave them; the champion
gets the lab's full training.

The refit is a child run of the study (`<study>-refit`), and starts from the trial's model as
kept in MLflow, so any machine of the study can run it. It is the champion only if it beats the
trial it started from on validation; its model is then kept too, the test split judges it
(`search.champion.holdout`), and `medtune export` registers it. Nothing here looks at the test
split.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import optuna

from search.champion.kept import Keeper, load
from search.outcomes import TrialFailed
from search.records import champion_trial, ensemble_id, facts, note_study, study_facts
from search.spec.study_files import StudySpec
from search.tracking.models import drop_model
from search.tracking.study_run import StudyTracker
from search.tracking.trial_run import TrialRecord
from search.trial.run import Planned, trial_of_study
from search.trial.training import EarlierTraining


def refit_best(spec: StudySpec, keeper: Keeper, study: optuna.Study, tracker: StudyTracker,
               epochs: int, *, verbose: bool = True) -> dict[str, Any] | None:
    """Continue the champion trial to `epochs`; None when there is nothing to continue (no
    completed trial, no kept model, or it already trained that long)."""
    best = champion_trial(study)  # the best trial, or the re-checked finalists' champion
    if best is None:
        return None
    if ensemble_id(study):  # a refit continues one model; the finalists' average beat it
        print("medtune: no refit: the finalists' ensemble is the champion", flush=True)
        return None
    done = study_facts(study).refit
    if done and done["trial"] == best.number and done["epochs"] == epochs:
        return done  # refitted already: a continued study with the same best is not retrained
    model_id = facts(best).model_id
    start = facts(best).best_epoch or 0
    if model_id is None or start >= epochs:
        why = (f"its best epoch {start} is not below {epochs}" if model_id else
               "it kept no model (a study older than kept models)")
        print(f"medtune: no refit of trial #{best.number}: {why}", flush=True)
        return None
    problem = keeper.problem

    def restore(model: keras.Model) -> EarlierTraining:  # from MLflow: any machine can refit
        model.set_weights(load(model_id, tracker.tracking_uri).get_weights())
        return EarlierTraining(start)

    plan = Planned(spec, problem, best.params, epochs, facts(best).seed_or_number(best.number))
    record = TrialRecord(best.number)
    outcome = {"trial": best.number, "epochs": epochs, "from_epoch": start,
               "trial_value": best.value, "value": best.value, "best_epoch": start,
               "champion": False}
    try:
        with trial_of_study(tracker, record, plan, name=f"{study.study_name}-refit", kind="refit",
                            extra={"refit_of_trial": best.number, "initial_epoch": start},
                            restore=restore, is_best=lambda value: value > best.value,
                            verbose=verbose) as (run, result):
            if result.best_so_far:  # else the trial's own model stays the champion
                outcome["model_id"] = keep_refit(keeper, run, study, result, done)
            run.log_metrics({"refit.trial_value": best.value,
                             "refit.champion": float(result.best_so_far)})
        outcome |= {"value": result.value, "best_epoch": result.best_epoch,
                    "champion": result.best_so_far}
    except (optuna.TrialPruned, TrialFailed) as stop:  # stuck or diverged: the trial stays
        outcome["stopped"] = str(stop)
    outcome["run_id"] = facts(record).run_id
    note_study(study, refit=outcome)
    return outcome


def keep_refit(keeper: Keeper, run, study: optuna.Study, result,
               earlier: dict[str, Any] | None) -> str | None:
    """The refit's model kept in MLflow (an earlier refit's deleted: one refit is the
    champion); None, with a warning, when MLflow cannot take it."""
    try:
        model_id = keeper.keep(run, study.study_name, result, "refit")
        if earlier and earlier.get("model_id"):
            drop_model(run.client, earlier["model_id"])
    except Exception as error:  # the refit's value stands; its trial's model stays champion
        warnings.warn(f"the refit's model not kept in MLflow: {error}", stacklevel=2)
        return None
    return model_id
