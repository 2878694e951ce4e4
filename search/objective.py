"""The objective: one trial builds a model from its params, trains it, and logs what happened.

The data arrives already decoded (once per study, in `datasets.loader`); a trial only builds,
trains and logs.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import optuna
from optuna_integration import KerasPruningCallback

from datasets.loader import TaskData
from datasets.pipeline import build_augmenter, make_dataset
from models import build_model
from models.losses import encode_targets, predicted_classes
from search import plots
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
    data: TaskData,
    tracker: StudyTracker,
    *,
    epochs: int,
    seed: int,
    verbose: bool = True,
) -> Callable[[optuna.Trial], float]:
    monitor = spec.objective
    fixed = {**spec.fixed, "epochs": epochs, "image_size": data.x_train.shape[1]}

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, spec.space)
        config = {
            **spec.fixed,
            **params,
            "input_shape": (*data.x_train.shape[1:], 1),
            "n_classes": data.n_classes,
        }
        with tracker.trial_run(trial, params, fixed) as run, fresh_keras_session():
            trial_seed = seed + trial.number  # a replay with the same seed retrains the same way
            keras.utils.set_random_seed(trial_seed)
            model = build_model(spec.model, config)
            compile_model(model, config)

            augmenter = build_augmenter(spec.augmentation, trial_seed) if config.get(
                "augment") else None
            train = make_dataset(
                data.x_train, encode_targets(data.y_train, config["loss"], data.n_classes),
                batch_size=config["batch_size"], shuffle_seed=trial_seed, augmenter=augmenter,
            )
            val = make_dataset(
                data.x_val, encode_targets(data.y_val, config["loss"], data.n_classes),
                batch_size=config["batch_size"],
            )
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

            # The weights are the best epoch's (EarlyStopping restored them): score those.
            outputs = model.predict(val, verbose=0)
            run.log_figure(
                plots.confusion_matrix(
                    data.y_val, predicted_classes(outputs, config["loss"]), data.class_names,
                    title=f"{run.name}: validation, epoch {epoch}",
                ),
                "plots/confusion_matrix.png",
            )
            run.log_metrics({"objective": value, "best_epoch": epoch})
            trial.set_user_attr("best_epoch", epoch)
            return value

    return objective
