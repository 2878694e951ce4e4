"""Which run is the study's, when several processes start it: the one that made the study
makes the run and the others join it; `mlflow run`'s own run becomes the study's run, or a
pointer to it when the study already has one; `mlflow run` runs whose process died are ended."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import optuna
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.records import note_study, study_facts
from search.runtime.worker import owner_alive, owner_id
from search.tracking.runs import (
    log_params,
    mark_kind,
)

# study user attrs `mlflow_run:<run id>` = owner of `mlflow run`'s run: one per run, so that
# workers never overwrite each other's (the rest of a study's record: `records.StudyFacts`)
OUTER_ATTR = "mlflow_run:"
JOIN_WAIT_SECONDS = 60.0  # for a maker on another host, whose death this one cannot see
ATTR_WAIT_SECONDS = 5.0  # for the maker to record itself, just after making the study
SETTLE_SECONDS = 1.0


def record_maker(study: optuna.Study) -> None:
    """Says that this process made `study`: it makes the study's run, which workers that
    joined the new study wait for (`StudyTracker.open`)."""
    note_study(study, made_by=owner_id())


def made_elsewhere(study: optuna.Study) -> bool:
    """Whether another process made `study` (or one that has not said so yet: a worker can
    read a new study between its maker's creating it and recording itself)."""
    return study_facts(study).made_by != owner_id()


def await_parent(client: MlflowClient, study: optuna.Study) -> str | None:
    """The study's run, once the process that made the study records it. The storage creates
    a study once, so of the workers that start it together exactly one makes it, and its run;
    the rest wait here. None, at once, when the run recorded is gone (deleted, or another
    tracking store); else when the maker died (on this host), never said who it is (a study
    made before makers were recorded) or took longer than `JOIN_WAIT_SECONDS` (counted on
    this host's clock)."""
    started = time.monotonic()
    while True:
        record = study_facts(study)  # read from the storage, not a cache
        if record.parent_run_id:
            return existing_run(client, record.parent_run_id)
        waited = time.monotonic() - started
        maker = record.made_by
        if (waited > JOIN_WAIT_SECONDS or (maker is None and waited > ATTR_WAIT_SECONDS)
                or (maker is not None and owner_alive(maker) is False)):
            return existing_run(client, study_facts(study).parent_run_id)  # (a last look)
        time.sleep(0.25)


def settle_parent(client: MlflowClient, study: optuna.Study, mine: str, pause: float,
                   delete: bool = True) -> str:
    """Records `mine` as the study's run. The maker of a new study records at once; joined
    workers that make a run all the same settle: the last to record wins, after a pause that
    lets the others' writes land, and the rest delete theirs (a run `mlflow run` made is kept:
    it becomes a pointer to the winner)."""
    note_study(study, parent_run_id=mine)
    time.sleep(pause)
    winner = study_facts(study).parent_run_id  # read from the storage, not a cache
    if winner != mine and delete:
        client.delete_run(mine)
    return winner


def point_to(client: MlflowClient, outer: str, study_run: str, study_name: str,
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
                and run_id != study_facts(study).parent_run_id):  # the study's run reopens
            reason = (f"the process of this `mlflow run` ({owner}) died without ending its run "
                      f"(killed, e.g. kill -9, or out of memory); ended when study "
                      f"{study.study_name} next ran, by {owner_id()}")
            client.log_batch(run_id, tags=[RunTag("medtune.killed_reason", reason),
                                           RunTag("error", reason)])
            client.set_terminated(run_id, "KILLED")
        study.set_user_attr(key, None)  # settled


def existing_run(client: MlflowClient, run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # the tracking store was reset: start a new parent run
    return run_id if run.info.lifecycle_stage == "active" else None
