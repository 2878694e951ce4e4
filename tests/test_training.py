"""Trial bookkeeping that decides values and failures."""

import math

import pytest

from search.outcomes import TrialFailed
from search.trial.training import best_epoch, check_finite


def test_best_epoch_is_the_first_maximum_and_one_based():
    assert best_epoch([0.5, 0.8, 0.7, 0.8]) == (0.8, 2)
    assert best_epoch([0.6]) == (0.6, 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_diverged_loss_fails_the_trial_with_its_epoch(bad):
    with pytest.raises(TrialFailed, match=f"loss became {bad} at epoch 3: training diverged"):
        check_finite({"accuracy": [0.5, 0.6, 0.5], "loss": [0.7, 0.6, bad]})
    check_finite({"loss": [0.7, 0.6]})  # finite: no error


def test_a_trial_has_no_per_batch_callback_and_stops_on_a_non_finite_loss(tiny_skin, monkeypatch,
                                                                       trial_run):
    """A callback with a batch hook makes Keras run every batch's callbacks in step with the
    device (on a GPU, a wait per batch that plain `fit` does not have)."""
    import keras

    from datasets import loader
    from search.spec.study_files import load_spec
    from search.trial.problems import make_problem
    from search.trial.run import Planned, run_trial
    from search.trial.training import StopOnNonFinite, fresh_keras_session

    seen = []
    original = keras.Model.fit

    def spy(model, *args, callbacks=None, **kwargs):
        seen.extend(callbacks)
        return original(model, *args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    spec = load_spec("lenet_skin")
    problem = make_problem(spec, loader.load(spec.data, tiny_skin, 32, split=spec.split,
                                                 synthetic=spec.synthetic))
    params = {k: v for k, v in spec.baselines[0].items() if k != "note"}
    with fresh_keras_session():
        run_trial(Planned(spec, problem, params, 1, 0), trial_run)
    base = keras.callbacks.Callback
    assert seen and any(isinstance(c, StopOnNonFinite) for c in seen)
    for callback in seen:
        for hook in ("on_batch_end", "on_train_batch_end", "on_test_batch_end"):
            assert getattr(type(callback), hook) is getattr(base, hook), (callback, hook)

    stop = StopOnNonFinite()
    stop.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    stop.model.stop_training = False  # as fit() starts
    stop.on_epoch_end(0, {"loss": 0.5})
    assert not stop.model.stop_training
    stop.on_epoch_end(1, {"loss": math.nan})
    assert stop.model.stop_training
