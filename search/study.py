"""Creating (or continuing) a task's Optuna study and running it with MLflow tracking."""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback

from datasets import features, loader
from models.transfer import FeatureBase, imagenet_base, trained_base
from search.manifest import manifest
from search.objective import make_objective
from search.problems import make_problem
from search.pruners import make_pruner, make_sampler
from search.recovery import JOURNAL, MemoryGuard, Recovery
from search.spec import StudySpec
from search.tracking import DataRecord, StudyTracker, load_registered_model
from search.urls import mask_password

DEFAULT_STORAGE = "sqlite:///optuna.db"
ENGINES = ("optuna", "keras-tuner")
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
    engine: str = "optuna"  # or "keras-tuner": Hyperband, its trials mirrored into the study
    epoch_budget: int | None = None  # stop once the study's trials have trained this many epochs


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
    engine: str = "optuna",
    epoch_budget: int | None = None,
) -> TuneSettings:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if budget not in spec.budget:
        raise ValueError(f"unknown budget {budget!r}; choose one of: {', '.join(spec.budget)}")
    chosen = spec.budget[budget]
    settings = TuneSettings(
        # Each engine its own study by default, so `compare` can set them side by side.
        study_name=study_name or (spec.name if engine == "optuna" else f"{spec.name}-{engine}"),
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


def open_study(
    spec: StudySpec, settings: TuneSettings, recovery: Recovery | None = None
) -> optuna.Study:
    """Create the study, or load it to continue it."""
    recovery = recovery or Recovery(spec.recovery)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=recovery.storage(settings.storage),
        sampler=make_sampler(spec.sampler, settings.seed),
        pruner=make_pruner(spec.pruner),
        direction="maximize",
        load_if_exists=True,
    )
    identity = {"task": spec.name, "epochs": settings.epochs,
                "image_size": settings.image_size, "data_dir": settings.data_dir}
    if spec.transfer:
        identity["base"] = settings.base
    if settings.engine != "optuna":
        identity["engine"] = settings.engine
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
    return study


def data_record(name: str, data) -> DataRecord:
    """The data set as MLflow's dataset inputs show it: name, fingerprint, source, counts."""
    counts = {"train": len(data.y_train), "validation": len(data.y_val)}
    if "y_test" in (data.extra or {}):
        counts["test"] = len(data.extra["y_test"])
    return DataRecord(name, data.fingerprint, data.source, counts, data.layout)


def enqueue_baselines(spec: StudySpec, study: optuna.Study) -> None:
    """The lab's own settings first: a search never ends worse than the lab's recipe."""
    for baseline in spec.baselines:
        params = {k: v for k, v in baseline.items() if k != "note"}
        study.enqueue_trial(params, user_attrs={"baseline": baseline["note"]}, skip_if_exists=True)


def feature_base(base: str | None, size: int, tracking_uri: str | None) -> FeatureBase:
    """ImageNet VGG16 (Keras cache or a weights file), or a registered medtune VGG16."""
    if base and base.startswith("models:/"):
        return trained_base(load_registered_model(base, tracking_uri), base)
    return imagenet_base(size, base)


def _optimize(spec, settings, study, problem, tracker, recovery, guard, verbose,
              show_progress_bar) -> None:
    """Optuna's loop: the sampler proposes, the pruner stops, until `n_trials` have finished
    (counting every worker's trials: several processes may share the study)."""
    objective = make_objective(spec, problem, tracker, epochs=settings.epochs,
                               seed=settings.seed, storage=settings.storage, verbose=verbose)
    remaining = max(0, settings.n_trials - finished_trials(study))
    if remaining:
        # What is alive now (modules, data, storage) lives as long as the study: keep it out of
        # the collection each trial ends with, which then takes milliseconds instead of seconds.
        gc.collect()
        gc.freeze()
        try:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=settings.timeout,
                catch=(Exception,),  # a failed trial is recorded (FAIL, MLflow FAILED); go on
                callbacks=[MaxTrialsCallback(settings.n_trials, states=FINISHED),
                           EpochBudget(settings.epoch_budget), recovery.fail_orphans,
                           *([guard] if guard else []), FreezeSurvivors()],
                show_progress_bar=show_progress_bar,
                gc_after_trial=False,  # fresh_keras_session collects once per trial already
            )
        finally:
            gc.unfreeze()


