"""What the MLflow UI shows of a study: two levels of runs (under `mlflow run` too), a named
experiment of the right kind, dataset inputs, system metrics, `trial.*` columns, and runs of
`mlflow run` whose process died ended KILLED. `mlflow run` is simulated by a pre-made run with
its parameters as `mlflow run` logs them (empty defaults as ''), and `MLFLOW_RUN_ID` set."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import tune
from mlflow.tracking import MlflowClient

from search.cli import main
from search.records import note_study, study_facts
from search.runtime.worker import owner_id
from search.tracking.joining import JOIN_WAIT_SECONDS, OUTER_ATTR
from search.tracking.runs import KIND, KIND_TAG, finish_system_metrics, log_params, system_metrics
from search.tracking.study_run import StudyTracker


def project_run(client: MlflowClient, experiment: str, entry_point: str, **params: str) -> str:
    """A run as `mlflow run` makes it before starting the entry point's command (an empty
    value is logged shell-quoted, as `''`)."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, tags={
        "mlflow.project.entryPoint": entry_point, "mlflow.source.type": "PROJECT"}).info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value or "''")
    return run_id


TUNE_PARAMS = {"task": "lenet_skin", "budget": "quick", "n_trials": "", "storage": "",
               "epochs": "", "image_size": "", "seed": "0", "engine": "optuna", "study": ""}


def test_log_params_keeps_mlflow_runs_values_and_records_resolved_ones(workdir):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run_id = project_run(client, "x", "export", study="s", storage="", tolerance="", name="")
    log_params(client, run_id, {"study": "s", "storage": "sqlite:///optuna.db",
                                "tolerance": 0.02, "name": None, "trial": 3})
    log_params(client, run_id, {"storage": "sqlite:///other.db"})  # again: no error
    assert client.get_run(run_id).data.params == {
        "study": "s", "storage": "''", "tolerance": "''", "name": "''", "trial": "3",
        "resolved.storage": "sqlite:///optuna.db", "resolved.tolerance": "0.02"}


