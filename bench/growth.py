"""Benchmark 5: does a trial cost more late in a long study than early on?

One study of many tiny trials (LeNet, 2 epochs, 32x32, a small synthetic skin set) against
SQLite stores in a temporary folder. Each trial's wall time (from the previous trial's end to
its own, so Optuna's sampling and bookkeeping are in it) is split by timing medtune's and the
libraries' functions from outside (`bench.probe`): training (`fit` without medtune's
callbacks), Optuna's sampler, Optuna's storage, the pruning callback, MLflow calls (the
per-epoch ones apart), plots, predict, Keras session reset + gc, other. Resident memory is
read after every trial. The first and last trials are compared (medians), and each part's
slope over the trials after TPE's random start-up is fitted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.probe import Probe, hooks, project_subclasses, rss_mib

NAME = "growth"
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"n_trials": 2, "window": 1, "n_train": 24, "n_val": 12},
    "quick": {"n_trials": 60, "window": 10, "n_train": 64, "n_val": 32},
    "full": {"n_trials": 200, "window": 10, "n_train": 64, "n_val": 32},
}
PARTS = {  # column -> what it is
    "training_s": "fit, without medtune's callbacks and MLflow calls in it",
    "sampler_s": "Optuna TPE sampler",
    "storage_s": "Optuna storage (outside sampler and pruning)",
    "pruning_s": "pruning callback (report, should_prune)",
    "callbacks_s": "medtune's other callbacks (epoch lines, checkpoints, ...)",
    "epoch_logging_s": "per-epoch MLflow logging",
    "mlflow_s": "other MLflow calls (runs, params, tags, figures)",
    "plots_s": "plots (matplotlib)",
    "predict_s": "predict for the confusion matrix / ROC",
    "reset_gc_s": "Keras clear_session + gc.collect",
    "other_s": "the rest (build, compile, Optuna's loop, ...)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="lenet_skin")
    p.add_argument("--n-trials", type=int)
    p.add_argument("--window", type=int, help="trials compared at the start and the end")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)


def instrument(probe: Probe) -> None:
    import keras
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna_integration import KerasPruningCallback

    import search.engines.optuna_engine  # noqa: F401  (loads every callback class medtune defines)
    import search.tracking.plots
    from search.tracking.trial_run import TrialRun

    probe.wrap(keras.Model, "fit", "fit", container=True)
    probe.wrap_all(optuna.samplers.TPESampler, ["infer_relative_search_space", "sample_relative",
                                                "sample_independent", "before_trial",
                                                "after_trial"], "sampler_s")
    probe.wrap_all(optuna.storages.RDBStorage,
                   [n for n, v in vars(optuna.storages.RDBStorage).items()
                    if callable(v) and not n.startswith("_")], "storage_s")
    probe.wrap(KerasPruningCallback, "on_epoch_end", "pruning_s")
    probe.wrap(TrialRun, "log_epoch", "epoch_logging_s")
    for kind in project_subclasses(keras.callbacks.Callback, exclude=("TrialHistory",)):
        probe.wrap_all(kind, hooks(kind), "callbacks_s")
    probe.wrap_all(MlflowClient, ["create_run", "log_batch", "set_terminated", "set_tag",
                                  "log_text", "log_figure", "log_dict", "get_run"], "mlflow_s")
    for name in ("learning_curves", "confusion_matrix", "roc_curve"):
        probe.wrap_everywhere(search.tracking.plots, name, "plots_s")
    probe.wrap(keras.Model, "predict", "predict_s")
    probe.wrap(keras.backend, "clear_session", "reset_gc_s")
    probe.wrap(gc, "collect", "reset_gc_s")


def run(args: argparse.Namespace) -> common.Result:
    import optuna

    import search.engines.optuna_engine
    import search.spec.settings
    import search.study.run
    from search.spec.study_files import load_spec

    common.quiet_libraries()
    budget = dict(BUDGETS[args.mode])
    budget["n_trials"] = args.n_trials or budget["n_trials"]
    budget["window"] = min(args.window or budget["window"], budget["n_trials"] // 2)
    data_dir = common.synthetic_skin(args.work_dir / "data", n_train=budget["n_train"],
                                     n_val=budget["n_val"], size=32, seed=1)
    spec = load_spec(args.task)
    rows: list[dict[str, Any]] = []
    marks = {"last": 0.0, "totals": {}}

    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp, Probe() as probe, \
            common.scoped_env(MEDTUNE_CHECKPOINTS=str(Path(tmp) / "checkpoints")):
        instrument(probe)
        settings = search.spec.settings.resolve_settings(
            spec, study_name=f"growth-{args.task}", storage=common.sqlite_url(Path(tmp) / "o.db"),
            data_dir=str(data_dir), seed=args.seed, n_trials=budget["n_trials"], timeout=0,
            epochs=args.epochs, image_size=32,
        )
        make_objective = search.engines.optuna_engine.make_objective

        def recording_objective(*a: Any, **k: Any):
            objective = make_objective(*a, **k)

            def timed(trial: optuna.Trial) -> float:
                try:
                    return objective(trial)
                finally:  # pruned and failed trials too
                    rows.append(trial_row(trial.number, probe, marks))

            marks["last"] = time.perf_counter()  # the study starts its first trial next
            marks["totals"] = probe.snapshot()
            return timed

        search.engines.optuna_engine.make_objective = recording_objective
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                study, _ = search.study.run.run_study(
                    spec, settings, tracking_uri=common.sqlite_url(Path(tmp) / "m.db"),
                    experiment="bench-growth", verbose=True, show_progress_bar=False,
                )
        finally:
            search.engines.optuna_engine.make_objective = make_objective
        states = {t.number: t.state.name.lower() for t in study.trials}
    for row in rows:
        row["state"] = states.get(row["trial"], "?")
    return summarize(args, budget, rows, spec)


def trial_row(number: int, probe: Probe, marks: dict) -> dict[str, Any]:
    """This trial's seconds per part: the probe's totals now minus at the previous trial's end."""
    now, totals = time.perf_counter(), probe.snapshot()
    delta = {k: v - marks["totals"].get(k, 0.0) for k, v in totals.items()}
    wall = now - marks["last"]
    marks["last"], marks["totals"] = now, totals
    # fit without the timed parts inside it (pruning, logging); other callbacks count as training
    row: dict[str, Any] = {"trial": number, "wall_s": wall,
                           "training_s": delta.get("fit", 0.0) - delta.get("inner:fit", 0.0)}
    for part in PARTS:
        if part not in ("training_s", "other_s"):
            row[part] = delta.get(part, 0.0)
    row["other_s"] = wall - sum(row[p] for p in PARTS if p in row)
    row["outside_fit_s"] = wall - row["training_s"]
    row["rss_mib"] = rss_mib()
    return row


