"""The test split: the model a study picked, judged once, when the study ends.

Selection uses validation only. The study's best trials keep their models (their best epoch's)
in MLflow (`search.champion.kept`); when the study ends, the champion (the best trial's model, or
its refit's) is loaded from there, on whichever machine ends the study, and scored on the test
split once. The scores are recorded on the study (`StudyFacts.test`) for the summary, the study's
MLflow run and `compare`; nothing feeds them to the sampler or the pruner.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from search.records import champion_trial, model_kind, note_study, study_facts
from search.trial.training import compile_model, compiled_model, fresh_keras_session


def judge_best(spec, problem, study: optuna.Study, tracking_uri: str | None,
               refit: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The study's pick scored on the test split (every compiled metric), recorded on the
    study: the best trial's model, or its refit when the refit beat it on validation (`refit`,
    from `search.champion.refit`). None when the data has no test split or the pick kept no model (a
    study older than kept models)."""
    from search.champion import kept  # (kept loads through tracking, which the trial imports early)

    if not hasattr(problem, "test_dataset") or "x_test" not in problem.data.extra:
        return None
    best = champion_trial(study)
    if best is None:  # no completed trial
        return None
    model_id = kept.champion_id(study, refit)  # (an earlier run's refit, as export reads it)
    if model_id is None:
        return None
    kind = model_kind(study, best, model_id)
    recorded = study_facts(study).test
    if recorded and recorded.get("model_id") == model_id:
        return recorded  # judged once: a continued study with the same pick is not rescored
    try:
        scores = test_scores(spec, problem, best.params, model_id, tracking_uri,
                             ensemble=kind == "ensemble")
    except ValueError as error:  # its tracking store is out of reach: say so, go on
        warnings.warn(f"the test split was not judged: {error}", stacklevel=2)
        return None
    result = {"trial": best.number, "model": kind, "model_id": model_id,
              "n_test": len(problem.data.extra["y_test"]),
              **{f"test_{k}": float(v) for k, v in scores.items()}}
    note_study(study, test=result)
    return result


def test_scores(spec, problem, params: dict[str, Any], model_id: str, tracking_uri: str | None,
                *, ensemble: bool = False) -> dict[str, float]:
    """Every compiled metric of kept model `model_id` (a trial's with `params`, or an
    ensemble) on the test split; a ValueError where MLflow cannot give the model."""
    from search.champion import kept

    config = problem.config(params)
    with fresh_keras_session():
        loaded = kept.load(model_id, tracking_uri)
        if ensemble:  # one model of several: compiled as it was kept
            model = loaded
            compile_model(model, config, *problem.loss_and_metrics(config))
        else:  # rebuilt in the study's precision, with the kept weights
            model = compiled_model(spec, problem, config)
            model.set_weights(loaded.get_weights())
        return model.evaluate(problem.test_dataset(config), return_dict=True, verbose=0)
