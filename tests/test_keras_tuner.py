"""The second engine: Keras Tuner Hyperband on the same task, logged in the same form."""

import optuna
import pytest
from conftest import TS, runs, tune
from mlflow.tracking import MlflowClient

from search.cli import main


@pytest.mark.slow(60)
def test_keras_tuner_runs_hyperband_with_parent_and_child_runs(workdir, tiny_skin, capsys):
    args = ["--task", "lenet_skin", "--engine", "keras-tuner", "--epochs", "3",
            "--data-dir", str(tiny_skin)]
    assert tune(workdir, *args, "--n-trials", "4") == 0
    client, (parent,), children = runs(workdir)
    assert parent.info.run_name == "lenet_skin-keras-tuner"
    assert parent.data.params["engine"] == "keras-tuner"
    assert [c.info.run_name for c in children] == [f"lenet_skin-keras-tuner-t000{i}"
                                                  for i in range(4)]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        # Hyperband's epochs: a continued trial logs the epochs it added, numbered as such.
        start = int(child.data.params["initial_epoch"])
        assert steps == list(range(start + 1, int(child.data.params["epochs"]) + 1))
        # The same trial as an Optuna one (`search.trial.run.run_trial`): curves, confusion
        # matrix, ROC, the model's summary and the trial's columns.
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert {"plots/learning_curves.png", "plots/confusion_matrix.png",
                "plots/roc_curve.png"} <= plots
        assert "model_summary.txt" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"trial.objective", "trial.best_epoch", "trial.seconds"} <= set(child.data.metrics)
    # Every trial is recorded in the Optuna study, so tables, plots and compare work; with
    # the epochs Hyperband gave it, which export replays.
    study = optuna.load_study(study_name="lenet_skin-keras-tuner",
                              storage=f"sqlite:///{workdir}/optuna.db")
    assert [t.state for t in study.trials] == [TS.COMPLETE] * 4
    epochs = {c.info.run_id: int(c.data.params["epochs"]) for c in children}
    assert {t.user_attrs["mlflow_run_id"]: t.user_attrs["epochs"] for t in study.trials} == epochs
    # Its Optuna steps number epochs from 0, as an Optuna trial's do: a continued trial's
    # first is the epoch it continued from.
    initial = {c.info.run_id: int(c.data.params["initial_epoch"]) for c in children}
    for t in study.trials:
        first = initial[t.user_attrs["mlflow_run_id"]]
        assert sorted(t.intermediate_values) == list(range(first, t.user_attrs["epochs"]))
    assert min(epochs.values()) < 3  # Hyperband's first rung: fewer than the study's epochs
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "manifest.json"} <= artifacts

    # A rerun continues Hyperband where it stopped, up to the new total.
    assert tune(workdir, *args, "--n-trials", "6") == 0
    assert len(optuna.load_study(study_name="lenet_skin-keras-tuner",
                                 storage=f"sqlite:///{workdir}/optuna.db").trials) == 6
    _, parents, children = runs(workdir)
    assert len(parents) == 1 and len(children) == 6


def test_export_replays_a_keras_tuner_trial_for_its_own_epochs(workdir, tiny_skin):
    assert tune(workdir, "--task", "lenet_skin", "--engine", "keras-tuner", "--epochs", "3",
                "--n-trials", "3", "--data-dir", str(tiny_skin)) == 0
    study = optuna.load_study(study_name="lenet_skin-keras-tuner",
                              storage=f"sqlite:///{workdir}/optuna.db")
    # Hyperband's first rung: three new trials of 1 epoch each, none continued.
    assert [t.user_attrs["epochs"] for t in study.trials] == [1, 1, 1]
    assert main(["export", "--study", "lenet_skin-keras-tuner", "--replay",
                 "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    client, parents, _ = runs(workdir)
    (export,) = [r for r in parents if r.data.tags.get("medtune.kind") == "export"]
    assert export.data.params["epochs"] == "1"  # not the study's 3
    assert [m.step for m in client.get_metric_history(export.info.run_id, "val_accuracy")] == [1]
    assert abs(export.data.metrics["replay_difference"]) <= 0.02


@pytest.mark.slow(50)
def test_compare_sets_the_two_engines_side_by_side(workdir, tiny_skin, capsys):
    data = ["--task", "lenet_skin", "--n-trials", "2", "--data-dir", str(tiny_skin)]
    assert tune(workdir, *data) == 0
    assert tune(workdir, *data, "--engine", "keras-tuner") == 0
    capsys.readouterr()
    assert main(["compare", "--studies", "lenet_skin,lenet_skin-keras-tuner", "--top", "1",
                 "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet_skin", "lenet_skin-keras-tuner"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/optuna.db")
        assert f"| {name} | 1 | {study.best_trial.number} |" in out  # rank 1: its best
    assert MlflowClient(f"sqlite:///{workdir}/mlflow.db").search_runs(
        [runs(workdir)[1][0].info.experiment_id], "tags.`medtune.kind` = 'compare'")


def test_unknown_engine_is_a_clear_error(workdir, capsys):
    assert tune(workdir, "--task", "lenet_skin", "--engine", "grid") == 2
    assert "unknown engine 'grid'; choose one of: optuna, keras-tuner" in capsys.readouterr().err
