"""The test split: the model a study picked, judged once, when the study ends.

Selection uses validation only. A trial that beats the study's best so far keeps its weights
(its best epoch's) beside the study's checkpoints; when the study ends, the best trial's weights
go back into its model, which is scored on the test split once. The scores are recorded on the
study (`medtune_test`) for the summary, the study's MLflow run and `compare`; nothing feeds
them to the sampler or the pruner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import optuna

from search.checkpoints import study_folder
from search.training import compiled_model, fresh_keras_session

TEST_ATTR = "medtune_test"
REFIT_ATTR = "medtune_refit"  # the champion's refit (`search.refit`): trial, epochs, values


def weights_file(storage: str, study: str, number: int) -> Path:
    return study_folder(storage, study) / f"best-t{number:04d}.weights.h5"


def refit_file(storage: str, study: str) -> Path:
    """The champion's weights when a refit beat its trial (`search.refit`)."""
    return study_folder(storage, study) / "refit.weights.h5"


def keep_best(model: keras.Model, storage: str, study: optuna.Study, number: int) -> None:
    """Save the weights of trial `number`, the best so far; earlier bests' files go."""
    path = weights_file(storage, study.study_name, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    for older in path.parent.glob("best-t*.weights.h5"):
        if older != path and _number(older) < number:
            older.unlink(missing_ok=True)


def _number(path: Path) -> int:
    return int(path.name.removeprefix("best-t").split(".")[0])


def judge_best(spec, problem, study: optuna.Study, storage: str,
               refit: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The study's pick scored on the test split (every compiled metric), recorded on the
    study: the best trial's model, or its refit when the refit beat it on validation (`refit`,
    from `search.refit`). None when the data has no test split or the weights are not on this
    machine."""
    if not hasattr(problem, "test_dataset") or "x_test" not in problem.data.extra:
        return None
    try:
        best = study.best_trial
    except ValueError:  # no completed trial
        return None
    refit = refit or study.user_attrs.get(REFIT_ATTR)  # an earlier run's, as export reads it
    refitted = bool(refit and refit["trial"] == best.number and refit["champion"])
    model_kind = "refit" if refitted else "trial"
    recorded = study.user_attrs.get(TEST_ATTR)
    if (recorded and recorded.get("trial") == best.number
            and recorded.get("model", "trial") == model_kind):
        return recorded  # judged once: a continued study with the same pick is not rescored
    path = (refit_file(storage, study.study_name) if refitted
            else weights_file(storage, study.study_name, best.number))
    if not path.is_file():
        return None
    config = problem.config(best.params)
    with fresh_keras_session():
        model = compiled_model(spec, problem, config)
        model.load_weights(path)
        scores = model.evaluate(problem.test_dataset(config), return_dict=True, verbose=0)
    result = {"trial": best.number, "model": model_kind,
              "n_test": len(problem.data.extra["y_test"]),
              **{f"test_{k}": float(v) for k, v in scores.items()}}
    study.set_user_attr(TEST_ATTR, result)
    return result
