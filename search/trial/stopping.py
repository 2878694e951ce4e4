"""Stopping a trial that cannot give a useful value, with the reason, before its epochs run out.

- stuck: after `stuck_after_epochs` epochs its objective has never beaten chance (the
  majority-class rate for accuracy, 0.5 for AUC and balanced accuracy, the dice of an
  all-foreground mask), or beaten it only by noise while its AUC says the scores are constant,
  and nothing says it is learning: its validation AUC is still 0.5 (every
  image gets the same score: a dead network), or its training loss has not fallen (a learning
  rate too small to move). A slow starter whose scores already rank the classes and whose loss
  falls is left to learn. The
  trial ends pruned with `stopped_because`, and its epochs go to other trials.
- collapsed: after the warm-up, at every epoch, its predictions have been constant for the
  last `collapsed_epochs` epochs (validation AUC within 0.02 of 0.5 and the objective at
  chance), whatever its first epochs did: a learning rate that moved the network at first and
  then killed it. Pruned the same way, `stopped_because` saying `collapsed`; one whose best
  epoch was clearly above chance instead ends there, on that epoch's weights and value.
- a lab baseline (the study's bar) is left alone by both until `baseline_stuck_after_epochs`:
  the labs' recipes sit at chance for their first epochs, then learn.
- diverged: its training loss grew past `diverged_loss_factor` times the first epoch's while
  staying finite (a learning rate of 1e3 gives losses of 1e29 and predictions at chance). The
  trial fails with the reason, as a NaN loss does.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from search.outcomes import TrialFailed

NO_SIGNAL_AUC = 0.02  # a validation AUC within this of 0.5: the scores do not rank the classes
LOSS_DROP = 0.01  # a training loss that fell less than this fraction has not fallen
# Scores that do not rank the classes (AUC 0.5) put a few validation images on the other side
# of 0.5 by chance: up to this much above the majority rate is noise, not learning (real knee
# X-rays: a batch-32 VGG at 0.52 for 12 epochs, AUC 0.49-0.51, trained on at 19 s an epoch).
NOISE_ABOVE_CHANCE = 0.05


class StuckOrDiverged(keras.callbacks.Callback):
    def __init__(self, monitor: str, chance: float | None, settings: Mapping,
                 baseline: bool = False):
        super().__init__()
        self.monitor, self.chance = monitor, chance
        # (studies recorded before the newer settings replay without them: 0, off)
        # The bar gets the epochs the labs' recipes need before either stop may end it.
        self.grace = settings.get("baseline_stuck_after_epochs", 0) if baseline else 0
        self.warmup = settings["stuck_after_epochs"] and max(settings["stuck_after_epochs"],
                                                             self.grace)
        self.window = settings.get("collapsed_epochs", 0)
        self.factor = settings["diverged_loss_factor"]
        self.values: list[float] = []
        self.losses: list[float] = []
        self.aucs: list[float] = []
        self.reason: str | None = None  # why the trial is stuck, once it is

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        logs = logs or {}
        if self.monitor in logs:
            self.values.append(float(logs[self.monitor]))
        if "val_auc" in logs:
            self.aucs.append(float(logs["val_auc"]))
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
        if self.losses and self.losses[-1] > self.factor * max(self.losses[0], 1e-3):
            raise TrialFailed(
                f"training diverged: loss {self.losses[-1]:.3g} at epoch {epoch + 1}, over "
                f"{self.factor:g} times the first epoch's {self.losses[0]:.3g} "
                "(try a lower learning rate)")
        if self.warmup and len(self.values) == self.warmup:
            self.reason = self._stuck(epoch + 1)
        if (not self.reason and self.window
                and len(self.values) >= max(self.warmup, self.window, self.grace)
                and self._constant()):
            if max(self.values) > self.chance + NOISE_ABOVE_CHANCE:
                # It learned, then collapsed: it ends on its best epoch (early stopping's
                # weights), its value stands; only the epochs after the collapse are saved.
                self.model.stop_training = True
            else:
                self.reason = self._collapsed(epoch + 1)
        if self.reason:
            self.model.stop_training = True

    def _constant(self) -> bool:
        """The last `window` epochs' predictions constant: AUC at 0.5, objective at chance."""
        values, aucs = self.values[-self.window:], self.aucs[-self.window:]
        if self.chance is None or len(aucs) < self.window:
            return False  # no AUC (a U-Net): nothing says the predictions are constant
        return (max(abs(a - 0.5) for a in aucs) <= NO_SIGNAL_AUC
                and max(values) <= self.chance + NOISE_ABOVE_CHANCE)

    def _collapsed(self, epochs: int) -> str:
        values, aucs = self.values[-self.window:], self.aucs[-self.window:]
        return (f"collapsed: {self.monitor} {values[-1]:.4f} and validation AUC "
                f"{aucs[-1]:.3f} over epochs {epochs - self.window + 1}-{epochs}: the "
                f"predictions have been constant for {self.window} epochs (chance "
                f"{self.chance:.4f}); try a lower learning rate")

    def _stuck(self, epochs: int) -> str | None:
        best = max(self.values)
        if self.chance is None:
            return None
        above = best - self.chance
        flat_auc = self.aucs and max(abs(a - 0.5) for a in self.aucs) <= NO_SIGNAL_AUC
        if above > 1e-6 and not (flat_auc and above <= NOISE_ABOVE_CHANCE):
            return None
        level = (f"{above:.4f} above chance ({self.chance:.4f}), by noise" if above > 1e-6
                 else f"never above chance ({self.chance:.4f})")
        if flat_auc:
            signal = f"validation AUC {self.aucs[-1]:.3f}: the predictions are constant"
        elif min(self.losses[1:], default=self.losses[0]) >= self.losses[0] * (1 - LOSS_DROP):
            signal = (f"the training loss has not fallen ({self.losses[0]:.4g} -> "
                      f"{self.losses[-1]:.4g})")
        else:
            return None  # a slow starter: its scores rank the classes, or its loss falls
        return f"stuck: {self.monitor} {best:.4f} after {epochs} epochs, {level}; {signal}"
