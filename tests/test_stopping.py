"""Stuck and diverged trials are stopped with the reason, after the warm-up, not before."""

import pytest
from conftest import TS, finished, runs, tune

from search.outcomes import TrialFailed
from search.trial.stopping import StuckOrDiverged

SETTINGS = {"stuck_after_epochs": 3, "diverged_loss_factor": 100.0}


class FakeModel:
    stop_training = False


def feed(callback, epochs):
    """Epochs of (loss, val_accuracy, val_auc); val_auc None: a task without AUC."""
    if callback.model is None:
        callback.set_model(FakeModel())
    for loss, value, auc in epochs:
        logs = {"loss": loss, "val_accuracy": value, **({"val_auc": auc} if auc else {})}
        callback.on_epoch_end(len(callback.losses), logs)
    return callback


def test_a_constant_predictor_is_stuck_after_the_warm_up():
    watch = StuckOrDiverged("val_accuracy", 0.55, SETTINGS)
    feed(watch, [(0.69, 0.55, 0.5), (0.69, 0.55, 0.5)])
    assert watch.reason is None  # still warming up
    feed(watch, [(0.69, 0.55, 0.5)])
    assert watch.reason == ("stuck: val_accuracy 0.5500 after 3 epochs, never above chance "
                            "(0.5500); validation AUC 0.500: the predictions are constant")
    assert watch.model.stop_training


def test_a_resumed_trial_warms_up_again_from_its_resume_point():
    """A retried trial resumes at its checkpoint (here epoch 10): the stuck check counts the
    epochs it trains from there, not the total."""
    watch = StuckOrDiverged("val_accuracy", 0.5, SETTINGS)
    watch.set_model(FakeModel())
    for epoch in (10, 11):
        watch.on_epoch_end(epoch, {"loss": 0.69, "val_accuracy": 0.5, "val_auc": 0.5})
        assert watch.reason is None
    watch.on_epoch_end(12, {"loss": 0.69, "val_accuracy": 0.5, "val_auc": 0.5})
    assert watch.reason.startswith("stuck: val_accuracy 0.5000 after 13 epochs")


def test_noise_above_chance_with_constant_scores_is_stuck_and_a_clear_lead_is_not():
    """Scores that do not rank the classes (AUC 0.5) leave a few images above the majority
    rate by chance: that is not learning. A clear lead is left alone."""
    noise = feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS),
                 [(0.83, 0.52, 0.512), (0.75, 0.49, 0.491), (0.73, 0.51, 0.496)])
    assert noise.reason == ("stuck: val_accuracy 0.5200 after 3 epochs, 0.0200 above chance "
                            "(0.5000), by noise; validation AUC 0.496: the predictions are "
                            "constant")
    lead = feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS),
                [(0.69, 0.5, 0.5), (0.69, 0.58, 0.5), (0.69, 0.56, 0.5)])
    assert lead.reason is None


def test_a_slow_starter_whose_scores_rank_the_classes_is_left_alone():
    """At chance by accuracy for its first epochs (all scores below 0.5), but ranking."""
    watch = feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS),
                 [(0.69, 0.5, 0.55), (0.68, 0.5, 0.7), (0.66, 0.5, 0.8), (0.6, 0.7, 0.85)])
    assert watch.reason is None and not watch.model.stop_training


def test_a_loss_that_does_not_fall_is_stuck_and_a_falling_one_is_not():
    flat = feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS),  # random scores, no learning
                [(0.60, 0.5, 0.6), (0.601, 0.5, 0.6), (0.599, 0.5, 0.6)])
    assert "the training loss has not fallen (0.6 -> 0.599)" in flat.reason
    falling = feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS),
                   [(0.60, 0.5, None), (0.55, 0.5, None), (0.5, 0.5, None)])
    assert falling.reason is None


def test_a_learning_trial_is_left_alone():
    watch = feed(StuckOrDiverged("val_accuracy", 0.55, SETTINGS),
                 [(0.69, 0.55, 0.5), (0.60, 0.58, 0.6), (0.55, 0.55, 0.6), (0.5, 0.9, 0.9)])
    assert watch.reason is None and not watch.model.stop_training


def test_a_finite_but_exploding_loss_fails_the_trial():
    with pytest.raises(TrialFailed, match=r"training diverged: loss 1e\+29 at epoch 2"):
        feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS), [(0.7, 0.5, 0.5), (1e29, 0.5, 0.5)])


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
    assert child.data.tags["trial.state"] == "stuck"
    assert child.data.tags["medtune.device"] == "CPU"  # this machine has no GPU


COLLAPSE = {**SETTINGS, "collapsed_epochs": 3, "baseline_stuck_after_epochs": 12}


