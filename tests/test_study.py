"""Whole studies on tiny data, started the way users start them, against real MLflow and Optuna
SQLite stores: parent and child runs, per-epoch history, artifacts, pruning, failures, resume."""

import gc
import json
import subprocess
import weakref
from pathlib import Path

import optuna
import pytest
from conftest import finished, runs, tune

from search.cli import main
from search.records import note_study, study_facts
from search.runtime.worker import FreezeSurvivors
from search.spec.study_files import load_spec

REPO = Path(__file__).resolve().parents[1]
TS = optuna.trial.TrialState


@pytest.mark.slow(70)
def test_two_trial_study_logs_parent_children_epochs_and_plots(workdir, tiny_skin, capsys):
    assert tune(workdir, "--task", "vgg_skin", "--n-trials", "2", "--data-dir", str(tiny_skin)) == 0

    trials = finished(workdir, "vgg_skin")
    assert [t.state for t in trials] == [TS.COMPLETE, TS.COMPLETE]
    client, parents, children = runs(workdir)
    (parent,) = parents
    assert parent.info.run_name == "vgg_skin" and parent.info.status == "FINISHED"
    assert parent.data.params["task"] == "vgg_skin" and parent.data.params["epochs"] == "2"
    assert parent.data.metrics["n_complete"] == 2 and parent.data.metrics["n_pruned"] == 0
    best = max(trials, key=lambda t: t.value)
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]

    assert [c.info.run_name for c in children] == ["vgg_skin-t0000", "vgg_skin-t0001"]
    # The quick budget queues the lab's first recipe (the bar).
    lab = load_spec("vgg_skin").baselines[0]
    assert children[0].data.tags["medtune.baseline"] == lab["note"]
    assert float(children[0].data.params["learning_rate"]) == lab["learning_rate"]
    assert children[0].data.params["base"] == str(lab["base"])
    # Then medtune's own first guess: the lab's recipe with batch norm, Adam, augmentation.
    start = load_spec("vgg_skin").start
    assert "medtune.baseline" not in children[1].data.tags
    assert children[1].data.tags["medtune.start"] == start["note"]
    assert children[1].data.params["batch_norm"] == "True"
    assert children[1].data.params["base"] == str(lab["base"])
    for child, trial in zip(children, trials, strict=True):
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            history = client.get_metric_history(child.info.run_id, metric)
            assert [m.step for m in history] == [1, 2]
        val_acc = [m.value for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert child.data.metrics["trial.objective"] == pytest.approx(max(val_acc))
        assert trial.value == pytest.approx(max(val_acc))
        plots = {a.path: a.file_size for a in client.list_artifacts(child.info.run_id, "plots")}
        assert plots.keys() == {
            "plots/learning_curves.png", "plots/confusion_matrix.png", "plots/roc_curve.png"}
        assert all(size > 1000 for size in plots.values())
        assert 0 <= child.data.metrics["val_auc"] <= 1
        summary = client.download_artifacts(child.info.run_id, "model_summary.txt", str(workdir))
        assert "Last_ConvLayer" in Path(summary).read_text()

    # Study-level artifacts: the trials table, Optuna's plots, the reproducibility manifest.
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "manifest.json", "best_params.json", "study_plots"} <= parent_files
    study_plots = {a.path for a in client.list_artifacts(parent.info.run_id, "study_plots")}
    assert {"study_plots/optimization_history.png",
            "study_plots/intermediate_values.png"} <= study_plots
    table = Path(client.download_artifacts(parent.info.run_id, "trials.csv", str(workdir)))
    rows = table.read_text().splitlines()
    assert rows[0].startswith("number,state,value,params_") and "epochs_run" in rows[0]
    assert [r.split(",")[1] for r in rows[1:3]] == ["COMPLETE", "COMPLETE"]
    manifest = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "manifest.json", str(workdir))).read_text())
    assert manifest["git"]["commit"] == subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert manifest["data"]["fingerprint"] and manifest["data"]["n_train"] == 24
    assert manifest["settings"]["seed"] == 0 and manifest["packages"]["keras"].startswith("3.")
    assert 'model = "vgg16"' in manifest["study_file"]

    out = capsys.readouterr().out
    assert "vgg_skin-t0001 epoch 2/2" in out  # per-epoch progress lines
    assert f"best trial: #{best.number}" in out and parent.info.run_id in out