def slope_per_100(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope, per 100 trials."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx \
        else float("nan")


def summarize(args, budget: dict, rows: list[dict], spec) -> common.Result:
    import pandas as pd

    trials = pd.DataFrame(rows)
    w, n = budget["window"], len(trials)
    first, last = trials.iloc[:w], trials.iloc[-w:]
    after_startup = trials[trials["trial"] >= spec.sampler.get("n_startup_trials", 10)]
    window_rows = []
    for column, label in [("outside_fit_s", "outside fit (all parts below but training)"),
                          ("wall_s", "whole trial"), *PARTS.items()]:
        early, late = first[column].median(), last[column].median()
        window_rows.append({
            "part": label, f"trials_1_{w}_ms": 1000 * early,
            f"trials_{n - w + 1}_{n}_ms": 1000 * late,
            "late_minus_early_ms": 1000 * (late - early),
            "slope_ms_per_100_trials": 1000 * slope_per_100(
                list(after_startup["trial"]), list(after_startup[column])),
        })
    windows = pd.DataFrame(window_rows)
    rss = trials["rss_mib"]
    second_half = trials.iloc[n // 2:]
    memory = pd.DataFrame([{
        "rss_after_trial_1_mib": rss.iloc[0], f"rss_after_trial_{w}_mib": rss.iloc[w - 1],
        f"rss_after_trial_{n // 2}_mib": rss.iloc[n // 2 - 1], f"rss_after_trial_{n}_mib":
        rss.iloc[-1], "slope_second_half_mib_per_100_trials": slope_per_100(
            list(second_half["trial"]), list(second_half["rss_mib"])),
    }])
    outside = windows.iloc[0]
    early, late = outside[f"trials_1_{w}_ms"], outside[f"trials_{n - w + 1}_{n}_ms"]
    growing = windows.iloc[2:].sort_values("late_minus_early_ms", ascending=False).head(3)
    notes = [
        f"{n} trials of {spec.name} ({budget['n_train']} training, {budget['n_val']} validation "
        f"images, 32x32, {args.epochs} epochs), fresh SQLite stores; sampler {spec.sampler}, "
        f"pruner {spec.pruner}. Medians over the first and last {w} trials; slopes fitted over "
        f"the trials after TPE's {spec.sampler.get('n_startup_trials', 10)} random ones (the "
        "first trials also run the enqueued lab baselines, which TPE does not sample).",
        f"Time outside `fit` per trial: {early:.0f} ms at the start, {late:.0f} ms at the end "
        f"({late / early:.2f}x; {'flat' if late <= 1.2 * early else 'GROWS'}). Most growth: "
        + "; ".join(f"{r.part} {r.late_minus_early_ms:+.0f} ms "
                    f"(slope {r.slope_ms_per_100_trials:+.0f} ms/100 trials)"
                    for r in growing.itertuples()) + ".",
        f"Resident memory: {rss.iloc[0]:.0f} MiB after trial 1, {rss.iloc[-1]:.0f} MiB after "
        f"trial {n} (second-half slope "
        f"{memory['slope_second_half_mib_per_100_trials'].iloc[0]:+.1f} MiB per 100 trials).",
    ]
    by_part = windows.set_index("part")["slope_ms_per_100_trials"]
    if by_part.get(PARTS["sampler_s"], 0) > 20:
        notes.append("TPE's cost grows with the trials it models: a study file can lower it "
                     "with `[sampler] n_ei_candidates` (default 24) or keep `multivariate` off.")
    if by_part.get(PARTS["storage_s"], 0) > 20:
        notes.append("Storage cost grows with the study: a PostgreSQL `--storage` scales better "
                     "than SQLite.")
    notes.append("A long study need not run in one process: re-running the same command with "
                 "a higher `--n-trials` continues it, with fresh memory.")
    metrics = {"outside_fit_early_ms": early, "outside_fit_late_ms": late,
               "rss_first_mib": float(rss.iloc[0]), "rss_last_mib": float(rss.iloc[-1])}
    return common.Result(
        name=NAME, mode=args.mode, command=args.command,
        tables={"windows": windows, "memory": memory, "trials": trials},
        figures={"growth": figure(trials)}, metrics=metrics,
        params={**budget, "task": spec.name, "epochs": args.epochs, "seed": args.seed},
        notes=notes, shown=["windows", "memory"],
    )


def figure(trials):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    smooth = max(1, len(trials) // 20)
    for column in ("outside_fit_s", "sampler_s", "storage_s", "mlflow_s", "pruning_s",
                   "reset_gc_s"):
        left.plot(trials["trial"] + 1,
                  1000 * trials[column].rolling(smooth, min_periods=1).median(),
                  label=column.removesuffix("_s"))
    left.set_xlabel("trial")
    left.set_ylabel(f"ms per trial (rolling median of {smooth})")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(trials["trial"] + 1, trials["rss_mib"], color="tab:red")
    right.set_xlabel("trial")
    right.set_ylabel("resident memory after the trial, MiB")
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(common.main(NAME, add_arguments, run, description=__doc__))
