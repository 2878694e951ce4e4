"""`medtune export`: register the champion the study kept in MLflow (no retraining); with
--replay, retrain the best trial first and gate on its value; load, predict, serve."""

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import mlflow.keras
import mlflow.pyfunc
import numpy as np
import optuna
import pytest
from conftest import copy_stores, runs, tune, write_png
from mlflow.tracking import MlflowClient

from search.cli import main


def export(workdir, *args: str) -> int:
    return main(["export", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
                 "--storage", f"sqlite:///{workdir}/optuna.db", *args])


def export_runs(workdir):
    client, parents, _ = runs(workdir)
    return [r for r in parents if r.data.tags.get("medtune.kind") == "export"]


@pytest.fixture
def lenet_study(workdir, lenet_template):
    """The session's 2-trial LeNet study, copied: each test may change its own."""
    return copy_stores(lenet_template, workdir)


def test_export_registers_the_kept_champion_without_retraining(lenet_study, lenet_template,
                                                              capsys):
    workdir = lenet_study
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    kept = study.best_trial.user_attrs["model_id"]
    assert export(workdir, "--study", "lenet_skin") == 0
    out = capsys.readouterr().out
    assert f"kept in MLflow as models:/{kept}" in out
    assert "registered lenet_skin version 1 as champion" in out and "replayed" not in out

    (run,) = export_runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["medtune.model_id"] == kept
    assert run.data.metrics["recorded_value"] == pytest.approx(study.best_value)
    assert "val_accuracy" not in run.data.metrics  # nothing was trained
    # nor kept on disk where the study trained
    assert not any((lenet_template.parent / "checkpoints").rglob("*.h5"))
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    # The Keras flavor beside the pyfunc, with its signature and input example.
    keras_model = Path(client.download_artifacts(run.info.run_id, "keras_model", str(workdir)))
    mlmodel = (keras_model / "MLmodel").read_text()
    assert "keras" in mlmodel and "signature" in mlmodel and "input_example" in mlmodel
    # The registered model holds the kept model's weights.
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    registered = mlflow.pyfunc.load_model("models:/lenet_skin@champion")
    images = np.random.default_rng(0).random((3, 32, 32, 1)).astype("float32")
    ours = mlflow.keras.load_model(f"models:/{kept}").predict(images, verbose=0)
    theirs = registered.unwrap_python_model().keras_model.predict(images, verbose=0)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)

    # A second export: the new version is champion, the old one challenger.
    assert export(workdir, "--study", "lenet_skin") == 0
    assert str(client.get_model_version_by_alias("lenet_skin", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("lenet_skin", "challenger").version) == "1"


def test_replay_retrains_the_best_trial_then_registers_the_kept_model(lenet_study, capsys):
    workdir = lenet_study
    assert export(workdir, "--study", "lenet_skin", "--replay") == 0
    assert "replayed trial" in capsys.readouterr().out
    (run,) = export_runs(workdir)
    metrics = run.data.metrics
    assert abs(metrics["replayed_value"] - metrics["recorded_value"]) <= 0.02
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]  # the replay's epochs, logged as they ran
    assert run.data.tags["medtune.model_id"]  # what is registered: the kept model


def test_a_study_older_than_kept_models_is_replayed(lenet_study, capsys):
    workdir = lenet_study
    with sqlite3.connect(workdir / "optuna.db") as db:  # as a study before this version
        db.execute("DELETE FROM trial_user_attributes WHERE key = 'model_id'")
    assert export(workdir, "--study", "lenet_skin") == 0
    out = capsys.readouterr().out
    assert "replayed trial" in out and "registered lenet_skin version 1 as champion" in out
    (run,) = export_runs(workdir)
    assert run.data.tags["medtune.model_id"] == "" and "replayed_value" in run.data.metrics


def test_the_champion_predicts_on_raw_image_files_and_arrays(lenet_study):
    workdir = lenet_study
    assert export(workdir, "--study", "lenet_skin", "--name", "skin_model") == 0
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/skin_model@champion")
    # Files as users have them: color, another size than the model's 32x32.
    files = [write_png(workdir / f"scan{i}.png", seed=i, size=57, mode="RGB") for i in range(3)]
    table = model.predict([str(f) for f in files])
    assert list(table.columns) == ["class", "class_index", "score"]
    assert len(table) == 3 and set(table["class"]) <= {"Mel", "Nevi"}
    assert ((table["score"] >= 0) & (table["score"] <= 1)).all()
    # The same image as an array of its own size gives the same prediction as its file.
    from PIL import Image

    array = np.asarray(Image.open(files[0]))
    assert model.predict(array)["score"][0] == pytest.approx(table["score"][0], abs=1e-6)
    with pytest.raises(ValueError, match="`path` or an `image_base64` column"):
        import pandas as pd

        model.predict(pd.DataFrame({"file": ["x.png"]}))


