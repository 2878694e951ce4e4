"""Optuna pruners and samplers by the short names study files use."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "none": optuna.pruners.NopPruner,
}


# Pruners whose rungs run up to the most epochs a trial may train: given the study's `epochs`
# unless the study file names it ("auto" would guess it from the first trial to finish, which
# may have stopped early).
MAX_RESOURCE = {"hyperband": "max_resource", "successive_halving": None}


def make_pruner(settings: dict[str, Any], epochs: int | None = None) -> optuna.pruners.BasePruner:
    """`{type = "hyperband", min_resource = 2, ...}` -> the pruner, its other keys as arguments;
    Hyperband's `max_resource` is the trial's `epochs` unless the file says otherwise."""
    options = dict(settings)
    kind = options.pop("type", "median")
    if MAX_RESOURCE.get(kind) and epochs is not None:
        options.setdefault(MAX_RESOURCE[kind], epochs)
    if kind not in PRUNERS:
        raise ValueError(f"unknown pruner {kind!r}; choose one of: {', '.join(PRUNERS)}")
    try:
        return PRUNERS[kind](**options)
    except TypeError as error:
        raise ValueError(f"pruner {kind!r}: {error}") from None


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
}


def make_sampler(settings: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    """`{type = "tpe", n_startup_trials = 5}` -> the seeded sampler (TPE when no type)."""
    options = dict(settings)
    kind = options.pop("type", "tpe")
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of: {', '.join(SAMPLERS)}")
    try:
        with warnings.catch_warnings():  # TPE's multivariate, group, constant_liar: experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return SAMPLERS[kind](seed=seed, **options)
    except TypeError as error:
        raise ValueError(f"sampler {kind!r}: {error}") from None
