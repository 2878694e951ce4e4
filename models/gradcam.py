"""Grad-CAM (Selvaraju et al.) in TF2 eager mode with `GradientTape`.

The gradient of the predicted class score with respect to a convolution's output, averaged over
space per channel, weights that output's channels; their ReLU'd sum, normalized to [0, 1] and
resized to the image, shows where the model looked.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.ensemble import members_of
from models.vgg16 import LAST_CONV


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    layer: str = LAST_CONV,
    class_index: np.ndarray | None = None,
) -> np.ndarray:
    """Heat maps (N, H, W) in [0, 1] for images (N, H, W, C), for each one's predicted class
    (or `class_index`). A single sigmoid output counts as the score of class 1. An ensemble's
    map is the mean of its members' maps, each for the ensemble's predicted class."""
    members = members_of(model)
    if members:
        if class_index is None and model.output_shape[-1] > 1:
            class_index = np.argmax(model.predict(images, verbose=0), axis=-1)
        return np.mean([gradcam(m, images, layer, class_index) for m in members], axis=0)
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        features, outputs = probe(images, training=False)
        if outputs.shape[-1] == 1:
            scores = outputs[:, 0]
        else:
            chosen = tf.argmax(outputs, axis=-1) if class_index is None else class_index
            scores = tf.gather(outputs, chosen, axis=1, batch_dims=1)
    grads = tape.gradient(scores, features)
    # A mixed-precision model's features are float16: weigh and sum them in float32.
    grads, features = tf.cast(grads, tf.float32), tf.cast(features, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
    cams = cams / (tf.reduce_max(cams, axis=(1, 2), keepdims=True) + 1e-8)
    resized = tf.image.resize(cams[..., None], images.shape[1:3], method="bilinear")
    return resized[..., 0].numpy()
