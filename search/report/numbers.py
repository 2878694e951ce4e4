"""The report's numbers, gathered from a study (`Report`, one `Row` per model it shows); its
sentences are `search.report.sentences`, its page `search.report.page`."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
from mlflow.tracking import MlflowClient

from search.records import (
    champion_trial,
    current_finalists,
    ensemble_id,
    facts,
    lab_recipe,
    study_facts,
)
from search.tracking import plots

TS = optuna.trial.TrialState
Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval
SETTINGS = ("budget", "seed", "image_size", "epochs", "epoch_budget", "n_trials", "timeout",
            "engine", "finalists", "refit_epochs", "data_dir")  # the study run's params shown
UNSET = ("None", "", "''")  # how a setting that was not given reads
CHAMPION_PLOTS = ("confusion_matrix", "roc_curve", "gradcam", "mask_overlays")


@dataclass
class Row:
    """One model of the results table."""

    label: str  # "lab recipe: ...", "champion", "finalist"
    trial: int
    value: float  # validation, the objective (the finalists' mean where re-checked)
    sd: float | None  # over `runs` re-checked runs, else None
    runs: int
    test: float | None  # test-split accuracy, reported only (never used to choose)
    n_test: int
    epochs: int
    seconds: float

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.test, self.n_test) if self.test is not None and self.n_test else None


@dataclass
class Report:
    """What a study's report says, gathered once; `search.report.page` renders it."""

    study: str
    task: str
    description: str
    objective: str
    kind: str  # "classification" or "segmentation"
    data: dict[str, Any]  # source, counts per split (and class), the constant guess
    settings: dict[str, Any]  # budget, seed, image size, epochs, engine, ...
    code: str  # the commit it ran at
    command: str  # the one command that reproduces the study
    rows: list[Row]
    diff: list[tuple[str, Any, Any]]  # (param, lab recipe's, champion's)
    importances: dict[str, float]
    overfit: float | None  # the champion's train - validation gap at its best epoch
    finalists: dict[str, Any] | None
    curves: dict[str, list[float]] = field(default_factory=dict)  # the champion's, per metric
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG
    sentences: list[str] = field(default_factory=list)


