"""Everything medtune writes to MLflow, and the only module that touches it.

Runs are driven through `MlflowClient` with explicit run ids (no active-run globals), so a study
can keep one parent run across restarts and open one child run per trial:

    <run `mlflow run` made, if any>
      └─ <study>             parent: study settings, best value/params, trial counts
           ├─ <study>-t0000  child: trial params, per-epoch metrics, curves, confusion matrix
           └─ <study>-t0001
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search import plots
from search.urls import mask_password
from search.worker import resident_mb

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the parent run survives restarts
MAX_TAG = 5000
SETTLE_SECONDS = 1.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrialRun:
    """One trial's child run: epochs, metrics and figures go here as they happen."""

    def __init__(self, client: MlflowClient, run_id: str, name: str):
        self.client = client
        self.run_id = run_id
        self.name = name
        self.history: dict[str, list[float]] = defaultdict(list)

    def keras_callback(self) -> keras.callbacks.Callback:
        """Logs the model's summary when training starts, then every Keras metric, training
        and validation, at the end of each epoch."""
        return _EpochLogger(self)

    def log_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        for key, value in logs.items():
            self.history[key].append(float(value))
        # One batched call per epoch: a database round trip per metric would cost more.
        stamp = _now_ms()
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), stamp, epoch) for k, v in logs.items()]
        )

    @property
    def epochs(self) -> int:
        return max((len(v) for v in self.history.values()), default=0)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        stamp = _now_ms()
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        )

    def log_figure(self, figure: plt.Figure, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)
        plt.close(figure)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def resumed(self, history: Mapping[str, list[float]], epochs: int) -> None:
        """A retried trial continues from a checkpoint: its earlier epochs go first."""
        for epoch in range(epochs):
            self.log_epoch(epoch + 1, {k: v[epoch] for k, v in history.items()})
        self.client.set_tag(self.run_id, "resumed_from_epoch", str(epochs))


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, run: TrialRun):
        super().__init__()
        self.run = run

    def __deepcopy__(self, memo: dict) -> _EpochLogger:
        return self  # Keras Tuner deep-copies callbacks: the copy must still log into this run

    def on_train_begin(self, logs=None) -> None:
        out = io.StringIO()
        self.model.summary(print_fn=lambda line, **_: out.write(line + "\n"))
        self.run.log_text(out.getvalue(), "model_summary.txt")

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        # MLflow steps are 1-based epochs, as Keras prints them.
        self.run.log_epoch(epoch + 1, logs or {})


