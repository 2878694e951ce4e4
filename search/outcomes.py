"""How a trial ends before its epochs run out: the exceptions that carry the reason, which the
trial raises, the tracking records and every engine catches (so they live below all three)."""

import optuna


class Stuck(optuna.TrialPruned):
    """A trial stopped early because it cannot give a useful value; the message says why."""


class TrialFailed(RuntimeError):
    """A trial that cannot give a value (e.g. its loss diverged); the message says why."""
