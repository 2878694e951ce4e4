"""Comparing studies: the best trials of each, side by side, as a table and a plot."""

from __future__ import annotations

import optuna
import pandas as pd

from search.records import facts, study_facts
from search.runtime.storages import open_storage
from search.runtime.urls import mask_password

TS = optuna.trial.TrialState


def best_trials(storage: str, studies: list[str], top: int = 3) -> pd.DataFrame:
    """The `top` completed trials of each study, best first: value, epochs, params, run id."""
    rows = []
    for name in studies:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(storage))
        except KeyError:
            known = ", ".join(optuna.get_all_study_names(open_storage(storage))) or "none"
            raise ValueError(f"no study {name!r} in {mask_password(storage)}; "
                             f"studies there: {known}") from None
        record = study_facts(study)
        objective = record.objective or "value"
        done = sorted(study.get_trials(deepcopy=False, states=(TS.COMPLETE,)),
                      key=lambda t: t.value, reverse=True)
        test = record.test or {}  # the champion's, judged once
        recheck = (record.finalists or {}).get("results", {})
        for rank, trial in enumerate(done[:top], start=1):
            again = recheck.get(str(trial.number))
            score = test.get(f"test_{objective.removeprefix('val_')}")
            rows.append({
                "study": name, "rank": rank, "trial": trial.number, "objective": objective,
                "value": round(trial.value, 4),
                # re-checked finalists: mean ± SD over the trial's runs, and how many
                "recheck": f"{again['mean']:.4f} ± {again['sd']:.4f} ({again['n']})" if again
                else "",
                "test": round(score, 4) if score is not None and test["trial"] == trial.number
                else "",
                "best_epoch": facts(trial).best_epoch,
                "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
                "params": ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items()),
                "mlflow_run_id": facts(trial).run_id,
            })
    return pd.DataFrame(rows)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (no extra dependency for it)."""
    columns = [c for c in table.columns if c != "mlflow_run_id"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for _, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def compare_command(studies: str, storage: str | None, top: int, experiment: str,
                    tracking_uri: str | None) -> int:
    """`medtune compare`: the studies' best trials as a table, printed and logged to a run."""
    from search.spec.settings import DEFAULT_STORAGE
    from search.tracking import plots
    from search.tracking.runs import log_comparison

    names = [n for n in studies.replace(",", " ").split() if n]
    table = best_trials(storage or DEFAULT_STORAGE, names, top=top)
    if table.empty:
        raise ValueError(f"no completed trials in {', '.join(names)} yet: run `medtune tune` first")
    text = markdown(table)
    print(text)
    run_id = log_comparison(
        f"compare {' vs '.join(names)}",
        {"best_trials.md": text, "best_trials.csv": table.to_csv(index=False)},
        plots.best_trials_bars(table), experiment=experiment, tracking_uri=tracking_uri,
        params={"studies": " ".join(names), "top": top,
                "storage": mask_password(storage or DEFAULT_STORAGE)},
    )
    print(f"logged to MLflow run {run_id}")
    return 0
