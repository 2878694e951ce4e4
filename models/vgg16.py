"""VGG16 of Lab 2: blocks [b,b], [2b,2b], [4b x3], [8b x3], [8b x3], pool after each.

The last convolution is named `Last_ConvLayer` because Grad-CAM looks it up by that name.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers

from models.blocks import (
    conv_block,
    conv_switches,
    dense_stack,
    model_input,
    output_layer,
    parse_widths,
)

LAST_CONV = "Last_ConvLayer"
BLOCKS = [(1, 2), (2, 2), (4, 3), (8, 3), (8, 3)]  # (width multiple, convolutions)


def build_vgg16(config: Mapping) -> keras.Model:
    base = int(config["base"])
    switches = conv_switches(config)
    inputs = model_input(config)
    x = inputs
    for i, (multiple, n_convs) in enumerate(BLOCKS):
        last = LAST_CONV if i == len(BLOCKS) - 1 else None
        x = conv_block(x, multiple * base, n_convs=n_convs, last_name=last, **switches)
    x = layers.Flatten()(x)
    x = dense_stack(
        x,
        parse_widths(config["dense_units"]),
        dropout=config.get("dropout", 0.0),
    )
    return keras.Model(inputs, output_layer(x, config), name="vgg16")
