"""What differs between kinds of lab task: the data a trial is fed and the artifacts it logs.

A new lab task is a study file; a kind here is needed only for a new *kind* of task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from datasets.images import unit_range
from datasets.loader import TaskData
from datasets.pipeline import augmenter, make_dataset
from models.gradcam import gradcam
from models.losses import (
    encode_targets,
    loss_and_metrics,
    predicted_classes,
    segmentation_loss_and_metrics,
)
from search.spec.study_files import StudySpec
from search.tracking import plots
from search.tracking.trial_run import TrialRun


def augmentation_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """This trial's augmentation ranges: its `aug_*` params (see `[augment_space]`)."""
    return {k.removeprefix("aug_"): v for k, v in params.items() if k.startswith("aug_")}


class Classification:
    """Images (or features) and class labels; confusion matrix and, for two classes, ROC."""

    kind = "classification"  # what every layer above asks of a problem, rather than its data

    def __init__(self, spec: StudySpec, data: TaskData):
        self.spec = spec
        self.data = data

    def config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        shape = self.data.x_train.shape[1:]
        return {
            **self.spec.fixed,
            **params,
            "input_shape": (*shape, 1) if len(shape) == 2 else shape,
            "n_classes": self.data.n_classes,
            "loss": params.get("loss", self.spec.fixed.get("loss", "bce")),
        }

    def loss_and_metrics(self, config: Mapping[str, Any]) -> tuple:
        return loss_and_metrics(config["loss"], self.data.n_classes)

    def majority_rates(self) -> dict[str, float]:
        """Each split's share of its most common class: the accuracy of a constant guess."""
        return {split: float(np.bincount(y).max() / len(y))
                for split, y in self.labels().items() if len(y)}

    def labels(self) -> dict[str, np.ndarray]:
        data = self.data
        found = {"train": data.y_train, "val": data.y_val}
        return found | ({"test": data.extra["y_test"]} if "y_test" in data.extra else {})

    def chance(self) -> dict[str, float]:
        """What a constant prediction scores on each metric, on validation."""
        return {"accuracy": self.majority_rates()["val"],
                "balanced_accuracy": 1.0 / self.data.n_classes, "auc": 0.5}

    def datasets(self, config: Mapping[str, Any], seed: int) -> tuple[tf.data.Dataset, ...]:
        data, loss = self.data, config["loss"]
        augment = None
        if config.get("augment"):
            augment = augmenter(augmentation_settings(config), seed)
        train = make_dataset(
            data.x_train, encode_targets(data.y_train, loss, data.n_classes),
            batch_size=config["batch_size"], shuffle_seed=seed, augment=augment,
        )
        val = make_dataset(
            data.x_val, encode_targets(data.y_val, loss, data.n_classes),
            batch_size=config["batch_size"],
        )
        return train, val

    def test_dataset(self, config: Mapping[str, Any]) -> tf.data.Dataset:
        """The test split, for judging the picked model once (`search.champion.holdout`)."""
        x, y = self.data.extra["x_test"], self.data.extra["y_test"]
        return make_dataset(x, encode_targets(y, config["loss"], self.data.n_classes),
                            batch_size=config["batch_size"])

    def log_artifacts(
        self, run: TrialRun, model: keras.Model, val: tf.data.Dataset, config: Mapping,
        epoch: int, best_so_far: bool,
    ) -> None:
        outputs = model.predict(val, verbose=0)
        predicted = predicted_classes(outputs, config["loss"])
        names = self.data.class_names
        title = f"{run.name}: validation, epoch {epoch}"
        run.log_figure(
            plots.confusion_matrix(self.data.y_val, predicted, names, title=title),
            "plots/confusion_matrix.png",
        )
        if self.data.n_classes == 2:
            scores = np.asarray(outputs).reshape(len(outputs), -1)[:, -1]
            figure, _ = plots.roc_curve(self.data.y_val, scores, names, title=title)
            run.log_figure(figure, "plots/roc_curve.png")  # its AUC is the epoch's val_auc
        gradcam = self.spec.gradcam
        if gradcam and (gradcam["trials"] == "all" or best_so_far):
            self._log_gradcam(run, model, predicted, gradcam["images"], title)

    def _log_gradcam(
        self, run: TrialRun, model: keras.Model, predicted: np.ndarray, n: int, title: str
    ) -> None:
        """Grad-CAM on a fixed set of validation images: the first n/classes of each class."""
        y = self.data.y_val
        per_class = max(1, n // self.data.n_classes)
        chosen = np.concatenate([np.flatnonzero(y == c)[:per_class]
                                 for c in range(self.data.n_classes)])
        images = self.data.x_val[chosen]
        heatmaps = gradcam(model, unit_range(images[..., None]))
        run.log_figure(
            plots.gradcam_overlays(images, heatmaps, y[chosen], predicted[chosen],
                                   self.data.class_names, title=f"Grad-CAM, {title}"),
            "plots/gradcam.png",
        )


class Segmentation:
    """Images and 0/1 masks; dice, precision and recall; overlays of true and predicted masks."""

    kind = "segmentation"

    def __init__(self, spec: StudySpec, data: TaskData):
        self.spec = spec
        self.data = data

    def config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.spec.fixed, **params, "input_shape": (*self.data.x_train.shape[1:], 1)}

    def loss_and_metrics(self, config: Mapping[str, Any]) -> tuple:
        return segmentation_loss_and_metrics(config["loss"])

    def majority_rates(self) -> dict[str, float]:
        """Each split's share of background pixels: the accuracy of an empty mask."""
        return {"train": float(1 - self.data.y_train.mean()),
                "val": float(1 - self.data.y_val.mean())}

    def chance(self) -> dict[str, float]:
        """What a constant mask scores on validation: the dice of marking every pixel."""
        share = float(self.data.y_val.mean())
        return {"dice": 2 * share / (1 + share)}

    def datasets(self, config: Mapping[str, Any], seed: int) -> tuple[tf.data.Dataset, ...]:
        data = self.data
        augment = None
        if config.get("augment"):
            augment = augmenter(augmentation_settings(config), seed, masks=True)
        masks = {split: y[..., None].astype("float32") for split, y in
                 (("train", data.y_train), ("val", data.y_val))}
        train = make_dataset(data.x_train, masks["train"], batch_size=config["batch_size"],
                             shuffle_seed=seed, augment=augment)
        val = make_dataset(data.x_val, masks["val"], batch_size=config["batch_size"])
        return train, val

    def log_artifacts(
        self, run: TrialRun, model: keras.Model, val: tf.data.Dataset, config: Mapping,
        epoch: int, best_so_far: bool,
    ) -> None:
        settings = self.spec.artifacts
        n = min(settings["overlay_images"], len(self.data.x_val))
        images = self.data.x_val[:n]
        scores = model.predict(unit_range(images[..., None]), verbose=0)[..., 0]
        predicted = scores > settings["mask_threshold"]
        run.log_figure(
            plots.mask_overlays(images, self.data.y_val[:n], predicted,
                                title=f"{run.name}: validation, epoch {epoch}"),
            "plots/mask_overlays.png",
        )


def make_problem(spec: StudySpec, data: TaskData) -> Classification | Segmentation:
    return Segmentation(spec, data) if data.layout == "pairs" else Classification(spec, data)
