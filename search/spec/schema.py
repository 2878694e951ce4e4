"""What a study file may say: the known keys of each table, their types, the required ones.

One description (`STUDY`) is walked twice: over each file as written, for unknown keys and
wrong types (so the message names the file the key is in), and over the task merged onto
`_defaults.toml`, for missing required keys and for `[sampler]` and `[pruner]`, which take the
keyword arguments of the Optuna class their `type` names.
"""

from __future__ import annotations

import difflib
import inspect
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets import synthetic
from search.spec.pruners import PRUNERS, SAMPLERS

NUMBER = (int, float)


@dataclass(frozen=True)
class Table:
    """A TOML table: its known keys (each a type, a tuple of types, or another node)."""

    keys: Mapping[str, Any] = field(default_factory=dict)
    # Each entry is one way to be complete: a categorical needs choices, a range low and high.
    required: tuple[tuple[str, ...], ...] = ()
    named: Any = None  # the node of keys the study names itself ([space.<param>]); None: none
    free: bool = False  # any key, checked elsewhere ([fixed]: against the model)


@dataclass(frozen=True)
class Tables:
    """An array of tables, `[[baselines]]`."""

    item: Table


@dataclass(frozen=True)
class OptunaOptions:
    """Keyword arguments of the Optuna class that `type` names (or `default`)."""

    classes: Mapping[str, type]
    default: str
    reserved: Mapping[str, str] = field(default_factory=dict)  # key -> why it cannot be set


DIMENSION = Table(
    {"choices": list, "low": NUMBER, "high": NUMBER, "log": bool, "step": NUMBER, "when": str},
    required=(("choices",), ("low", "high")),
)
BUDGET = Table({"image_size": int, "epochs": int, "n_trials": int, "timeout": NUMBER,
                "baselines": int},
               required=(("image_size", "epochs", "n_trials"),))
TRAINING = {"early_stopping_patience": int, "stuck_after_epochs": int,
            "diverged_loss_factor": NUMBER, "precision": str}
# Settings added since studies began recording their study file: a study recorded before them
# replays as it ran, without them (`search.trial.stopping` reads them with a default of 0: off).
NEWER_TRAINING = {"collapsed_epochs": int, "baseline_stuck_after_epochs": int}
# Each embedded synthetic set takes its generator's own settings (counts, size, seed), all ints.
SYNTHETIC = {name: synthetic.setting_names(name) for name in synthetic.GENERATORS}
RECOVERY_KEYS = ("heartbeat_interval", "grace_period", "retries", "checkpoint_every_s",
                 "restart_after_growth_mb")

# What `_defaults.toml` may set for one kind of task alone (`[segmentation]`): its budgets,
# pruner, training, selection and first guess, between the shared defaults and the task's file.
KIND_TABLES = ("budget", "pruner", "training", "selection", "start")

STUDY = Table(
    {
        "description": str,
        "model": str,
        "data": str,
        "objective": str,
        "transfer": bool,
        "fixed": Table(free=True),
        "space": Table(named=DIMENSION),
        "augment_space": Table(named=DIMENSION),
        "baseline_defaults": Table(free=True),  # search dimensions: checked when built
        "baselines": Tables(Table(free=True)),  # likewise
        "start": Table(free=True),  # likewise, kept where the task searches them
        "budget": Table(named=BUDGET),
        "sampler": OptunaOptions(SAMPLERS, "tpe", {"seed": "the seed comes from --seed"}),
        "pruner": OptunaOptions(PRUNERS, "median"),
        "training": Table(TRAINING | NEWER_TRAINING, required=(tuple(TRAINING),)),
        "recovery": Table(dict.fromkeys(RECOVERY_KEYS, NUMBER), required=(RECOVERY_KEYS,)),
        "gradcam": Table({"trials": str, "images": int}, required=(("trials", "images"),)),
        "selection": Table({"top_k": int, "finalists": int, "reseeds": int, "folds": int,
                            "small_data": int, "ensemble": bool, "share": NUMBER},
                           required=(("top_k", "finalists", "reseeds", "folds", "small_data",
                                      "ensemble", "share"),)),
        "export": Table({"tolerance": NUMBER}, required=(("tolerance",),)),
        "artifacts": Table({"overlay_images": int, "mask_threshold": NUMBER},
                           required=(("overlay_images", "mask_threshold"),)),
        "split": Table({"validation_fraction": NUMBER, "seed": int},
                       required=(("validation_fraction", "seed"),)),
        "synthetic": Table({name: Table(dict.fromkeys(keys, int), required=(keys,))
                            for name, keys in SYNTHETIC.items()},
                           required=(tuple(SYNTHETIC),)),
    },
    required=(("model", "data", "objective", "space", "budget", "sampler", "pruner", "training",
               "recovery", "export", "artifacts", "split", "synthetic"),),
)
STUDY.keys["segmentation"] = Table({k: STUDY.keys[k] for k in KIND_TABLES})


def check_keys(raw: Mapping[str, Any], schema: Table = STUDY) -> None:
    """Unknown or misspelt keys and values of the wrong type, in one file as written."""
    for problem in _walk(raw, schema, (), complete=False):
        raise ValueError(problem)


