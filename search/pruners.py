"""Optuna pruners and samplers by the short names study files use."""

from __future__ import annotations

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


def make_pruner(settings: dict[str, Any]) -> optuna.pruners.BasePruner:
    """`{type = "median", n_warmup_steps = 2, ...}` -> the pruner, its other keys as arguments."""
    options = dict(settings)
    kind = options.pop("type", "median")
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
        return SAMPLERS[kind](seed=seed, **options)
    except TypeError as error:
        raise ValueError(f"sampler {kind!r}: {error}") from None
