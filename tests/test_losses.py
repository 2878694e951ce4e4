"""Hinge done right: -1/+1 targets, linear margins, accuracy on the sign."""

import keras
import numpy as np
import pytest

from models.losses import (
    dice_coefficient,
    dice_loss,
    encode_targets,
    loss_and_metrics,
    predicted_classes,
    segmentation_loss_and_metrics,
    sign_accuracy,
)


def metric_value(metric, y_true, y_pred):
    metric.update_state(np.asarray(y_true, "float32"), np.asarray(y_pred, "float32"))
    return float(metric.result())


def test_sign_accuracy_on_hand_made_margins():
    y_true = [[-1], [-1], [1], [1], [1]]
    y_pred = [[-0.3], [0.2], [2.0], [0.01], [-5.0]]  # right, wrong, right, right, wrong
    assert np.asarray(sign_accuracy(np.array(y_true), np.array(y_pred))).ravel().tolist() == [
        1, 0, 1, 1, 0]
    _, (metric, *_) = loss_and_metrics("hinge")
    assert metric.name == "accuracy"
    assert metric_value(metric, y_true, y_pred) == pytest.approx(3 / 5)


def test_what_the_labs_did_wrong_is_not_what_we_do():
    # The lab kept Keras' binary accuracy with -1 targets: a correct -1 never counts.
    y_true, y_pred = [[-1], [-1], [1], [1]], [[-0.9], [-0.8], [0.7], [0.6]]
    assert metric_value(keras.metrics.BinaryAccuracy(), y_true, y_pred) == pytest.approx(0.5)
    _, (metric, *_) = loss_and_metrics("hinge")
    assert metric_value(metric, y_true, y_pred) == pytest.approx(1.0)


def test_bce_accuracy_threshold():
    _, (metric, *_) = loss_and_metrics("bce")
    assert metric_value(metric, [[0], [1], [1]], [[0.4], [0.6], [0.2]]) == pytest.approx(2 / 3)


def test_targets_per_loss():
    labels = np.array([0, 1, 1, 0])
    assert encode_targets(labels, "bce").ravel().tolist() == [0, 1, 1, 0]
    assert encode_targets(labels, "hinge").ravel().tolist() == [-1, 1, 1, -1]
    one_hot = encode_targets(np.array([0, 2, 8]), "categorical", n_classes=9)
    assert one_hot.shape == (3, 9) and one_hot.argmax(1).tolist() == [0, 2, 8]


def test_hinge_and_bce_score_the_same_predictions_alike():
    labels = np.array([0, 1, 1, 0, 1])
    margins = np.array([[-2.0], [0.5], [-0.1], [-0.3], [3.0]])
    probabilities = 1 / (1 + np.exp(-margins))  # the same decisions as probabilities
    assert predicted_classes(margins, "hinge").tolist() == [0, 1, 0, 0, 1]
    assert predicted_classes(probabilities, "bce").tolist() == [0, 1, 0, 0, 1]
    _, (hinge_acc, *_) = loss_and_metrics("hinge")
    _, (bce_acc, *_) = loss_and_metrics("bce")
    assert metric_value(hinge_acc, encode_targets(labels, "hinge"), margins) == pytest.approx(
        metric_value(bce_acc, encode_targets(labels, "bce"), probabilities))


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'mse'; choose one of: bce, hinge"):
        loss_and_metrics("mse")


def test_dice_against_hand_computed_values():
    y = np.array([[1, 1, 0, 0]], "float32")
    p = np.array([[1, 0, 1, 0]], "float32")
    # 2 * overlap 1 + smooth 1 = 3 over |y| 2 + |p| 2 + 1 = 5
    assert float(dice_coefficient(y, p)) == pytest.approx(3 / 5)
    assert float(dice_coefficient(y, y)) == pytest.approx(1.0)
    soft = np.array([[0.5, 0.5, 0.0, 0.0]], "float32")
    assert float(dice_coefficient(y, soft)) == pytest.approx((2 * 1.0 + 1) / (2 + 1 + 1))
    assert float(dice_loss(y, p)) == pytest.approx(2 / 5)
    assert float(dice_coefficient(np.zeros((1, 4)), np.zeros((1, 4)))) == pytest.approx(1.0)


def test_segmentation_losses_by_name():
    for name in ("bce", "dice", "bce_dice"):
        loss, metrics = segmentation_loss_and_metrics(name)
        assert [m.name for m in metrics] == ["dice", "precision", "recall"]
    with pytest.raises(ValueError, match="unknown segmentation loss 'hinge'"):
        segmentation_loss_and_metrics("hinge")


@pytest.mark.parametrize("loss,y_true,y_pred", [
    ("bce", [[0], [0], [0], [1]], [[0.1], [0.2], [0.9], [0.3]]),
    ("hinge", [[-1], [-1], [-1], [1]], [[-0.1], [-2.0], [0.5], [-0.3]]),
    ("categorical", np.eye(2)[[0, 0, 0, 1]], np.eye(2)[[0, 0, 1, 0]] * 0.8 + 0.1),
])
def test_balanced_accuracy_is_the_mean_recall_of_the_classes(loss, y_true, y_pred):
    _, metrics = loss_and_metrics(loss)
    names = [m.name for m in metrics]
    assert names == ["accuracy", "auc", "balanced_accuracy"]
    balanced = metrics[2]
    assert metric_value(balanced, y_true, y_pred) == pytest.approx((2 / 3 + 0) / 2)
    balanced.reset_state()  # a constant guess scores 0.5 however unbalanced the data
    constant = np.zeros_like(np.asarray(y_pred, "float32")) + (
        [1.0, 0.0] if loss == "categorical" else -1.0 if loss == "hinge" else 0.1)
    assert metric_value(balanced, y_true, constant) == pytest.approx(0.5)


def test_hinge_auc_ranks_margins_with_minus_one_plus_one_targets():
    _, (_, auc, _) = loss_and_metrics("hinge")
    assert metric_value(auc, [[-1], [1], [1], [-1]], [[-3.0], [2.0], [5.0], [-0.5]]) == 1.0
    auc.reset_state()
    assert metric_value(auc, [[-1], [1]], [[4.0], [-4.0]]) == pytest.approx(0.0, abs=1e-3)
