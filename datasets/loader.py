"""A task's data as arrays: locate, decode once, cache, and hand the same arrays to every trial."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets import catalog, synthetic
from datasets.cache import cache_root, cached_arrays, fingerprint, last_change
from datasets.errors import DataError
from datasets.images import load_many, load_masks, resize_array
from datasets.layouts import (
    file_splits,
    locate,
    locate_pairs,
    mask_pairs,
    medmnist_splits,
)


@dataclass
class TaskData:
    """Gray uint8 images (N, S, S) and integer labels for each split."""

    x_train: np.ndarray
    y_train: np.ndarray  # class labels (N,), or 0/1 masks (N, S, S) for segmentation
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]
    source: str  # where the data came from, for people and for the MLflow params
    layout: str
    fingerprint: str
    from_cache: bool
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # a test split, if the data has one

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def load(
    data: str,
    data_dir: str | Path | None,
    image_size: int,
    *,
    split: Mapping[str, Any],
    synthetic: Mapping[str, Mapping[str, int]],
) -> TaskData:
    """Load data set `data` from `data_dir`, or from the embedded synthetic set when it is None.

    `split` and `synthetic` are a study's tables of those names (`spec.split`, `spec.synthetic`):
    how image/mask pairs split into training and validation, and each synthetic set's settings.
    """
    dataset = catalog.get(data)
    if data_dir in (None, ""):
        data_dir = _synthetic_set(dataset.synthetic, synthetic)
    if isinstance(dataset, catalog.MaskSet):
        return _load_pairs(dataset, Path(data_dir).expanduser().resolve(), image_size, split)
    layout, root = locate(dataset, Path(data_dir).expanduser().resolve())
    if layout == "medmnist":
        return _load_medmnist(dataset, root, image_size)

    splits, classes = file_splits(dataset, layout, root)
    every_file = [p for split in splits.values() for p in split.paths]
    key = {"layout": layout, "root": str(root), "size": image_size,
           "files": fingerprint(every_file, root), "changed": last_change(every_file)}

    def build() -> dict[str, np.ndarray]:
        print(f"Decoding {len(every_file)} images from {root} at {image_size}x{image_size} ...")
        arrays = {}
        for name, split in splits.items():
            arrays[f"x_{name}"] = load_many(split.paths, image_size)
            arrays[f"y_{name}"] = split.labels
        return arrays

    arrays, from_cache = cached_arrays(key, build)
    test = {k: arrays.pop(k) for k in ("x_test", "y_test") if k in arrays}
    return TaskData(
        **arrays,
        extra=test,  # a test split: kept aside, for judging the picked model only
        class_names=list(classes),
        source=str(root),
        layout=layout,
        fingerprint=key["files"],
        from_cache=from_cache,
    )


def _synthetic_set(name: str, settings: Mapping[str, Mapping[str, int]]) -> Path:
    """The embedded set `name`, drawn once per settings; its folder's name spells them out, so
    the decoded arrays' cache key (the folder) differs with them too."""
    return synthetic.ensure(name, cache_root() / "synthetic", **settings[name])


def _load_medmnist(dataset: catalog.DataSet, path: Path, image_size: int) -> TaskData:
    key = {"layout": "medmnist", "root": str(path), "size": image_size,
           "files": fingerprint([path], path.parent), "changed": last_change([path])}

    def build() -> dict[str, np.ndarray]:
        arrays = {}
        for name, (images, labels) in medmnist_splits(dataset, path).items():
            arrays[f"x_{name}"] = resize_array(images, image_size)
            arrays[f"y_{name}"] = labels
        return arrays

    arrays, from_cache = cached_arrays(key, build)
    return TaskData(
        x_train=arrays["x_train"], y_train=arrays["y_train"],
        x_val=arrays["x_val"], y_val=arrays["y_val"],
        class_names=[f"class {i}" for i in range(dataset.n_classes)],
        source=str(path), layout="medmnist", fingerprint=key["files"], from_cache=from_cache,
        extra={"x_test": arrays["x_test"], "y_test": arrays["y_test"]},
    )


def _load_pairs(mask_set: catalog.MaskSet, data_dir: Path, image_size: int,
                split: Mapping[str, Any]) -> TaskData:
    """Image/mask pairs, split at random (seeded) into training and validation."""
    fraction, seed = split["validation_fraction"], split["seed"]
    if not 0 < fraction < 1:
        raise ValueError(f"[split] validation_fraction must be between 0 and 1, got {fraction}")
    root = locate_pairs(mask_set, data_dir)
    images, masks = mask_pairs(root)
    key = {"layout": "pairs", "root": str(root), "size": image_size, "split": [fraction, seed],
           "files": fingerprint([*images, *masks], root), "changed": last_change([*images, *masks])}

    def build() -> dict[str, np.ndarray]:
        print(f"Decoding {len(images)} image/mask pairs from {root} at {image_size}x{image_size}")
        order = np.random.default_rng(seed).permutation(len(images))
        n_val = max(1, round(fraction * len(images)))
        if len(images) - n_val < 1:
            raise DataError(f"{root} has {len(images)} pair(s): too few to split for validation.")
        x, y = load_many(images, image_size), load_masks(masks, image_size)
        val, train = order[:n_val], order[n_val:]
        return {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val]}

    arrays, from_cache = cached_arrays(key, build)
    return TaskData(**arrays, class_names=["background", mask_set.key], source=str(root),
                    layout="pairs", fingerprint=key["files"], from_cache=from_cache)
