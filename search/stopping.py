"""Stopping a trial that cannot give a useful value, with the reason, before its epochs run out.

- stuck: after `stuck_after_epochs` epochs its objective has never beaten chance (the
  majority-class rate for accuracy, 0.5 for AUC and balanced accuracy, the dice of an
  all-foreground mask), or its training loss has not fallen below the first epoch's. A constant
  predictor (a dead network, a learning rate too small to move) looks exactly like that. The
  trial ends pruned with `stopped_because`, and its epochs go to other trials.
- diverged: its training loss grew past `diverged_loss_factor` times the first epoch's while
  staying finite (a learning rate of 1e3 gives losses of 1e29 and predictions at chance). The
  trial fails with the reason, as a NaN loss does.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from search.training import TrialFailed


class StuckOrDiverged(keras.callbacks.Callback):
    def __init__(self, monitor: str, chance: float | None, settings: Mapping):
        super().__init__()
        self.monitor, self.chance = monitor, chance
        self.warmup = settings["stuck_after_epochs"]
        self.factor = settings["diverged_loss_factor"]
        self.values: list[float] = []
        self.losses: list[float] = []
        self.reason: str | None = None  # why the trial is stuck, once it is

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        logs = logs or {}
        if self.monitor in logs:
            self.values.append(float(logs[self.monitor]))
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
        if self.losses and self.losses[-1] > self.factor * max(self.losses[0], 1e-3):
            raise TrialFailed(
                f"training diverged: loss {self.losses[-1]:.3g} at epoch {epoch + 1}, over "
                f"{self.factor:g} times the first epoch's {self.losses[0]:.3g} "
                "(try a lower learning rate)")
        if self.warmup and len(self.values) == self.warmup:
            self.reason = self._stuck(epoch + 1)
            if self.reason:
                self.model.stop_training = True

    def _stuck(self, epochs: int) -> str | None:
        best = max(self.values, default=None)
        if best is not None and self.chance is not None and best <= self.chance + 1e-6:
            return (f"stuck: {self.monitor} {best:.4f} after {epochs} epochs, never above "
                    f"chance ({self.chance:.4f}): the predictions are constant")
        if len(self.losses) > 1 and min(self.losses[1:]) >= self.losses[0]:
            return (f"stuck: the training loss has not fallen in {epochs} epochs "
                    f"({self.losses[0]:.4g} -> {self.losses[-1]:.4g})")
        return None
