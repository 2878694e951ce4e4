"""Cached arrays to Keras through tf.data: scale, augment (training only), batch, prefetch."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from datasets.images import unit_range

FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")


def geometric_layers(settings: Mapping, seed: int) -> keras.Sequential | None:
    """Rotation (fraction of a turn), shift and zoom (fractions of the size), flip."""
    stack = []
    if settings.get("rotation", 0) > 0:
        stack.append(layers.RandomRotation(settings["rotation"], fill_mode="nearest", seed=seed))
    if settings.get("shift", 0) > 0:
        shift = settings["shift"]
        stack.append(layers.RandomTranslation(shift, shift, fill_mode="nearest", seed=seed + 1))
    if settings.get("zoom", 0) > 0:
        stack.append(layers.RandomZoom(settings["zoom"], fill_mode="nearest", seed=seed + 2))
    flip = settings.get("flip", "none")
    if flip not in FLIPS:
        raise ValueError(f"augmentation flip {flip!r}: choose one of {', '.join(FLIPS)}")
    if flip != "none":
        stack.append(layers.RandomFlip(flip, seed=seed + 3))
    return keras.Sequential(stack, name="geometric") if stack else None


def intensity_layers(settings: Mapping, seed: int) -> keras.Sequential | None:
    """Brightness and contrast jitter, on images in [0, 1]; masks never get these."""
    stack = []
    if settings.get("brightness", 0) > 0:
        stack.append(
            layers.RandomBrightness(settings["brightness"], value_range=(0, 1), seed=seed + 4)
        )
    if settings.get("contrast", 0) > 0:
        stack.append(layers.RandomContrast(settings["contrast"], seed=seed + 5))
    return keras.Sequential(stack, name="intensity") if stack else None


def augmenter(settings: Mapping, seed: int, *, masks: bool = False) -> Callable:
    """(images, targets) -> augmented pair. With `masks`, the targets are masks that get the
    image's geometric transform (stacked as one tensor, so both see the same random draw)."""
    geometric, intensity = geometric_layers(settings, seed), intensity_layers(settings, seed)

    def apply(x, y):
        if geometric is not None and masks:
            both = geometric(tf.concat([x, y], axis=-1), training=True)
            x, y = both[..., :1], tf.round(both[..., 1:])  # interpolation blurs edges: re-binarize
        elif geometric is not None:
            x = geometric(x, training=True)
        if intensity is not None:
            x = tf.clip_by_value(intensity(x, training=True), 0.0, 1.0)
        return x, y

    return apply


def make_dataset(
    images: np.ndarray,
    targets: np.ndarray,
    *,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: Callable | None = None,
) -> tf.data.Dataset:
    """uint8 (N, H, W) images -> batches of float32 (B, H, W, 1) in [0, 1] with their targets.
    Float arrays (e.g. cached features) pass through as they are.

    Shuffling and augmentation are for training data only: pass neither for validation.
    """
    raw = images.dtype == np.uint8
    ds = tf.data.Dataset.from_tensor_slices((images[..., None] if raw else images, targets))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if raw:
        ds = ds.map(lambda x, y: (unit_range(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        # One batch at a time: the random layers share one seed state, and parallel calls
        # would take their draws in a racing order, so a replay (export) would not repeat.
        ds = ds.map(augment)
    return ds.prefetch(tf.data.AUTOTUNE)