@pytest.mark.slow(60)
def test_rerun_continues_the_same_study_and_parent_run(workdir, tiny_skin):
    args = ["--task", "lenet_skin", "--data-dir", str(tiny_skin)]
    assert tune(workdir, *args, "--n-trials", "2") == 0
    assert tune(workdir, *args, "--n-trials", "3") == 0  # n_trials is the study's total
    assert tune(workdir, *args, "--n-trials", "3") == 0  # already there: nothing to do

    assert [t.number for t in finished(workdir, "lenet_skin")] == [0, 1, 2]
    _, parents, children = runs(workdir)
    (parent,) = parents
    assert parent.data.metrics["n_complete"] == 3
    assert [c.info.run_name for c in children] == [f"lenet_skin-t000{i}" for i in range(3)]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


def test_rerun_with_other_settings_is_refused(workdir, tiny_skin, capsys):
    args = ["--task", "lenet_skin", "--data-dir", str(tiny_skin), "--n-trials", "1"]
    assert tune(workdir, *args) == 0
    assert tune(workdir, *args, "--epochs", "3") == 2
    assert "was made with epochs=2 (now 3)" in capsys.readouterr().err
    assert len(finished(workdir, "lenet_skin")) == 1


def custom_study(tmp_path, extra: str) -> str:
    path = tmp_path / "custom.toml"
    path.write_text('description = "test study"\nmodel = "lenet"\ndata = "skin"\n' + """
[space]
learning_rate = { low = 1e-4, high = 1e-2, log = true }
base = { choices = [4, 8] }
batch_size = { choices = [8] }
optimizer = { choices = ["adam"] }
loss = { choices = ["bce", "hinge"] }
""" + extra)
    return str(path)


def test_pruned_trials_end_killed_with_their_epoch(workdir, tiny_skin):
    # A threshold no accuracy reaches: the real Keras pruning callback stops every trial.
    task = custom_study(workdir, '[pruner]\ntype = "threshold"\nlower = 1.1\n')
    assert tune(workdir, "--task", task, "--n-trials", "2", "--data-dir", str(tiny_skin)) == 0

    assert [t.state for t in finished(workdir, "custom")] == [TS.PRUNED, TS.PRUNED]
    client, parents, children = runs(workdir)
    assert parents[0].data.metrics["n_pruned"] == 2
    for child in children:
        assert child.info.status == "KILLED"
        assert child.data.tags["medtune.state"] == "pruned"
        assert child.data.tags["pruned_at_epoch"] == "1"
        assert len(client.get_metric_history(child.info.run_id, "val_accuracy")) == 1
        assert [a.path for a in client.list_artifacts(child.info.run_id, "plots")] == [
            "plots/learning_curves.png"]


def test_failing_trials_end_failed_with_the_error_and_the_study_goes_on(workdir, tiny_skin):
    task = custom_study(workdir, '[fixed]\ndense_units = "wide"\n')  # AlexNet can't build
    Path(task).write_text(Path(task).read_text().replace('"lenet"', '"alexnet"'))
    assert tune(workdir, "--task", task, "--n-trials", "2", "--data-dir", str(tiny_skin)) == 0

    trials = finished(workdir, "custom")
    assert [t.state for t in trials] == [TS.FAIL, TS.FAIL]
    assert "dense_units 'wide'" in trials[0].user_attrs["fail_reason"]
    _, parents, children = runs(workdir)
    assert parents[0].data.metrics["n_failed"] == 2 and parents[0].info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FAILED"
        assert child.data.tags["error"].startswith("ValueError: dense_units 'wide'")