def wilson(p: float, n: int) -> tuple[float, float]:
    """Wilson's 95 % score interval for a proportion `p` of `n`."""
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n ** 2)) / (1 + Z95 ** 2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def collect(study: optuna.Study, tracking_uri: str | None, *, spec=None, problem=None
            ) -> Report:
    """The report of `study`; `spec` and `problem` where the caller has them (a study that
    just ended), else read from the study's record and loaded again (cached)."""
    from search.report.sentences import sentences
    from search.study.run import prepare_problem, recorded_spec

    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    record = study_facts(study)
    recorded = record.settings
    spec = spec or recorded_spec(study)
    if problem is None:  # the study's data as its trials had it (a transfer head's features)
        problem = prepare_problem(spec, recorded.get("data_dir"), recorded["image_size"],
                                  recorded.get("base"), client.tracking_uri)[0]
    parent = client.get_run(record.parent_run_id)
    params = parent.data.params
    manifest = _manifest(client, parent.info.run_id)
    # The settings as resolved (the manifest's): under `mlflow run` the run's params are the
    # entry point's, '' where not given.
    settings = {k: str(v) for k, v in (manifest.get("settings") or params).items()
                if k in SETTINGS and str(v) not in UNSET}
    champion = champion_trial(study)
    if champion is None:
        raise ValueError(f"study {study.study_name!r} has no completed trial yet: let `medtune "
                         "tune` finish one, then write its report")
    lab = lab_recipe(study)
    lab_trial = study.trials[lab] if lab is not None else None
    curves = {"lab recipe": _history(client, lab_trial) if lab_trial else {},
              f"champion (#{champion.number})": _history(client, champion)}
    report = Report(
        study=study.study_name, task=spec.name, description=spec.description,
        objective=spec.objective, kind=problem.kind, data=_data(problem, params),
        settings=settings, code=_code(parent, manifest), command=_command(spec.name, settings),
        rows=_rows(spec, problem, study, champion, lab_trial, client.tracking_uri),
        diff=_diff(lab_trial, champion), importances=_importances(study),
        overfit=_gap(curves[f"champion (#{champion.number})"], champion, spec.objective),
        finalists=current_finalists(study), curves=curves[f"champion (#{champion.number})"])
    report.figures = _figures(client, study, spec, problem, champion, curves,
                              report.importances)
    report.sentences = sentences(report)
    return report


def _data(problem, params: dict[str, str]) -> dict[str, Any]:
    """Counts per split (per class for a classifier) and what a constant guess scores."""
    data = problem.data
    splits = {"train": data.y_train, "val": data.y_val,
              **({"test": data.extra["y_test"]} if "y_test" in data.extra else {})}
    if problem.kind == "segmentation":
        counts = {s: {"images": len(y), "foreground share": round(float(y.mean()), 3)}
                  for s, y in splits.items()}
    else:
        counts = {s: {name: int((y == c).sum()) for c, name in enumerate(data.class_names)}
                  for s, y in splits.items()}
    return {"source": params.get("data_source", data.source), "counts": counts,
            "chance": problem.chance(), "majority": problem.majority_rates()}


def _manifest(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The study run's `manifest.json` (`search.tracking.manifest`); {} for an older run without
    one."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(client.download_artifacts(run_id, "manifest.json", tmp))
                              .read_text())
    except Exception:  # noqa: BLE001 (missing, or a store out of reach: the report goes on)
        return {}


def _code(run, manifest: dict[str, Any]) -> str:
    """The commit the study ran at: `mlflow run`'s tag, else the manifest's."""
    git = manifest.get("git") or {}
    commit = run.data.tags.get("mlflow.source.git.commit") or git.get("commit")
    if not commit:
        return "unknown"
    return commit + (" (with uncommitted changes)" if git.get("dirty") else "")


def _command(task: str, settings: dict[str, str]) -> str:
    """`medtune tune` with the settings the study ran with (those that were set)."""
    options = {"budget": "--budget", "seed": "--seed", "n_trials": "--n-trials",
               "epochs": "--epochs", "epoch_budget": "--epoch-budget", "timeout": "--timeout",
               "image_size": "--image-size", "data_dir": "--data-dir", "engine": "--engine",
               "finalists": "--finalists", "refit_epochs": "--refit-epochs"}
    parts = ["medtune tune", f"--task {task}"]
    parts += [f"{flag} {settings[key]}" for key, flag in options.items()
              if key in settings and (settings[key] != "0" or key == "seed")]
    return " ".join(parts)


def _rows(spec, problem, study: optuna.Study, champion, lab_trial, tracking_uri: str
          ) -> list[Row]:
    """The lab recipe and the champion (and the other finalists), each with its test score."""
    from search.champion.holdout import test_scores

    record = current_finalists(study)
    test = study_facts(study).test or {}
    has_test = "x_test" in problem.data.extra
    n_test = len(problem.data.extra["y_test"]) if has_test else 0

    def row(label: str, trial, value: float | None = None, sd=None, runs=1, score=None) -> Row:
        if score is None and has_test and facts(trial).model_id:
            try:  # reported beside the champion, never used to choose
                score = test_scores(spec, problem, trial.params, facts(trial).model_id,
                                    tracking_uri).get("accuracy")
            except ValueError:
                score = None
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if (
            trial.datetime_complete and trial.datetime_start) else math.nan
        return Row(label, trial.number, trial.value if value is None else value, sd, runs,
                   score, n_test, facts(trial).epochs_run or 0, seconds)

    rows = []
    if lab_trial is not None and lab_trial.state == TS.COMPLETE:
        rows.append(row(f"lab recipe ({facts(lab_trial).baseline})", lab_trial))
    elif lab_trial is not None:  # stopped: its epochs and time, no value to compare
        rows.append(Row(f"lab recipe ({facts(lab_trial).baseline}), "
                        f"{lab_trial.state.name.lower()}", lab_trial.number, math.nan, None, 1,
                        None, n_test, facts(lab_trial).epochs_run or 0, math.nan))
    judged = test.get("test_accuracy")
    if record:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for number in record["trials"]:
            r = record["results"][str(number)]
            mine = number == champion.number and not ensemble_id(study)
            rows.append(row("champion" if mine else "finalist", trials[number], r["mean"],
                            r["sd"], r["n"], judged if mine else None))
        if ensemble_id(study):
            e = record["ensemble"]
            rows.append(Row("champion: the finalists' ensemble", champion.number, e["mean"],
                            e["sd"], e["n"], judged, n_test, 0, math.nan))
    else:
        rows.append(row("champion", champion, score=judged))
    return rows


def _diff(lab_trial, champion) -> list[tuple[str, Any, Any]]:
    """The settings the search changed from the lab's first recipe."""
    if lab_trial is None:
        return [(k, None, v) for k, v in champion.params.items()]
    keys = list(dict.fromkeys([*lab_trial.params, *champion.params]))
    return [(k, lab_trial.params.get(k), champion.params.get(k)) for k in keys
            if lab_trial.params.get(k) != champion.params.get(k)]


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's fANOVA importances; {} where the study is too small to say."""
    try:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def _history(client: MlflowClient, trial) -> dict[str, list[float]]:
    run_id = facts(trial).run_id
    if not run_id:
        return {}
    keys = [k for k in client.get_run(run_id).data.metrics
            if "." not in k and k != "learning_rate" and not k.startswith("system/")]
    found = {}
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if len(points) > 1:
            found[key] = [m.value for m in points]
    return found


def _gap(history: dict[str, list[float]], champion, objective: str) -> float | None:
    """Training minus validation value of the objective's metric at the champion's best
    epoch: how far it overfits."""
    name = objective.removeprefix("val_")
    epoch = facts(champion).best_epoch
    if not epoch or name not in history or objective not in history:
        return None
    i = min(epoch, len(history[name])) - 1
    return history[name][i] - history[objective][i]


def _figures(client: MlflowClient, study: optuna.Study, spec, problem, champion,
             curves: dict[str, dict[str, list[float]]], importances: dict[str, float]
             ) -> dict[str, bytes]:
    import optuna.visualization.matplotlib as ovm

    figures = {}
    figures["learning_curves"] = plots.png(plots.shared_curves(
        {k: v for k, v in curves.items() if v}, spec.objective, problem.chance()))
    figures["history"] = plots.png(plots.study_history(study))
    if len(importances) >= 2:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's plots are "experimental"
            axes = ovm.plot_slice(study, params=list(importances)[:2])
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(10, 4)
        figures["slice"] = plots.png(figure)
    run_id = facts(champion).run_id
    if run_id:
        logged = {a.path for a in client.list_artifacts(run_id, "plots")}
        for name in CHAMPION_PLOTS:
            if f"plots/{name}.png" in logged:
                path = client.download_artifacts(run_id, f"plots/{name}.png")
                with open(path, "rb") as file:
                    figures[name] = file.read()
    if recheck := current_finalists(study):
        figures["finalists"] = plots.png(plots.finalists(recheck, spec.objective))
    return figures
