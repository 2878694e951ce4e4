"""Keras builders of the lab architectures: each is `build_x(config) -> keras.Model`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras

from models.alexnet import build_alexnet
from models.lenet import build_lenet
from models.mlp import build_mlp
from models.transfer import build_transfer_head
from models.unet import build_unet
from models.vgg16 import build_vgg16

BUILDERS: dict[str, Callable[[Mapping], keras.Model]] = {
    "mlp": build_mlp,
    "lenet": build_lenet,
    "alexnet": build_alexnet,
    "vgg16": build_vgg16,
    "unet": build_unet,
    "transfer_head": build_transfer_head,
}


def build_model(name: str, config: Mapping) -> keras.Model:
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(BUILDERS)}") from None
    return builder(config)
