"""The engines that propose a study's trials, chosen by name like models are.

An engine is a module with `search(job: StudyRun) -> None` that runs trials (each one
`search.trial.run.run_trial`) into the study until its settings say stop. Its module is imported
only when it runs, so Keras Tuner is loaded only for `--engine keras-tuner`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search.spec.settings import DEFAULT_ENGINE, TuneSettings

if TYPE_CHECKING:
    import optuna

    from search.champion.kept import Keeper
    from search.engines.recovery import Recovery
    from search.runtime.worker import MemoryGuard
    from search.spec.study_files import StudySpec
    from search.tracking.study_run import StudyTracker
    from search.trial.problems import Classification, Segmentation


@dataclass(frozen=True)
class Engine:
    name: str
    module: str  # defines `search(job: StudyRun)`
    description: str
    queues_baselines: bool  # the lab baselines run first, judged like any trial
    parallel: bool  # several workers may share its study

    def search(self, job: StudyRun) -> None:
        importlib.import_module(self.module).search(job)

    def describe(self, spec: StudySpec) -> dict[str, Any]:
        """Its sampler and pruner, as the study's manifest records them."""
        return importlib.import_module(self.module).describe(spec)


DEFAULT = DEFAULT_ENGINE
ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("optuna", "search.engines.optuna_engine",
           "Optuna: the study file's sampler and pruner, lab baselines first", True, True),
    Engine("keras-tuner", "search.engines.keras_tuner_engine",
           "Keras Tuner Hyperband (its own study, <task>-keras-tuner)", False, False),
)}


def get_engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}") from None


@dataclass
class StudyRun:
    """What an engine works with: the task, the settings, the open study with its data and
    MLflow run, and this worker's recovery and memory guard."""

    spec: StudySpec
    settings: TuneSettings
    study: optuna.Study
    problem: Classification | Segmentation
    tracker: StudyTracker
    keeper: Keeper  # the study's best trials' models, kept in MLflow
    recovery: Recovery
    guard: MemoryGuard | None = None
    verbose: bool = True
    show_progress_bar: bool = True
