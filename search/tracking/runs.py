"""MLflow runs in general: parameters as MLflow keeps them, experiments, dataset inputs,
system metrics, and the runs of commands that are not a study (compare)."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import mlflow
from mlflow.entities import DatasetInput, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

MAX_TAG = 5000


KIND_TAG = "mlflow.experimentKind"  # what MLflow 3's UI reads to open an experiment's page on


KIND = "custom_model_development"  # training runs (rather than GenAI traces)


SYSTEM_METRICS_INTERVAL = 1.0  # seconds between samples: a short trial still gets a few points


def now_ms() -> int:
    return int(time.time() * 1000)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log `params` into a run that may hold params already: `mlflow run` logs its entry
    point's parameters as given (`storage=''`) before medtune resolves them, and MLflow refuses
    to change a param's value. A key the run has keeps its value; where medtune's resolved value
    differs, it goes under `resolved.<key>` (e.g. `resolved.storage = sqlite:///optuna.db`).
    An empty default arrives shell-quoted, as `''`; it equals medtune's None."""
    have = client.get_run(run_id).data.params
    new: dict[str, str] = {}
    for key, value in params.items():
        text = str(value)
        if key not in have:
            new[key] = text
        elif (have[key] != text and not (have[key] in ("", "''") and value is None)
              and f"resolved.{key}" not in have):
            new[f"resolved.{key}"] = text
    items = [Param(k, v) for k, v in new.items()]
    for start in range(0, len(items), 100):  # MLflow takes 100 params per batch
        client.log_batch(run_id, params=items[start:start + 100])


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The experiment `name`, made if missing, marked as model training (see `mark_kind`)."""
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    mark_kind(client, experiment_id)
    return experiment_id


def mark_kind(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment `mlflow.experimentKind = custom_model_development` unless it has a
    kind: MLflow 3's UI then opens it on its runs, not on GenAI traces."""
    if KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, KIND_TAG, KIND)


@dataclass(frozen=True)
class DataRecord:
    """A data set as MLflow's dataset inputs show it (the runs table's Dataset column)."""

    name: str  # e.g. "skin"
    digest: str  # medtune's data fingerprint (its first 16 hex digits: MLflow keeps 36 chars)
    source: str  # the folder or file the data came from
    counts: Mapping[str, int]  # examples per split: train, validation (, test)
    layout: str = ""

    def input(self) -> DatasetInput:
        from mlflow.entities import Dataset, InputTag

        dataset = Dataset(
            name=self.name, digest=self.digest[:16], source_type="local",
            source=json.dumps({"uri": self.source}),
            profile=json.dumps({"num_rows": sum(self.counts.values()), **self.counts}),
        )
        tags = [InputTag("mlflow.data.context", "training")]
        tags += [InputTag(f"n_{split}", str(n)) for split, n in self.counts.items()]
        if self.layout:
            tags.append(InputTag("layout", self.layout))
        return DatasetInput(dataset, tags)


def log_data(client: MlflowClient, run_id: str, data: DataRecord) -> None:
    """`data` as an input of the run. Workers starting together may both add the data set to
    the experiment (MLflow looks, then inserts): the loser's retry finds the winner's row."""
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=[data.input()])
            return
        except MlflowException as error:
            if attempt == 2:
                warnings.warn(f"data set not recorded in run {run_id}: {error.message}",
                              stacklevel=2)
            time.sleep(0.5 + attempt)


def system_metrics(client: MlflowClient, run_id: str):
    """MLflow's system metrics monitor (CPU, memory, disk, network; GPU where nvidia-ml-py
    finds one) sampling into `run_id` every second; None without psutil."""
    try:
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no per-trial lines
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL,
                                       tracking_uri=client.tracking_uri)
    except Exception:  # psutil missing, or no monitor can start: the trial runs without
        return None
    monitor.start()
    return monitor


def finish_system_metrics(monitor) -> None:
    """Stop the monitor and keep its last samples. MLflow's loop drops the samples of the
    interval it is in when the run ends, so a trial shorter than one interval would show no
    system metrics at all (and every trial would lose its last second)."""
    monitor.finish()
    try:
        pending = monitor.aggregate_metrics()  # {} when the loop published everything
        if pending:
            monitor.publish_metrics(pending)
            monitor.mlflow_logger.flush()
    except Exception as error:  # best effort: the trial's own results are already logged
        warnings.warn(f"last system metrics not logged: {error}", stacklevel=2)


def own_run(
    client: MlflowClient, name: str, experiment: str, tags: Mapping[str, str]
) -> tuple[str, bool]:
    """`mlflow run`'s own run when started by it (renamed `name`), else a new run in
    `experiment`; and whether it is new. Log params into it with `log_params`."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        mark_kind(client, client.get_run(run_id).info.experiment_id)
        client.update_run(run_id, name=name)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run_id, False
    experiment_id = experiment_id_for(client, experiment)
    return client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id, True


def log_comparison(
    name: str, files: Mapping[str, str], figure: plt.Figure, *, experiment: str = "medtune",
    tracking_uri: str | None = None, params: Mapping[str, Any] | None = None,
) -> str:
    """A run holding a comparison's tables and plot: `mlflow run`'s own run, or a new one."""
    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    run_id, own = own_run(client, name, experiment, {"medtune.kind": "compare"})
    log_params(client, run_id, params or {})
    for path, text in files.items():
        client.log_text(run_id, text, path)
    client.log_figure(run_id, figure, "best_trials.png")
    plt.close(figure)
    if own:
        client.set_terminated(run_id)
    return run_id
