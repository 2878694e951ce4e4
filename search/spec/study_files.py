"""Study files: one declarative TOML per lab task in `studies/`, over `studies/_defaults.toml`."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import optuna

from datasets import catalog
from search.spec import schema
from search.spec.consumers import PRECISIONS, check_consumers
from search.spec.space import active, contains, distribution

DEFAULTS = "_defaults.toml"
BASELINE_KEYS = ("note", "budgets")  # a baseline's keys that are not params
# What a study may maximize: validation metrics every trial logs per epoch.
OBJECTIVES = {"classification": ("val_accuracy", "val_auc", "val_balanced_accuracy"),
              "segmentation": ("val_dice",)}


@dataclass(frozen=True)
class StudySpec:
    """A lab task as a search problem: model, data, fixed settings, search space, baselines."""

    name: str
    description: str
    model: str
    data: str
    objective: str
    fixed: dict[str, Any]
    space: dict[str, optuna.distributions.BaseDistribution]
    conditions: dict[str, str]  # param -> the boolean param that must be true to search it
    baselines: list[dict[str, Any]]  # params for every space dimension, "note" and "budgets"
    start: dict[str, Any]  # medtune's first guess (`[start]`): params and "note"; {} for none
    budget: dict[str, dict[str, Any]]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    training: dict[str, Any]
    recovery: dict[str, Any]  # dead workers' trials: heartbeat, retries, epoch checkpoints
    gradcam: dict[str, Any] | None  # {"trials": "best" | "all", "images": n}, or None
    transfer: bool  # trials train a head on features of a frozen base, extracted once
    # the models kept in MLflow: `top_k`; None in a study recorded before it existed (export
    # of such a study replays its best trial)
    selection: dict[str, Any] | None
    export: dict[str, Any]  # `medtune export --replay`: the replay's tolerance on the objective
    artifacts: dict[str, Any]  # segmentation overlays: how many images, the mask threshold
    split: dict[str, Any]  # image/mask pairs: validation fraction and seed (`loader.load`)
    synthetic: dict[str, dict[str, int]]  # embedded synthetic sets' settings, by generator
    source: str  # the study file's text, as it was loaded
    defaults_source: str = ""  # `_defaults.toml`'s text, as it was loaded

    def record(self) -> dict[str, str]:
        """The texts this spec was built from, for `spec_from_record`: what a study stores so
        that its trials can be replayed as they ran (`medtune export`)."""
        return {"name": self.name, "file": self.source, "defaults": self.defaults_source}


def studies_dir() -> Path:
    return Path(str(resources.files("studies")))


def task_names() -> list[str]:
    return sorted(p.stem for p in studies_dir().glob("*.toml") if not p.name.startswith("_"))


def load_spec(task: str) -> StudySpec:
    """The spec of a task by name (a file in `studies/`) or by path to a study file."""
    path = Path(task)
    if path.suffix != ".toml":
        path = studies_dir() / f"{task}.toml"
        if not path.is_file():
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(task_names())}")
    elif not path.is_file():
        raise ValueError(f"study file {path} does not exist")
    return _spec(path.stem, path.read_text(), (studies_dir() / DEFAULTS).read_text(),
                 f"study file {path}")


def spec_from_record(record: dict[str, str]) -> StudySpec:
    """The spec a study ran with, from the texts it stored (`StudySpec.record`): the same spec
    whether the study file has been edited, moved or deleted since."""
    return _spec(record["name"], record["file"], record["defaults"],
                 f"study file {record['name']!r} as its study recorded it")


def _spec(name: str, text: str, defaults_text: str, where: str) -> StudySpec:
    own = parse_study(text, where)
    defaults = parse_study(defaults_text, f"study defaults {DEFAULTS}")
    # A segmentation task's own defaults (`[segmentation]`: a U-Net's dice means something only
    # after more epochs than a classifier's accuracy) come between the shared ones and its file.
    kind_defaults = defaults.pop("segmentation", {})
    if own.get("data") in catalog.MASK_SETS:
        defaults = _merge(defaults, kind_defaults)
    raw = _merge(defaults, own)
    try:
        schema.check_complete(raw)
        return _build(name, raw, text, defaults_text)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def parse_study(text: str, where: str) -> dict:
    """A study file's table, its keys checked against the schema; errors name `where`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{where}: not valid TOML: {error}") from None
    try:
        schema.check_keys(raw)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return raw


