"""`medtune export`: retrain a study's best trial exactly as it ran (same params, same seed),
check that the replay reaches the recorded value, and register that model as `champion`.

The replay is the gate: a recorded value that cannot be reproduced (data changed since, code
changed, a tampered storage) is not a model to promote, so the export is refused and both values
are logged for a person to look at.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from search.holdout import REFIT_ATTR, refit_file
from search.manifest import package_versions
from search.predictor import preprocessing
from search.recovery import open_storage
from search.spec import load_spec, spec_from_record
from search.study import SETTINGS_ATTR, STUDY_FILE_ATTR, data_record, prepare_problem
from search.tracking import Registered, export_run, register_model
from search.training import fresh_keras_session
from search.trial import run_trial
from search.urls import mask_password

SERVED_PACKAGES = ("tensorflow-cpu", "keras", "mlflow", "numpy", "pandas", "pillow")


class ReplayMismatch(ValueError):
    """The best trial's value could not be reproduced within the tolerance."""


@dataclass
class Export:
    registered: Registered
    trial: int
    recorded: float
    replayed: float
    tolerance: float


def requirements() -> list[str]:
    """What a served model needs, pinned to the versions it was trained with (a package not
    installed, e.g. `tensorflow` instead of `tensorflow-cpu`, is left out)."""
    return [f"{name}=={version}" for name, version in package_versions(SERVED_PACKAGES).items()
            if version]


def best_trial(study_name: str, storage: str) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise ValueError(
            f"no study {study_name!r} in {mask_password(storage)}: run `medtune tune` for it "
            "first, or give the --storage it ran in"
        ) from None
    if SETTINGS_ATTR not in study.user_attrs:
        raise ValueError(f"study {study_name!r} was not made by medtune (no {SETTINGS_ATTR})")
    try:
        return study, study.best_trial
    except ValueError:
        raise ValueError(
            f"study {study_name!r} has no completed trial yet: let `medtune tune` finish one"
        ) from None


def _take_refit(model, study: optuna.Study, trial: int, storage: str) -> bool:
    """Load the refit's weights into the replayed model when the study's refit of this trial
    beat it on validation (`medtune tune --refit-epochs`) and its weights are on this machine."""
    refit = study.user_attrs.get(REFIT_ATTR)
    path = refit_file(storage, study.study_name)
    if not (refit and refit["trial"] == trial and refit["champion"] and path.is_file()):
        return False
    model.load_weights(path)
    return True


def export_best(
    study_name: str,
    storage: str,
    *,
    name: str | None = None,
    tolerance: float | None = None,  # None: the study file's [export] tolerance
    tracking_uri: str | None = None,
    experiment: str | None = None,  # None: the task's name, as the study's
    verbose: bool = True,
) -> Export:
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    study, best = best_trial(study_name, storage)
    recorded = study.user_attrs[SETTINGS_ATTR]  # the data and sizes the study was run with
    spec = (spec_from_record(study.user_attrs[STUDY_FILE_ATTR])
            if STUDY_FILE_ATTR in study.user_attrs
            else load_spec(recorded["task"]))  # a study older than the record: today's file
    tolerance = spec.export["tolerance"] if tolerance is None else tolerance
    # A Keras Tuner trial trained Hyperband's epochs for it; an Optuna trial the study's.
    size, epochs = recorded["image_size"], best.user_attrs.get("epochs", recorded["epochs"])
    problem, base, _ = prepare_problem(spec, recorded["data_dir"], size, recorded.get("base"),
                                       tracking_uri)
    data = problem.data
    config = problem.config(best.params)
    seed = best.user_attrs.get("seed", best.number)  # studies before the attr ran with seed 0

    params = {"study": study_name, "storage": mask_password(storage), "task": spec.name,
              "trial": best.number, "seed": seed, "epochs": epochs, "image_size": size,
              "tolerance": tolerance, **best.params}
    tags = {"medtune.study": study_name, "medtune.task": spec.name,
            "medtune.replayed_trial": str(best.number),
            "replayed_run_id": best.user_attrs.get("mlflow_run_id", "")}
    with export_run(f"export {study_name}", params, tags, experiment=experiment or spec.name,
                    tracking_uri=tracking_uri) as run, fresh_keras_session():
        run.log_data(data_record(spec.data, data))
        # The trial as it ran (same lifecycle, params and seed), without a pruner to stop it.
        try:
            result = run_trial(spec, problem, best.params, run, epochs=epochs, seed=seed,
                               verbose=verbose)
        except optuna.TrialPruned as stop:  # stuck: the replay cannot reach the trial's value
            raise ReplayMismatch(f"replaying trial {best.number} of {study_name!r} (seed {seed}) "
                                 f"was stopped: {stop}. Not registered.") from None
        model, replayed = result.model, result.value
        run.log_metrics({"recorded_value": best.value, "replayed_value": replayed,
                         "replay_difference": replayed - best.value})
        if abs(replayed - best.value) > tolerance:
            raise ReplayMismatch(
                f"trial {best.number} of {study_name!r} recorded {spec.objective} "
                f"{best.value:.4f}, but replaying it (same params, seed {seed}) gave "
                f"{replayed:.4f}, off by more than the tolerance {tolerance}. Not registered. "
                "Has the data or the code changed since the study ran? Re-run the study, or "
                "raise --tolerance if this variation is expected."
            )
        if _take_refit(model, study, best.number, storage):  # the champion: trial + refit
            run.log_metrics({"refit_value": study.user_attrs[REFIT_ATTR]["value"]})
        if base is not None:
            model = base.end_to_end(model)
        kind = "segmentation" if data.layout == "pairs" else "classification"
        registered = register_model(
            run, model,
            preprocessing(spec.name, kind, size, data.class_names, config.get("loss", "")),
            name or study_name, requirements(),
        )
    return Export(registered, best.number, best.value, replayed, tolerance)
