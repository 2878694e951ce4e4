"""MLP of Lab 1: Flatten -> Dense(b) -> Dense(b/2) -> Dense(b/4) -> output."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from models.blocks import dense_stack, model_input, output_layer


def build_mlp(
    *,
    input_shape: Sequence[int],
    base: int,
    n_classes: int = 2,
    loss: str = "bce",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> keras.Model:
    inputs = model_input(input_shape)
    x = layers.Flatten()(inputs)
    x = dense_stack(x, [base, base // 2, base // 4], dropout=dropout, batch_norm=batch_norm)
    return keras.Model(inputs, output_layer(x, n_classes=n_classes, loss=loss), name="mlp")
