"""`[training] precision = "mixed_float16"` on a CPU: float16 layers, float32 outputs, a finite
loss, and the float32 policy back afterwards."""

import dataclasses

import keras
import numpy as np
import pytest

from datasets import loader
from models import build_model, settings_from
from search.spec.study_files import load_spec
from search.trial.problems import make_problem
from search.trial.run import Planned, run_trial
from search.trial.training import fresh_keras_session, precision_policy

MIXED = "mixed_float16"


def config(name, **overrides):
    """Model `name`'s settings: a tiny shared config, less what the model does not take."""
    return settings_from(name, {"input_shape": (32, 32, 1), "base": 4, "n_classes": 2,
                                "loss": "bce", "dense_units": "16-8", **overrides})


@pytest.mark.parametrize("name,overrides", [
    ("vgg16", {}),
    ("lenet", {"loss": "hinge"}),                       # linear margin output
    ("alexnet", {"n_classes": 3, "loss": "categorical"}),  # softmax output
    ("unet", {"dropout": 0.1}),                         # sigmoid mask
])
def test_mixed_models_compute_in_float16_with_float32_outputs(name, overrides):
    with precision_policy(MIXED):
        model = build_model(name, **config(name, **overrides))
    assert keras.mixed_precision.global_policy().name == "float32"
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    assert convs[0].compute_dtype == "float16" and convs[0].variable_dtype == "float32"
    assert model.layers[-1].compute_dtype == "float32"
    assert keras.backend.standardize_dtype(model.output.dtype) == "float32"
    outputs = model(np.random.default_rng(0).random((2, 32, 32, 1), "float32"))
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"


def test_unknown_precision_is_refused_and_leaves_the_policy():
    with pytest.raises(ValueError, match="precision 'bfloat8': choose one of float32, mixed"), \
            precision_policy("bfloat8"):
        pass
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_mixed_precision_trial_trains_with_a_finite_loss(tiny_skin, trial_run):
    spec = load_spec("lenet_skin")
    assert spec.training["precision"] == "float32"  # the default, from studies/_defaults.toml
    spec = dataclasses.replace(spec, training={**spec.training, "precision": MIXED})
    problem = make_problem(spec, loader.load(spec.data, tiny_skin, 32, split=spec.split,
                                                 synthetic=spec.synthetic))
    params = {k: v for k, v in spec.baselines[0].items() if k != "note"}
    with fresh_keras_session():
        model = run_trial(Planned(spec, problem, params, 1, 0), trial_run).model
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        assert model.layers[-1].compute_dtype == "float32"
    history = trial_run.history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])
    assert keras.mixed_precision.global_policy().name == "float32"


def test_gradcam_of_a_mixed_precision_model():
    from models.gradcam import gradcam

    with precision_policy(MIXED):
        model = build_model("vgg16", **config("vgg16", n_classes=2, loss="categorical"))
    maps = gradcam(model, np.random.default_rng(0).random((2, 32, 32, 1), "float32"))
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