def test_predictions_constant_for_the_window_collapse_whatever_the_first_epochs_did():
    """It moved at first (AUC 0.6, a falling loss: the stuck check lets it go on), then its
    predictions went constant: collapsed once the last 3 epochs are all at chance."""
    watch = feed(StuckOrDiverged("val_accuracy", 0.5, COLLAPSE),
                 [(9.0, 0.5, 0.6), (0.72, 0.5, 0.5), (0.70, 0.5, 0.5)])
    assert watch.reason is None  # the stuck check at epoch 3 saw a slow starter
    feed(watch, [(0.69, 0.51, 0.49)])
    assert watch.reason == ("collapsed: val_accuracy 0.5100 and validation AUC 0.490 over "
                            "epochs 2-4: the predictions have been constant for 3 epochs "
                            "(chance 0.5000); try a lower learning rate")
    assert watch.model.stop_training


def test_a_trial_that_leaves_chance_within_the_window_does_not_collapse():
    watch = feed(StuckOrDiverged("val_accuracy", 0.5, COLLAPSE),
                 [(0.7, 0.5, 0.6), (0.69, 0.5, 0.5), (0.68, 0.5, 0.5), (0.6, 0.5, 0.6),
                  (0.5, 0.7, 0.8), (0.4, 0.8, 0.9)])
    assert watch.reason is None


def test_a_segmenter_without_auc_never_collapses_and_an_older_record_has_no_window():
    unet = feed(StuckOrDiverged("val_accuracy", 0.5, COLLAPSE), [(0.7, 0.5, None)] * 2
                + [(0.6, 0.5, None)] * 4)
    assert unet.reason is None
    older = feed(StuckOrDiverged("val_accuracy", 0.5, SETTINGS),  # recorded before the setting
                 [(9.0, 0.5, 0.6), (0.5, 0.5, 0.5), (0.4, 0.5, 0.5), (0.3, 0.5, 0.5)] * 2)
    assert older.reason is None


def test_a_lab_baseline_is_left_to_leave_chance_until_its_own_epoch():
    """The lab's recipe sits at chance with a flat loss for its first epochs (real knee X-rays):
    a searched trial like it is stuck at epoch 3, the baseline only at epoch 12."""
    flat = [(0.6931, 0.5, 0.5)] * 11
    searched = feed(StuckOrDiverged("val_accuracy", 0.5, COLLAPSE), flat[:3])
    assert searched.reason.startswith("stuck: val_accuracy 0.5000 after 3 epochs")
    baseline = feed(StuckOrDiverged("val_accuracy", 0.5, COLLAPSE, baseline=True), flat)
    assert baseline.reason is None
    feed(baseline, [(0.6931, 0.5, 0.5)])
    assert baseline.reason.startswith("stuck: val_accuracy 0.5000 after 12 epochs")
    learns = feed(StuckOrDiverged("val_accuracy", 0.5, COLLAPSE, baseline=True),
                  flat[:10] + [(0.6, 0.7, 0.8)] * 3)
    assert learns.reason is None


def test_a_learning_rate_that_kills_the_network_ends_collapsed(workdir):
    """A real collapse: LeNet under Adam at 0.05 moves in its first epoch (AUC above 0.5, the
    loss falling from a large start), so the stuck check at epoch 3 lets it go on; then its
    predictions are constant, and it is pruned as collapsed, well before its 12 epochs."""
    from datasets import synthetic

    synthetic.write_skin(workdir / "course", n_train=96, n_val=48, size=32, seed=1)
    task = workdir / "collapse.toml"
    task.write_text(
        'description = "LeNet at a learning rate that kills it"\nmodel = "lenet"\n'
        'data = "skin"\n[space]\nlearning_rate = { choices = [0.05] }\n'
        'base = { choices = [16] }\nbatch_size = { choices = [8] }\n'
        'optimizer = { choices = ["adam"] }\n[pruner]\ntype = "none"\n[start]\nnote = ""\n')
    assert tune(workdir, "--task", str(task), "--n-trials", "1", "--epochs", "12",
                "--data-dir", str(workdir / "course")) == 0
    (trial,) = finished(workdir, "collapse")
    assert trial.state == TS.PRUNED
    assert trial.user_attrs["stopped_because"].startswith("collapsed: val_accuracy")
    assert 3 < trial.user_attrs["epochs_run"] < 12
    _, _, (child,) = runs(workdir)
    assert child.data.tags["stopped_because"].startswith("collapsed: ")


def test_a_trial_that_learned_then_collapsed_ends_on_its_best_epoch_not_pruned():
    """Well above chance at first, then constant: the later epochs are saved, the value (its
    best epoch, whose weights early stopping restores) stands."""
    watch = feed(StuckOrDiverged("val_accuracy", 0.5, COLLAPSE),
                 [(0.6, 0.8, 0.85), (0.5, 0.85, 0.9), (9.0, 0.5, 0.5), (0.7, 0.5, 0.5),
                  (0.7, 0.5, 0.5)])
    assert watch.reason is None and watch.model.stop_training


def test_a_baseline_is_left_alone_by_the_collapse_stop_too_even_without_the_stuck_stop():
    settings = {**COLLAPSE, "stuck_after_epochs": 0}
    baseline = feed(StuckOrDiverged("val_accuracy", 0.5, settings, baseline=True),
                    [(0.6931, 0.5, 0.5)] * 11)
    assert baseline.reason is None
    feed(baseline, [(0.6931, 0.5, 0.5)])
    assert baseline.reason.startswith("collapsed: ")
