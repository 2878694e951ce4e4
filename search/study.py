"""Creating (or continuing) a task's Optuna study and running it with MLflow tracking."""

from __future__ import annotations

import gc
import time
from dataclasses import asdict

import optuna
from optuna.study import MaxTrialsCallback

from datasets import features, loader
from models.transfer import FeatureBase, imagenet_base, trained_base
from search import holdout
from search.limits import COUNTED, EpochBudget, FailureCount, counted_trials
from search.manifest import manifest
from search.objective import make_objective
from search.problems import make_problem
from search.pruners import make_pruner, make_sampler
from search.recovery import JOURNAL, Recovery
from search.settings import TuneSettings
from search.spec import StudySpec, baseline_params
from search.tracking import DataRecord, StudyTracker, load_registered_model
from search.urls import mask_password
from search.worker import FreezeSurvivors, MemoryGuard

SETTINGS_ATTR = "medtune_settings"  # what a continued study must agree on


def open_study(
    spec: StudySpec, settings: TuneSettings, recovery: Recovery | None = None
) -> optuna.Study:
    """Create the study, or load it to continue it."""
    recovery = recovery or Recovery(spec.recovery)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=recovery.storage(settings.storage),
        sampler=make_sampler(spec.sampler, settings.seed),
        pruner=make_pruner(spec.pruner, settings.epochs),
        direction="maximize",
        load_if_exists=True,
    )
    identity = {"task": spec.name, "epochs": settings.epochs,
                "image_size": settings.image_size, "data_dir": settings.data_dir}
    if spec.training["precision"] != "float32":  # (older studies recorded no precision)
        identity["precision"] = spec.training["precision"]
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


def enqueue_baselines(spec: StudySpec, study: optuna.Study, budget: str) -> None:
    """The lab's own settings first, as the bar for the search (the pruner judges them like any
    trial); a baseline may be marked for some budgets only (`budgets = ["lab"]`)."""
    for baseline in spec.baselines:
        if budget in baseline["budgets"]:
            study.enqueue_trial(baseline_params(baseline),
                                user_attrs={"baseline": baseline["note"]}, skip_if_exists=True)


def feature_base(base: str | None, size: int, tracking_uri: str | None) -> FeatureBase:
    """ImageNet VGG16 (Keras cache or a weights file), or a registered medtune VGG16."""
    if base and base.startswith("models:/"):
        return trained_base(load_registered_model(base, tracking_uri), base)
    return imagenet_base(size, base)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a study; `trial` is the trial that was cut and will be retried."""

    def __init__(self, trial: int | None):
        super().__init__(trial)
        self.trial = trial


def _optimize(spec, settings, study, problem, tracker, recovery, guard, verbose,
              show_progress_bar) -> None:
    """Optuna's loop: the sampler proposes, the pruner stops, until `n_trials` trials have
    completed or been pruned (counting every worker's trials: several processes may share the
    study). A failed trial does not count, so the loop goes on past it; a run whose own trials
    keep failing stops after as many failures as it was asked to finish trials."""
    objective = make_objective(spec, problem, tracker, epochs=settings.epochs,
                               seed=settings.seed, storage=settings.storage, verbose=verbose)
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    failures = FailureCount(max(1, settings.n_trials - counted_trials(study)))
    budget = EpochBudget(settings.epoch_budget)
    # What is alive now (modules, data, storage) lives as long as the study: keep it out of
    # the collection each trial ends with, which then takes milliseconds instead of seconds.
    gc.collect()
    gc.freeze()
    try:
        while (remaining := settings.n_trials - counted_trials(study)) > 0:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or budget.spent(study) or failures.stopped:
                break
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=left,
                catch=(Exception,),  # a failed trial is recorded (FAIL, MLflow FAILED); go on
                callbacks=[MaxTrialsCallback(settings.n_trials, states=COUNTED), budget,
                           failures, recovery.fail_orphans, *([guard] if guard else []),
                           FreezeSurvivors()],
                show_progress_bar=show_progress_bar,
                gc_after_trial=False,  # fresh_keras_session collects once per trial already
            )
            if guard is not None and guard.exceeded:
                break
    except KeyboardInterrupt:
        raise Interrupted(recovery.retry_interrupted(study)) from None
    finally:
        gc.unfreeze()
    if failures.stopped:
        print(f"medtune: stopped after {failures.count} failed trials in this run (see their "
              "`error` tags in MLflow); fix the cause, then run again to continue", flush=True)


def _start_tracking(spec: StudySpec, settings: TuneSettings, study: optuna.Study, problem,
                    extra: dict, tracking_uri: str | None, experiment: str | None
                    ) -> StudyTracker:
    """The study's MLflow run, opened (or reopened) with its settings, data, study file and
    manifest."""
    data = problem.data
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
        **({"n_test": len(data.extra["y_test"])} if "y_test" in data.extra else {}),
        # What a constant guess scores on each split: the bar every trial must clear.
        **{f"majority_rate_{split}": round(rate, 4)
           for split, rate in problem.majority_rates().items()},
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
    tracker.chance = problem.chance()
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
    return tracker


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
    """Load the data once, then run trials until the study has `n_trials` counted ones (or
    until `guard` stops this worker to restart it with fresh memory)."""
    # A missing transfer base is found before any data is decoded.
    base = feature_base(settings.base, settings.image_size, tracking_uri) if spec.transfer else None
    data = loader.load(spec.data, settings.data_dir, settings.image_size, split=spec.split,
                       synthetic=spec.synthetic)
    extra = {}
    if base is not None:  # trials train only the head: extract the base's features once, up front
        data, seconds = features.extract(data, base)
        extra = {"transfer_base": base.identity, "features_cached": data.from_cache,
                 "feature_seconds": round(seconds, 1)}
    problem = make_problem(spec, data)
    recovery = Recovery(spec.recovery)
    study = open_study(spec, settings, recovery)
    tracker = _start_tracking(spec, settings, study, problem, extra, tracking_uri, experiment)
    if tracker.created and settings.engine == "optuna":  # once, by the worker that made it
        enqueue_baselines(spec, study, settings.budget)
    recovery.tracker = tracker
    recovery.fail_orphans(study)  # trials a dead worker left RUNNING: failed, then retried
    status = "FINISHED"
    try:
        if settings.engine == "keras-tuner":
            from search import keras_tuner_engine  # imports keras_tuner only when asked for

            keras_tuner_engine.search(spec, settings, study, problem, tracker, verbose=verbose)
        else:
            _optimize(spec, settings, study, problem, tracker, recovery, guard, verbose,
                      show_progress_bar)
        holdout.judge_best(spec, problem, study, settings.storage)
    except BaseException:
        status = "KILLED"  # interrupted: keep what was logged, end the parent as killed
        raise
    finally:
        tracker.summarize(study)
        tracker.close(status)
    return study, tracker
