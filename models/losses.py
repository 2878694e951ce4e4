"""Losses, metrics and target encodings, chosen by name so they can be searched.

Hinge is done right (the labs did not): targets are relabeled 0 -> -1, the model's output is
linear (see `models.blocks.output_layer`), and accuracy compares signs. So a hinge trial and a
BCE trial report the same kind of `accuracy` and can share one objective.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

BINARY_LOSSES = ("bce", "hinge")


@keras.saving.register_keras_serializable(package="medtune")
def sign_accuracy(y_true, y_pred):
    """Fraction of samples whose predicted margin has the sign of its -1/+1 target."""
    return ops.cast(ops.equal(y_true > 0, y_pred > 0), "float32")


@keras.saving.register_keras_serializable(package="medtune")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean recall over classes: 0.5 for any constant prediction on two classes, however
    unbalanced the data, so it moves as soon as a model tells classes apart. `encoding` says
    how targets and outputs carry the class: "bce" (p > 0.5), "hinge" (sign), "onehot"."""

    def __init__(self, n_classes: int = 2, encoding: str = "bce", name="balanced_accuracy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes, self.encoding = n_classes, encoding
        self.counts = self.add_variable((n_classes, n_classes), initializer="zeros",
                                        name="confusion")

    def _classes(self, values):
        if self.encoding == "onehot":
            return ops.argmax(values, axis=-1)
        threshold = 0.0 if self.encoding == "hinge" else 0.5
        return ops.cast(ops.reshape(values, (-1,)) > threshold, "int32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true, predicted = self._classes(y_true), self._classes(y_pred)
        pairs = ops.one_hot(true * self.n_classes + predicted, self.n_classes ** 2)
        self.counts.assign_add(ops.reshape(ops.sum(pairs, axis=0), self.counts.shape))

    def result(self):
        per_class = ops.sum(self.counts, axis=1)
        recall = ops.divide_no_nan(ops.diagonal(self.counts), per_class)
        present = ops.cast(per_class > 0, "float32")
        return ops.divide_no_nan(ops.sum(recall * present), ops.sum(present))

    def reset_state(self):
        self.counts.assign(ops.zeros(self.counts.shape))

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes, "encoding": self.encoding}


@keras.saving.register_keras_serializable(package="medtune")
class MarginAUC(keras.metrics.AUC):
    """ROC AUC of a hinge model: -1/+1 targets, linear margins (a sigmoid keeps the order)."""

    def __init__(self, name="auc", **kwargs):
        kwargs["from_logits"] = True  # (also in a saved config: the margins are logits)
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(ops.cast(y_true > 0, "float32"), y_pred, sample_weight)


def loss_and_metrics(loss: str, n_classes: int = 2) -> tuple[keras.losses.Loss, list]:
    """The Keras loss and the metrics that score it correctly: `accuracy`, `auc` and
    `balanced_accuracy`, any of which a study file may name as its objective."""
    if n_classes > 2 or loss == "categorical":
        return keras.losses.CategoricalCrossentropy(), [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),  # one-vs-rest, micro-averaged
            BalancedAccuracy(n_classes, "onehot"),
        ]
    if loss == "bce":
        return keras.losses.BinaryCrossentropy(), [
            keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc"),
            BalancedAccuracy(2, "bce")]
    if loss == "hinge":
        return keras.losses.Hinge(), [
            keras.metrics.MeanMetricWrapper(sign_accuracy, name="accuracy"), MarginAUC(),
            BalancedAccuracy(2, "hinge")]
    raise ValueError(f"unknown loss {loss!r}; choose one of: bce, hinge, categorical")


def encode_targets(labels: np.ndarray, loss: str, n_classes: int = 2) -> np.ndarray:
    """Integer class labels -> what the loss expects (0/1, -1/+1 or one-hot)."""
    labels = np.asarray(labels).astype("int64").reshape(-1)
    if n_classes > 2 or loss == "categorical":
        return np.eye(n_classes, dtype="float32")[labels]
    targets = labels.astype("float32")[:, None]
    return 2 * targets - 1 if loss == "hinge" else targets


def predicted_classes(outputs: np.ndarray, loss: str) -> np.ndarray:
    """Integer classes from model outputs: argmax, sign of the margin, or p > 0.5."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        return outputs.argmax(axis=1)
    threshold = 0.0 if loss == "hinge" else 0.5
    return (outputs.reshape(-1) > threshold).astype("int64")


# --- segmentation -------------------------------------------------------------------------

SEGMENTATION_LOSSES = ("bce", "dice", "bce_dice")


def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """dice = (2 * sum(y * p) + s) / (sum(y) + sum(p) + s), over the whole batch, as in Lab 3."""
    y_true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
    y_pred = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
    overlap = ops.sum(y_true * y_pred)
    return (2.0 * overlap + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


def dice_loss(y_true, y_pred):
    return 1.0 - dice_coefficient(y_true, y_pred)


def bce_dice_loss(y_true, y_pred):
    return keras.losses.binary_crossentropy(
        ops.reshape(y_true, (-1, 1)), ops.reshape(y_pred, (-1, 1))
    ) + dice_loss(y_true, y_pred)


def segmentation_loss_and_metrics(loss: str) -> tuple:
    """Loss by name, with dice, precision and recall of the lung pixels as metrics."""
    losses = {"bce": keras.losses.BinaryCrossentropy(), "dice": dice_loss,
              "bce_dice": bce_dice_loss}
    if loss not in losses:
        raise ValueError(
            f"unknown segmentation loss {loss!r}; choose one of: {', '.join(SEGMENTATION_LOSSES)}"
        )
    return losses[loss], [
        keras.metrics.MeanMetricWrapper(dice_coefficient, name="dice"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
    ]
