"""Creating (or continuing) a task's Optuna study and running it with MLflow tracking."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from datasets import features, loader
from models.transfer import FeatureBase, imagenet_base, trained_base
from search.manifest import manifest
from search.objective import make_objective
from search.problems import make_problem
from search.pruners import make_pruner
from search.spec import StudySpec
from search.tracking import StudyTracker, load_registered_model

DEFAULT_STORAGE = "sqlite:///optuna.db"
SETTINGS_ATTR = "medtune_settings"  # what a continued study must agree on
FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)


@dataclass(frozen=True)
class TuneSettings:
    """One `tune` invocation, after the study file's budget and the user's overrides."""

    study_name: str
    storage: str
    data_dir: str | None
    seed: int
    n_trials: int  # total finished trials the study should reach, counting earlier runs
    timeout: float | None
    epochs: int
    image_size: int
    budget: str
    base: str | None = None  # transfer tasks: ImageNet weights file, or a models:/ URI


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
) -> TuneSettings:
    if budget not in spec.budget:
        raise ValueError(f"unknown budget {budget!r}; choose one of: {', '.join(spec.budget)}")
    chosen = spec.budget[budget]
    settings = TuneSettings(
        study_name=study_name or spec.name,
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
    )
    for name in ("n_trials", "epochs", "image_size"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if settings.image_size < 32 and spec.model in ("alexnet", "vgg16"):
        raise ValueError(f"image_size {settings.image_size} is too small for {spec.model}: "
                         "its pooling needs at least 32 pixels")
    if settings.timeout is not None and settings.timeout < 0:
        raise ValueError(f"timeout must be seconds >= 0 (0: no limit), got {settings.timeout}")
    return settings


def mask_password(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`."""
    return re.sub(r"(//[^:/@]+:)[^@]+@", r"\1***@", url)


def open_study(spec: StudySpec, settings: TuneSettings) -> optuna.Study:
    """Create the study, or load it to continue; the lab baselines go first in the queue."""
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=settings.storage,
        sampler=optuna.samplers.TPESampler(seed=settings.seed, **spec.sampler),
        pruner=make_pruner(spec.pruner),
        direction="maximize",
        load_if_exists=True,
    )
    identity = {"task": spec.name, "epochs": settings.epochs,
                "image_size": settings.image_size, "data_dir": settings.data_dir}
    if spec.transfer:
        identity["base"] = settings.base
    study.set_user_attr("medtune_objective", spec.objective)  # for `compare`, which has no spec
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, identity)
    elif recorded != identity:
        differs = ", ".join(
            f"{k}={recorded.get(k)!r} (now {v!r})" for k, v in identity.items()
            if recorded.get(k) != v
        )
        raise ValueError(
            f"study {settings.study_name!r} in {mask_password(settings.storage)} was made with "
            f"{differs}; trials with other settings are not comparable. Run with the same "
            "settings to continue it, or give a new study name (--study)."
        )
    for baseline in spec.baselines:
        params = {k: v for k, v in baseline.items() if k != "note"}
        study.enqueue_trial(params, user_attrs={"baseline": baseline["note"]}, skip_if_exists=True)
    return study


def feature_base(base: str | None, size: int, tracking_uri: str | None) -> FeatureBase:
    """ImageNet VGG16 (Keras cache or a weights file), or a registered medtune VGG16."""
    if base and base.startswith("models:/"):
        return trained_base(load_registered_model(base, tracking_uri), base)
    return imagenet_base(size, base)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(
    spec: StudySpec,
    settings: TuneSettings,
    *,
    tracking_uri: str | None = None,
    experiment: str = "medtune",
    verbose: bool = True,
    show_progress_bar: bool = True,
) -> tuple[optuna.Study, StudyTracker]:
    """Load the data once, then run trials until the study has `n_trials` finished ones."""
    # A missing transfer base is found before any data is decoded.
    base = feature_base(settings.base, settings.image_size, tracking_uri) if spec.transfer else None
    data = loader.load(spec.data, settings.data_dir, settings.image_size)
    extra = {}
    if base is not None:  # trials train only the head: extract the base's features once, up front
        data, seconds = features.extract(data, base)
        extra = {"transfer_base": base.identity, "features_cached": data.from_cache,
                 "feature_seconds": round(seconds, 1)}
    study = open_study(spec, settings)
    params = {
        **{k: v for k, v in asdict(settings).items() if k != "storage"},
        "storage": mask_password(settings.storage),
        "task": spec.name,
        "model": spec.model,
        "data": spec.data,
        "data_source": data.source,
        "data_layout": data.layout,
        "n_train": len(data.y_train),
        "n_val": len(data.y_val),
        **extra,
    }
    tracker = StudyTracker.open(
        study,
        settings=params,
        tags={"medtune.task": spec.name, "mlflow.note.content": spec.description},
        experiment=experiment,
        tracking_uri=tracking_uri,
    )
    tracker.log_text(spec.source, f"study/{spec.name}.toml")
    tracker.log_dict(
        manifest(
            settings=params, sampler=spec.sampler, pruner=spec.pruner, study_file=spec.source,
            data={"source": data.source, "layout": data.layout, "fingerprint": data.fingerprint,
                  "n_train": len(data.y_train), "n_val": len(data.y_val)},
        ),
        "manifest.json",
    )
    objective = make_objective(
        spec, make_problem(spec, data), tracker,
        epochs=settings.epochs, seed=settings.seed, verbose=verbose,
    )
    remaining = max(0, settings.n_trials - finished_trials(study))
    status = "FINISHED"
    try:
        if remaining:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=settings.timeout,
                catch=(Exception,),  # a failed trial is recorded (FAIL, MLflow FAILED); go on
                show_progress_bar=show_progress_bar,
                gc_after_trial=True,
            )
    except BaseException:
        status = "KILLED"  # interrupted: keep what was logged, end the parent as killed
        raise
    finally:
        tracker.summarize(study)
        tracker.close(status)
    return study, tracker