def check_complete(raw: Mapping[str, Any], schema: Table = STUDY) -> None:
    """Required keys and the sampler's and pruner's arguments, in the task merged onto the
    defaults."""
    for problem in _walk(raw, schema, (), complete=True):
        raise ValueError(problem)


def _walk(value: Any, node: Any, path: tuple[str, ...], complete: bool) -> Iterator[str]:
    if isinstance(node, Table | OptunaOptions) and not isinstance(value, dict):
        yield f"{_where(path)} must be a table, got {value!r}"
    elif isinstance(node, Tables):
        if not isinstance(value, list):
            yield f"{_where(path)} must be an array of tables ([[{'.'.join(path)}]])"
            return
        for item in value:
            yield from _walk(item, node.item, path, complete)
    elif isinstance(node, OptunaOptions):
        if complete:  # the class is the merged table's: `type` may be the defaults'
            yield from _options(value, node, path)
    elif isinstance(node, Table):
        yield from _table(value, node, path, complete)
    elif not _is(value, node):
        yield f"{_where(path[:-1])} {path[-1]} must be {_kind(node)}, got {value!r}"


def _table(value: dict, node: Table, path: tuple[str, ...], complete: bool) -> Iterator[str]:
    if node.free:
        return
    for key, item in value.items():
        child = node.keys.get(key, node.named)
        if child is None:
            yield _unknown(key, node.keys, path)
        else:
            yield from _walk(item, child, (*path, key), complete)
    yield from _required(value, node.required, path, complete)


def _required(value: dict, ways: tuple[tuple[str, ...], ...], path: tuple[str, ...],
              complete: bool) -> Iterator[str]:
    """One of `ways` (alternative sets of keys) in full, and keys of no other way."""
    begun = [way for way in ways if set(way) & set(value)]
    if len(begun) > 1:  # a dimension is choices, or low and high, not both
        yield (f"{_where(path)} mixes {' and '.join(begun[0])} with {' and '.join(begun[1])}; "
               "give one or the other")
    if complete and ways and not any(set(way) <= set(value) for way in ways):
        way = (begun or sorted(ways, key=len))[0]  # the one begun ({low = 0}), else the shortest
        missing = [key for key in way if key not in value]
        yield (f"{_where(path)} missing required key{'s' if len(missing) > 1 else ''} "
               f"{', '.join(map(repr, missing))}"
               + (f" (it needs {', or '.join(' and '.join(w) for w in ways)})"
                  if len(ways) > 1 else ""))


def _options(value: dict, node: OptunaOptions, path: tuple[str, ...]) -> Iterator[str]:
    kind = value.get("type", node.default)
    if kind not in node.classes:
        close = difflib.get_close_matches(str(kind), node.classes, n=1)
        yield (f"{_where(path)} unknown type {kind!r}; "
               + (f"did you mean {close[0]!r}? " if close else "")
               + f"choose one of: {', '.join(node.classes)}")
        return
    known = [p.name for p in inspect.signature(node.classes[kind].__init__).parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
             and p.name not in node.reserved]
    for key in value:
        if key in node.reserved:
            yield f"{_where(path)} {key} cannot be set here: {node.reserved[key]}"
        elif key != "type" and key not in known:
            yield _unknown(key, ["type", *known], path, f" for {kind!r}", elsewhere=False)


def _unknown(key: str, known: Any, path: tuple[str, ...], detail: str = "",
             elsewhere: bool = True) -> str:
    where = _where(path)
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f"{where} unknown key {key!r}{detail}; did you mean {close[0]!r}?"
    elsewhere = elsewhere and _elsewhere(key)
    if elsewhere:
        return f"{where} unknown key {key!r}{detail}; did you mean {elsewhere}?"
    return (f"{where} unknown key {key!r}{detail}; known keys: "
            f"{', '.join(known) if known else 'none'}")


def _elsewhere(key: str) -> str | None:
    """A close key of another table (`epochs` is a budget's), as `'epochs' in [budget.<name>]`;
    the shallowest table that has it (breadth first: [budget] before [segmentation.budget])."""
    places: dict[str, str] = {}
    queue: deque[tuple[Table, tuple[str, ...]]] = deque([(STUDY, ())])
    while queue:
        table, path = queue.popleft()
        for name, child in [*table.keys.items(), ("<name>", table.named)]:
            if isinstance(child, Table):
                queue.append((child, (*path, name)))
            elif child is not None and name != "<name>":
                places.setdefault(name, _where(path))
    close = difflib.get_close_matches(key, list(places), n=1)
    return f"{close[0]!r} in {places[close[0]]}" if close else None


def _where(path: tuple[str, ...]) -> str:
    return f"[{'.'.join(path)}]" if path else "at the top level,"


def _is(value: Any, types: type | tuple[type, ...]) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):  # TOML's true is no number
        return bool in types
    return isinstance(value, types)


def _kind(types: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "an array"}
    if types == NUMBER:
        return "a number"
    return " or ".join(names[t] for t in (types if isinstance(types, tuple) else (types,)))
