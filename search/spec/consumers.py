"""Who reads each setting a study file searches or fixes: the model's builder, training, or the
data pipeline. A setting that none of them reads would be searched (or fixed) and then ignored
in every trial, so loading the study file refuses it (`search.spec.study_files`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Set from the data by `search.trial.problems`, over any value a study file gives.
DERIVED = ("input_shape", "n_classes")
DATA_SETTINGS = ("batch_size", "augment")
# What the augmenter of `datasets.pipeline` reads (`geometric_layers`, `intensity_layers`); a
# study file names each as `aug_<name>` (`search.trial.problems.augmentation_settings`).
AUGMENTATIONS = ("rotation", "shift", "zoom", "flip", "brightness", "contrast")

PRECISIONS = ("float32", "mixed_float16")  # `[training] precision` of a study file
# The study-file settings that training reads (`search.trial.training.compile_model`; the loss
# through the problem's loss_and_metrics; batch_size through its datasets).
TRAINING_SETTINGS = ("learning_rate", "optimizer", "loss", "batch_size")


def data_settings() -> tuple[str, ...]:
    """The settings the data pipeline reads: batch size, the augment switch and its ranges."""
    return (*DATA_SETTINGS, *(f"aug_{name}" for name in AUGMENTATIONS))


def check_consumers(model: str, keys: Iterable[str], table: str) -> None:
    """A ValueError naming the first of `keys` (from the study file's `table`, e.g. "[space]")
    that model `model`, training and the data pipeline all ignore, or that comes from the data."""
    # Imported here: the builders import Keras, which `search.spec.study_files` alone does not need.
    from models import BUILDERS, model_settings

    takes = sorted(model_settings(model) - set(DERIVED))
    used = {*takes, *TRAINING_SETTINGS, *data_settings()}
    for key in keys:
        if key in DERIVED:
            raise ValueError(f"{table} {key} comes from the data, not from a study file; "
                             "remove it")
        if key in used:
            continue
        others = [name for name in BUILDERS if key in model_settings(name)]
        raise ValueError(
            f"{table} {key} is not used by model {model!r} (it takes: {', '.join(takes)}), "
            f"nor by training ({', '.join(TRAINING_SETTINGS)}) or data "
            f"({', '.join(data_settings())}); " + _remedy(key, others, used)
        )


def _remedy(key: str, others: list[str], used: set[str]) -> str:
    if others:
        return f"remove it or use a model that takes it: {', '.join(others)}"
    close = difflib.get_close_matches(key, sorted(used), n=1)
    return f"did you mean {close[0]!r}?" if close else "remove it"