def test_the_replay_gate_refuses_a_tampered_value(lenet_study, capsys):
    workdir = lenet_study
    with sqlite3.connect(workdir / "optuna.db") as db:  # someone edits the recorded result
        db.execute("UPDATE trial_values SET value = value + 0.3")
    assert export(workdir, "--study", "lenet_skin", "--replay", "--tolerance", "0.05") == 2
    err = capsys.readouterr().err
    assert "replaying it" in err and "Not registered" in err
    (run,) = export_runs(workdir)
    assert run.info.status == "FAILED" and "ReplayMismatch" in run.data.tags["error"]
    assert run.data.metrics["recorded_value"] - run.data.metrics["replayed_value"] > 0.25
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert not client.search_registered_models("name = 'lenet_skin'")


def test_an_augmented_trial_replays_within_the_tolerance(lenet_study):
    """Augmentation draws from seeded layers: the replay must see the transforms the trial saw."""
    workdir = lenet_study
    with sqlite3.connect(workdir / "optuna.db") as db:  # make the start trial (augmented) the best
        db.execute("UPDATE trial_values SET value = -1 WHERE trial_id IN "
                   "(SELECT trial_id FROM trials WHERE number = 0)")
    best = optuna.load_study(study_name="lenet_skin",
                             storage=f"sqlite:///{workdir}/optuna.db").best_trial
    assert best.number == 1 and best.params["augment"] is True
    assert export(workdir, "--study", "lenet_skin", "--replay", "--tolerance", "0.001") == 0
    (run,) = export_runs(workdir)
    assert run.data.metrics["replayed_value"] == pytest.approx(best.value, abs=0.001)


def test_a_study_of_ones_own_file_exports_after_the_file_is_gone(workdir, tiny_skin, capsys):
    # The README's `task`: a task name or the path of one's own study file. A replay uses the
    # file as the study recorded it, so moving or deleting it afterwards changes nothing.
    mine = workdir / "mine.toml"
    mine.write_text((Path(__file__).parents[1] / "studies" / "lenet_skin.toml").read_text())
    assert tune(workdir, "--task", str(mine), "--n-trials", "1", "--data-dir",
                str(tiny_skin)) == 0
    mine.unlink()

    assert export(workdir, "--study", "mine", "--replay") == 0
    assert "registered mine version 1 as champion" in capsys.readouterr().out
    (run,) = export_runs(workdir)
    assert run.data.params["task"] == "mine"


@pytest.mark.parametrize("args, message", [
    (["--study", "nope"], "no study 'nope'"),
    (["--study", "lenet_skin", "--tolerance", "-1"], "tolerance must be >= 0"),
])
def test_export_errors_name_the_problem(lenet_study, capsys, args, message):
    assert export(lenet_study, *args) == 2
    assert message in capsys.readouterr().err


def test_a_bad_replay_value_is_named(workdir, capsys):
    with pytest.raises(SystemExit):
        export(workdir, "--study", "lenet_skin", "--replay", "maybe")
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_served_champion_answers_http_on_loopback(lenet_study):
    workdir = lenet_study
    assert export(workdir, "--study", "lenet_skin") == 0
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db",
           # the server starts `uvicorn` by name: the venv's bin must be on PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/lenet_skin@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start:\n{server.stdout.read().decode()[-3000:]}")
                time.sleep(0.5)
        image = write_png(workdir / "scan.png", seed=5, size=45)
        body = {"dataframe_records": [
            {"image_base64": base64.b64encode(image.read_bytes()).decode()}]}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            (prediction,) = json.loads(response.read())["predictions"]
        assert prediction["class"] in ("Mel", "Nevi") and 0 <= prediction["score"] <= 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # mlflow and the uvicorn it started
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_a_segmenter_exports_lung_masks(workdir, tiny_course):
    assert tune(workdir, "--task", "unet_xray", "--n-trials", "1", "--data-dir",
                str(tiny_course)) == 0
    assert export(workdir, "--study", "unet_xray") == 0
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/unet_xray@champion")
    masks = model.predict(np.random.default_rng(0).integers(0, 256, (2, 50, 50), dtype="uint8"))
    assert masks.shape == (2, 32, 32) and masks.min() >= 0 and masks.max() <= 1


@pytest.mark.slow(60)
def test_a_transfer_model_exports_base_and_head_as_one(workdir, tiny_course):
    """VGG16 trained on Bone, exported; its conv part as the transfer base; that exported too."""
    data = ["--data-dir", str(tiny_course), "--n-trials", "1"]
    assert tune(workdir, "--task", "vgg_bone", *data) == 0
    assert export(workdir, "--study", "vgg_bone") == 0
    assert tune(workdir, "--task", "transfer_bone", *data,
                "--base", "models:/vgg_bone@champion") == 0
    assert export(workdir, "--study", "transfer_bone") == 0
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/transfer_bone@champion")
    assert model.unwrap_python_model().keras_model.input_shape == (None, 32, 32, 1)
    image = write_png(workdir / "xray.png", seed=3, size=64)
    assert set(model.predict([str(image)])["class"]) <= {"AFF", "NFF"}
