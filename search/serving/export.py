"""`medtune export`: register a study's champion as `champion` in the MLflow Model Registry.

The champion is the model the study kept in MLflow (`search.champion.kept`): its best trial's best
epoch, or the refit of it when the refit beat it; the model the test split judged. Export loads
it from MLflow, so it takes seconds, trains nothing and runs on any machine that reaches the
study's storage and tracking store.

`--replay` adds a reproducibility check: the best trial is retrained exactly as it ran (same
params, seed, data and epochs) and nothing is registered unless the replay reaches the recorded
value within the tolerance (data or code changed since, a tampered storage). A study made before
models were kept has nothing to load: its best trial is replayed and that model registered.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import optuna

from search.champion import kept
from search.records import champion_trial, facts, model_kind, study_facts
from search.runtime.storages import open_storage
from search.runtime.urls import mask_password
from search.serving.registry import Registered, export_run, register_model
from search.spec.study_files import StudySpec
from search.study.run import (
    data_record,
    feature_base,
    prepare_problem,
    recorded_spec,
)
from search.tracking.manifest import served_requirements
from search.tracking.models import kept_model
from search.tracking.trial_run import TrialRun
from search.trial.run import Planned, run_trial
from search.trial.training import fresh_keras_session


class ReplayMismatch(ValueError):
    """The best trial's value could not be reproduced within the tolerance."""


@dataclass
class Export:
    registered: Registered
    trial: int
    recorded: float  # the trial's validation value
    value: float  # the registered model's validation value (the refit's, when it won)
    champion: str  # "trial", "refit" or "ensemble": which model was registered
    model_id: str | None  # the kept model registered (None: a replay of an older study)
    replayed: float | None = None  # the replay's value, with --replay
    tolerance: float | None = None


def best_trial(study_name: str, storage: str) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise ValueError(
            f"no study {study_name!r} in {mask_password(storage)}: run `medtune tune` for it "
            "first, or give the --storage it ran in"
        ) from None
    if study_facts(study).settings is None:
        raise ValueError(f"study {study_name!r} was not made by medtune (it records no "
                         "medtune settings)")
    best = champion_trial(study)  # the best trial, or the re-checked finalists' champion
    if best is None:
        raise ValueError(
            f"study {study_name!r} has no completed trial yet: let `medtune tune` finish one")
    return study, best


def export_best(
    study_name: str,
    storage: str,
    *,
    name: str | None = None,
    replay: bool = False,
    tolerance: float | None = None,  # None: the study file's [export] tolerance
    tracking_uri: str | None = None,
    experiment: str | None = None,  # None: the task's name, as the study's
    verbose: bool = True,
) -> Export:
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    study, best = best_trial(study_name, storage)
    record = study_facts(study)
    recorded = record.settings  # the data and sizes the study was run with
    spec = recorded_spec(study)
    tolerance = spec.export["tolerance"] if tolerance is None else tolerance
    model_id = kept.champion_id(study)
    champion = model_kind(study, best, model_id)
    value = best.value
    if champion == "refit":
        value = record.refit["value"]
    elif champion == "ensemble":  # its mean over the finalists' held-in runs
        value = record.finalists["ensemble"]["mean"]
    replay = replay or model_id is None  # an older study: nothing kept to load
    params = {"study": study_name, "storage": mask_password(storage), "task": spec.name,
              "trial": best.number, "replay": replay, "image_size": recorded["image_size"],
              **best.params}
    if replay:  # what the replay trains: the trial's epochs (Hyperband's for Keras Tuner), seed
        params |= {"tolerance": tolerance, "seed": facts(best).seed_or_number(best.number),
                   "epochs": facts(best).epochs or recorded["epochs"]}
    tags = {"medtune.study": study_name, "medtune.task": spec.name,
            "medtune.exported_trial": str(best.number), "medtune.champion": champion,
            "medtune.model_id": model_id or "",
            "replayed_run_id": facts(best).run_id or ""}
    with export_run(f"export {study_name}", params, tags, experiment=experiment or spec.name,
                    tracking_uri=tracking_uri) as run:
        run.log_metrics({"recorded_value": best.value,
                         **({f"{champion}_value": value} if champion != "trial" else {})})
        replayed, model, settings = None, None, None
        if replay:
            replayed, model, settings = _replay(spec, study, best, run, tolerance, tracking_uri,
                                                verbose)
        if model_id is not None:  # what the study kept (and the test split judged)
            model, metadata = kept_model(model_id, tracking_uri)
            settings = metadata["medtune"]
            if spec.transfer:  # a head on the frozen base's features: the two as one model
                base = feature_base(recorded.get("base"), recorded["image_size"], tracking_uri)
                model = base.end_to_end(model)
        registered = register_model(run, model, settings, name or study_name,
                                    served_requirements())
    return Export(registered, best.number, best.value, value, champion, model_id, replayed,
                  tolerance if replay else None)