def test_a_run_shorter_than_one_sample_interval_still_gets_system_metrics(trial_run):
    # MLflow's monitor drops the interval it is in when stopped; medtune publishes it.
    monitor = system_metrics(trial_run.client, trial_run.run_id)
    assert monitor is not None, "psutil is a dependency: the monitor must start"
    finish_system_metrics(monitor)  # at once: well inside the first 1 s interval
    metrics = trial_run.client.get_run(trial_run.run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
    assert any(k.startswith("system/system_memory_usage") for k in metrics)


@pytest.mark.slow(70)
def test_under_mlflow_run_its_run_is_the_study_run_two_levels_and_dead_runs_end_killed(
        workdir, tiny_skin, monkeypatch):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    first = project_run(client, "labs", "tune", **TUNE_PARAMS)
    monkeypatch.setenv("MLFLOW_RUN_ID", first)
    args = ["--task", "lenet_skin", "--data-dir", str(tiny_skin), "--epochs", "1"]
    assert tune(workdir, *args, "--n-trials", "1") == 0

    experiment = client.get_experiment_by_name("labs")
    assert experiment.tags[KIND_TAG] == KIND == "custom_model_development"
    study_run = client.get_run(first)
    assert study_run.info.run_name == "lenet_skin"
    assert study_run.data.tags["medtune.kind"] == "study"
    assert "mlflow.parentRunId" not in study_run.data.tags
    params = study_run.data.params
    assert params["storage"] == "''" and params["resolved.storage"] == f"sqlite:///{workdir}/optuna.db"
    assert params["n_trials"] == "''" and params["resolved.n_trials"] == "1"
    assert params["model"] == "lenet" and "resolved.seed" not in params  # same value: kept
    assert {"trials.csv", "manifest.json"} <= {a.path for a in client.list_artifacts(first)}
    (dataset,) = study_run.inputs.dataset_inputs
    assert dataset.dataset.name == "skin" and len(dataset.dataset.digest) == 16
    manifest = client.download_artifacts(first, "manifest.json", str(workdir))
    assert json.loads(Path(manifest).read_text())["data"]["fingerprint"].startswith(
        dataset.dataset.digest)

    # Continued under a new `mlflow run`: one study run keeps all trials; the new run points.
    second = project_run(client, "labs", "tune", **TUNE_PARAMS)
    monkeypatch.setenv("MLFLOW_RUN_ID", second)
    assert tune(workdir, *args, "--n-trials", "2") == 0
    every = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    trials = [r for r in every.values() if r.data.tags.get("medtune.kind") == "trial"]
    assert len(trials) == 2 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {first}
    pointer = every[second]
    assert pointer.info.run_name == "lenet_skin continued"
    assert pointer.data.tags["medtune.kind"] == "continuation"
    assert pointer.data.tags["mlflow.parentRunId"] == first
    assert pointer.data.tags["medtune.study_run_id"] == first
    for run in every.values():  # two levels, never three
        parent = run.data.tags.get("mlflow.parentRunId")
        assert parent is None or "mlflow.parentRunId" not in every[parent].data.tags

    # What each trial's run shows: the data set, system metrics, `trial.*` columns.
    for trial in trials:
        (dataset_input,) = trial.inputs.dataset_inputs
        assert dataset_input.dataset.digest == dataset.dataset.digest
        tags = {t.key: t.value for t in dataset_input.tags}
        assert tags["mlflow.data.context"] == "training"
        assert tags["n_train"] == "24" and tags["n_validation"] == "12"
        metrics = trial.data.metrics
        assert {"trial.objective", "trial.best_epoch", "trial.epochs_run",
                "trial.seconds"} <= set(metrics)
        assert metrics["trial.epochs_run"] == 1 and trial.data.tags["trial.state"] == "complete"
        assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
        assert any(k.startswith("system/system_memory_usage") for k in metrics)

    # A third `mlflow run` whose process died (kill -9 takes `mlflow run` with it): its run
    # stays RUNNING until the study next runs, which ends it KILLED with the reason.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    third = project_run(client, "labs", "tune", **TUNE_PARAMS)
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    study.set_user_attr(OUTER_ATTR + third, owner_id(dead.pid))
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert tune(workdir, *args, "--n-trials", "2") == 0  # nothing to train; the check runs
    killed = client.get_run(third)
    assert killed.info.status == "KILLED"
    assert "died without ending its run" in killed.data.tags["medtune.killed_reason"]
    assert study.user_attrs[OUTER_ATTR + third] is None  # settled
    assert client.get_run(first).info.status == "FINISHED"  # the study's run: reopened, ended

    # `mlflow run . -e export` logs into its own run, which holds storage='' and tolerance=''
    # (the replay's: with -P replay=true medtune adds the resolved tolerance).
    fourth = project_run(client, "labs", "export", study="lenet_skin", storage="", name="",
                         replay="true", tolerance="")
    monkeypatch.setenv("MLFLOW_RUN_ID", fourth)
    assert main(["export", "--study", "lenet_skin", "--storage", "", "--replay", "true",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--tolerance", ""]) == 0
    export = client.get_run(fourth)
    assert export.info.run_name == "export lenet_skin"
    assert export.data.params["tolerance"] == "''" and export.data.params[
        "resolved.tolerance"] == "0.02"
    assert export.data.params["resolved.storage"] == "sqlite:///optuna.db"
    (version,) = client.search_model_versions("name = 'lenet_skin'")
    assert version.run_id == fourth
    assert export.inputs.dataset_inputs[0].dataset.name == "skin"

    # `mlflow run . -e compare` too: its run keeps `storage=''` and gets the resolved value.
    fifth = project_run(client, "labs", "compare", studies="lenet_skin", storage="", top="3")
    monkeypatch.setenv("MLFLOW_RUN_ID", fifth)
    assert main(["compare", "--studies", "lenet_skin", "--storage", "", "--top", "3",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    compare = client.get_run(fifth)
    assert compare.info.run_name == "compare lenet_skin"
    assert compare.data.params["resolved.storage"] == "sqlite:///optuna.db"
    assert {"best_trials.md", "best_trials.csv"} <= {a.path for a in client.list_artifacts(fifth)}


def test_outside_mlflow_run_a_study_logs_into_the_tasks_experiment(workdir, tiny_skin):
    assert tune(workdir, "--task", "mlp_skin", "--n-trials", "1", "--epochs", "1",
                "--data-dir", str(tiny_skin)) == 0
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("mlp_skin")
    assert experiment.tags[KIND_TAG] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["medtune.kind"] for r in runs) == ["study", "trial"]
    assert client.get_experiment_by_name("medtune") is None
    assert tune(workdir, "--task", "mlp_skin", "--n-trials", "1", "--epochs", "1",
                "--data-dir", str(tiny_skin), "--experiment", "mine", "--study", "b") == 0
    assert client.get_experiment_by_name("mine").tags[KIND_TAG] == "custom_model_development"


@pytest.fixture(autouse=True)
def _no_project_run(monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def test_workers_starting_a_new_study_together_share_its_one_run(tmp_path):
    """Workers on two hosts start a new study together: the storage lets one make it, and that
    one makes the study's run. The other read the study before that run was recorded, and
    records nothing of its own however late the maker is (this used to be settled by "last to
    record wins, after a 1 s pause": a maker more than the pause late left two study runs)."""
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    made = optuna.create_study(study_name="together", storage=storage)
    note_study(made, made_by="host-a:100:1")  # another host: whether it lives is unknown
    joined: list[StudyTracker] = []
    joiner = threading.Thread(target=lambda: joined.append(StudyTracker.open(
        optuna.load_study(study_name="together", storage=storage), settings={"side": "b"},
        tags={}, experiment="labs", tracking_uri=tracking, joined=True)))
    joiner.start()
    time.sleep(2.0)  # host A is slow to get to its run
    assert joiner.is_alive() and study_facts(made).parent_run_id is None
    maker = StudyTracker.open(made, settings={"side": "a"}, tags={}, experiment="labs",
                              tracking_uri=tracking)
    joiner.join(timeout=30)
    assert maker.created and not joined[0].created
    assert joined[0].parent_run_id == maker.parent_run_id == study_facts(made).parent_run_id
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("labs").experiment_id])
    assert [r.info.run_id for r in runs] == [maker.parent_run_id]


def test_a_worker_does_not_wait_for_the_run_of_a_maker_that_died(tmp_path):
    """The process that made the study died before recording its run (on this host, so its
    death is known): a worker that continues the study makes the run at once."""
    maker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    study = optuna.create_study(study_name="orphan", storage=f"sqlite:///{tmp_path}/o.db")
    note_study(study, made_by=owner_id(maker.pid))
    maker.kill()
    maker.wait()
    started = time.monotonic()
    tracker = StudyTracker.open(study, settings={}, tags={}, experiment="labs",
                                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", joined=True)
    assert time.monotonic() - started < JOIN_WAIT_SECONDS / 4
    assert tracker.created and study_facts(study).parent_run_id == tracker.parent_run_id


def test_workers_relaunched_on_a_study_whose_run_was_deleted_make_one_new_run(tmp_path):
    """The study's run is gone (deleted in the UI) and two workers continue the study at the
    same moment: neither waits for a maker, and they settle on one new run."""
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    study = optuna.create_study(study_name="again", storage=storage)
    note_study(study, made_by="host-a:100:1")
    first = StudyTracker.open(study, settings={}, tags={}, experiment="labs",
                              tracking_uri=tracking)
    client = MlflowClient(tracking)
    client.delete_run(first.parent_run_id)
    opened: list[StudyTracker] = []
    workers = [threading.Thread(target=lambda: opened.append(StudyTracker.open(
        optuna.load_study(study_name="again", storage=storage), settings={}, tags={},
        experiment="labs", tracking_uri=tracking, joined=True))) for _ in range(2)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert time.monotonic() - started < JOIN_WAIT_SECONDS / 4
    assert len({t.parent_run_id for t in opened} | {study_facts(study).parent_run_id}) == 1
    assert sum(t.created for t in opened) == 1
    live = client.search_runs([first.experiment_id])
    assert [r.info.run_id for r in live] == [opened[0].parent_run_id] != [first.parent_run_id]
