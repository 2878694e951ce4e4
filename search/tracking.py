"""Everything medtune writes to MLflow, and the only module that touches it.

Runs are driven through `MlflowClient` with explicit run ids (no active-run globals), so a study
can keep one parent run across restarts and open one child run per trial. Two levels, never three:

    <study>             the study's run: settings, best value/params, trial counts, plots, data
      ├─ <study>-t0000  a trial: params, per-epoch metrics, curves, system metrics, data
      └─ <study>-t0001

Under `mlflow run` (which sets `MLFLOW_RUN_ID`), the run `mlflow run` made is the study's run
when the study is new. A later `mlflow run` that continues the study ends up as a thin pointer
(`<study> continued`, a child of the study's run holding that command's parameters), so the study
keeps one run with all its trials. `mlflow run`'s runs are recorded in the study (user attrs
`mlflow_run:<run id>` = the process), so a run whose process was killed (and `mlflow run` with
it) is ended KILLED, with the reason, the next time the study runs.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import warnings
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
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search import plots
from search.devices import device_tag
from search.records import (
    REFIT_ATTR,
    TEST_ATTR,
    champion_trial,
    current_finalists,
    ensemble_id,
)
from search.stopping import Stuck
from search.urls import mask_password
from search.worker import owner_alive, owner_id, resident_mb

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the parent run survives restarts
OUTER_ATTR = "mlflow_run:"  # study user attrs `mlflow_run:<run id>` = owner of `mlflow run`'s run
# study user attr: the process that made the study (`owner_id`); it makes the study's run, which
# workers that joined the new study wait for (`StudyTracker.open`)
MAKER_ATTR = "medtune_made_by"
JOIN_WAIT_SECONDS = 60.0  # for a maker on another host, whose death this one cannot see
ATTR_WAIT_SECONDS = 5.0  # for the maker to record itself, just after making the study
SETTLE_SECONDS = 1.0
MAX_TAG = 5000
KIND_TAG = "mlflow.experimentKind"  # what MLflow 3's UI reads to open an experiment's page on
KIND = "custom_model_development"  # training runs (rather than GenAI traces)
SYSTEM_METRICS_INTERVAL = 1.0  # seconds between samples: a short trial still gets a few points
MODEL_TYPE = "medtune"  # the logged models of trials and refits (the Models view's "type")


def _now_ms() -> int:
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


def _system_metrics(client: MlflowClient, run_id: str):
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


def _finish_system_metrics(monitor) -> None:
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


class TrialRun:
    """One trial's child run: epochs, metrics and figures go here as they happen. The trial
    owns its history (`search.trial.TrialHistory`); the run follows it for the curves it draws
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
        stamp = self.stamps[epoch] = _now_ms()
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
        stamp = _now_ms()
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
        stamp = self.stamps.get(step, _now_ms())
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

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


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
        self.data: DataRecord | None = None
        self.chance: Mapping[str, float] = {}  # metric -> a constant guess's validation score

    @classmethod
    def open(
        cls,
        study: optuna.Study,
        *,
        settings: Mapping[str, Any],
        tags: Mapping[str, str],
        experiment: str = "medtune",
        tracking_uri: str | None = None,
        joined: bool = False,
    ) -> StudyTracker:
        """Reopen the study's run, or start it: `mlflow run`'s own run when started by it (see
        the module's doc), else a new run in `experiment`. `joined`: another process made the
        study, maybe moments ago (workers starting a new study together): its run is the
        study's, so this one waits for it rather than making a second."""
        client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
        outer = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` for the project's command
        end_dead_outer_runs(client, study, outer)
        parent = _existing_run(client, study.user_attrs.get(PARENT_ATTR))
        if parent is None and joined:
            parent = _await_parent(client, study)
        created = False
        run_tags = {"medtune.study": study.study_name, "medtune.kind": "study", **tags}
        # A joined worker that makes the run all the same (its maker died or stalled, or the
        # study's run was deleted) may not be the only one: it settles with the others.
        pause = SETTLE_SECONDS if joined else 0.0
        if parent is not None:
            client.update_run(parent, status="RUNNING")
        elif outer:  # the run `mlflow run` made becomes the study's run
            experiment_id = client.get_run(outer).info.experiment_id
            mark_kind(client, experiment_id)
            client.update_run(outer, name=study.study_name)
            client.log_batch(outer, tags=[RunTag(k, v) for k, v in run_tags.items()])
            log_params(client, outer, settings)
            parent = _settle_parent(client, study, outer, pause, delete=False)
            created = parent == outer
        else:
            parent = client.create_run(
                experiment_id_for(client, experiment), run_name=study.study_name, tags=run_tags
            ).info.run_id
            log_params(client, parent, settings)
            winner = _settle_parent(client, study, parent, pause)
            created, parent = winner == parent, winner
        if outer:
            if outer != parent:  # a continuation (or another worker's `mlflow run` made it)
                _point_to(client, outer, parent, study.study_name, settings)
            key = OUTER_ATTR + outer
            if not study.user_attrs.get(key):  # the first process: `--workers` starts more
                study.set_user_attr(key, owner_id())
        return cls(client, study.study_name, parent, created)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.parent_run_id, text, path)

    @contextmanager
    def trial_run(
        self, trial: optuna.Trial | TrialRecord, params: Mapping[str, Any],
        fixed: Mapping[str, Any], *, name: str | None = None, kind: str = "trial",
    ) -> Iterator[TrialRun]:
        """A child run for `trial`; ends FINISHED, KILLED (pruned) or FAILED (with the error)."""
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "medtune.study": self.study_name,
            "medtune.kind": kind,
            "medtune.trial_number": str(trial.number),
            "medtune.device": device_tag(),
        }
        for queued in ("baseline", "start"):  # a lab baseline, or medtune's first guess
            if trial.user_attrs.get(queued):
                tags[f"medtune.{queued}"] = trial.user_attrs[queued]
        name = name or f"{self.study_name}-t{trial.number:04d}"  # unique across restarts
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        log_params(self.client, run_id, {**fixed, **params})
        run = TrialRun(self.client, run_id, name)
        if self.data is not None:
            run.log_data(self.data)
        monitor = _system_metrics(self.client, run_id)
        started = time.monotonic()
        status, state, end_tags = "FINISHED", "complete", {}
        try:
            yield run
        except optuna.TrialPruned as stop:  # by the pruner, or stuck (`search.stopping`)
            stuck = isinstance(stop, Stuck)
            if stuck:  # counted apart in summaries and benchmarks
                trial.set_user_attr("stopped_because", str(stop))
            status, state = "KILLED", "stuck" if stuck else "pruned"
            end_tags = {"pruned_at_epoch": str(run.epochs),
                        "stopped_because": str(stop) or f"pruned at epoch {run.epochs}"}
            trial.set_user_attr("pruned_at_epoch", run.epochs)
            raise
        except BaseException as error:  # KeyboardInterrupt too: the run must not stay RUNNING
            interrupted = isinstance(error, KeyboardInterrupt)
            status, state = ("KILLED", "interrupted") if interrupted else ("FAILED", "failed")
            reason = mask_password(f"{type(error).__name__}: {error}")[:MAX_TAG]
            end_tags = {"error": reason}
            trial.set_user_attr("fail_reason", reason)
            raise
        finally:
            if monitor is not None:
                _finish_system_metrics(monitor)
            # `trial.*` sort together in the runs table; `medtune.state` and the `epochs_run`
            # tag are the names earlier versions wrote.
            end_tags |= {"trial.state": state, "medtune.state": state,
                         "epochs_run": str(run.epochs)}
            trial.set_user_attr("epochs_run", run.epochs)
            self._finish(run, status, end_tags, time.monotonic() - started)

    def use_data(self, data: DataRecord) -> None:
        """The study's data set: an input of the study's run and of each trial's run."""
        self.data = data
        log_data(self.client, self.parent_run_id, data)

    def _finish(self, run: TrialRun, status: str, tags: dict, seconds: float) -> None:
        try:
            if run.history:
                figure = plots.learning_curves(run.history, title=run.name, chance=self.chance)
                run.log_figure(figure, "plots/learning_curves.png")
            run.log_metrics({"trial.seconds": seconds, "trial.epochs_run": run.epochs,
                             # the worker's memory as the trial ends: it must stay bounded
                             "worker_rss_mb": round(resident_mb(), 1)})
        finally:
            self.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run.run_id, status)

    def end_dead_run(self, run_id: str | None, reason: str, epochs: int) -> None:
        """The run of a trial whose worker died: FAILED, with the reason, if still RUNNING."""
        if not run_id or self.client.get_run(run_id).info.status != "RUNNING":
            return
        self.client.log_batch(run_id, tags=[
            RunTag("trial.state", "failed"), RunTag("medtune.state", "failed"),
            RunTag("error", reason[:MAX_TAG]), RunTag("epochs_run", str(epochs))])
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

            best = champion_trial(study)  # the best trial, or the re-checked finalists' pick
            metrics["best_value"] = best.value
            if recheck := current_finalists(study):  # (trials since may have passed them)
                self._log_recheck(study, recheck)
                mine = recheck["results"][str(best.number)]
                metrics |= {"recheck_mean": mine["mean"], "recheck_sd": mine["sd"],
                            "recheck_runs": mine["n"]}
                if ensemble := recheck.get("ensemble"):  # held-in runs, the same as the mean's
                    metrics |= {"ensemble_mean": ensemble["mean"], "ensemble_sd": ensemble["sd"]}
                    if ensemble_id(study):
                        tags["champion"] = "ensemble"
            tags |= {"best_trial": str(best.number),
                     "best_run_id": best.user_attrs.get("mlflow_run_id", "")}
            tags |= {f"best.{k}": str(v) for k, v in best.params.items()}
            test = study.user_attrs.get(TEST_ATTR)
            if test and test["trial"] == best.number:  # the test split, judged once at the end
                metrics |= {k: v for k, v in test.items() if k.startswith("test_")}
                tags |= {"test_trial": str(test["trial"]), "test_model": test.get("model", "trial")}
            refit = study.user_attrs.get(REFIT_ATTR)
            if refit and refit["trial"] == best.number:
                metrics["refit_value"] = refit["value"]
                tags |= {"refit_run_id": refit.get("run_id") or "",
                         "champion": "refit" if refit["champion"] else "trial"}
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

    def _log_recheck(self, study: optuna.Study, recheck: Mapping[str, Any]) -> None:
        """Each finalist's mean ± SD on its trial's run (the runs table's `trial.*` columns),
        and the plot of first values against means."""
        trials = study.get_trials(deepcopy=False)
        stamp = _now_ms()
        for number, result in recheck["results"].items():
            run_id = trials[int(number)].user_attrs.get("mlflow_run_id")
            if run_id:
                self.client.log_batch(run_id, metrics=[
                    Metric("trial.recheck_mean", result["mean"], stamp, 0),
                    Metric("trial.recheck_sd", result["sd"], stamp, 0),
                    Metric("trial.recheck_runs", result["n"], stamp, 0)])
        figure = plots.finalists(recheck, study.user_attrs.get("medtune_objective", "value"))
        self.client.log_figure(self.parent_run_id, figure, "study_plots/finalists.png")
        plt.close(figure)

    def log_dict(self, value: dict, path: str) -> None:
        self.client.log_dict(self.parent_run_id, value, path)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status)

    def ui_hint(self) -> str:
        """How to open the study in MLflow's UI, on its runs ("Model training" view: MLflow
        3.17's UI opens an experiment as GenAI unless the link says otherwise)."""
        page = f"#/experiments/{self.experiment_id}?workflowType=machine_learning"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{mask_password(self.tracking_uri).rstrip('/')}/{page}"
        return (f"mlflow ui --backend-store-uri {mask_password(self.tracking_uri)}, then "
                f"http://127.0.0.1:5000/{page}")


def record_maker(study: optuna.Study) -> None:
    """Says that this process made `study` (so it makes the study's run)."""
    study.set_user_attr(MAKER_ATTR, owner_id())


def made_elsewhere(study: optuna.Study) -> bool:
    """Whether another process made `study` (or one that has not said so yet: a worker can
    read a new study between its maker's creating it and recording itself)."""
    return study.user_attrs.get(MAKER_ATTR) != owner_id()


def _await_parent(client: MlflowClient, study: optuna.Study) -> str | None:
    """The study's run, once the process that made the study records it. The storage creates
    a study once, so of the workers that start it together exactly one makes it, and its run;
    the rest wait here. None, at once, when the run recorded is gone (deleted, or another
    tracking store); else when the maker died (on this host), never said who it is (a study
    made before makers were recorded) or took longer than `JOIN_WAIT_SECONDS` (counted on
    this host's clock)."""
    started = time.monotonic()
    while True:
        attrs = study.user_attrs  # read from the storage, not a cache
        if recorded := attrs.get(PARENT_ATTR):
            return _existing_run(client, recorded)
        waited = time.monotonic() - started
        maker = attrs.get(MAKER_ATTR)
        if (waited > JOIN_WAIT_SECONDS or (maker is None and waited > ATTR_WAIT_SECONDS)
                or (maker is not None and owner_alive(maker) is False)):
            return _existing_run(client, study.user_attrs.get(PARENT_ATTR))  # (a last look)
        time.sleep(0.25)


def _settle_parent(client: MlflowClient, study: optuna.Study, mine: str, pause: float,
                   delete: bool = True) -> str:
    """Records `mine` as the study's run. The maker of a new study records at once; joined
    workers that make a run all the same settle: the last to record wins, after a pause that
    lets the others' writes land, and the rest delete theirs (a run `mlflow run` made is kept:
    it becomes a pointer to the winner)."""
    study.set_user_attr(PARENT_ATTR, mine)
    time.sleep(pause)
    winner = study.user_attrs[PARENT_ATTR]  # read from the storage, not a cache
    if winner != mine and delete:
        client.delete_run(mine)
    return winner


def _point_to(client: MlflowClient, outer: str, study_run: str, study_name: str,
              settings: Mapping[str, Any]) -> None:
    """`mlflow run`'s run of a command that continues a study with a run of its own: a thin
    child of the study's run, holding the command's parameters and saying where the trials
    are, so the study keeps one run with all its trials."""
    mark_kind(client, client.get_run(outer).info.experiment_id)
    client.update_run(outer, name=f"{study_name} continued")
    log_params(client, outer, settings)
    client.log_batch(outer, tags=[RunTag(k, v) for k, v in {
        "mlflow.parentRunId": study_run,
        "medtune.kind": "continuation",
        "medtune.study": study_name,
        "medtune.study_run_id": study_run,
        "mlflow.note.content": (
            f"This `mlflow run` continued the study {study_name}. Its trials are logged as "
            f"children of the study's run {study_run}, with the study's plots and tables."),
    }.items()])


def end_dead_outer_runs(client: MlflowClient, study: optuna.Study, current: str | None) -> None:
    """End KILLED the runs that `mlflow run` made for this study's commands whose process died
    (kill -9 takes `mlflow run` with it, so nobody ends its run): found through the study's
    `mlflow_run:<run id>` attrs, on this host (another host's processes cannot be checked)."""
    for key, owner in study.user_attrs.items():
        if not key.startswith(OUTER_ATTR) or not owner:
            continue
        run_id = key.removeprefix(OUTER_ATTR)
        if run_id == current or owner_alive(owner) is not False:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None  # the tracking store was reset
        if (run is not None and run.info.status == "RUNNING"
                and run_id != study.user_attrs.get(PARENT_ATTR)):  # the study's run reopens
            reason = (f"the process of this `mlflow run` ({owner}) died without ending its run "
                      f"(killed, e.g. kill -9, or out of memory); ended when study "
                      f"{study.study_name} next ran, by {owner_id()}")
            client.log_batch(run_id, tags=[RunTag("medtune.killed_reason", reason),
                                           RunTag("error", reason)])
            client.set_terminated(run_id, "KILLED")
        study.set_user_attr(key, None)  # settled


def _existing_run(client: MlflowClient, run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # the tracking store was reset: start a new parent run
    return run_id if run.info.lifecycle_stage == "active" else None



def drop_model(client: MlflowClient, model_id: str) -> None:
    """Delete a kept model and its files (MLflow's own delete only marks it, and `mlflow gc`
    removes the files later), so a study's storage stays bounded."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    logged = client.get_logged_model(model_id)
    get_artifact_repository(logged.artifact_location, client.tracking_uri).delete_artifacts()
    client.delete_logged_model(model_id)


def live_models(client: MlflowClient, experiment_id: str, study: str) -> set[str]:
    """The ids of the models a study keeps now (not deleted)."""
    found, token = set(), None
    while True:
        page = client.search_logged_models(
            [experiment_id], filter_string=f"tags.`medtune.study` = '{study}'",
            page_token=token)
        found |= {m.model_id for m in page}
        token = page.token
        if not token:
            return found


def kept_model(model_id: str, tracking_uri: str | None = None
               ) -> tuple[keras.Model, dict[str, Any]]:
    """A kept model (`keep_model`) from MLflow, uncompiled, and its MLmodel metadata; from any
    machine that reaches the tracking store. A deleted or unknown id is a ValueError."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    try:
        logged = client.get_logged_model(model_id)
        if str(logged.status) != "READY":  # its upload failed
            raise MlflowException(f"its status is {logged.status}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(download_artifacts(artifact_uri=logged.artifact_location, dst_path=tmp,
                                             tracking_uri=client.tracking_uri))
            model = keras.saving.load_model(next(folder.glob("data/*.keras")), compile=False)
            metadata = Model.load(folder).metadata or {}
    except (MlflowException, StopIteration, OSError) as error:
        why = error.message if isinstance(error, MlflowException) else str(error) or "no model"
        store = mask_password(client.tracking_uri)
        raise ValueError(
            f"model {model_id} is not in the MLflow tracking store {store} ({why}): give the "
            "--tracking-uri the study logged to, or retrain the model (export --replay)"
        ) from None
    return model, metadata


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
    run_id, own = _own_run(client, name, experiment, {"medtune.kind": "compare"})
    log_params(client, run_id, params or {})
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
    log_params(client, run_id, params)
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
