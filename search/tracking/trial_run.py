"""A trial's child run: its params, per-epoch metrics, curves, data and the model it keeps
(a logged model of the run, linked to the step and metrics it reached)."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import matplotlib.pyplot as plt
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from search.tracking.runs import DataRecord, log_data, now_ms

MODEL_TYPE = "medtune"  # the logged models of trials and refits (the Models view's "type")


class TrialRun:
    """One trial's child run: epochs, metrics and figures go here as they happen. The trial
    owns its history (`search.trial.run.TrialHistory`); the run follows it for the curves it draws
    when it ends."""

    def __init__(self, client: MlflowClient, run_id: str, name: str):
        self.client = client
        self.run_id = run_id
        self.name = name
        self.history: Mapping[str, list[float]] = {}
        self.data: DataRecord | None = None  # the data set its metrics are measured on
        self.stamps: dict[int, int] = {}  # epoch -> when its metrics were logged

    def follow(self, history: Mapping[str, list[float]]) -> None:
        self.history = history

    def log_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        # One batched call per epoch: a database round trip per metric would cost more.
        stamp = self.stamps[epoch] = now_ms()
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), stamp, epoch) for k, v in logs.items()]
        )

    @property
    def epochs(self) -> int:
        return max((len(v) for v in self.history.values()), default=0)

    def log_summary(self, model: keras.Model) -> None:
        out = io.StringIO()
        model.summary(print_fn=lambda line, **_: out.write(line + "\n"))
        self.log_text(out.getvalue(), "model_summary.txt")

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = now_ms()
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        )

    def log_figure(self, figure: plt.Figure, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)
        plt.close(figure)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_data(self, data: DataRecord) -> None:
        self.data = data
        log_data(self.client, self.run_id, data)

    def keep_model(self, model: keras.Model, *, step: int, metrics: Mapping[str, float],
                   metadata: Mapping[str, Any], requirements: list[str],
                   tags: Mapping[str, str]) -> str:
        """Log `model` as an MLflow logged model of this run: the Keras 3 flavor with a
        signature and an input example, the run's params, `metadata` in its MLmodel, and
        `metrics` (epoch `step`'s, the weights' own) linked to it, so the experiment's Models
        view lists it with them. Returns its id (`models:/<id>` loads it)."""
        import mlflow.keras
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model, infer_signature

        started = time.monotonic()
        run = self.client.get_run(self.run_id)
        logged = self.client.create_logged_model(
            run.info.experiment_id, name=self.name, source_run_id=self.run_id,
            params=run.data.params, tags=dict(tags), model_type=MODEL_TYPE)
        try:
            shape = [1 if n is None else n for n in model.input_shape]
            example = np.full(shape, 0.5, dtype="float32")
            signature = infer_signature(example, model.predict(example, verbose=0))
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp, "model")
                folder.mkdir()  # save_model into an existing folder: see `register_model`
                mlflow.keras.save_model(
                    model, str(folder), signature=signature, input_example=example,
                    pip_requirements=requirements, metadata=dict(metadata),
                    mlflow_model=Model(artifact_path=logged.artifact_location,
                                       model_uuid=logged.model_id, run_id=self.run_id,
                                       model_id=logged.model_id))
                self.client.log_model_artifacts(logged.model_id, str(folder))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        data = ({"dataset_name": self.data.name, "dataset_digest": self.data.digest[:16]}
                if self.data else {})
        # The epoch's own points, linked to the model: logged again with their own time, MLflow
        # keeps them once in the run's history (as its `log_model(step=...)` does).
        stamp = self.stamps.get(step, now_ms())
        self.client.log_outputs(self.run_id, models=[LoggedModelOutput(logged.model_id, step)])
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), stamp, step, model_id=logged.model_id, **data)
            for k, v in metrics.items()])
        self.client.finalize_logged_model(logged.model_id, "READY")
        self.log_metrics({"trial.keep_seconds": time.monotonic() - started})
        return logged.model_id

    def resumed(self, history: Mapping[str, list[float]], epochs: int) -> None:
        """A retried trial continues from a checkpoint: its earlier epochs go first."""
        for epoch in range(epochs):
            self.log_epoch(epoch + 1, {k: v[epoch] for k, v in history.items()})
        self.client.set_tag(self.run_id, "resumed_from_epoch", str(epochs))


class TrialRecord:
    """A trial that is not an Optuna trial (a Keras Tuner trial, the champion's refit), as
    `StudyTracker.trial_run` needs it: a number and user attributes."""

    def __init__(self, number: int):
        self.number = number
        self.user_attrs: dict[str, Any] = {}
        self.run: TrialRun | None = None  # its child run, once made: its curves outlive it

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value
