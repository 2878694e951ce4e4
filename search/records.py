"""What a study records on itself and reads back: the names of its user attributes and the
pick they add up to. Everything above the trial reads the champion through here, so this
module imports no other part of medtune (no circle can run through it)."""

from __future__ import annotations

import optuna

TS = optuna.trial.TrialState
TEST_ATTR = "medtune_test"  # study: the champion scored once on the test split
REFIT_ATTR = "medtune_refit"  # study: the champion's refit (`search.refit`): trial, epochs, values
FINALISTS_ATTR = "medtune_finalists"  # study: the re-check and its champion (`search.finalists`)
MODEL_ATTR = "model_id"  # trial: the id of its kept model in MLflow (`search.kept`)


def ranked(study: optuna.Study, extra: tuple[int, float] | None = None) -> list[int]:
    """Numbers of the study's completed trials (and `extra`, a trial ending now), best first;
    an earlier trial wins a tie."""
    done = [(t.number, t.value) for t in study.get_trials(deepcopy=False, states=(TS.COMPLETE,))]
    entries = [e for e in done if extra is None or e[0] != extra[0]] + ([extra] if extra else [])
    return [number for number, _ in sorted(entries, key=lambda e: (-e[1], e[0]))]


def champion_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's champion: the finalist with the best mean when its best trials were
    re-checked (while they are still its best: trials since may have passed them), else its
    best trial (an earlier one winning a tie, as `ranked` orders them); None before any
    trial completed."""
    order = ranked(study)
    if not order:
        return None
    record = study.user_attrs.get(FINALISTS_ATTR)
    current = record and record["trials"] == order[:len(record["trials"])]
    number = record["champion"] if current else order[0]
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)
