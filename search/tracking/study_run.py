"""A study's run in MLflow, and its trials' runs beneath it (the package holds all MLflow writes).

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

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import mlflow
import optuna
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from search.outcomes import Stuck
from search.records import facts, note, study_facts
from search.runtime.devices import device_tag
from search.runtime.urls import mask_password
from search.runtime.worker import owner_id, resident_mb
from search.tracking import plots
from search.tracking.joining import (
    OUTER_ATTR,
    SETTLE_SECONDS,
    await_parent,
    end_dead_outer_runs,
    existing_run,
    point_to,
    settle_parent,
)
from search.tracking.runs import (
    MAX_TAG,
    DataRecord,
    experiment_id_for,
    finish_system_metrics,
    log_data,
    log_params,
    mark_kind,
    system_metrics,
)
from search.tracking.summary import summarize
from search.tracking.trial_run import TrialRecord, TrialRun


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
        parent = existing_run(client, study_facts(study).parent_run_id)
        if parent is None and joined:
            parent = await_parent(client, study)
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
            parent = settle_parent(client, study, outer, pause, delete=False)
            created = parent == outer
        else:
            parent = client.create_run(
                experiment_id_for(client, experiment), run_name=study.study_name, tags=run_tags
            ).info.run_id
            log_params(client, parent, settings)
            winner = settle_parent(client, study, parent, pause)
            created, parent = winner == parent, winner
        if outer:
            if outer != parent:  # a continuation (or another worker's `mlflow run` made it)
                point_to(client, outer, parent, study.study_name, settings)
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
            if note_of := getattr(facts(trial), queued):
                tags[f"medtune.{queued}"] = note_of
        name = name or f"{self.study_name}-t{trial.number:04d}"  # unique across restarts
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        note(trial, run_id=run_id)
        log_params(self.client, run_id, {**fixed, **params})
        run = TrialRun(self.client, run_id, name)
        if isinstance(trial, TrialRecord):
            trial.run = run
        if self.data is not None:
            run.log_data(self.data)
        monitor = system_metrics(self.client, run_id)
        started = time.monotonic()
        status, state, end_tags = "FINISHED", "complete", {}
        try:
            yield run
        except optuna.TrialPruned as stop:  # by the pruner, or stuck (`search.trial.stopping`)
            stuck = isinstance(stop, Stuck)
            if stuck:  # counted apart in summaries and benchmarks
                note(trial, stopped_because=str(stop))
            status, state = "KILLED", "stuck" if stuck else "pruned"
            end_tags = {"pruned_at_epoch": str(run.epochs),
                        "stopped_because": str(stop) or f"pruned at epoch {run.epochs}"}
            note(trial, pruned_at_epoch=run.epochs)
            raise
        except BaseException as error:  # KeyboardInterrupt too: the run must not stay RUNNING
            interrupted = isinstance(error, KeyboardInterrupt)
            status, state = ("KILLED", "interrupted") if interrupted else ("FAILED", "failed")
            reason = mask_password(f"{type(error).__name__}: {error}")[:MAX_TAG]
            end_tags = {"error": reason}
            note(trial, fail_reason=reason)
            raise
        finally:
            if monitor is not None:
                finish_system_metrics(monitor)
            # `trial.*` sort together in the runs table; `medtune.state` and the `epochs_run`
            # tag are the names earlier versions wrote.
            end_tags |= {"trial.state": state, "medtune.state": state,
                         "epochs_run": str(run.epochs)}
            note(trial, epochs_run=run.epochs)
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
        """The study run's summary (`search.tracking.summary`), refreshed as the study ends."""
        summarize(self.client, self.parent_run_id, study)

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
