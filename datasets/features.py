"""Features of a frozen base, computed once per (data set, size, base) and cached on disk."""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import numpy as np

from datasets.cache import cached_arrays
from datasets.loader import TaskData


class Extractor(Protocol):
    identity: str

    def features(self, images: np.ndarray) -> np.ndarray: ...


def extract(data: TaskData, base: Extractor) -> tuple[TaskData, float]:
    """`data` with its images replaced by the base's features; and the seconds this took."""
    key = {"features": base.identity, "data": data.fingerprint, "source": data.source,
           "size": data.x_train.shape[1]}
    started = time.monotonic()

    images = {"x_train": data.x_train, "x_val": data.x_val}
    if "x_test" in data.extra:
        images["x_test"] = data.extra["x_test"]

    def build() -> dict[str, np.ndarray]:
        n = sum(len(x) for x in images.values())
        print(f"Extracting features of {n} images with the frozen base (once; then cached) ...",
              flush=True)
        return {name: base.features(x) for name, x in images.items()}

    arrays, from_cache = cached_arrays(key, build)
    test = {"x_test": arrays.pop("x_test")} if "x_test" in arrays else {}
    featured = dataclasses.replace(data, **arrays, extra={**data.extra, **test},
                                   from_cache=from_cache)
    return featured, time.monotonic() - started
