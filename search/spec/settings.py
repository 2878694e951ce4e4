"""One `tune` invocation's settings: the study file's budget with the user's overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.spec.study_files import StudySpec

DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_ENGINE = "optuna"  # a name in `search.engines.catalog.ENGINES`, checked when the study runs


@dataclass(frozen=True)
class TuneSettings:
    """One `tune` invocation, after the study file's budget and the user's overrides."""

    study_name: str
    storage: str
    data_dir: str | None
    seed: int
    n_trials: int  # complete + pruned trials the study should reach, counting earlier runs
    timeout: float | None
    epochs: int
    image_size: int
    budget: str
    base: str | None = None  # transfer tasks: ImageNet weights file, or a models:/ URI
    engine: str = DEFAULT_ENGINE  # a name in `search.engines.catalog.ENGINES`
    epoch_budget: int | None = None  # stop once the study's trials have trained this many epochs
    refit_epochs: int = 0  # when the study ends, continue its best trial to this many epochs
    # when the study ends, re-check its best this many (`search.champion.finalists`)
    finalists: int = 0
    # False in the workers `--workers` starts: their command, once they are done, re-checks the
    # finalists (a worker still keeps the epochs for them when the study has an epoch budget)
    study_end: bool = True


def resolve_settings(
    spec: StudySpec,
    *,
    budget: str = "quick",
    study_name: str | None = None,
    storage: str | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    n_trials: int | None = None,
    timeout: float | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    base: str | None = None,
    engine: str = DEFAULT_ENGINE,
    epoch_budget: int | None = None,
    refit_epochs: int = 0,
    finalists: int | None = None,  # None: the study file's [selection] finalists
) -> TuneSettings:
    if budget not in spec.budget:
        raise ValueError(f"unknown budget {budget!r}; choose one of: {', '.join(spec.budget)}")
    chosen = spec.budget[budget]
    settings = TuneSettings(
        # Each engine its own study by default, so `compare` can set them side by side.
        study_name=study_name or (
            spec.name if engine == DEFAULT_ENGINE else f"{spec.name}-{engine}"),
        storage=storage or DEFAULT_STORAGE,
        data_dir=str(Path(data_dir).expanduser().resolve()) if data_dir else None,
        seed=seed,
        n_trials=chosen["n_trials"] if n_trials is None else n_trials,
        # 0 lifts the budget's time limit
        timeout=(chosen.get("timeout") if timeout is None else timeout) or None,
        epochs=chosen["epochs"] if epochs is None else epochs,
        image_size=chosen["image_size"] if image_size is None else image_size,
        budget=budget,
        base=base or None,
        engine=engine,
        epoch_budget=epoch_budget or None,
        refit_epochs=refit_epochs or 0,
        finalists=spec.selection["finalists"] if finalists is None else finalists,
    )
    for name in ("n_trials", "epochs", "image_size"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if settings.image_size < 32 and spec.model in ("alexnet", "vgg16"):
        raise ValueError(f"image_size {settings.image_size} is too small for {spec.model}: "
                         "its pooling needs at least 32 pixels")
    if settings.finalists < 0:
        raise ValueError(f"finalists must be >= 0 (0: none), got {settings.finalists}")
    if settings.refit_epochs < 0:
        raise ValueError(f"refit_epochs must be >= 0 (0: no refit), got {settings.refit_epochs}")
    if settings.timeout is not None and settings.timeout < 0:
        raise ValueError(f"timeout must be seconds >= 0 (0: no limit), got {settings.timeout}")
    return settings