def _replay(spec: StudySpec, study: optuna.Study, best: optuna.trial.FrozenTrial,
            run: TrialRun, tolerance: float, tracking_uri: str | None, verbose: bool
            ) -> tuple[float, keras.Model, dict]:
    """Retrain `best` as it ran and check its value: the replayed value, the model (base and
    head as one, for a transfer task) and its predictor settings; `ReplayMismatch` when the
    value is off by more than `tolerance`."""
    recorded = study_facts(study).settings
    # A Keras Tuner trial trained Hyperband's epochs for it; an Optuna trial the study's.
    size, epochs = recorded["image_size"], facts(best).epochs or recorded["epochs"]
    problem, base, _ = prepare_problem(spec, recorded["data_dir"], size, recorded.get("base"),
                                       tracking_uri)
    plan = Planned(spec, problem, best.params, epochs, facts(best).seed_or_number(best.number))
    seed = plan.seed
    run.log_data(data_record(spec.data, problem.data))
    with fresh_keras_session():
        # The trial as it ran (same lifecycle, params and seed), without a pruner to stop it.
        try:
            result = run_trial(plan, run, baseline=bool(facts(best).baseline), verbose=verbose)
        except optuna.TrialPruned as stop:  # stuck: the replay cannot reach the trial's value
            raise ReplayMismatch(f"replaying trial {best.number} of {study.study_name!r} (seed "
                                 f"{seed}) was stopped: {stop}. Not registered.") from None
    replayed = result.value
    run.log_metrics({"replayed_value": replayed, "replay_difference": replayed - best.value})
    if abs(replayed - best.value) > tolerance:
        raise ReplayMismatch(
            f"trial {best.number} of {study.study_name!r} recorded {spec.objective} "
            f"{best.value:.4f}, but replaying it (same params, seed {seed}) gave "
            f"{replayed:.4f}, off by more than the tolerance {tolerance}. Not registered. "
            "Has the data or the code changed since the study ran? Re-run the study, or "
            "raise --tolerance if this variation is expected."
        )
    model = result.model if base is None else base.end_to_end(result.model)
    settings = kept.Keeper(spec, problem, size).metadata(result.config)["medtune"]
    return replayed, model, settings


def export_command(study: str, storage: str | None, *, name: str | None, replay: bool,
                   tolerance: float | None, tracking_uri: str | None, experiment: str) -> int:
    """`medtune export`: register the champion, and say how to use it."""
    from search.spec.settings import DEFAULT_STORAGE

    done = export_best(study, storage or DEFAULT_STORAGE, name=name, replay=replay,
                       tolerance=tolerance, tracking_uri=tracking_uri, experiment=experiment)
    model = done.registered
    source = (f"trial {done.trial}'s refit" if done.champion == "refit"
              else f"trial {done.trial}") + f" ({done.value:.4f} on validation)"
    if done.model_id:
        print(f"\nthe study's champion: {source}, kept in MLflow as models:/{done.model_id}")
    if done.replayed is not None:
        print(f"replayed trial {done.trial}: {done.replayed:.4f} (recorded {done.recorded:.4f}, "
              f"tolerance {done.tolerance})")
    print(f"registered {model.name} version {model.version} as champion"
          + (f"; version {model.previous} is now challenger" if model.previous else ""))
    print(f"  predict: mlflow.pyfunc.load_model({model.model_uri!r}).predict(['image.png'])")
    print(f"  serve:   mlflow models serve -m {model.model_uri} --env-manager local -p 5001")
    print(f"  Keras:   mlflow.keras.load_model({model.keras_uri!r})")
    return 0
