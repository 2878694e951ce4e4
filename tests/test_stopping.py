"""Stuck and diverged trials are stopped with the reason, after the warm-up, not before."""

import pytest
from conftest import TS, finished, runs, tune

from search.stopping import StuckOrDiverged
from search.training import TrialFailed

SETTINGS = {"stuck_after_epochs": 3, "diverged_loss_factor": 100.0}


class FakeModel:
    stop_training = False


def feed(callback, epochs):
    if callback.model is None:
        callback.set_model(FakeModel())
    for loss, value in epochs:
        callback.on_epoch_end(len(callback.losses), {"loss": loss, "val_accuracy": value})
    return callback


def test_a_constant_predictor_is_stuck_after_the_warm_up():
    watch = StuckOrDiverged("val_accuracy", 0.55, SETTINGS)
    feed(watch, [(0.69, 0.55), (0.68, 0.55)])
    assert watch.reason is None  # still warming up
    feed(watch, [(0.67, 0.55)])
    assert watch.reason.startswith("stuck: val_accuracy 0.5500 after 3 epochs, never above "
                                   "chance (0.5500)")
    assert watch.model.stop_training


def test_a_loss_that_does_not_fall_is_stuck():
    watch = feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS),
                 [(0.60, 0.7), (0.61, 0.7), (0.65, 0.7)])
    assert "training loss has not fallen in 3 epochs" in watch.reason


def test_a_learning_trial_is_left_alone():
    watch = feed(StuckOrDiverged("val_accuracy", 0.55, SETTINGS),
                 [(0.69, 0.55), (0.60, 0.58), (0.55, 0.55), (0.5, 0.9)])
    assert watch.reason is None and not watch.model.stop_training


def test_a_finite_but_exploding_loss_fails_the_trial():
    with pytest.raises(TrialFailed, match=r"training diverged: loss 1e\+29 at epoch 2"):
        feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS), [(0.7, 0.5), (1e29, 0.5)])


def test_a_stuck_trial_ends_pruned_with_the_reason_in_mlflow(workdir, tiny_skin):
    """A learning rate too small to move anything: pruned as stuck after 3 of 6 epochs."""
    task = workdir / "stuck.toml"
    task.write_text(
        'description = "LeNet that cannot learn"\nmodel = "lenet"\ndata = "skin"\n'
        "[space]\nlearning_rate = { low = 1e-12, high = 1e-11, log = true }\n"
        "base = { choices = [4] }\nbatch_size = { choices = [8] }\n"
        'optimizer = { choices = ["sgd"] }\n[pruner]\ntype = "none"\n')
    assert tune(workdir, "--task", str(task), "--n-trials", "1", "--epochs", "6",
                "--data-dir", str(tiny_skin)) == 0
    (trial,) = finished(workdir, "stuck")
    assert trial.state == TS.PRUNED
    assert trial.user_attrs["stopped_because"].startswith("stuck: ")
    assert trial.user_attrs["epochs_run"] == 3
    _, _, (child,) = runs(workdir)
    assert child.info.status == "KILLED"
    assert child.data.tags["stopped_because"].startswith("stuck: ")
