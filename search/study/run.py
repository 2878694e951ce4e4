"""Creating (or continuing) a task's Optuna study and running it with MLflow tracking."""

from __future__ import annotations

from dataclasses import asdict

import optuna

from datasets import catalog, features, loader
from models.transfer import FeatureBase, imagenet_base, trained_base
from search.champion import holdout
from search.champion.finalists import recheck
from search.champion.kept import Keeper
from search.champion.refit import refit_best
from search.engines.catalog import DEFAULT as DEFAULT_ENGINE
from search.engines.catalog import StudyRun, get_engine
from search.engines.recovery import Recovery
from search.records import attrs, note_study, study_facts
from search.runtime.urls import mask_password
from search.runtime.worker import MemoryGuard
from search.spec.pruners import make_pruner, make_sampler
from search.spec.settings import TuneSettings
from search.spec.study_files import StudySpec, baseline_params, load_spec, spec_from_record
from search.tracking.joining import made_elsewhere, record_maker
from search.tracking.manifest import manifest
from search.tracking.models import load_registered_model
from search.tracking.runs import DataRecord
from search.tracking.study_run import StudyTracker
from search.trial.problems import Classification, Segmentation, make_problem

NEWER_SETTINGS = ("split", "synthetic")  # recorded since; older studies agree on them


def data_settings(spec: StudySpec, data_dir: str | None) -> dict:
    """The study file's settings that decide which images a study sees: how image/mask pairs
    are split, and how the embedded synthetic set is drawn when no data folder is given."""
    found = {}
    dataset = catalog.get(spec.data)
    if isinstance(dataset, catalog.MaskSet):
        found["split"] = dict(spec.split)
    if data_dir is None:
        found["synthetic"] = dict(spec.synthetic[dataset.synthetic])
    return found


def open_study(
    spec: StudySpec, settings: TuneSettings, recovery: Recovery | None = None
) -> optuna.Study:
    """Create the study, or load it to continue it."""
    recovery = recovery or Recovery(spec.recovery)
    name, storage = settings.study_name, recovery.storage(settings.storage)
    sampler = make_sampler(spec.sampler, settings.seed)
    pruner = make_pruner(spec.pruner, settings.epochs)
    try:  # the storage makes a study once: of workers starting it together, one makes it
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    pruner=pruner, direction="maximize")
        record_maker(study)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                  pruner=pruner)
    identity = {"task": spec.name, "epochs": settings.epochs,
                "image_size": settings.image_size, "data_dir": settings.data_dir}
    if spec.training["precision"] != "float32":  # (older studies recorded no precision)
        identity["precision"] = spec.training["precision"]
    if spec.transfer:
        identity["base"] = settings.base
    if settings.engine != DEFAULT_ENGINE:  # (studies of the default engine recorded none)
        identity["engine"] = settings.engine
    identity |= data_settings(spec, settings.data_dir)
    note_study(study, objective=spec.objective)  # for `compare`, which has no spec
    recorded = study_facts(study).settings
    # A study made before a setting was recorded agrees on it: it is added to its record.
    if recorded is not None and (added := {k: v for k, v in identity.items()
                                           if k in NEWER_SETTINGS and k not in recorded}):
        recorded = {**recorded, **added}
        note_study(study, settings=recorded)
    if recorded is None:
        note_study(study, settings=identity)
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
    # The study file as it ran: `medtune export` replays the best trial with it, so a study
    # made from a file of one's own, moved or edited since, still exports.
    note_study(study, study_file=spec.record())
    return study


def data_record(name: str, data) -> DataRecord:
    """The data set as MLflow's dataset inputs show it: name, fingerprint, source, counts."""
    counts = {"train": len(data.y_train), "validation": len(data.y_val)}
    if "y_test" in (data.extra or {}):
        counts["test"] = len(data.extra["y_test"])
    return DataRecord(name, data.fingerprint, data.source, counts, data.layout)


def queued_baselines(spec: StudySpec, budget: str) -> list[dict]:
    """The baselines a study in `budget` starts with: those marked for it (`budgets = ["lab"]`),
    the first few of them where the budget says so (`baselines = 1` in `[budget.quick]`: the
    bar, not the grid)."""
    marked = [b for b in spec.baselines if budget in b["budgets"]]
    return marked[:spec.budget[budget].get("baselines", len(marked))]


