"""AlexNet of Labs 1-2: conv blocks b, 2b, 4b, 4b, 2b (pool after 1, 2, 5) -> Dense(d1, d2)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from models.blocks import (
    Widths,
    conv_block,
    dense_stack,
    model_input,
    output_layer,
    parse_widths,
)


def build_alexnet(
    *,
    input_shape: Sequence[int],
    base: int,
    dense_units: Widths,
    n_classes: int = 2,
    loss: str = "bce",
    dropout: float = 0.0,
    spatial_dropout: float = 0.0,
    batch_norm: bool = False,
) -> keras.Model:
    inputs = model_input(input_shape)
    x = inputs
    for multiple, pool in [(1, True), (2, True), (4, False), (4, False), (2, True)]:
        x = conv_block(x, multiple * base, pool=pool, batch_norm=batch_norm,
                       spatial_dropout=spatial_dropout)
    x = layers.Flatten()(x)
    x = dense_stack(x, parse_widths(dense_units), dropout=dropout)
    return keras.Model(inputs, output_layer(x, n_classes=n_classes, loss=loss), name="alexnet")
