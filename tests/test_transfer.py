"""Transfer tasks offline: a weights file, a registered medtune VGG16, or a clear error."""

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import TS, data_settings, finished, runs, tune

from datasets import features, loader
from models import build_model
from models.transfer import imagenet_base
from search.cli import main


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Stands in for the ImageNet file: same architecture and format, random weights."""
    path = tmp_path_factory.mktemp("weights") / "vgg16_notop.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)
                             ).save_weights(path)
    return path


def test_features_are_extracted_once_and_cached(tiny_skin, weights_file):
    data = loader.load("skin", tiny_skin, image_size=32, **data_settings())
    base = imagenet_base(32, str(weights_file))
    first, _ = features.extract(data, base)
    assert first.x_train.shape == (24, 1, 1, 512) and not first.from_cache
    second, _ = features.extract(data, base)
    assert second.from_cache
    np.testing.assert_allclose(second.x_val, first.x_val)


def test_transfer_study_trains_the_head_on_cached_features(workdir, tiny_skin, weights_file):
    args = ["--task", "transfer_skin", "--n-trials", "2", "--data-dir", str(tiny_skin),
            "--base", str(weights_file)]
    assert tune(workdir, *args) == 0
    assert [t.state for t in finished(workdir, "transfer_skin")] == [TS.COMPLETE] * 2
    client, (parent,), children = runs(workdir)
    assert parent.data.params["features_cached"] == "False"
    assert parent.data.params["transfer_base"].startswith("imagenet:")
    for child in children:
        summary = client.download_artifacts(child.info.run_id, "model_summary.txt", str(workdir))
        text = Path(summary).read_text()
        assert "transfer_head" in text and "block1_conv1" not in text  # the head alone trains
        assert child.data.params["input_shape"] == "(1, 1, 512)"


def test_missing_imagenet_weights_say_how_to_provide_them(workdir, tiny_skin, monkeypatch,
                                                          capsys):
    monkeypatch.setenv("KERAS_HOME", str(workdir / "empty-keras-home"))
    assert main(["tune", "--task", "transfer_skin", "--data-dir", str(tiny_skin)]) == 2
    err = capsys.readouterr().err
    assert "no ImageNet weights for VGG16" in err and "--base models:/<name>@champion" in err


def test_registered_medtune_vgg16_as_the_base(workdir, tiny_course):
    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    model = build_model("vgg16", input_shape=(32, 32, 1), base=2, n_classes=2, loss="bce",
                        dense_units="8-8")
    signature = mlflow.models.infer_signature(
        np.zeros((1, 32, 32, 1), "float32"), np.zeros((1, 1), "float32"))
    with mlflow.start_run(experiment_id=mlflow.create_experiment("registry")):
        mlflow.keras.log_model(model, name="model", registered_model_name="bone_vgg",
                               signature=signature, pip_requirements=["keras"])
    assert tune(workdir, "--task", "transfer_bone", "--n-trials", "1", "--data-dir",
                str(tiny_course), "--base", "models:/bone_vgg/1") == 0
    _, (parent,), (child,) = runs(workdir, "transfer_bone")  # not the registry's run
    assert parent.data.params["transfer_base"] == "models:/bone_vgg/1"
    assert child.data.params["input_shape"] == "(2, 2, 16)"  # Last_ConvLayer: 32/16 px, 8b


def test_end_to_end_model_matches_features_then_head(weights_file):
    """The exported transfer model (base + head) predicts what the head does on cached
    features: the preprocessing as layers equals `prepare`."""
    base = imagenet_base(32, str(weights_file))
    head = build_model("transfer_head", input_shape=base.model.output_shape[1:], dense_units=8,
                       n_classes=2, loss="bce")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype="uint8")
    expected = head.predict(base.features(images), verbose=0)
    joined = base.end_to_end(head).predict(images[..., None] / 255.0, verbose=0)
    np.testing.assert_allclose(joined, expected, rtol=1e-4, atol=1e-5)
