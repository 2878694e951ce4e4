"""The objective: one trial builds a model from its params, trains it, and logs what happened.

The data arrives already decoded (once per study, in `datasets.loader`); a trial only builds,
trains and logs. What differs between kinds of task (the data fed, the artifacts logged) is in
`search.problems`.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import keras
import optuna
from optuna_integration import KerasPruningCallback

from models import build_model
from search.problems import Classification, Segmentation
from search.spec import StudySpec, suggest
from search.tracking import StudyTracker
from search.training import (
    EpochLines,
    best_epoch,
    check_finite,
    compile_model,
    fresh_keras_session,
)


def make_objective(
    spec: StudySpec,
    problem: Classification | Segmentation,
    tracker: StudyTracker,
    *,
    epochs: int,
    seed: int,
    verbose: bool = True,
) -> Callable[[optuna.Trial], float]:
    monitor = spec.objective

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, spec)
        config = problem.config(params)
        fixed = {**spec.fixed, "epochs": epochs, "input_shape": config["input_shape"]}
        with tracker.trial_run(trial, params, fixed) as run, fresh_keras_session():
            trial_seed = seed + trial.number  # a replay with the same seed retrains the same way
            keras.utils.set_random_seed(trial_seed)
            model = build_model(spec.model, config)
            compile_model(model, config, *problem.loss_and_metrics(config))
            run.log_text(summary_text(model), "model_summary.txt")
            train, val = problem.datasets(config, trial_seed)

            lines = [EpochLines(run.name, epochs)] if verbose else []
            model.fit(
                train,
                validation_data=val,
                epochs=epochs,
                shuffle=False,  # `train` reshuffles itself every epoch
                verbose=0,
                callbacks=[
                    *lines,
                    run.keras_callback(),  # before pruning, so a pruned epoch is still logged
                    keras.callbacks.TerminateOnNaN(),
                    keras.callbacks.EarlyStopping(
                        monitor, mode="max", restore_best_weights=True,
                        patience=spec.training["early_stopping_patience"],
                    ),
                    KerasPruningCallback(trial, monitor),
                ],
            )
            check_finite(run.history)
            value, epoch = best_epoch(run.history[monitor])

            # The weights are the best epoch's (EarlyStopping restored them): judge those.
            problem.log_artifacts(run, model, val, config, epoch, improves(trial, value))
            run.log_metrics({"objective": value, "best_epoch": epoch})
            trial.set_user_attr("best_epoch", epoch)
            return value

    return objective


def summary_text(model: keras.Model) -> str:
    out = io.StringIO()
    model.summary(print_fn=lambda line, **_: out.write(line + "\n"))
    return out.getvalue()


def improves(trial: optuna.Trial, value: float) -> bool:
    """Whether `value` beats every trial completed so far (the first one always does)."""
    try:
        return value > trial.study.best_value
    except ValueError:  # no completed trial yet
        return True