class StudyTracker:
    """The parent run of one Optuna study and the child runs of its trials."""

    def __init__(self, client: MlflowClient, study_name: str, parent_run_id: str,
                 created: bool = False):
        self.client = client
        self.created = created  # this process made the parent run: the study is new
        self.tracking_uri = client.tracking_uri
        self.study_name = study_name
        self.parent_run_id = parent_run_id
        self.experiment_id = client.get_run(parent_run_id).info.experiment_id

    @classmethod
    def open(
        cls,
        study: optuna.Study,
        *,
        settings: Mapping[str, Any],
        tags: Mapping[str, str],
        experiment: str = "medtune",
        tracking_uri: str | None = None,
        shared: bool = False,
    ) -> StudyTracker:
        """Reopen the study's parent run, or start it (nested under `mlflow run`'s run, if any).
        `shared`: other workers may be starting this study right now (see `_settle_parent`)."""
        client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
        outer = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` for the project's command
        parent = _existing_run(client, study.user_attrs.get(PARENT_ATTR))
        created = False
        if parent is not None:
            client.update_run(parent, status="RUNNING")
        else:
            if outer:
                experiment_id = client.get_run(outer).info.experiment_id
            else:
                found = client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found else client.create_experiment(
                    experiment
                )
            run_tags = {"medtune.study": study.study_name, **tags}
            if outer:
                run_tags["mlflow.parentRunId"] = outer
            parent = client.create_run(
                experiment_id, run_name=study.study_name, tags=run_tags
            ).info.run_id
            client.log_batch(parent, params=[Param(k, str(v)) for k, v in settings.items()])
            winner = _settle_parent(client, study, parent, SETTLE_SECONDS if shared else 0.0)
            created, parent = winner == parent, winner
        if outer:
            client.set_tag(outer, "medtune.study_run_id", parent)
        return cls(client, study.study_name, parent, created)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.parent_run_id, text, path)

    @contextmanager
    def trial_run(
        self, trial: optuna.Trial, params: Mapping[str, Any], fixed: Mapping[str, Any]
    ) -> Iterator[TrialRun]:
        """A child run for `trial`; ends FINISHED, KILLED (pruned) or FAILED (with the error)."""
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "medtune.study": self.study_name,
            "medtune.trial_number": str(trial.number),
        }
        note = trial.user_attrs.get("baseline")
        if note:
            tags["medtune.baseline"] = note
        name = f"{self.study_name}-t{trial.number:04d}"  # unique across studies and restarts
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        self.client.log_batch(
            run_id, params=[Param(k, str(v)) for k, v in {**fixed, **params}.items()]
        )
        run = TrialRun(self.client, run_id, name)
        started = time.monotonic()
        status, end_tags = "FINISHED", {"medtune.state": "complete"}
        try:
            yield run
        except optuna.TrialPruned:
            status = "KILLED"
            end_tags = {"medtune.state": "pruned", "pruned_at_epoch": str(run.epochs)}
            trial.set_user_attr("pruned_at_epoch", run.epochs)
            raise
        except BaseException as error:  # KeyboardInterrupt too: the run must not stay RUNNING
            status = "FAILED"
            reason = f"{type(error).__name__}: {error}"[:MAX_TAG]
            end_tags = {"medtune.state": "failed", "error": reason}
            trial.set_user_attr("fail_reason", reason)
            raise
        finally:
            end_tags["epochs_run"] = str(run.epochs)
            trial.set_user_attr("epochs_run", run.epochs)
            self._finish(run, status, end_tags, time.monotonic() - started)

    def _finish(self, run: TrialRun, status: str, tags: dict, seconds: float) -> None:
        try:
            if run.history:
                figure = plots.learning_curves(run.history, title=run.name)
                run.log_figure(figure, "plots/learning_curves.png")
            mb = resident_mb()  # the worker's memory as the trial ends: it must stay bounded
            run.log_metrics({"trial_seconds": seconds, "epochs_run": run.epochs,
                             **({"worker_rss_mb": round(mb, 1)} if mb else {})})
        finally:
            self.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run.run_id, status)

    def end_dead_run(self, run_id: str | None, reason: str, epochs: int) -> None:
        """The run of a trial whose worker died: FAILED, with the reason, if still RUNNING."""
        if not run_id or self.client.get_run(run_id).info.status != "RUNNING":
            return
        self.client.log_batch(run_id, tags=[
            RunTag("medtune.state", "failed"), RunTag("error", reason[:MAX_TAG]),
            RunTag("epochs_run", str(epochs))])
        self.client.set_terminated(run_id, "FAILED")

    def summarize(self, study: optuna.Study) -> None:
        """Best value and params, how many trials completed, were pruned or failed, the trials
        table and Optuna's study plots: refreshed whenever a (continued) study ends."""
        states = [t.state for t in study.trials]
        TS = optuna.trial.TrialState
        metrics = {
            "n_complete": states.count(TS.COMPLETE),
            "n_pruned": states.count(TS.PRUNED),
            "n_failed": states.count(TS.FAIL),
        }
        tags: dict[str, str] = {}
        if metrics["n_complete"]:
            best = study.best_trial
            metrics["best_value"] = best.value
            tags = {"best_trial": str(best.number),
                    "best_run_id": best.user_attrs.get("mlflow_run_id", "")}
            tags |= {f"best.{k}": str(v) for k, v in best.params.items()}
            self.client.log_dict(
                self.parent_run_id,
                {"trial": best.number, "value": best.value, "params": best.params},
                "best_params.json",
            )
        stamp = _now_ms()
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.log_text(
            self.parent_run_id, plots.trials_table(study).to_csv(index=False), "trials.csv"
        )
        for name, figure in plots.study_figures(study).items():
            self.client.log_figure(self.parent_run_id, figure, f"study_plots/{name}.png")
            plt.close(figure)

    def log_dict(self, value: dict, path: str) -> None:
        self.client.log_dict(self.parent_run_id, value, path)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status)

    def ui_hint(self) -> str:
        return f"mlflow ui --backend-store-uri {mask_password(self.tracking_uri)}"


def _settle_parent(client: MlflowClient, study: optuna.Study, mine: str, pause: float) -> str:
    """Workers that start a new study together each make a parent run: the last to record its
    run wins, after a pause that lets the others' writes land; the rest delete theirs."""
    study.set_user_attr(PARENT_ATTR, mine)
    time.sleep(pause)
    winner = study.user_attrs[PARENT_ATTR]  # read from the storage, not a cache
    if winner != mine:
        client.delete_run(mine)
    return winner


def _existing_run(client: MlflowClient, run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # the tracking store was reset: start a new parent run
    return run_id if run.info.lifecycle_stage == "active" else None



def load_registered_model(uri: str, tracking_uri: str | None = None) -> keras.Model:
    """The Keras model of a registered medtune model, e.g. `models:/vgg_bone@champion`
    (a model `medtune export` registered, or any model logged with the Keras flavor)."""
    import mlflow.pyfunc

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        if "keras" in mlflow.models.get_model_info(uri).flavors:
            return mlflow.keras.load_model(uri)
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().keras_model
    except MlflowException as error:
        raise ValueError(
            f"cannot load {uri} from the MLflow Model Registry: {error.message}"
        ) from None


def _own_run(
    client: MlflowClient, name: str, experiment: str, tags: Mapping[str, str]
) -> tuple[str, bool]:
    """`mlflow run`'s own run when started by it, else a new run; and whether it is new."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run_id, False
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id, True


def log_comparison(
    name: str, files: Mapping[str, str], figure: plt.Figure, *, experiment: str = "medtune",
    tracking_uri: str | None = None,
) -> str:
    """A run holding a comparison's tables and plot: `mlflow run`'s own run, or a new one."""
    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    run_id, own = _own_run(client, name, experiment, {"medtune.kind": "compare"})
    for path, text in files.items():
        client.log_text(run_id, text, path)
    client.log_figure(run_id, figure, "best_trials.png")
    plt.close(figure)
    if own:
        client.set_terminated(run_id)
    return run_id


@contextmanager
def export_run(
    name: str, params: Mapping[str, Any], tags: Mapping[str, str], *,
    experiment: str = "medtune", tracking_uri: str | None = None,
) -> Iterator[TrialRun]:
    """The run of one export: the replay's epochs, both values, the models. A refused or failed
    export ends FAILED with the reason in the `error` tag."""
    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    run_id, own = _own_run(client, name, experiment, {"medtune.kind": "export", **tags})
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    run = TrialRun(client, run_id, name)
    try:
        yield run
    except BaseException as error:
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:MAX_TAG])
        if own:
            client.set_terminated(run_id, "FAILED")
        raise
    if run.history:
        run.log_figure(plots.learning_curves(run.history, title=f"{name}: replay"),
                       "plots/learning_curves.png")
    if own:
        client.set_terminated(run_id)


@dataclass
class Registered:
    name: str
    version: str
    model_uri: str  # models:/<name>@champion
    keras_uri: str  # the plain Keras model, same weights
    previous: str | None  # the version that was champion before, now challenger


def register_model(
    run: TrialRun, model: keras.Model, preprocessing: Mapping[str, Any], name: str,
    requirements: list[str],
) -> Registered:
    """Log `model` twice in `run`, as the Keras 3 flavor (signature and input example) and as
    the image pyfunc (`search.predictor`); register the pyfunc under `name` as `champion`."""
    import mlflow.keras
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from search import predictor

    mlflow.set_tracking_uri(run.client.tracking_uri)  # the flavors' loggers read the global URI
    size = preprocessing["image_size"]
    example = np.full((1, size, size, 1), 0.5, dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        keras_dir = Path(tmp, "keras_model")
        # mlflow.keras.log_model fails to save an input example (it writes the example before
        # making the model folder); save_model into an existing folder works.
        keras_dir.mkdir()
        signature = infer_signature(example, model.predict(example, verbose=0))
        mlflow.keras.save_model(model, str(keras_dir), signature=signature,
                                input_example=example, pip_requirements=requirements)
        run.client.log_artifacts(run.run_id, str(keras_dir), "keras_model")
        settings_file = Path(tmp, predictor.PREPROCESSING_FILE)
        settings_file.write_text(json.dumps(dict(preprocessing), indent=2))
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=predictor.__file__,
                artifacts={"keras_model": str(next(keras_dir.glob("data/*.keras"))),
                           "preprocessing": str(settings_file)},
                code_paths=[str(PROJECT_ROOT / p) for p in ("search", "datasets", "models")],
                pip_requirements=requirements,
            )
    client = run.client
    try:
        previous = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        previous = None
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(
                name, description=f"medtune models of {preprocessing['task']}"
            )
    version = client.create_model_version(
        name, info.model_uri, run_id=run.run_id, model_id=info.model_id,
        tags={"medtune.task": preprocessing["task"]},
    ).version
    if previous is not None:
        client.set_registered_model_alias(name, "challenger", previous)
    client.set_registered_model_alias(name, "champion", version)
    return Registered(name, version, f"models:/{name}@champion",
                      f"runs:/{run.run_id}/keras_model", previous)
