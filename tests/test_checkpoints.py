"""A retried trial continues its early stopping from the checkpoint: it ends on its best epoch's
weights even when that epoch came before the retry, and its patience counts the epochs before."""

import keras
import numpy as np

from search.trial.checkpoints import Checkpoint
from search.trial.run import TrialHistory
from search.trial.training import EarlyStoppingFrom


class Scores(keras.callbacks.Callback):
    """Puts a chosen `val_score` into each epoch's logs (first in the list: the others read it)
    and keeps each epoch's weights."""

    def __init__(self, scores: dict[int, float]):
        super().__init__()
        self.scores, self.weights = scores, {}

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = self.scores[epoch + 1]
        self.weights[epoch + 1] = self.model.get_weights()


def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    return m


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def train_then_resume(tmp_path, later: dict[int, float], patience: int = 10):
    x, y = np.random.default_rng(0).normal(size=(16, 4)), np.zeros((16, 1))
    checkpoint = Checkpoint(tmp_path / "t0000", every_s=0)
    history, first = TrialHistory(), Scores({1: 0.5, 2: 0.9, 3: 0.6})
    model().fit(x, y, epochs=3, verbose=0,
                callbacks=[first, history, checkpoint.callback(history.values, "val_score")])
    # The worker dies here; its retry builds the model again and resumes the checkpoint.
    resumed = model()
    earlier = checkpoint.restore(resumed)
    assert earlier.epochs == 3 and earlier.history["val_score"] == [0.5, 0.9, 0.6]
    assert same(earlier.best_weights, first.weights[2])
    assert same(resumed.get_weights(), first.weights[3])
    second = Scores(later)
    stopping = EarlyStoppingFrom(earlier, "val_score", mode="max", restore_best_weights=True,
                                 patience=patience)
    resumed.fit(x, y, initial_epoch=3, epochs=max(later), verbose=0,
                callbacks=[second, stopping])
    return resumed, first, second


def test_a_best_epoch_before_the_retry_is_the_one_the_trial_ends_on(tmp_path):
    resumed, first, _ = train_then_resume(tmp_path, {4: 0.7, 5: 0.8})
    assert same(resumed.get_weights(), first.weights[2])


def test_a_better_epoch_after_the_retry_wins(tmp_path):
    resumed, _, second = train_then_resume(tmp_path, {4: 0.95, 5: 0.8})
    assert same(resumed.get_weights(), second.weights[4])


def test_patience_counts_the_epochs_before_the_retry(tmp_path):
    # Best at epoch 2, one epoch waited before the retry: patience 2 ends it after epoch 4.
    _, _, second = train_then_resume(tmp_path, {4: 0.7, 5: 0.8, 6: 0.85}, patience=2)
    assert sorted(second.weights) == [4]


def test_the_best_weights_carry_over_checkpoints_that_saved_no_better_epoch(tmp_path):
    x, y = np.zeros((8, 4)), np.zeros((8, 1))
    checkpoint = Checkpoint(tmp_path / "t0001", every_s=0)
    history, scores = TrialHistory(), Scores({1: 0.9, 2: 0.5, 3: 0.4})
    model().fit(x, y, epochs=3, verbose=0,
                callbacks=[scores, history, checkpoint.callback(history.values, "val_score")])
    assert [p.name for p in checkpoint.folder.glob("epoch-*")] == ["epoch-0003"]
    assert same(checkpoint.restore(model()).best_weights, scores.weights[1])
