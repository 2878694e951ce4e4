"""Finalists: when a study ends, its best configurations are trained again with other seeds
before a champion is named, so the pick is not the luckiest draw among many (the winner's curse
of ranking dozens of configurations on a few hundred validation images).

The study's best `finalists` trials (by validation, at most `top_k`, `[selection]`) are each
trained `reseeds` more times, seed `trial seed + k * SEED_STRIDE`, as they ran (same params,
epochs and early stopping, no pruner). Each re-run is a child run of the study (`kind =
finalist`, named `<study>-t0007-r1`, with its curves). The champion is the finalist with the best
mean over its runs (the trial's own value and its re-runs'); its kept model (the trial's) is
what the test split judges, the refit continues and `medtune export` registers. A re-run that
gets stuck, collapses or diverges counts at chance: the configuration does not hold up.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

import optuna

from search.kept import Keeper, ranked
from search.spec import StudySpec
from search.tracking import StudyTracker, TrialRecord
from search.training import TrialFailed, fresh_keras_session
from search.trial import fixed_params, run_trial

FINALISTS_ATTR = "medtune_finalists"  # study user attr: the re-check and its champion
SEED_STRIDE = 100_003  # re-run k of a trial seeded `seed + k * SEED_STRIDE`: no other trial's


def champion_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's champion: the finalist with the best mean when the study was re-checked,
    else its best trial; None before any trial completed."""
    record = study.user_attrs.get(FINALISTS_ATTR)
    if record and record.get("champion") is not None:
        return study.get_trials(deepcopy=False)[record["champion"]]
    try:
        return study.best_trial
    except ValueError:
        return None


def reserve(study: optuna.Study, finalists: int, reseeds: int, epochs: int) -> int:
    """Epochs to keep for the re-check: a re-run trains about as long as a completed trial."""
    done = [t.user_attrs.get("epochs_run", epochs) for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return round(finalists * reseeds * (statistics.mean(done) if done else epochs))


def recheck(spec: StudySpec, keeper: Keeper, study: optuna.Study, tracker: StudyTracker, *,
            finalists: int, epochs: int, verbose: bool = True) -> dict[str, Any] | None:
    """Train the study's best `finalists` configurations again and name the champion; the
    record (also the study's `medtune_finalists` attr), or None when there is nothing to do."""
    reseeds = spec.selection["reseeds"]
    top = ranked(study)[:min(finalists, spec.selection["top_k"])]
    if not top or not reseeds:
        return None
    done = study.user_attrs.get(FINALISTS_ATTR)
    if done and done["trials"] == top and done["reseeds"] == reseeds:
        return done  # a continued study with the same finalists is not retrained
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    chance = keeper.problem.chance().get(spec.objective.removeprefix("val_"), 0.0)
    results, spent = {}, 0
    for number in top:
        trial = trials[number]
        runs = [_rerun(spec, keeper, study, tracker, trial, k, epochs, chance, verbose)
                for k in range(1, reseeds + 1)]
        spent += sum(r["epochs"] for r in runs)
        values = [trial.value, *(r["value"] for r in runs)]
        results[str(number)] = {
            "values": values, "mean": statistics.mean(values), "sd": statistics.stdev(values),
            "n": len(values), "run_ids": [r["run_id"] for r in runs],
            "stopped": [r["stopped"] for r in runs if r["stopped"]]}
    # The best mean; of equal means, the better-ranked trial.
    champion = max(top, key=lambda n: (results[str(n)]["mean"], -top.index(n)))
    record = {"trials": top, "reseeds": reseeds, "results": results, "champion": champion,
              "epochs": spent}
    study.set_user_attr(FINALISTS_ATTR, record)
    return record


def _rerun(spec: StudySpec, keeper: Keeper, study: optuna.Study, tracker: StudyTracker,
           trial: optuna.trial.FrozenTrial, k: int, epochs: int, chance: float,
           verbose: bool) -> dict[str, Any]:
    """Trial `trial` trained again with its k-th other seed; its value, epochs and run."""
    seed = trial.user_attrs.get("seed", trial.number) + k * SEED_STRIDE
    epochs = trial.user_attrs.get("epochs", epochs)  # a Keras Tuner trial's own
    record = TrialRecord(trial.number)
    fixed = {**fixed_params(spec, keeper.problem, trial.params, epochs),
             "finalist_of_trial": trial.number, "reseed": k, "seed": seed}
    name = f"{study.study_name}-t{trial.number:04d}-r{k}"
    outcome = {"value": chance, "stopped": None, "epochs": 0}
    try:
        with (tracker.trial_run(record, trial.params, fixed, name=name, kind="finalist") as run,
              fresh_keras_session()):
            result = run_trial(spec, keeper.problem, trial.params, run, epochs=epochs,
                               seed=seed, baseline=bool(trial.user_attrs.get("baseline")),
                               verbose=verbose)
        outcome["value"] = result.value
    except (optuna.TrialPruned, TrialFailed) as stop:  # it did not hold up: counts at chance
        outcome["stopped"] = str(stop)
    outcome["epochs"] = record.user_attrs.get("epochs_run", 0)
    outcome["run_id"] = record.user_attrs.get("mlflow_run_id")
    return outcome


def summary_lines(record: Mapping[str, Any], objective: str) -> list[str]:
    """The re-check as the summary prints it, best mean first."""
    rows = sorted(record["results"].items(), key=lambda item: -item[1]["mean"])
    lines = [f"finalists, each trained {record['reseeds']} more times with other seeds "
             f"({objective}: mean ± SD over its runs; the first value is the search's):"]
    for number, r in rows:
        mark = "  <- champion" if int(number) == record["champion"] else ""
        stopped = f", {len(r['stopped'])} stopped" if r["stopped"] else ""
        lines.append(f"  #{number:<4} {r['mean']:.4f} ± {r['sd']:.4f} ({r['n']} runs{stopped}; "
                     f"first {r['values'][0]:.4f}){mark}")
    return lines
