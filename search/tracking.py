"""Everything medtune writes to MLflow, and the only module that touches it.

Runs are driven through `MlflowClient` with explicit run ids (no active-run globals), so a study
can keep one parent run across restarts and open one child run per trial:

    <run `mlflow run` made, if any>
      └─ <study>             parent: study settings, best value/params, trial counts
           ├─ <study>-t0000  child: trial params, per-epoch metrics, curves, confusion matrix
           └─ <study>-t0001
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search import plots

PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the parent run survives restarts
MAX_TAG = 5000


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
        """Logs every Keras metric, training and validation, at the end of each epoch."""
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


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, run: TrialRun):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        # MLflow steps are 1-based epochs, as Keras prints them.
        self.run.log_epoch(epoch + 1, logs or {})


class StudyTracker:
    """The parent run of one Optuna study and the child runs of its trials."""

    def __init__(self, client: MlflowClient, study_name: str, parent_run_id: str):
        self.client = client
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
    ) -> StudyTracker:
        """Reopen the study's parent run, or start it (nested under `mlflow run`'s run, if any)."""
        client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
        outer = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` for the project's command
        parent = _existing_run(client, study.user_attrs.get(PARENT_ATTR))
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
            study.set_user_attr(PARENT_ATTR, parent)
        if outer:
            client.set_tag(outer, "medtune.study_run_id", parent)
        return cls(client, study.study_name, parent)

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
            run.log_metrics({"trial_seconds": seconds, "epochs_run": run.epochs})
        finally:
            self.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run.run_id, status)

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
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


def _existing_run(client: MlflowClient, run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # the tracking store was reset: start a new parent run
    return run_id if run.info.lifecycle_stage == "active" else None



def load_registered_model(uri: str, tracking_uri: str | None = None) -> keras.Model:
    """A Keras model from the MLflow Model Registry, e.g. `models:/vgg_bone@champion`."""
    import mlflow.keras

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.keras.load_model(uri)
    except MlflowException as error:
        raise ValueError(
            f"cannot load {uri} from the MLflow Model Registry: {error.message}"
        ) from None


def log_comparison(
    name: str, files: Mapping[str, str], figure: plt.Figure, *, experiment: str = "medtune",
    tracking_uri: str | None = None,
) -> str:
    """A run holding a comparison's tables and plot: `mlflow run`'s own run, or a new one."""
    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    run_id = os.environ.get("MLFLOW_RUN_ID")
    own = run_id is None
    if own:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run_id = client.create_run(experiment_id, run_name=name,
                                   tags={"medtune.kind": "compare"}).info.run_id
    for path, text in files.items():
        client.log_text(run_id, text, path)
    client.log_figure(run_id, figure, "best_trials.png")
    plt.close(figure)
    if own:
        client.set_terminated(run_id)
    return run_id
