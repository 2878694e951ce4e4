"""What a study records on itself and reads back: the names of its user attributes and the
pick they add up to. Everything above the trial reads the champion through here, so this
module imports no other part of medtune (no circle can run through it)."""

from __future__ import annotations

import optuna

TS = optuna.trial.TrialState
# study: the champion scored once on the test split
TEST_ATTR = "medtune_test"
# study: the champion's refit (`search.champion.refit`): trial, epochs, values
REFIT_ATTR = "medtune_refit"
# study: the re-check and its champion (`search.champion.finalists`)
FINALISTS_ATTR = "medtune_finalists"
# trial: the id of its kept model in MLflow (`search.champion.kept`)
MODEL_ATTR = "model_id"
# trial: "host:pid:start" of the process running it (`search.runtime.worker.owner_id`)
OWNER_ATTR = "owner"
# trial: the number of the (first) trial that this one retries (`search.engines.recovery`)
RETRY_OF = "retry_of"


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
    record = current_finalists(study, order)
    number = record["champion"] if record else order[0]
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def current_finalists(study: optuna.Study, order: list[int] | None = None) -> dict | None:
    """The study's finalists record while its trials are still the study's best (`order`:
    `ranked(study)`, if known), else None."""
    record = study.user_attrs.get(FINALISTS_ATTR)
    order = ranked(study) if order is None else order
    return record if record and record["trials"] == order[:len(record["trials"])] else None


def ensemble_id(study: optuna.Study) -> str | None:
    """The kept ensemble's model id while the ensemble is the champion
    (`search.champion.ensemble`)."""
    ensemble = (current_finalists(study) or {}).get("ensemble") or {}
    return ensemble.get("model_id") if ensemble.get("chosen") else None


def model_kind(study: optuna.Study, best: optuna.trial.FrozenTrial, model_id: str | None) -> str:
    """Which champion `model_id` is: the finalists' "ensemble", the `best` "trial"'s own
    model, or its "refit"."""
    if model_id is not None and model_id == ensemble_id(study):
        return "ensemble"
    return "trial" if model_id == best.user_attrs.get(MODEL_ATTR) else "refit"


def lab_recipe(study: optuna.Study) -> int | None:
    """The number of the study's first lab baseline (the lab's first recipe), if it has one:
    its model is kept beside the best `top_k` as the bar the report sets the champion against."""
    return min((t.number for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("baseline")), default=None)


def retried_from(trial: optuna.Trial) -> int | None:
    """The number of the (first) trial that this one retries, if it is a retry."""
    return trial.user_attrs.get(RETRY_OF)