def _merge(base: dict, override: dict) -> dict:
    """Tables merge key by key; a table naming its own `type` (e.g. a pruner) replaces the base."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and "type" not in value:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(name: str, raw: dict, text: str, defaults_text: str) -> StudySpec:
    entries = dict(raw["space"])
    if "augment" in entries:  # the shared ranges go last; a task may redefine any of them
        shared = raw.get("augment_space", {})
        own = {k: v for k, v in entries.items() if k not in shared}
        entries = {**own, **{k: entries.get(k, v) for k, v in shared.items()}}
    space = {param: distribution(param, entry) for param, entry in entries.items()}
    conditions = {p: e["when"] for p, e in entries.items() if "when" in e}
    order = list(space)
    for param, when in conditions.items():
        if when not in space or order.index(when) > order.index(param):
            raise ValueError(f"space.{param}: when = {when!r} must name a search dimension "
                             "listed before it")
    # Baselines may set only search dimensions (below), so checking the space covers them.
    check_consumers(raw["model"], raw.get("fixed", {}), "[fixed]")
    check_consumers(raw["model"], space, "[space]")
    defaults = {k: v for k, v in raw.get("baseline_defaults", {}).items() if k in space}
    baselines = _baselines(raw, space, conditions, defaults)
    _check_settings(raw)
    return StudySpec(
        name=name,
        description=raw.get("description", ""),
        model=raw["model"],
        data=raw["data"],
        objective=raw["objective"],
        fixed=raw.get("fixed", {}),
        space=space,
        conditions=conditions,
        baselines=baselines,
        start=start_params(raw.get("start", {}), space, conditions, defaults, baselines),
        budget=raw["budget"],
        sampler=raw["sampler"],
        pruner=raw["pruner"],
        training=raw["training"],
        recovery=raw["recovery"],
        gradcam=gradcam_settings(raw.get("gradcam")),
        transfer=bool(raw.get("transfer", False)),
        selection=raw.get("selection"),
        export=raw["export"],
        artifacts=raw["artifacts"],
        split=raw["split"],
        synthetic=raw["synthetic"],
        source=text,
        defaults_source=defaults_text,
    )


def _baselines(raw: dict, space: dict, conditions: dict[str, str], defaults: dict) -> list[dict]:
    """The study's baselines, each complete in the search space (or a clear error)."""
    baselines = []
    for entry in raw.get("baselines", []):
        params = {**defaults, **{k: v for k, v in entry.items() if k not in BASELINE_KEYS}}
        params = {k: v for k, v in params.items() if active(k, params, conditions)}
        unknown = sorted(set(params) - set(space))
        missing = sorted(p for p in set(space) - set(params) if active(p, params, conditions))
        if unknown or missing:
            raise ValueError(
                f"baseline {entry.get('note', entry)!r}: "
                + (f"not in the search space: {', '.join(unknown)}. " if unknown else "")
                + (f"no value (add it or a baseline_defaults entry): {', '.join(missing)}"
                   if missing else "")
            )
        for param, value in params.items():
            if not contains(space[param], value):
                raise ValueError(f"baseline {entry.get('note')!r}: {param}={value!r} is outside "
                                 f"the search space {space[param]}")
        budgets = entry.get("budgets", list(raw["budget"]))
        unknown = sorted(set(budgets) - set(raw["budget"]))
        if unknown:
            raise ValueError(f"baseline {entry.get('note')!r}: budgets names no budget "
                             f"{', '.join(unknown)}; known: {', '.join(raw['budget'])}")
        baselines.append({**params, "note": entry.get("note", ""), "budgets": budgets})
    return baselines


def _check_settings(raw: dict) -> None:
    """The budgets', selection's, training's and objective's values, each in its range."""
    for budget, table in raw["budget"].items():
        if table.get("baselines", 0) < 0:
            raise ValueError(f"[budget.{budget}] baselines = {table['baselines']}: the number "
                             "of the study's baselines to queue first, 0 or more")
    if raw.get("selection", {}).get("top_k", 1) < 1:
        raise ValueError(f"[selection] top_k = {raw['selection']['top_k']}: the number of the "
                         "study's best models kept in MLflow, 1 or more (the best is exported)")
    for key in ("finalists", "reseeds", "folds", "small_data"):
        if raw.get("selection", {}).get(key, 0) < 0:
            raise ValueError(f"[selection] {key} = {raw['selection'][key]}: 0 or more")
    if not 0 < raw.get("selection", {}).get("share", 1) <= 1:
        raise ValueError(f"[selection] share = {raw['selection']['share']}: the most of an epoch "
                         "budget the finalists' re-runs may take, above 0 and at most 1")
    kind = "segmentation" if isinstance(catalog.get(raw["data"]), catalog.MaskSet) else (
        "classification")
    if raw["training"]["precision"] not in PRECISIONS:
        raise ValueError(f"[training] precision {raw['training']['precision']!r}: choose one of "
                         f"{', '.join(PRECISIONS)}")
    if raw["objective"] not in OBJECTIVES[kind]:
        raise ValueError(f"objective {raw['objective']!r} is not one for {kind}; choose one of: "
                         f"{', '.join(OBJECTIVES[kind])}")


def start_params(start: dict, space: dict, conditions: dict[str, str], defaults: dict,
                 baselines: list[dict]) -> dict[str, Any]:
    """`[start]` made this task's: the lab's first recipe with the start's settings, those the
    task searches and whose values lie in its ranges (a transfer head has no batch norm to
    switch on; a space without batch 16 keeps the lab's). Empty without a note."""
    if not start.get("note"):
        return {}
    def inside(params: dict) -> dict:
        return {k: v for k, v in params.items() if k in space and contains(space[k], v)}

    own = inside(start)
    if not own:  # nothing of it is searched here: the sampler's trials are as good a start
        return {}
    first = baseline_params(baselines[0]) if baselines else {}
    params = {**inside(defaults), **first, **own}
    params = {k: v for k, v in params.items() if active(k, params, conditions)}
    return {**params, "note": start["note"]}










def gradcam_settings(raw: dict | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    settings = dict(raw)
    if settings.get("trials") not in ("best", "all") or not isinstance(settings.get("images"), int):
        raise ValueError("[gradcam] needs trials = \"best\" (each trial that beats the study's "
                         "best so far) or \"all\" (every completed one), and images = <count>")
    return settings


def baseline_params(baseline: dict[str, Any]) -> dict[str, Any]:
    """A baseline's search params, without its note and budgets."""
    return {k: v for k, v in baseline.items() if k not in BASELINE_KEYS}
