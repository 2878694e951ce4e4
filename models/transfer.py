"""Transfer learning (Lab 2): a frozen convolutional base extracts features once; trials train
only the lab's MLP head on them, which is what makes transfer learning fast.

The base is VGG16's convolutional part with ImageNet weights (from the Keras cache or a file the
user gives, since machines here cannot download them), or the convolutional part of a VGG16 that
medtune trained and registered in the MLflow Model Registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from datasets.images import unit_range
from models.blocks import model_input, output_layer
from models.vgg16 import LAST_CONV

IMAGENET_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_cache_file() -> Path:
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / IMAGENET_FILE


class MissingWeights(ValueError):
    pass


@dataclass
class FeatureBase:
    """A frozen feature extractor and how to prepare uint8 gray images for it."""

    model: keras.Model
    prepare: Callable[[np.ndarray], np.ndarray]
    identity: str  # what the cached features are keyed by
    front: list[layers.Layer]  # `prepare` as layers, from images scaled to [0, 1]

    def features(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return self.model.predict(self.prepare(images), batch_size=batch_size, verbose=0)

    def end_to_end(self, head: keras.Model) -> keras.Model:
        """Base and trained head as one model on (S, S, 1) images in [0, 1], like the other
        lab models: what an exported transfer model is."""
        inputs = keras.Input((*self.model.inputs[0].shape[1:3], 1), name="image")
        x = inputs
        for layer in self.front:
            x = layer(x)
        return keras.Model(inputs, head(self.model(x)), name=f"{head.name}_on_base")


def imagenet_base(size: int, weights: str | None = None) -> FeatureBase:
    """VGG16 without its top, ImageNet weights from `weights` or the Keras cache."""
    path = Path(weights).expanduser() if weights else keras_cache_file()
    if not path.is_file():
        raise MissingWeights(
            f"no ImageNet weights for VGG16 at {path}, and this machine cannot download them. "
            f"Either copy {IMAGENET_FILE} into {keras_cache_file().parent}/ (on a machine with "
            "internet, `python -c 'import keras; keras.applications.VGG16(include_top=False)'` "
            "puts it in ~/.keras/models/), or pass --base /path/to/vgg16_notop.h5, or pass "
            "--base models:/<name>@champion to start from a VGG16 that medtune trained and "
            "registered (e.g. by the vgg_bone task)."
        )
    model = keras.applications.VGG16(include_top=False, weights=str(path),
                                     input_shape=(size, size, 3))
    model.trainable = False

    def prepare(images: np.ndarray) -> np.ndarray:
        rgb = np.repeat(images[..., None], 3, axis=-1).astype("float32")  # gray -> 3 channels
        return keras.applications.vgg16.preprocess_input(rgb)

    stat = path.stat()
    return FeatureBase(model, prepare, f"imagenet:{path}:{stat.st_size}:{stat.st_mtime_ns}",
                       [_imagenet_preprocessing()])


def _imagenet_preprocessing() -> layers.Layer:
    """`preprocess_input` of a gray image as a frozen 1x1 convolution: each of the three
    channels is 255 * x minus the channel's ImageNet mean (caffe style, BGR order)."""
    conv = layers.Conv2D(3, 1, name="imagenet_preprocessing", trainable=False)
    conv.build((None, None, None, 1))
    conv.set_weights([np.full((1, 1, 1, 3), 255.0, "float32"),
                      -np.array([103.939, 116.779, 123.68], "float32")])
    return conv


def trained_base(model: keras.Model, identity: str) -> FeatureBase:
    """The convolutional part (up to `Last_ConvLayer`) of a lab VGG16 trained on gray images."""
    try:
        last = model.get_layer(LAST_CONV)
    except ValueError:
        raise ValueError(
            f"{identity} has no layer named {LAST_CONV}: not a medtune VGG16"
        ) from None
    base = keras.Model(model.inputs, last.output, name="trained_base")
    base.trainable = False
    size = model.inputs[0].shape[1]

    def prepare(images: np.ndarray) -> np.ndarray:
        if images.shape[1] != size:
            raise ValueError(f"{identity} takes {size}x{size} images; run with --image-size {size}")
        return unit_range(images[..., None])

    return FeatureBase(base, prepare, identity, [])  # it takes [0, 1] images already


def build_transfer_head(
    *,
    input_shape: Sequence[int],
    dense_units: int,
    n_classes: int = 2,
    loss: str = "bce",
    dropout: float = 0.0,
) -> keras.Model:
    """The lab's head on cached features: Flatten -> Dense(128) -> Dropout(0.5) -> output.
    No batch norm: the lab's head has none and no transfer study searches it."""
    inputs = model_input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(dense_units, activation="relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, output_layer(x, n_classes=n_classes, loss=loss),
                       name="transfer_head")
