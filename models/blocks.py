"""Layer blocks shared by the lab architectures, with the lab's regularization switches.

Where each switch sits follows the lab sheets: batch norm right after a convolution (before the
activation), spatial dropout after the activation (before pooling), dropout after every hidden
dense layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

# Under mixed precision a float16 sigmoid saturates at 1 - 2**-11 and a float16 margin or loss
# loses digits: output layers compute in float32 whatever the model's policy.
OUTPUT_DTYPE = "float32"
# Batch norm's moving statistics (what validation and inference use) follow each batch's with
# this weight of the old: PyTorch's default. Keras's 0.99 needs a few hundred steps to forget
# its initial statistics, and a lab set (800 images in batches of 16: 50 steps an epoch) leaves
# a BN model's validation accuracy at chance for its first epochs, however well it trains, so
# the pruner's early rungs compared noise (real knee X-rays: 0.50 at epochs 1-6 with 0.99,
# 0.56-0.60 with 0.9; training itself is unchanged). bench/RESULTS.md has the measurement.
BN_MOMENTUM = 0.9

Widths = int | str | Sequence[int]  # dense widths as `parse_widths` reads them


def conv_block(
    x,
    filters: int,
    *,
    n_convs: int = 1,
    pool: bool = True,
    batch_norm: bool = False,
    spatial_dropout: float = 0.0,
    last_name: str | None = None,
):
    """`n_convs` x (Conv3x3 -> [BN] -> ReLU), then [SpatialDropout2D], then [MaxPool 2x2]."""
    for i in range(n_convs):
        name = last_name if i == n_convs - 1 else None
        # A bias before batch norm is redundant: BN's beta plays its part.
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=name)(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.Activation("relu")(x)
    if spatial_dropout > 0:
        x = layers.SpatialDropout2D(spatial_dropout)(x)
    if pool:
        x = layers.MaxPooling2D(2)(x)
    return x


def dense_stack(x, widths: Sequence[int], *, dropout: float = 0.0, batch_norm: bool = False):
    """Dense(w) -> [BN] -> ReLU -> [Dropout] for each width."""
    for width in widths:
        x = layers.Dense(width, use_bias=not batch_norm)(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.Activation("relu")(x)
        if dropout > 0:
            x = layers.Dropout(dropout)(x)
    return x


def output_layer(x, *, n_classes: int = 2, loss: str = "bce"):
    """The head the loss needs: sigmoid for BCE, linear for hinge, softmax for several classes.
    Always float32 (OUTPUT_DTYPE), also in a mixed-precision model."""
    if loss == "categorical" or n_classes > 2:
        return layers.Dense(n_classes, activation="softmax", name="output", dtype=OUTPUT_DTYPE)(x)
    # Hinge wants a margin that can reach -1, which a sigmoid never does.
    activation = "linear" if loss == "hinge" else "sigmoid"
    return layers.Dense(1, activation=activation, name="output", dtype=OUTPUT_DTYPE)(x)


def parse_widths(value: Widths) -> list[int]:
    """Dense widths from a list, an int, or an Optuna-friendly string such as "128-64"."""
    if isinstance(value, str):
        try:
            return [int(v) for v in value.split("-")]
        except ValueError:
            raise ValueError(
                f"dense_units {value!r} is not a list of widths; write e.g. \"128-64\""
            ) from None
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def model_input(input_shape: Sequence[int]) -> keras.KerasTensor:
    return keras.Input(shape=tuple(input_shape), name="image")