def enqueue_baselines(spec: StudySpec, study: optuna.Study, budget: str) -> None:
    """The lab's own settings first, as the bar for the search, then `[start]` (the pruner judges
    them like any trial)."""
    for baseline in queued_baselines(spec, budget):
        study.enqueue_trial(baseline_params(baseline),
                            user_attrs=attrs(baseline=baseline["note"]), skip_if_exists=True)
    if spec.start:  # then medtune's own first guess, judged the same way
        study.enqueue_trial(baseline_params(spec.start),
                            user_attrs=attrs(start=spec.start["note"]), skip_if_exists=True)


def feature_base(base: str | None, size: int, tracking_uri: str | None) -> FeatureBase:
    """ImageNet VGG16 (Keras cache or a weights file), or a registered medtune VGG16."""
    if base and base.startswith("models:/"):
        return trained_base(load_registered_model(base, tracking_uri), base)
    return imagenet_base(size, base)


def recorded_spec(study: optuna.Study) -> StudySpec:
    """The study file as the study last ran it (its record); today's task file for a study
    older than the record."""
    record = study_facts(study)
    if record.study_file is not None:
        return spec_from_record(record.study_file)
    return load_spec(record.settings["task"])


def prepare_problem(spec: StudySpec, data_dir: str | None, image_size: int, base: str | None,
                    tracking_uri: str | None
                    ) -> tuple[Classification | Segmentation, FeatureBase | None, dict]:
    """The study's data, decoded once (cached across studies), as the problem its trials get;
    for a transfer task, also the frozen base and the features extracted with it. The third
    value says how the features came (for the study's params)."""
    # A missing transfer base is found before any data is decoded.
    frozen = feature_base(base, image_size, tracking_uri) if spec.transfer else None
    data = loader.load(spec.data, data_dir, image_size, split=spec.split,
                       synthetic=spec.synthetic)
    extra = {}
    if frozen is not None:  # trials train only the head: extract the base's features up front
        data, seconds = features.extract(data, frozen)
        extra = {"transfer_base": frozen.identity, "features_cached": data.from_cache,
                 "feature_seconds": round(seconds, 1)}
    return make_problem(spec, data), frozen, extra


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
        joined=made_elsewhere(study),  # then the study's run is its maker's
    )
    tracker.use_data(data_record(spec.data, data))
    tracker.chance = problem.chance()
    tracker.log_text(spec.source, f"study/{spec.name}.toml")
    tracker.log_dict(
        manifest(
            settings=params, study_file=spec.source,
            **get_engine(settings.engine).describe(spec),
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
    engine = get_engine(settings.engine)  # an unknown one is named before any work is done
    problem, base, extra = prepare_problem(spec, settings.data_dir, settings.image_size,
                                           settings.base, tracking_uri)
    recovery = Recovery(spec.recovery)
    study = open_study(spec, settings, recovery)
    tracker = _start_tracking(spec, settings, study, problem, extra, tracking_uri, experiment)
    if tracker.created and engine.queues_baselines:  # once, by the worker that made it
        enqueue_baselines(spec, study, settings.budget)
    recovery.tracker = tracker
    recovery.fail_orphans(study)  # trials a dead worker left RUNNING: failed, then retried
    status = "FINISHED"
    try:
        keeper = Keeper(spec, problem, settings.image_size)
        engine.search(StudyRun(spec, settings, study, problem, tracker, keeper, recovery, guard,
                               verbose, show_progress_bar))
        if guard is not None and guard.exceeded:
            return study, tracker  # restarting with fresh memory: the study goes on
        if settings.finalists and settings.study_end:  # the best few again: a pick that holds
            recheck(spec, keeper, study, tracker, finalists=settings.finalists,
                    epochs=settings.epochs, budget=settings.epoch_budget, verbose=verbose)
        refit = None
        if settings.refit_epochs:
            refit = refit_best(spec, keeper, study, tracker, settings.refit_epochs,
                               verbose=verbose)
        holdout.judge_best(spec, problem, study, tracker.tracking_uri, refit)
    except BaseException:
        status = "KILLED"  # interrupted: keep what was logged, end the parent as killed
        raise
    finally:
        tracker.summarize(study)
        tracker.close(status)
    return study, tracker
