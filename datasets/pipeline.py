"""Cached arrays to Keras through tf.data: scale, augment (training only), batch, prefetch."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def build_augmenter(settings: Mapping, seed: int) -> keras.Sequential:
    """The labs' augmentation as Keras layers: rotation, shift, zoom, flip."""
    return keras.Sequential(
        [
            layers.RandomRotation(settings["rotation"], fill_mode="nearest", seed=seed),
            layers.RandomTranslation(
                settings["shift"], settings["shift"], fill_mode="nearest", seed=seed + 1
            ),
            layers.RandomZoom(settings["zoom"], fill_mode="nearest", seed=seed + 2),
            layers.RandomFlip(settings["flip"], seed=seed + 3),
        ],
        name="augmentation",
    )


def make_dataset(
    images: np.ndarray,
    targets: np.ndarray,
    *,
    batch_size: int,
    shuffle_seed: int | None = None,
    augmenter: keras.Layer | None = None,
) -> tf.data.Dataset:
    """uint8 (N, H, W) images -> batches of float32 (B, H, W, 1) in [0, 1].

    Shuffling and augmentation are for training data only: pass neither for validation.
    """
    ds = tf.data.Dataset.from_tensor_slices((images[..., None], targets))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE
    )
    if augmenter is not None:
        ds = ds.map(
            lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.prefetch(tf.data.AUTOTUNE)