class FreezeSurvivors:
    """Keep what outlived a trial out of later trials' collections. TensorFlow keeps each
    trial's traced functions after `clear_session` (see MemoryGuard); scanned again by every
    later collection, they made the one per trial grow from 0.05 to 1.3 s over 200 trials.
    Frozen, a collection scans one trial's objects. What is frozen and only later becomes
    garbage stays until a full collection: every `every` trials (and at the study's end) all
    is unfrozen and collected once, which bounds that memory to a few trials' worth."""

    def __init__(self, every: int = 20):
        self.every, self.trials = every, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.trials += 1
        if self.trials % self.every == 0:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)  # young garbage is not frozen
        gc.freeze()


def epochs_spent(study: optuna.Study) -> int:
    """Epochs trained by all of the study's trials (a pruned trial counts those it ran)."""
    return sum(t.user_attrs.get("epochs_run", 0) for t in study.get_trials(deepcopy=False))


class EpochBudget:
    """Stops the study once its trials have trained `budget` epochs in all (None: no limit)."""

    def __init__(self, budget: int | None):
        self.budget = budget

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.budget and epochs_spent(study) >= self.budget:
            study.stop()


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(
    spec: StudySpec,
    settings: TuneSettings,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,  # MLflow experiment; None: the task's name
    verbose: bool = True,
    show_progress_bar: bool = True,
    guard: MemoryGuard | None = None,
) -> tuple[optuna.Study, StudyTracker]:
    """Load the data once, then run trials until the study has `n_trials` finished ones (or
    until `guard` stops this worker to restart it with fresh memory)."""
    # A missing transfer base is found before any data is decoded.
    base = feature_base(settings.base, settings.image_size, tracking_uri) if spec.transfer else None
    data = loader.load(spec.data, settings.data_dir, settings.image_size)
    extra = {}
    if base is not None:  # trials train only the head: extract the base's features once, up front
        data, seconds = features.extract(data, base)
        extra = {"transfer_base": base.identity, "features_cached": data.from_cache,
                 "feature_seconds": round(seconds, 1)}
    recovery = Recovery(spec.recovery)
    study = open_study(spec, settings, recovery)
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
        experiment=experiment or spec.name,
        tracking_uri=tracking_uri,
        # Workers on several machines may start a new study together; on one machine's SQLite
        # or journal file, `--workers` makes the study before it starts its workers.
        shared=not settings.storage.startswith(("sqlite", JOURNAL)),
    )
    tracker.use_data(data_record(spec.data, data))
    tracker.log_text(spec.source, f"study/{spec.name}.toml")
    tracker.log_dict(
        manifest(
            settings=params, study_file=spec.source,
            sampler=spec.sampler if settings.engine == "optuna" else {"type": settings.engine},
            pruner=spec.pruner if settings.engine == "optuna" else {"type": "Hyperband"},
            data={"source": data.source, "layout": data.layout, "fingerprint": data.fingerprint,
                  "n_train": len(data.y_train), "n_val": len(data.y_val)},
        ),
        "manifest.json",
    )
    if tracker.created and settings.engine == "optuna":  # once, by the worker that made it
        enqueue_baselines(spec, study)
    recovery.tracker = tracker
    recovery.fail_orphans(study)  # trials a dead worker left RUNNING: failed, then retried
    problem = make_problem(spec, data)
    status = "FINISHED"
    try:
        if settings.engine == "keras-tuner":
            from search import keras_tuner_engine  # imports keras_tuner only when asked for

            keras_tuner_engine.search(spec, settings, study, problem, tracker, verbose=verbose)
        else:
            _optimize(spec, settings, study, problem, tracker, recovery, guard, verbose,
                      show_progress_bar)
    except BaseException:
        status = "KILLED"  # interrupted: keep what was logged, end the parent as killed
        raise
    finally:
        tracker.summarize(study)
        tracker.close(status)
    return study, tracker
