"""Keras builders of the lab architectures: each is `build_x(*, input_shape, base, ...)`, its
settings keyword-only, so `build_model` can refuse a setting the model would not use."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import keras

from models.alexnet import build_alexnet
from models.lenet import build_lenet
from models.mlp import build_mlp
from models.transfer import build_transfer_head
from models.unet import build_unet
from models.vgg16 import build_vgg16

BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "mlp": build_mlp,
    "lenet": build_lenet,
    "alexnet": build_alexnet,
    "vgg16": build_vgg16,
    "unet": build_unet,
    "transfer_head": build_transfer_head,
}


def build_model(name: str, **settings: Any) -> keras.Model:
    """Model `name` built from its settings; an unknown or a missing setting is a ValueError
    naming all of them (Python's TypeError would name only the first)."""
    parameters = _parameters(name)
    unknown = sorted(set(settings) - set(parameters))
    missing = [k for k, p in parameters.items() if p.default is p.empty and k not in settings]
    problems = [_unknown(key, parameters) for key in unknown]
    if missing:
        problems.append(f"missing required setting{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}")
    if problems:
        raise ValueError(f"model {name!r}: {'; '.join(problems)} "
                         f"(it takes: {', '.join(sorted(parameters))})")
    return BUILDERS[name](**settings)


def model_settings(name: str) -> frozenset[str]:
    """The settings model `name` takes: its builder's keyword-only parameters."""
    return frozenset(_parameters(name))


def settings_from(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a trial's config that model `name` takes; the rest is training's and data's."""
    takes = model_settings(name)
    return {key: value for key, value in config.items() if key in takes}


def _parameters(name: str) -> dict[str, inspect.Parameter]:
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(BUILDERS)}") from None
    return {p.name: p for p in inspect.signature(builder).parameters.values()
            if p.kind is p.KEYWORD_ONLY}


def _unknown(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
