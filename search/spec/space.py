"""A study file's search space as Optuna sees it: a distribution per dimension, dimensions
searched only when another is true, and one trial's suggestions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna


def active(param: str, params: dict, conditions: dict[str, str]) -> bool:
    """A conditional dimension is searched only when its `when` parameter is true."""
    return param not in conditions or bool(params.get(conditions[param]))


def distribution(param: str, entry: dict) -> optuna.distributions.BaseDistribution:
    """`{choices = [...]}` is categorical; `{low, high[, log, step]}` is int or float by type.

    Either may add `when = "other"`: searched only in trials where parameter `other` is true.
    """
    if "choices" in entry:
        return optuna.distributions.CategoricalDistribution(entry["choices"])
    low, high = entry["low"], entry["high"]
    if low >= high:
        raise ValueError(f"space.{param}: low ({low}) must be below high ({high})")
    if isinstance(low, int) and isinstance(high, int):
        return optuna.distributions.IntDistribution(
            low, high, log=entry.get("log", False), step=entry.get("step", 1)
        )
    return optuna.distributions.FloatDistribution(
        float(low), float(high), log=entry.get("log", False), step=entry.get("step")
    )


def contains(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, int | float) and dist.low <= value <= dist.high


def suggest(trial: optuna.Trial, space: Mapping[str, optuna.distributions.BaseDistribution],
            conditions: Mapping[str, str]) -> dict:
    """One value per active search dimension, through Optuna's public suggest API."""
    params: dict[str, Any] = {}
    for name, dist in space.items():
        if not active(name, params, conditions):
            continue
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            params[name] = trial.suggest_int(
                name, dist.low, dist.high, step=dist.step, log=dist.log
            )
        else:
            params[name] = trial.suggest_float(
                name, dist.low, dist.high, step=dist.step, log=dist.log
            )
    return params
