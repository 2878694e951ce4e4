"""LeNet of Lab 1: Conv(b) -> Pool -> Conv(2b) -> Pool -> Flatten -> Dense(2b) -> output."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from models.blocks import conv_block, dense_stack, model_input, output_layer


def build_lenet(
    *,
    input_shape: Sequence[int],
    base: int,
    n_classes: int = 2,
    loss: str = "bce",
    dropout: float = 0.0,
    spatial_dropout: float = 0.0,
    batch_norm: bool = False,
) -> keras.Model:
    switches = {"batch_norm": batch_norm, "spatial_dropout": spatial_dropout}
    inputs = model_input(input_shape)
    x = conv_block(inputs, base, **switches)
    x = conv_block(x, 2 * base, **switches)
    x = layers.Flatten()(x)
    x = dense_stack(x, [2 * base], dropout=dropout)
    return keras.Model(inputs, output_layer(x, n_classes=n_classes, loss=loss), name="lenet")
