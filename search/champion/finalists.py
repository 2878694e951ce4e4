"""Finalists: when a study ends, its best configurations are trained again before a champion
is named, so the pick is not the luckiest draw among many (the winner's curse of ranking dozens
of configurations on a few hundred validation images).

The study's best `finalists` trials (by validation, at most `top_k`, `[selection]`) are each
trained again as they ran (same params, epochs and early stopping, no pruner), either
- `reseeds` more times on the same split with other seeds (the trial's own value counts too), or,
  where the data set is small (training and validation images together at most `small_data`),
- by `folds`-fold cross-validation over training + validation (stratified by class, split with
  the study's `[split] seed`): every image is validated on once, so the mean no longer rests on
  the few hundred images the search ranked on; the trial's own value does not count then.
Run k is seeded `trial seed + k * SEED_STRIDE`. Each is a child run of the study (`kind =
finalist`, named `<study>-t0007-r1` or `-f1`, with its curves). The champion is the finalist
with the best mean; its kept model (the trial's) is what the test split judges, the refit
continues and `medtune export` registers. A run that gets stuck, collapses or diverges counts at
chance: the configuration does not hold up. Under an epoch budget the re-runs take at most
`[selection] share` of it (fewer finalists, one at least). Where the finalists' averaged outputs
beat the champion on the same re-runs, their ensemble is the champion (`search.champion.ensemble`).
"""

from __future__ import annotations

import dataclasses
import statistics
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import optuna
from sklearn.model_selection import KFold, StratifiedKFold

from search.champion.ensemble import keep_ensemble, validation_outputs, weigh
from search.champion.kept import Keeper
from search.outcomes import TrialFailed
from search.records import facts, note_study, ranked, study_facts
from search.spec.study_files import StudySpec
from search.tracking.models import drop_model
from search.tracking.study_run import StudyTracker
from search.tracking.trial_run import TrialRecord
from search.trial.problems import make_problem
from search.trial.run import Planned, trial_of_study

SEED_STRIDE = 100_003  # re-run k of a trial seeded `seed + k * SEED_STRIDE`: no other trial's


def room(spec: StudySpec, problem, finalists: int, epochs: int, budget: int | None):
    """What the search keeps for its finalists (a function of the study, for `EpochBudget`)."""
    runs = method(spec, problem)[1]

    def kept(study: optuna.Study) -> int:  # the search keeps (1 - share) of a budget at least
        n = planned(spec, problem, study, finalists, epochs, budget)
        wanted = reserve(study, n, runs, epochs) if n else 0
        return min(wanted, int(spec.selection["share"] * budget)) if budget else wanted
    return kept


def planned(spec: StudySpec, problem, study: optuna.Study, finalists: int, epochs: int,
            budget: int | None) -> int:
    """How many finalists the study re-checks: `finalists` (at most `top_k`), fewer where their
    re-runs would take more than `[selection] share` of an epoch budget (one at least): a
    re-check that left the search no epochs would re-check little worth having."""
    n, runs = min(finalists, spec.selection["top_k"]), method(spec, problem)[1]
    while budget and n > 1 and reserve(study, n, runs, epochs) > spec.selection["share"] * budget:
        n -= 1
    return n


def method(spec: StudySpec, problem) -> tuple[str, int]:
    """How the finalists are re-checked: ("folds", k) on a small data set, else ("reseeds", R)."""
    selection, data = spec.selection, problem.data
    if selection["folds"] >= 2 and len(data.y_train) + len(data.y_val) <= selection["small_data"]:
        return "folds", selection["folds"]
    return "reseeds", selection["reseeds"]


def reserve(study: optuna.Study, finalists: int, runs: int, epochs: int) -> int:
    """Epochs to keep for the re-check of `finalists` trials (`top_k` at most: pass it so) of
    `runs` runs each: a re-run trains about as long as a completed trial (none before the
    first trial completes: there is nothing to re-check yet)."""
    done = [facts(t).epochs_run or epochs for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return round(finalists * runs * statistics.mean(done)) if done else 0


def folds(spec: StudySpec, problem, k: int) -> Iterator:
    """The problem `k` times over training + validation, each fold validated on once
    (stratified by class for a classifier; the split's seed)."""
    data = problem.data
    x, y = (np.concatenate([data.x_train, data.x_val]), np.concatenate([data.y_train, data.y_val]))
    seed = spec.split["seed"]
    masks = problem.kind == "segmentation"  # no class to stratify by
    splitter = (KFold(k, shuffle=True, random_state=seed) if masks
                else StratifiedKFold(k, shuffle=True, random_state=seed))
    for train, val in splitter.split(x, None if masks else y):
        yield make_problem(spec, dataclasses.replace(
            data, x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val]))


