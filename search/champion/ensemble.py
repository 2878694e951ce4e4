"""The ensemble champion: the finalists' models averaged (probabilities, hinge margins or
U-Net mask maps) may be the study's champion, but only where the average beats the single best
finalist on held-in evidence: the finalists' own re-runs (`search.champion.finalists`), each
scored on the images it was validated on (each fold's, or the validation split for other
seeds), which no search chose on. The test split never decides it.

For run k (fold k, or seed k) the finalists' validation outputs are averaged and scored with
the trials' own compiled metrics; the ensemble's mean over the runs is set against the
champion's mean over the same runs. Members share the champion's loss (a hinge margin and a
probability do not average). When the ensemble wins, the finalists' kept models (trained on
the search's split) are joined into one Keras model (`models.ensemble`), kept in MLflow as the
study's champion model: the test split, export and Grad-CAM take it as one model.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import optuna

from models.ensemble import build_ensemble
from search.champion.kept import Keeper, load
from search.records import facts
from search.tracking.study_run import StudyTracker
from search.tracking.trial_run import TrialRecord
from search.trial.run import TrialResult
from search.trial.training import compile_model, fresh_keras_session

Outputs = tuple[np.ndarray, np.ndarray]  # a model's validation outputs and their targets


def validation_outputs(model: keras.Model, problem, config: Mapping[str, Any]) -> Outputs:
    """`model`'s outputs on `problem`'s validation split, in order, and the targets the trial
    scored them against (hinge's -1/+1, one-hot, masks)."""
    _, val = problem.datasets(config, seed=0)
    outputs, targets = [], []
    for x, y in val:
        outputs.append(np.asarray(model(x, training=False), dtype="float32"))
        targets.append(np.asarray(y))
    return np.concatenate(outputs), np.concatenate(targets)


def score(problem, config: Mapping[str, Any], outputs: np.ndarray, targets: np.ndarray
          ) -> dict[str, float]:
    """Every compiled metric of `outputs` against `targets`, computed as a trial's are."""
    inputs = keras.Input(shape=outputs.shape[1:])
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    compile_model(identity, config, *problem.loss_and_metrics(config))
    return identity.evaluate(outputs, targets, batch_size=config["batch_size"],
                             return_dict=True, verbose=0)


def weigh(spec, problem, study: optuna.Study, record: Mapping[str, Any],
          held: Mapping[int, Mapping[int, Outputs]]) -> dict[str, Any] | None:
    """The ensemble's held-in values beside the champion's: `held[k][trial]` is the k-th
    re-run's outputs of a finalist (missing where the run stopped). None where fewer than two
    finalists share the champion's loss."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    champion = trials[record["champion"]]
    config = problem.config(champion.params)
    members = [champion.number] + [  # the champion first: the ensemble's settings are its
        n for n in record["trials"] if n != champion.number
        and problem.config(trials[n].params).get("loss") == config.get("loss")]
    if len(members) < 2:
        return None
    metric = spec.objective.removeprefix("val_")
    chance = problem.chance().get(metric, 0.0)
    values = []
    for k in range(1, record["runs"] + 1):
        outputs = [held[k][n] for n in members if n in held.get(k, {})]
        if not outputs:  # every member's run stopped: the ensemble did not hold up either
            values.append(chance)
            continue
        targets = outputs[0][1]
        assert all(np.array_equal(t, targets) for _, t in outputs), "runs validated apart"
        mean = np.mean([o for o, _ in outputs], axis=0)
        values.append(float(score(problem, config, mean, targets)[metric]))
    mine = record["results"][str(champion.number)]["values"][-len(values):]  # its re-runs
    return {"members": members, "values": values, "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values),
            "champion_mean": statistics.mean(mine),
            "chosen": statistics.mean(values) > statistics.mean(mine)}


def keep_ensemble(keeper: Keeper, study: optuna.Study, tracker: StudyTracker,
                  ensemble: dict[str, Any], objective: str) -> dict[str, Any]:
    """Join the members' kept models into one, kept in MLflow in a child run of the study
    (`<study>-ensemble`, with the held-in values); `ensemble` gains its `model_id`, or loses
    `chosen` (with a warning) where a member's model cannot be loaded."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    ids = [facts(trials[n]).model_id for n in ensemble["members"]]
    champion = trials[ensemble["members"][0]]
    config = keeper.problem.config(champion.params)
    record = TrialRecord(champion.number)
    fixed = {"members": ",".join(map(str, ensemble["members"])), "held_in_runs": ensemble["n"]}
    try:
        with fresh_keras_session():
            model = build_ensemble([load(i, tracker.tracking_uri) for i in ids])
            with tracker.trial_run(record, {}, fixed, name=f"{study.study_name}-ensemble",
                                   kind="ensemble") as run:
                for step, value in enumerate(ensemble["values"], start=1):
                    run.log_metrics({f"held_in_{objective.removeprefix('val_')}": value},
                                    step=step)
                run.log_metrics({"ensemble.mean": ensemble["mean"], "ensemble.sd": ensemble["sd"]})
                result = TrialResult(ensemble["mean"], 0, model, False, config,
                                     {objective: ensemble["mean"]})
                ensemble["model_id"] = keeper.keep(run, study.study_name, result, "ensemble")
                ensemble["run_id"] = facts(record).run_id
    except (ValueError, TypeError) as error:  # a member is gone: the single champion stands
        warnings.warn(f"the ensemble is not champion: {error}", stacklevel=2)
        ensemble["chosen"] = False
    return ensemble