@pytest.mark.parametrize("args,message", [
    (["--task", "vgg_brain"], "unknown task 'vgg_brain'; known tasks: alexnet_skin"),
    (["--task", "vgg_skin", "--epochs", "0"], "epochs must be at least 1, got 0"),
    (["--task", "vgg_skin", "--image-size", "16"], "image_size 16 is too small for vgg16"),
    (["--task", "vgg_skin", "--budget", "huge"], "unknown budget 'huge'; choose one of: quick"),
    (["--task", "vgg_skin", "--data-dir", "/no/such/folder"], "/no/such/folder does not exist"),
])
def test_bad_input_is_a_clear_error(workdir, capsys, args, message):
    assert main(["tune", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medtune: error: ") and message in err
    assert "Traceback" not in err


def test_a_diverging_trial_fails_with_the_reason(workdir, tiny_skin):
    task = custom_study(workdir, "")
    text = Path(task).read_text().replace(
        "learning_rate = { low = 1e-4, high = 1e-2, log = true }",
        "learning_rate = { low = 1e12, high = 1e13, log = true }",
    ).replace('choices = ["adam"]', 'choices = ["sgd"]')
    Path(task).write_text(text)
    assert tune(workdir, "--task", task, "--n-trials", "1", "--data-dir", str(tiny_skin)) == 0

    (trial,) = finished(workdir, "custom")
    assert trial.state == TS.FAIL
    assert "training diverged" in trial.user_attrs["fail_reason"]
    _, _, (child,) = runs(workdir)
    assert child.info.status == "FAILED" and "became nan" in child.data.tags["error"]


ARTIFACTS = {
    "lenet_xray9": {"plots/learning_curves.png", "plots/confusion_matrix.png"},
    "alexnet_xray9": {"plots/learning_curves.png", "plots/confusion_matrix.png"},
    "unet_xray": {"plots/learning_curves.png", "plots/mask_overlays.png"},
    "gradcam_bone": {"plots/learning_curves.png", "plots/confusion_matrix.png",
                     "plots/roc_curve.png"},
}


@pytest.mark.parametrize("task", sorted(ARTIFACTS))
@pytest.mark.slow(50)
def test_each_lab_task_runs_a_two_trial_study(workdir, tiny_course, task):
    assert tune(workdir, "--task", task, "--n-trials", "2", "--data-dir", str(tiny_course)) == 0

    assert [t.state for t in finished(workdir, task)] == [TS.COMPLETE, TS.COMPLETE]
    client, _, children = runs(workdir)
    monitor = load_spec(task).objective
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, monitor)) == 2
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert plots - {"plots/gradcam.png"} == ARTIFACTS[task]
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"model_summary.txt"}
    if task == "unet_xray":
        assert {"val_dice", "val_precision", "val_recall"} <= set(children[0].data.metrics)
    if task == "gradcam_bone":  # the first trial is the best so far, so it gets Grad-CAM
        assert "plots/gradcam.png" in {a.path for a in client.list_artifacts(
            children[0].info.run_id, "plots")}


