"""LeNet of Lab 1: Conv(b) -> Pool -> Conv(2b) -> Pool -> Flatten -> Dense(2b) -> output."""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers

from models.blocks import conv_block, conv_switches, dense_stack, model_input, output_layer


def build_lenet(config: Mapping) -> keras.Model:
    base = int(config["base"])
    switches = conv_switches(config)
    inputs = model_input(config)
    x = conv_block(inputs, base, **switches)
    x = conv_block(x, 2 * base, **switches)
    x = layers.Flatten()(x)
    x = dense_stack(x, [2 * base], dropout=config.get("dropout", 0.0))
    return keras.Model(inputs, output_layer(x, config), name="lenet")
