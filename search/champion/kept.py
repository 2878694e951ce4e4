"""The models a study keeps: those of its best `top_k` trials (`[selection]`), as MLflow logged
models of their trial runs, so the test split, the refit and `medtune export` load them from
MLflow on any machine of the study, and nothing is trained twice.

A completed trial that ranks among the best `top_k` (by the objective; an earlier trial wins a
tie) logs its best epoch's model; the model of a trial it pushes out of the top `top_k` is
deleted with its files. The trial records its model's id (`model_id`), the refit its own in the
study's refit record.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import keras
import optuna

from search.records import (
    champion_trial,
    ensemble_id,
    facts,
    lab_recipe,
    note,
    ranked,
    study_facts,
)
from search.spec.study_files import StudySpec
from search.tracking.manifest import served_requirements
from search.tracking.models import drop_model, kept_model, live_models
from search.tracking.trial_run import TrialRun


class _Trial(Protocol):  # an Optuna trial, or a Keras Tuner trial's record
    number: int

    def set_user_attr(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class Keeper:
    """What a study's models are kept with: its spec, data and image size."""

    spec: StudySpec
    problem: Any  # search.trial.problems.Classification | Segmentation
    image_size: int  # the images' side (a transfer head's input is features, not images)

    def metadata(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """What `medtune export` needs beside the weights: the settings the image predictor
        (`search.serving.predictor`, its `preprocessing.json`) reads."""
        data = self.problem.data
        return {"medtune": {
            "task": self.spec.name, "image_size": self.image_size,
            "kind": self.problem.kind,
            "class_names": data.class_names, "loss": config.get("loss", "")}}

    def keep(self, run: TrialRun, study_name: str, result, kind: str) -> str:
        """Log `result`'s model (a trial's or a refit's best epoch) as a kept model of `run`;
        returns its id."""
        tags = {"medtune.study": study_name, "medtune.task": self.spec.name,
                "medtune.kind": kind}
        return run.keep_model(result.model, step=result.best_epoch, metrics=result.metrics,
                              metadata=self.metadata(result.config), tags=tags,
                              requirements=served_requirements())

    def keep_if_top(self, study: optuna.Study, trial: _Trial, run: TrialRun, result
                    ) -> str | None:
        """Keep `result`'s model if `trial` (ending with `result.value`) is among the study's
        best `top_k`, or is the lab's first recipe (the report's bar), and delete the models of
        the trials it pushes out. Returns the kept id."""
        top_k, lab = self.spec.selection["top_k"], lab_recipe(study)
        order = ranked(study, (trial.number, result.value))
        if trial.number not in order[:top_k] and trial.number != lab:
            return None
        try:
            model_id = self.keep(run, study.study_name, result, "trial")
        except Exception as error:  # the trial's value stands; export can replay it
            warnings.warn(f"trial {trial.number}'s model not kept in MLflow: {error}",
                          stacklevel=2)
            return None
        note(trial, model_id=model_id)
        fallen = [facts(t).model_id for t in study.get_trials(deepcopy=False)
                  if t.number in order[top_k:] and t.number != lab and facts(t).model_id]
        if fallen:
            experiment = run.client.get_run(run.run_id).info.experiment_id
            live = live_models(run.client, experiment, study.study_name)
            for old in fallen:
                if old in live:  # workers sharing the study may have deleted it already
                    try:
                        drop_model(run.client, old)
                    except Exception as error:  # the trial stands; its storage is the cost
                        warnings.warn(f"kept model {old} not deleted: {error}", stacklevel=2)
        return model_id


def champion_id(study: optuna.Study, refit: Mapping[str, Any] | None = None) -> str | None:
    """The id of the study's champion model: the finalists' ensemble's when it is champion,
    else its refit's (`refit`, else the study's refit record) when the refit beat the champion
    trial (the best, or the re-checked finalists' best), else that trial's; None without a
    completed trial or a kept model."""
    if ensemble := ensemble_id(study):  # the finalists averaged beat the best on held-in runs
        return ensemble
    refit = refit or study_facts(study).refit
    best = champion_trial(study)
    if best is None:
        return None
    if refit and refit["trial"] == best.number and refit["champion"] and refit.get("model_id"):
        return refit["model_id"]
    return facts(best).model_id


def load(model_id: str, tracking_uri: str | None) -> keras.Model:
    """A kept model's Keras model (uncompiled)."""
    return kept_model(model_id, tracking_uri)[0]
