"""The models a study keeps in MLflow: its best `top_k` trials' (`[selection]`), the rest
deleted with their files; the test split, the refit and export load them from there, so another
machine of the study finishes it without retraining."""

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import optuna
import pytest
from conftest import TS, finished, tune
from mlflow.tracking import MlflowClient

from search.records import note_study, study_facts

REPO = Path(__file__).resolve().parents[1]


def study_file(folder: Path, top_k: int) -> Path:
    text = (REPO / "studies" / "lenet_skin.toml").read_text()
    path = folder / "lenet_kept.toml"
    path.write_text(text + f"\n[selection]\ntop_k = {top_k}\n")
    return path


def kept_models(client: MlflowClient, study: str) -> dict[str, str]:
    """Model id -> name of the study's live kept models."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return {m.model_id: m.name for m in client.search_logged_models(
        ids, filter_string=f"tags.`medtune.study` = '{study}'")}


@pytest.mark.slow(40)
def test_the_best_trials_keep_their_models_and_a_model_pushed_out_is_deleted(workdir,
                                                                             tiny_skin):
    task = study_file(workdir, top_k=1)
    data = ["--task", str(task), "--data-dir", str(tiny_skin)]
    assert tune(workdir, *data, "--n-trials", "1") == 0
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (first,) = finished(workdir, "lenet_kept")
    model = client.get_logged_model(first.user_attrs["model_id"])
    assert kept_models(client, "lenet_kept") == {model.model_id: "lenet_kept-t0000"}
    # Linked to its trial's run, at its best epoch, with that epoch's metrics.
    assert model.source_run_id == first.user_attrs["mlflow_run_id"]
    best_epoch = first.user_attrs["best_epoch"]
    metrics = {m.key: m for m in model.metrics}
    assert metrics["val_accuracy"].value == first.value
    assert metrics["val_accuracy"].step == best_epoch and "loss" in metrics
    assert metrics["val_accuracy"].dataset_name == "skin"
    # Linking them to the model leaves the run's curves as they were: one point an epoch.
    history = client.get_metric_history(first.user_attrs["mlflow_run_id"], "val_accuracy")
    assert [m.step for m in history] == list(range(1, first.user_attrs["epochs_run"] + 1))
    assert model.params["learning_rate"] == str(first.params["learning_rate"])
    files = Path(model.artifact_location.removeprefix("file://"))
    assert (files / "MLmodel").is_file() and (files / "input_example.json").is_file()

    with sqlite3.connect(workdir / "optuna.db") as db:  # trial 0 now ranks below any other
        db.execute("UPDATE trial_values SET value = -1")
    assert tune(workdir, *data, "--n-trials", "2") == 0
    second = finished(workdir, "lenet_kept")[1]
    assert second.state == TS.COMPLETE and first.user_attrs["baseline"]
    # Trial 0, the lab's first recipe, keeps its model beside the top 1: the report's bar.
    assert kept_models(client, "lenet_kept") == {second.user_attrs["model_id"]: "lenet_kept-t0001",
                                                 model.model_id: "lenet_kept-t0000"}
    second_files = Path(client.get_logged_model(second.user_attrs["model_id"])
                        .artifact_location.removeprefix("file://"))
    with sqlite3.connect(workdir / "optuna.db") as db:  # trials 0 and 1 now rank below trial 2
        db.execute("UPDATE trial_values SET value = -1")
    assert tune(workdir, *data, "--n-trials", "3") == 0
    third = finished(workdir, "lenet_kept")[2]
    assert kept_models(client, "lenet_kept") == {third.user_attrs["model_id"]: "lenet_kept-t0002",
                                                 model.model_id: "lenet_kept-t0000"}
    assert not any(second_files.rglob("*"))  # trial 1's files went with its model


@pytest.mark.slow(100)
def test_another_machine_refits_judges_and_exports_from_mlflow_without_retraining(
        tmp_path, mlflow_server):
    """`tune` on one host; on another (its own working folder, cache and checkpoints; the same
    Optuna storage and `mlflow server`) the study's end, the refit, the test split and export:
    every model comes from MLflow, nothing of the first host's disk is there."""
    from datasets import synthetic

    course = tmp_path / "course"
    synthetic.write_skin(course, n_train=32, n_val=16, size=32, seed=1)
    skin = course / "Lab2" / "Skin"
    shutil.copytree(skin / "validation", skin / "test")  # test = validation: the scores agree
    storage = f"sqlite:///{tmp_path}/optuna.db"
    task = study_file(tmp_path, top_k=2)

    def medtune(host: str, *args: str) -> str:
        folder = tmp_path / host
        folder.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
            "MEDTUNE_CACHE": str(folder / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3",
            "MEDTUNE_CHECKPOINTS": str(folder / "checkpoints"), "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "search.cli", *args, "--storage", storage,
                               "--tracking-uri", mlflow_server], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    tune_args = ["tune", "--task", str(task), "--data-dir", str(course), "--image-size", "32",
                 "--epochs", "2", "--n-trials", "3"]
    medtune("host_a", *tune_args)
    study = optuna.load_study(study_name="lenet_kept", storage=storage)
    note_study(study, test=None)  # as if host a had died before the study's end
    shutil.rmtree(tmp_path / "host_a")  # and its disk were gone

    out = medtune("host_b", *tune_args, "--refit-epochs", "4")
    assert "3 of 3 trials done" in out and "(16 images, never used to select)" in out
    study = optuna.load_study(study_name="lenet_kept", storage=storage)
    best, refit, test = (study.best_trial, study_facts(study).refit,
                         study_facts(study).test)
    assert refit["trial"] == best.number and refit["from_epoch"] == best.user_attrs["best_epoch"]
    champion = refit["value"] if refit["champion"] else best.value
    # The champion's own weights, loaded from MLflow, scored on the test split.
    assert test["test_accuracy"] == pytest.approx(champion, abs=1e-6)
    client = MlflowClient(mlflow_server)
    live = kept_models(client, "lenet_kept")
    ranked = sorted(study.get_trials(states=(TS.COMPLETE,)), key=lambda t: (-t.value, t.number))
    assert {t.user_attrs["model_id"] for t in ranked[:2]} <= set(live)
    lab = min(t.number for t in study.trials if t.user_attrs.get("baseline"))  # kept beside
    assert len(live) == 2 + refit["champion"] + (lab not in [t.number for t in ranked[:2]])

    out = medtune("host_b", "export", "--study", "lenet_kept", "--name", "kept_skin")
    assert f"kept in MLflow as models:/{test['model_id']}" in out and "replayed" not in out
    (export,) = client.search_runs([client.get_experiment_by_name("lenet_kept").experiment_id],
                                   "tags.`medtune.kind` = 'export'")
    assert "val_accuracy" not in export.data.metrics  # no retraining
    assert not any((tmp_path / "host_b" / "checkpoints").rglob("*.h5"))
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/kept_skin@champion")
    table = model.predict(np.random.default_rng(0).integers(0, 256, (2, 40, 40), dtype="uint8"))
    assert set(table["class"]) <= {"Mel", "Nevi"}
