"""The ensemble champion as one Keras model: the mean of its members' outputs, saved and loaded
as any model, its Grad-CAM the mean of theirs; held-in scores computed as a trial's are."""

import keras
import numpy as np
import pytest

from models.ensemble import build_ensemble, members_of
from models.gradcam import gradcam
from models.vgg16 import LAST_CONV


def member(seed: int) -> keras.Model:
    """A small two-class CNN (its own weights per seed), named as every loaded model is."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1), name="image")
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=LAST_CONV)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(conv)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled),
                       name="functional")


def test_the_ensemble_is_the_mean_of_its_members_and_survives_saving(tmp_path):
    members = [member(1), member(2), member(3)]
    images = np.random.default_rng(0).random((5, 16, 16, 1), dtype="float32")
    outputs = [m.predict(images, verbose=0) for m in members]
    ensemble = build_ensemble(members)
    assert np.allclose(ensemble.predict(images, verbose=0), np.mean(outputs, axis=0), atol=1e-6)
    ensemble.save(tmp_path / "e.keras")
    loaded = keras.saving.load_model(tmp_path / "e.keras", compile=False)
    assert len(members_of(loaded)) == 3 and members_of(members[0]) == []
    assert np.allclose(loaded.predict(images, verbose=0), np.mean(outputs, axis=0), atol=1e-6)
    # Grad-CAM of the ensemble: its members' maps for the ensemble's predicted class, averaged.
    chosen = ensemble.predict(images, verbose=0).argmax(axis=-1)
    expected = np.mean([gradcam(m, images, class_index=chosen) for m in members], axis=0)
    assert np.allclose(gradcam(loaded, images), expected, atol=1e-5)


def test_an_ensemble_needs_two_members_of_one_input_shape():
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble([member(1)])
    other = keras.Model(inputs := keras.Input((8, 8, 1)), keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="input shapes differ"):
        build_ensemble([member(1), other])


@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_held_in_scores_are_the_trials_own(tiny_skin, trial_run, loss):
    """A model's validation outputs scored as the ensemble's are give the values its own
    `evaluate` gives (hinge: -1/+1 targets, margins), so an ensemble and a finalist are
    compared on one scale."""
    from datasets import loader
    from search.champion.ensemble import score, validation_outputs
    from search.spec.study_files import load_spec
    from search.trial.problems import make_problem
    from search.trial.run import Planned, run_trial
    from search.trial.training import fresh_keras_session

    spec = load_spec("lenet_skin")
    problem = make_problem(spec, loader.load(spec.data, tiny_skin, 32, split=spec.split,
                                             synthetic=spec.synthetic))
    params = {**{k: v for k, v in spec.baselines[0].items() if k != "note"}, "loss": loss}
    with fresh_keras_session():
        result = run_trial(Planned(spec, problem, params, 2, 0), trial_run)
        _, val = problem.datasets(result.config, seed=0)
        expected = result.model.evaluate(val, return_dict=True, verbose=0)
        outputs, targets = validation_outputs(result.model, problem, result.config)
        scored = score(problem, result.config, outputs, targets)
    assert len(outputs) == len(problem.data.y_val)
    for metric in ("accuracy", "auc"):
        assert scored[metric] == pytest.approx(expected[metric], abs=1e-4), metric
