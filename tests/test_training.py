"""Trial bookkeeping that decides values and failures."""

import math

import pytest

from search.training import TrialFailed, best_epoch, check_finite


def test_best_epoch_is_the_first_maximum_and_one_based():
    assert best_epoch([0.5, 0.8, 0.7, 0.8]) == (0.8, 2)
    assert best_epoch([0.6]) == (0.6, 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_diverged_loss_fails_the_trial_with_its_epoch(bad):
    with pytest.raises(TrialFailed, match=f"loss became {bad} at epoch 3: training diverged"):
        check_finite({"accuracy": [0.5, 0.6, 0.5], "loss": [0.7, 0.6, bad]})
    check_finite({"loss": [0.7, 0.6]})  # finite: no error
