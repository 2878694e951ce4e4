"""AlexNet of Labs 1-2: conv blocks b, 2b, 4b, 4b, 2b (pool after 1, 2, 5) -> Dense(d1, d2)."""

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


def build_alexnet(config: Mapping) -> keras.Model:
    base = int(config["base"])
    switches = conv_switches(config)
    inputs = model_input(config)
    x = inputs
    for multiple, pool in [(1, True), (2, True), (4, False), (4, False), (2, True)]:
        x = conv_block(x, multiple * base, pool=pool, **switches)
    x = layers.Flatten()(x)
    x = dense_stack(
        x,
        parse_widths(config["dense_units"]),
        dropout=config.get("dropout", 0.0),
    )
    return keras.Model(inputs, output_layer(x, config), name="alexnet")
