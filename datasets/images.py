"""Decoding image files into small gray uint8 arrays, the lab way: gray, anti-aliased resize;
and the one scaling of those arrays that every model takes (`unit_range`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from datasets.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def to_gray(image: Image.Image) -> Image.Image:
    """8-bit gray; 16-bit and float images are stretched to 0-255 instead of clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype="float32")
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        return Image.fromarray(scaled.astype("uint8"))
    return image.convert("L")


def resize(image: Image.Image, size: int) -> Image.Image:
    # PIL widens the filter support when shrinking, so bilinear here is anti-aliased.
    return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)


def load_gray(path: Path, size: int, binary: bool = False) -> np.ndarray:
    """One image file -> (size, size) uint8, or a DataError that names the file.

    With `binary`, any pixel > 0 counts as 255 before resizing (a mask's "object").
    """
    try:
        with Image.open(path) as image:
            image.draft("L", (size, size))  # JPEG: decode at reduced scale, much faster
            gray = to_gray(image)
            if binary:
                gray = gray.point(lambda v: 255 if v > 0 else 0)
            return np.asarray(resize(gray, size), dtype="uint8")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(
            f"cannot read image {path}: {error}. Replace or remove the file and run again."
        ) from error


def load_many(paths: Sequence[Path], size: int, binary: bool = False) -> np.ndarray:
    """Decode many files in threads (PIL releases the GIL while decoding)."""
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda p: load_gray(p, size, binary), paths))
    return np.stack(arrays) if arrays else np.zeros((0, size, size), dtype="uint8")


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """Already-decoded images (N, H, W[, C]) -> (N, size, size) gray uint8, same resize as files."""
    return np.stack([np.asarray(resize(to_gray(Image.fromarray(im)), size)) for im in images])


def load_masks(paths: Sequence[Path], size: int) -> np.ndarray:
    """Mask files -> (N, size, size) uint8 of 0/1; mask > 0 is the object."""
    gray = load_many(paths, size, binary=True)
    return (gray >= 128).astype("uint8")


def unit_range(images: np.ndarray | tf.Tensor) -> np.ndarray | tf.Tensor:
    """Gray levels 0-255 (uint8) -> float32 in [0, 1], what every model takes, same shape.

    NumPy arrays stay NumPy (no TensorFlow import: the served predictor and plain Keras use
    these); tensors, as in a tf.data map, stay tensors.
    """
    if isinstance(images, np.ndarray):
        images = images.astype("float32")
    else:
        import tensorflow as tf  # a tensor: TensorFlow is loaded already

        images = tf.cast(images, tf.float32)
    return images / 255.0