def recheck(spec: StudySpec, keeper: Keeper, study: optuna.Study, tracker: StudyTracker, *,
            finalists: int, epochs: int, budget: int | None = None, verbose: bool = True
            ) -> dict[str, Any] | None:
    """Train the study's best `finalists` configurations again and name the champion; the
    record (also the study's `StudyFacts.finalists`), or None when there is nothing to do."""
    how, count = method(spec, keeper.problem)
    top = ranked(study)[:planned(spec, keeper.problem, study, finalists, epochs, budget)]
    if not top or not count:
        return None
    done = study_facts(study).finalists
    if done and done["trials"] == top and (done["method"], done["runs"]) == (how, count):
        return done  # a continued study with the same finalists is not retrained
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    results, spent, held = {}, 0, {}
    for number in top:
        trial = trials[number]
        problems = (folds(spec, keeper.problem, count) if how == "folds"
                    else [keeper.problem] * count)
        runs = [_rerun(spec, problem, study, tracker, trial, k, epochs, how, verbose,
                       outputs=spec.selection["ensemble"] and len(top) > 1)
                for k, problem in enumerate(problems, start=1)]
        spent += sum(r["epochs"] for r in runs)
        for k, run in enumerate(runs, start=1):  # each run's validation outputs, if it ended
            if (outputs := run.pop("outputs")) is not None:
                held.setdefault(k, {})[number] = outputs
        # Folds validate on other images than the search did: the trial's value is not one.
        values = [*([] if how == "folds" else [trial.value]), *(r["value"] for r in runs)]
        results[str(number)] = {
            "values": values, "searched": trial.value,
            "mean": statistics.mean(values), "sd": statistics.stdev(values),
            "n": len(values), "run_ids": [r["run_id"] for r in runs],
            "stopped": [r["stopped"] for r in runs if r["stopped"]]}
    # The best mean; of equal means, the better-ranked trial.
    champion = max(top, key=lambda n: (results[str(n)]["mean"], -top.index(n)))
    record = {"trials": top, "method": how, "runs": count, "results": results,
              "champion": champion, "epochs": spent + (done or {}).get("epochs", 0)}
    if spec.selection["ensemble"] and held:
        record["ensemble"] = weigh(spec, keeper.problem, study, record, held)
        if record["ensemble"] and record["ensemble"]["chosen"]:
            keep_ensemble(keeper, study, tracker, record["ensemble"], spec.objective)
    note_study(study, finalists=record)
    if old := ((done or {}).get("ensemble") or {}).get("model_id"):  # an earlier re-check's
        try:
            drop_model(tracker.client, old)
        except Exception as error:  # the new record stands; the old model's storage is the cost
            warnings.warn(f"the earlier ensemble's model {old} not deleted: {error}",
                          stacklevel=2)
    return record


def _rerun(spec: StudySpec, problem, study: optuna.Study, tracker: StudyTracker,
           trial: optuna.trial.FrozenTrial, k: int, epochs: int, how: str,
           verbose: bool, outputs: bool) -> dict[str, Any]:
    """Trial `trial` trained again, the k-th time (another seed; on fold k's split for
    "folds"); its value, epochs and run."""
    seed = facts(trial).seed_or_number(trial.number) + k * SEED_STRIDE
    epochs = facts(trial).epochs or epochs  # a Keras Tuner trial's own
    record = TrialRecord(trial.number)
    plan = Planned(spec, problem, trial.params, epochs, seed)
    name = f"{study.study_name}-t{trial.number:04d}-{how[0]}{k}"
    chance = problem.chance().get(spec.objective.removeprefix("val_"), 0.0)
    outcome = {"value": chance, "stopped": None, "epochs": 0, "outputs": None}
    try:
        # Measured, not searched: the stuck stop waits as for a lab recipe (a slow seed or fold
        # of a configuration that completed in the search is not a configuration that fails).
        with trial_of_study(tracker, record, plan, name=name, kind="finalist",
                            extra={"finalist_of_trial": trial.number, how.removesuffix("s"): k,
                                   "seed": seed},
                            baseline=True, verbose=verbose) as (run, result):
            if outputs:  # for the ensemble's weighing
                outcome["outputs"] = validation_outputs(result.model, problem, result.config)
        outcome["value"] = result.value
    except (optuna.TrialPruned, TrialFailed) as stop:  # it did not hold up: counts at chance
        outcome["stopped"] = str(stop)
    outcome["epochs"] = facts(record).epochs_run or 0
    outcome["run_id"] = facts(record).run_id
    return outcome


def summary_lines(record: Mapping[str, Any], objective: str) -> list[str]:
    """The re-check as the summary prints it, best mean first."""
    rows = sorted(record["results"].items(), key=lambda item: -item[1]["mean"])
    how = (f"by {record['runs']}-fold cross-validation over training + validation"
           if record["method"] == "folds" else
           f"{record['runs']} more times with other seeds (the first run is the search's)")
    lines = [f"finalists, each trained {how}; {objective}, mean ± SD over its runs:"]
    for number, r in rows:
        mark = "  <- champion" if int(number) == record["champion"] else ""
        stopped = f", {len(r['stopped'])} stopped" if r["stopped"] else ""
        lines.append(f"  #{number:<4} {r['mean']:.4f} ± {r['sd']:.4f} ({r['n']} runs{stopped}; "
                     f"searched {r['searched']:.4f}){mark}")
    if ensemble := record.get("ensemble"):
        verdict = ("  <- champion (it beats the best finalist on the same runs)"
                   if ensemble["chosen"] and ensemble.get("model_id") else
                   f"; not champion: the best finalist has {ensemble['champion_mean']:.4f} "
                   "on the same runs")
        members = ", ".join(f"#{n}" for n in ensemble["members"])
        lines.append(f"  ensemble of {members}: {ensemble['mean']:.4f} ± {ensemble['sd']:.4f} "
                     f"({ensemble['n']} held-in runs){verdict}")
    return lines
