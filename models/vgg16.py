"""VGG16 of Lab 2: blocks [b,b], [2b,2b], [4b x3], [8b x3], [8b x3], pool after each.

The last convolution is named `Last_ConvLayer` because Grad-CAM looks it up by that name.
"""

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

LAST_CONV = "Last_ConvLayer"
BLOCKS = [(1, 2), (2, 2), (4, 3), (8, 3), (8, 3)]  # (width multiple, convolutions)


def build_vgg16(
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
    for i, (multiple, n_convs) in enumerate(BLOCKS):
        last = LAST_CONV if i == len(BLOCKS) - 1 else None
        x = conv_block(x, multiple * base, n_convs=n_convs, last_name=last,
                       batch_norm=batch_norm, spatial_dropout=spatial_dropout)
    x = layers.Flatten()(x)
    x = dense_stack(x, parse_widths(dense_units), dropout=dropout)
    return keras.Model(inputs, output_layer(x, n_classes=n_classes, loss=loss), name="vgg16")
