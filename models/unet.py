"""U-Net of Lab 3: encoder b, 2b, 4b, 8b (pool + [dropout] after each), bottleneck 16b,
decoder Conv2DTranspose(stride 2) -> concatenate skip -> [dropout] -> conv block, 1x1 sigmoid.

It takes no loss: the mask is a sigmoid for every segmentation loss (bce, dice, bce_dice)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from models.blocks import OUTPUT_DTYPE, conv_block, model_input


def build_unet(
    *,
    input_shape: Sequence[int],
    base: int,
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> keras.Model:
    inputs = model_input(input_shape)

    skips, x = [], inputs
    for multiple in (1, 2, 4, 8):
        x = conv_block(x, multiple * base, n_convs=2, pool=False, batch_norm=batch_norm)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
        if dropout > 0:
            x = layers.Dropout(dropout)(x)
    x = conv_block(x, 16 * base, n_convs=2, pool=False, batch_norm=batch_norm)
    for multiple, skip in zip((8, 4, 2, 1), reversed(skips), strict=True):
        x = layers.Conv2DTranspose(multiple * base, 3, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skip])
        if dropout > 0:
            x = layers.Dropout(dropout)(x)
        x = conv_block(x, multiple * base, n_convs=2, pool=False, batch_norm=batch_norm)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="mask", dtype=OUTPUT_DTYPE)(x)
    return keras.Model(inputs, outputs, name="unet")