@pytest.mark.slow(60)
def test_compare_lists_the_best_trial_of_each_study(workdir, tiny_skin, capsys):
    for task in ("lenet_skin", "mlp_skin"):
        assert tune(workdir, "--task", task, "--n-trials", "2", "--data-dir", str(tiny_skin)) == 0
    capsys.readouterr()
    assert main(["compare", "--studies", "lenet_skin, mlp_skin", "--top", "2",
                 "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ") and "rank" not in line]
    for task in ("lenet_skin", "mlp_skin"):
        best = max(finished(workdir, task), key=lambda t: t.value)
        (first,) = [line for line in lines if line.startswith(f"| {task} | 1 |")]
        assert f"| {best.number} | val_accuracy | {round(best.value, 4)} |" in first
    assert len(lines) == 4
    client, _, _ = runs(workdir)
    (run,) = client.search_runs([client.get_experiment_by_name("medtune").experiment_id],
                                filter_string="tags.`medtune.kind` = 'compare'")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "best_trials.md", "best_trials.csv", "best_trials.png"}
    assert main(["compare", "--studies", "nope", "--storage",
                 f"sqlite:///{workdir}/optuna.db"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_a_random_sampler_and_an_epoch_budget_from_the_study_file(workdir, tiny_skin):
    """`[sampler] type = "random"` replaces TPE; --epoch-budget stops the study once its
    trials have trained that many epochs in all (here after the second 2-epoch trial)."""
    task = custom_study(workdir, '[sampler]\ntype = "random"\n\n[pruner]\ntype = "none"\n')
    assert tune(workdir, "--task", task, "--n-trials", "6", "--epoch-budget", "3",
                "--data-dir", str(tiny_skin)) == 0
    assert [t.user_attrs["epochs_run"] for t in finished(workdir, "custom")] == [2, 2]
    client, (parent,), _ = runs(workdir)
    path = client.download_artifacts(parent.info.run_id, "manifest.json", str(workdir))
    assert json.loads(Path(path).read_text())["sampler"] == {"type": "random"}


def test_passwords_in_urls_are_masked():
    from search.runtime.urls import mask_password

    assert mask_password("postgresql+psycopg2://medtune:s3cr@t@db:5432/optuna") == (
        "postgresql+psycopg2://medtune:***@db:5432/optuna")
    assert mask_password("http://user:pw@mlflow:5000") == "http://user:***@mlflow:5000"
    assert mask_password("sqlite:///optuna.db") == "sqlite:///optuna.db"


def test_freeze_survivors_freezes_the_living_and_collects_all_every_n_trials():
    class Node:
        pass

    def cycle() -> Node:
        node = Node()
        node.cycle = node  # only the cycle collector frees it
        return node

    freeze = FreezeSurvivors(every=3)
    alive = [Node() for _ in range(1000)]
    young = weakref.ref(cycle())
    held = cycle()
    before = gc.get_freeze_count()
    try:
        freeze(None, None)  # trial 1: young garbage collected, the rest frozen
        assert young() is None
        assert gc.get_freeze_count() >= before + len(alive)
        later = weakref.ref(held)
        del held  # garbage now, but frozen: kept until the full collection
        freeze(None, None)
        assert later() is not None
        freeze(None, None)  # trial 3: everything unfrozen and collected
        assert later() is None
    finally:
        gc.unfreeze()


def test_a_test_split_judges_the_best_trial_once_at_the_end(workdir, tiny_skin, capsys):
    """A test/ folder beside train/ and validation/: never used to select; the best trial's
    model is scored on it when the study ends, and the summary and `compare` report it."""
    import shutil

    skin = tiny_skin / "Lab2" / "Skin"
    shutil.copytree(skin / "validation", skin / "test")
    assert tune(workdir, "--task", "lenet_skin", "--n-trials", "2",
                "--data-dir", str(tiny_skin)) == 0
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    test = study_facts(study).test
    assert test["trial"] == study.best_trial.number and test["n_test"] == 12
    # The test split holds the validation images here, so the scores must agree.
    assert test["test_accuracy"] == pytest.approx(study.best_value, abs=1e-6)
    assert {"test_auc", "test_balanced_accuracy", "test_loss"} <= set(test)
    assert "best trial on the test split (12 images, never used to select)" in (
        capsys.readouterr().out)
    assert main(["compare", "--studies", "lenet_skin", "--top", "1",
                 "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("| lenet_skin | 1 |")]
    assert f"| {round(test['test_accuracy'], 4)} |" in row


@pytest.mark.slow(50)
def test_the_refit_continues_the_best_trial_and_the_champion_is_judged(workdir, tiny_skin,
                                                                       capsys):
    """--refit-epochs: the best trial continues from its best epoch's weights in its own child
    run; it becomes the champion only if it beats the trial on validation, and the test split
    judges whichever is the champion."""
    import shutil

    skin = tiny_skin / "Lab2" / "Skin"
    shutil.copytree(skin / "validation", skin / "test")  # test = validation: scores must agree
    assert tune(workdir, "--task", "lenet_skin", "--n-trials", "2", "--epochs", "2",
                "--refit-epochs", "4", "--data-dir", str(tiny_skin)) == 0
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    best = study.best_trial
    refit = study_facts(study).refit
    assert (refit["trial"], refit["epochs"]) == (best.number, 4)
    assert refit["from_epoch"] == best.user_attrs["best_epoch"]
    assert refit["champion"] == (refit["value"] > best.value)
    client, (parent,), children = runs(workdir)
    (run,) = [c for c in children if c.info.run_name == "lenet_skin-refit"]
    assert run.data.tags["medtune.kind"] == "refit" and run.info.run_id == refit["run_id"]
    assert run.data.params["refit_of_trial"] == str(best.number)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps and steps[0] == refit["from_epoch"] + 1 and steps[-1] <= 4
    test = study_facts(study).test
    champion = refit["value"] if refit["champion"] else best.value
    assert test["model"] == ("refit" if refit["champion"] else "trial")
    assert test["test_accuracy"] == pytest.approx(champion, abs=1e-6)
    assert f"refit of trial #{best.number} from epoch {refit['from_epoch']} to 4" in (
        capsys.readouterr().out)
    assert parent.data.tags["champion"] == ("refit" if refit["champion"] else "trial")
    # The refit's model is kept only when it is the champion; `export` registers the champion.
    assert ("model_id" in refit) == refit["champion"]
    assert main(["export", "--study", "lenet_skin", "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    (exported,) = client.search_runs([parent.info.experiment_id],
                                     "tags.`medtune.kind` = 'export'")
    assert exported.data.tags["medtune.champion"] == test["model"]
    assert exported.data.tags["medtune.model_id"] == test["model_id"]


def test_a_study_continued_with_another_split_or_synthetic_set_is_refused(tmp_path):
    """Which images a study sees is part of what its trials are compared on: the study file's
    [split] (image/mask pairs) and [synthetic] (the embedded set) are recorded with it. A study
    made before they were recorded agrees on them."""
    import dataclasses

    from search.spec.settings import resolve_settings
    from search.study.run import open_study

    spec = load_spec("unet_xray")
    settings = resolve_settings(spec, storage=f"sqlite:///{tmp_path}/o.db", n_trials=1)
    study = open_study(spec, settings)
    recorded = study_facts(study).settings
    assert recorded["split"] == spec.split and "synthetic" in recorded
    other = dataclasses.replace(spec, split={**spec.split, "validation_fraction": 0.3})
    with pytest.raises(ValueError, match="was made with split="):
        open_study(other, settings)
    # An older record without them: continued, and they are recorded from now on.
    note_study(study, settings={k: v for k, v in recorded.items()
                                        if k not in ("split", "synthetic")})
    study = open_study(other, settings)
    assert study_facts(study).settings["split"]["validation_fraction"] == 0.3
