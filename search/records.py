"""What a study and its trials record on themselves (Optuna user attributes) and read back: a
trial's as one typed record (`TrialFacts`: `facts(trial)` reads it, `note(trial, ...)` writes
it), the study's as another (`StudyFacts`: `study_facts`, `note_study`), and the pick they add
up to. Everything above the trial reads them through here, so this module imports no other part
of medtune (no circle can run through it)."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import optuna

TS = optuna.trial.TrialState


@dataclasses.dataclass(frozen=True)
class StudyFacts:
    """What a study records on itself, for a continued study, its other workers, the champion,
    the summary, compare, export, the report and the benchmarks to read back. (Which processes
    share an `mlflow run` run is the joining protocol's own: one attribute per run, so that
    workers never overwrite each other's, in `search.tracking.joining`.)"""

    objective: str | None = None  # what its trials' values are (for readers without its spec)
    settings: dict | None = None  # the data and sizes it ran on: what a continuation must agree on
    study_file: dict | None = None  # the study file as it last ran (`StudySpec.record`)
    parent_run_id: str | None = None  # its MLflow study run (it survives restarts)
    made_by: str | None = None  # the owner id of the process that made it
    test: dict | None = None  # the champion scored once on the test split (`champion.holdout`)
    refit: dict | None = None  # the champion's refit: trial, epochs, value (`champion.refit`)
    finalists: dict | None = None  # the re-check and its champion (`champion.finalists`)


STUDY_KEYS = {"objective": "medtune_objective", "settings": "medtune_settings",
              "study_file": "medtune_study_file", "parent_run_id": "mlflow_parent_run_id",
              "made_by": "medtune_made_by", "test": "medtune_test", "refit": "medtune_refit",
              "finalists": "medtune_finalists"}  # field -> its attribute (older studies' names)


class StudyNoted(Protocol):  # an Optuna study (or FrozenStudy, to read)
    @property
    def user_attrs(self) -> dict[str, Any]: ...


def study_facts(study: StudyNoted) -> StudyFacts:
    """What `study` has recorded on itself, typed (read from its storage on each call)."""
    attrs = study.user_attrs
    return StudyFacts(**{f: attrs[key] for f, key in STUDY_KEYS.items() if key in attrs})


def note_study(study: optuna.Study, **values: Any) -> None:
    """Record `values` (fields of `StudyFacts`) on `study`."""
    if unknown := set(values) - set(STUDY_KEYS):
        raise TypeError(f"not fields of StudyFacts: {', '.join(sorted(unknown))}")
    for field, value in values.items():
        study.set_user_attr(STUDY_KEYS[field], value)


@dataclasses.dataclass(frozen=True)
class TrialFacts:
    """What a trial records on itself as it runs, for the search, the champion, the summary,
    compare, export and the benchmarks to read back. Epochs count from 1, as MLflow's steps do
    (`best_epoch` 3: the third epoch), for every engine; a trial's Optuna steps (its
    intermediate values) are Keras's epoch indices, from 0, for every engine too."""

    run_id: str | None = None  # its MLflow child run
    seed: int | None = None  # the seed it trained with (older studies: none recorded)
    epochs: int | None = None  # its most epochs, where not the study's (Keras Tuner's rungs)
    epochs_run: int | None = None  # the epochs it trained (a retry's include the earlier ones)
    best_epoch: int | None = None  # the epoch whose weights and value it ended on
    baseline: str | None = None  # a lab recipe's note: a lab baseline the study queued
    start: str | None = None  # medtune's first guess's note
    stopped_because: str | None = None  # stuck or collapsed: why it was stopped
    pruned_at_epoch: int | None = None
    fail_reason: str | None = None
    model_id: str | None = None  # its kept model in MLflow (`search.champion.kept`)
    owner: str | None = None  # "host:pid:start" of its process (`runtime.worker.owner_id`)
    retry_of: int | None = None  # the (first) trial this one retries (`engines.recovery`)
    retry_history: tuple[int, ...] = ()  # the trials this retry follows, first to last
    engine: str | None = None  # the engine that ran it, where not Optuna's
    trial_seconds: float | None = None  # a Keras Tuner trial's wall time (Optuna keeps its own)

    def seed_or_number(self, number: int) -> int:
        """Its seed; a study from before seeds were recorded trained trial k with seed k."""
        return number if self.seed is None else self.seed


KEYS = {"run_id": "mlflow_run_id"}  # a field whose attribute has another name (older studies')
FIELDS = {f.name for f in dataclasses.fields(TrialFacts)}


class Noted(Protocol):  # an Optuna trial, or a stand-in that records the same way
    @property
    def user_attrs(self) -> dict[str, Any]: ...
    def set_user_attr(self, key: str, value: Any) -> None: ...


def facts(trial: Noted | optuna.trial.FrozenTrial) -> TrialFacts:
    """What `trial` has recorded on itself, typed."""
    attrs = trial.user_attrs
    found = {name: attrs[KEYS.get(name, name)] for name in FIELDS
             if KEYS.get(name, name) in attrs}
    if "retry_history" in found:
        found["retry_history"] = tuple(found["retry_history"])
    return TrialFacts(**found)


def attr_name(field: str) -> str:
    """The user attribute that holds `field` of `TrialFacts`."""
    if field not in FIELDS:
        raise TypeError(f"{field!r} is not a field of TrialFacts")
    return KEYS.get(field, field)


def attrs(**values: Any) -> dict[str, Any]:
    """`values` (fields of `TrialFacts`) as the user attributes of a trial being made."""
    if unknown := set(values) - FIELDS:
        raise TypeError(f"not fields of TrialFacts: {', '.join(sorted(unknown))}")
    return {KEYS.get(name, name): value for name, value in values.items()}


def note(trial: Noted, **values: Any) -> None:
    """Record `values` (fields of `TrialFacts`) on `trial`."""
    for key, value in attrs(**values).items():
        trial.set_user_attr(key, value)


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
    record = study_facts(study).finalists
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
    return "trial" if model_id == facts(best).model_id else "refit"


def lab_recipe(study: optuna.Study) -> int | None:
    """The number of the study's first lab baseline (the lab's first recipe), if it has one:
    its model is kept beside the best `top_k` as the bar the report sets the champion against."""
    return min((t.number for t in study.get_trials(deepcopy=False) if facts(t).baseline),
               default=None)
