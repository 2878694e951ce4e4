"""MLP of Lab 1: Flatten -> Dense(b) -> Dense(b/2) -> Dense(b/4) -> output."""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers

from models.blocks import dense_stack, model_input, output_layer


def build_mlp(config: Mapping) -> keras.Model:
    base = int(config["base"])
    inputs = model_input(config)
    x = layers.Flatten()(inputs)
    x = dense_stack(
        x,
        [base, base // 2, base // 4],
        dropout=config.get("dropout", 0.0),
        batch_norm=config.get("batch_norm", False),
    )
    return keras.Model(inputs, output_layer(x, config), name="mlp")
