"""Grad-CAM: a map of the image's size that follows where the evidence is."""

import keras
import numpy as np
import pytest

from models import build_model
from models.gradcam import gradcam
from models.vgg16 import LAST_CONV


def spot_detector() -> keras.Model:
    """Class 1 = "there is a bright spot": a conv that responds to brightness, pooled."""
    inputs = keras.Input((32, 32, 1))
    conv = keras.layers.Conv2D(4, 3, padding="same", name=LAST_CONV,
                               kernel_initializer="ones", bias_initializer="zeros")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(conv))
    outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers
                                 .Constant([[-1.0, 1.0]] * 4))(pooled)
    return keras.Model(inputs, outputs)


def planted(row: int, col: int) -> np.ndarray:
    image = np.zeros((32, 32, 1), "float32")
    image[row - 2:row + 2, col - 2:col + 2] = 1.0
    return image


@pytest.mark.parametrize("row,col", [(6, 6), (24, 10), (16, 27)])
def test_the_peak_moves_with_the_planted_feature(row, col):
    heat = gradcam(spot_detector(), planted(row, col)[None])
    assert heat.shape == (1, 32, 32)
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0, abs=1e-3)
    peak = np.unravel_index(heat[0].argmax(), heat[0].shape)
    assert abs(peak[0] - row) <= 3 and abs(peak[1] - col) <= 3
    far = heat[0, (row + 16) % 32, (col + 16) % 32]
    assert far < 0.2


def test_gradcam_on_the_lab_vgg16():
    model = build_model("vgg16", input_shape=(32, 32, 1), base=2, n_classes=2,
                        loss="categorical", dense_units="8-8-8")
    images = np.random.default_rng(0).random((3, 32, 32, 1)).astype("float32")
    heat = gradcam(model, images)
    assert heat.shape == (3, 32, 32) and np.isfinite(heat).all()
