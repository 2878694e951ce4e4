"""The study run's summary: best value and params, counts, the finalists' re-check, the
trials table and Optuna's study plots, refreshed whenever a study ends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import optuna
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from search.records import (
    champion_trial,
    current_finalists,
    ensemble_id,
    facts,
    study_facts,
)
from search.tracking import plots
from search.tracking.runs import now_ms


def summarize(client: MlflowClient, run_id: str, study: optuna.Study) -> None:
    """Best value and params, how many trials completed, were pruned or failed, the trials
    table and Optuna's study plots: refreshed whenever a (continued) study ends."""
    states = [t.state for t in study.trials]
    TS = optuna.trial.TrialState
    metrics = {
        "n_complete": states.count(TS.COMPLETE),
        "n_pruned": states.count(TS.PRUNED),
        "n_failed": states.count(TS.FAIL),
    }
    tags: dict[str, str] = {}
    if metrics["n_complete"]:

        best = champion_trial(study)  # the best trial, or the re-checked finalists' pick
        metrics["best_value"] = best.value
        if recheck := current_finalists(study):  # (trials since may have passed them)
            _log_recheck(client, run_id, study, recheck)
            mine = recheck["results"][str(best.number)]
            metrics |= {"recheck_mean": mine["mean"], "recheck_sd": mine["sd"],
                        "recheck_runs": mine["n"]}
            if ensemble := recheck.get("ensemble"):  # held-in runs, the same as the mean's
                metrics |= {"ensemble_mean": ensemble["mean"], "ensemble_sd": ensemble["sd"]}
                if ensemble_id(study):
                    tags["champion"] = "ensemble"
        tags |= {"best_trial": str(best.number),
                 "best_run_id": facts(best).run_id or ""}
        tags |= {f"best.{k}": str(v) for k, v in best.params.items()}
        record = study_facts(study)
        test = record.test
        if test and test["trial"] == best.number:  # the test split, judged once at the end
            metrics |= {k: v for k, v in test.items() if k.startswith("test_")}
            tags |= {"test_trial": str(test["trial"]), "test_model": test.get("model", "trial")}
        refit = record.refit
        if refit and refit["trial"] == best.number:
            metrics["refit_value"] = refit["value"]
            tags |= {"refit_run_id": refit.get("run_id") or "",
                     "champion": "refit" if refit["champion"] else "trial"}
        client.log_dict(
            run_id,
            {"trial": best.number, "value": best.value, "params": best.params},
            "best_params.json",
        )
    stamp = now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.log_text(
        run_id, plots.trials_table(study).to_csv(index=False), "trials.csv"
    )
    for name, figure in plots.study_figures(study).items():
        client.log_figure(run_id, figure, f"study_plots/{name}.png")
        plt.close(figure)


def _log_recheck(client: MlflowClient, run_id: str, study: optuna.Study,
                 recheck: Mapping[str, Any]) -> None:
    """Each finalist's mean ± SD on its trial's run (the runs table's `trial.*` columns),
    and the plot of first values against means."""
    trials = study.get_trials(deepcopy=False)
    stamp = now_ms()
    for number, result in recheck["results"].items():
        trial_run_id = facts(trials[int(number)]).run_id
        if trial_run_id:
            client.log_batch(trial_run_id, metrics=[
                Metric("trial.recheck_mean", result["mean"], stamp, 0),
                Metric("trial.recheck_sd", result["sd"], stamp, 0),
                Metric("trial.recheck_runs", result["n"], stamp, 0)])
    figure = plots.finalists(recheck, study_facts(study).objective or "value")
    client.log_figure(run_id, figure, "study_plots/finalists.png")
    plt.close(figure)
