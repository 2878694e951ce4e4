"""Benchmark 1: the wall time of one medtune trial against plain `keras.fit` of the same model.

Each pair trains the same model (the task's first lab baseline, which is what trial 0 of a
medtune study runs), on the same cached arrays, with the same config, epochs and seed:

- plain: `set_random_seed`, build, compile, `model.fit(unit_range(x), y, validation_data=...)` on
  NumPy arrays, no callbacks: what a hand-written script does;
- medtune: `run_study` of a new one-trial study (stores already created), everything included
  except loading the cached arrays (a plain script loads its data too; benchmark 3 times that).

The pair runs alternately (which side goes first flips every pair) after an untimed one-epoch
warm-up of each. The ratio is medtune / plain. medtune's extra time is broken down by timing
its parts from outside (`bench.probe`): callbacks, MLflow calls, artifacts, Optuna's sampler and
storage, study set-up and end; what no probe covers is reported as unattributed.
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
from bench.probe import Probe, hooks, project_subclasses
from search.records import facts  # (imports only Optuna)

NAME = "overhead"
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"tasks": ["lenet_skin"], "pairs": 1, "epochs": 1, "image_size": 32,
              "warmup": False},
    "quick": {"tasks": ["lenet_skin", "vgg_skin"], "pairs": 3, "epochs": 10, "image_size": 64,
              "warmup": True},
    "full": {"tasks": ["lenet_skin", "vgg_skin"], "pairs": 5, "epochs": 10, "image_size": 64,
             "warmup": True},
}
TARGET = 1.05  # the goal for trials of 10+ epochs

# Probe label -> the category. Training rows compare medtune's own training with plain.
GROUPS = {
    "training: build + compile (vs plain)": "training itself",
    "training: input data (tf.data vs arrays)": "training itself",
    "training: fit loop (vs plain fit)": "training itself",
    "pruning callback": "pruning callback",
    "per-epoch MLflow logging": "per-epoch MLflow logging",
    "model summary": "per-trial artifacts",
    "predict + confusion matrix + ROC": "per-trial artifacts",
    "learning curves + closing the trial's run": "per-trial artifacts",
    "early stopping (best-weight copies)": "other callbacks",
    "NaN check per batch (TerminateOnNaN)": "other callbacks",
    "medtune's callbacks (epoch lines, checkpoints, ...)": "other callbacks",
    "trial's MLflow run (create, params, tags)": "study bookkeeping",
    "Optuna sampler": "study bookkeeping",
    "Optuna storage": "study bookkeeping",
    "study set-up (study, parent run, manifest)": "study bookkeeping",
    "study end (summary, trials table, Optuna plots)": "study bookkeeping",
    "Keras clear_session (with its own gc)": "study bookkeeping",
    "gc.collect (medtune's, Optuna's gc_after_trial)": "study bookkeeping",
    "unattributed (Optuna's loop, Python)": "unattributed",
}
ONCE_PER_STUDY = ("study set-up (study, parent run, manifest)",
                  "study end (summary, trials table, Optuna plots)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", help="comma-separated tasks (default: lenet_skin,vgg_skin)")
    p.add_argument("--pairs", type=int, help="timed (plain, medtune) pairs per task")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--data-dir", help="default: the embedded synthetic set (tiny one in --smoke)")
    p.add_argument("--seed", type=int, default=0)


def instrument(probe: Probe) -> None:
    """Wrap the parts of a study whose cost the breakdown reports (library-level or class-level
    targets where possible, so medtune's internal moves do not lose a timer)."""
    import keras
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna_integration import KerasPruningCallback

    import datasets.loader
    import models
    import search.engines.optuna_engine  # noqa: F401  (loads every callback class medtune defines)
    import search.study.run
    import search.tracking.manifest
    from search.tracking.study_run import StudyTracker
    from search.tracking.trial_run import TrialRun
    from search.trial.problems import Classification, Segmentation

    probe.wrap(keras.Model, "fit", "fit", container=True)
    probe.wrap(datasets.loader, "load", "data load (cached)")
    probe.wrap_everywhere(models, "build_model", "model build + compile")
    probe.wrap(keras.Model, "compile", "model build + compile")
    for kind in (Classification, Segmentation):
        probe.wrap(kind, "datasets", "tf.data pipelines")
        probe.wrap(kind, "log_artifacts", "predict + confusion matrix + ROC")
    probe.wrap(KerasPruningCallback, "on_epoch_end", "pruning callback")
    probe.wrap(TrialRun, "log_epoch", "per-epoch MLflow logging")
    probe.wrap_all(keras.callbacks.EarlyStopping, ["on_train_begin", "on_epoch_end",
                                                  "on_train_end"],
                   "early stopping (best-weight copies)")
    probe.wrap(keras.callbacks.TerminateOnNaN, "on_batch_end",
               "NaN check per batch (TerminateOnNaN)")
    for kind in project_subclasses(keras.callbacks.Callback, exclude=("TrialHistory",)):
        probe.wrap_all(kind, hooks(kind), "medtune's callbacks (epoch lines, checkpoints, ...)")
    probe.wrap(keras.Model, "summary", "model summary")
    probe.wrap(TrialRun, "log_text", "model summary")
    probe.wrap(StudyTracker, "_finish", "learning curves + closing the trial's run")
    probe.wrap_all(MlflowClient, ["create_run", "log_batch", "set_terminated", "set_tag",
                                  "log_text", "log_figure", "log_dict", "get_run"],
                   "trial's MLflow run (create, params, tags)")
    probe.wrap_all(optuna.samplers.TPESampler, ["infer_relative_search_space", "sample_relative",
                                                "sample_independent", "before_trial",
                                                "after_trial"], "Optuna sampler")
    probe.wrap_all(optuna.storages.RDBStorage, public_methods(optuna.storages.RDBStorage),
                   "Optuna storage")
    probe.wrap(search.study.run, "open_study", "study set-up (study, parent run, manifest)")
    probe.wrap_everywhere(search.tracking.manifest, "manifest",
                          "study set-up (study, parent run, manifest)")
    probe.wrap_all(StudyTracker, ["open", "log_text", "log_dict"],
                   "study set-up (study, parent run, manifest)")
    probe.wrap_all(StudyTracker, ["summarize", "close"],
                   "study end (summary, trials table, Optuna plots)")
    probe.wrap(keras.backend, "clear_session", "Keras clear_session (with its own gc)")
    probe.wrap(gc, "collect", "gc.collect (medtune's, Optuna's gc_after_trial)")


def public_methods(kind: type) -> list[str]:
    return [n for n, v in vars(kind).items() if callable(v) and not n.startswith("_")]


def baseline_params(spec) -> dict[str, Any]:
    """Trial 0 of a study runs the first lab baseline (enqueued first)."""
    from search.spec import study_files

    return study_files.baseline_params(spec.baselines[0])


def plain_fit(spec, problem, config: dict, epochs: int, seed: int) -> dict[str, float]:
    """A hand-written Keras script: same model, arrays, config, epochs and seed; no callbacks."""
    import keras

    from datasets.images import unit_range
    from models import build_model, settings_from
    from models.losses import encode_targets
    from search.trial.training import compile_model

    data = problem.data
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = build_model(spec.model, **settings_from(spec.model, config))
    compile_model(model, config, *problem.loss_and_metrics(config))
    built = time.perf_counter()
    x = unit_range(data.x_train[..., None])
    y = encode_targets(data.y_train, config["loss"], data.n_classes)
    val = (unit_range(data.x_val[..., None]),
           encode_targets(data.y_val, config["loss"], data.n_classes))
    prepared = time.perf_counter()
    model.fit(x, y, batch_size=config["batch_size"], epochs=epochs, validation_data=val,
              shuffle=True, verbose=0)
    done = time.perf_counter()
    keras.backend.clear_session()  # untimed: the next run starts from the same state
    gc.collect()
    return {"build": built - started, "data": prepared - built, "fit": done - prepared,
            "total": done - started}


def medtune_trial(spec, settings, tracking_uri: str) -> dict[str, float]:
    """One one-trial study; the probe's parts in seconds, and the total without the data load."""
    from search.study.run import run_study

    with Probe() as probe, contextlib.redirect_stdout(io.StringIO()):
        instrument(probe)
        started = time.perf_counter()
        study, _ = run_study(spec, settings, tracking_uri=tracking_uri,
                             experiment="bench-overhead", verbose=True, show_progress_bar=False)
        wall = time.perf_counter() - started
    (trial,) = [t for t in study.trials if t.state.is_finished()]  # the rest wait in the queue
    if trial.state.name != "COMPLETE":
        raise RuntimeError(f"{settings.study_name}: the trial ended {trial.state.name}: "
                           f"{facts(trial).fail_reason}")
    parts = probe.snapshot()
    parts["wall"] = wall
    parts["total"] = wall - parts.get("data load (cached)", 0.0)
    parts["params"] = trial.params  # type: ignore[assignment]
    return parts


def breakdown(plain: dict[str, float], mt: dict[str, float]) -> dict[str, float]:
    """Seconds medtune spent beyond plain, by row of `GROUPS`."""
    get = mt.get
    rows = {
        "training: build + compile (vs plain)": get("model build + compile", 0.0) - plain["build"],
        "training: input data (tf.data vs arrays)": get("tf.data pipelines", 0.0) - plain["data"],
        # fit without whatever timed part ran inside it (callbacks, summary, ...)
        "training: fit loop (vs plain fit)": get("fit", 0.0) - get("inner:fit", 0.0)
        - plain["fit"],
    }
    for label in GROUPS:
        if label not in rows and not label.startswith("unattributed"):
            rows[label] = get(label, 0.0)
    rows["unattributed (Optuna's loop, Python)"] = (
        mt["total"] - plain["total"] - sum(rows.values())
    )
    return rows


def run(args: argparse.Namespace) -> common.Result:
    import optuna
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from datasets import loader
    from search.spec.settings import resolve_settings
    from search.spec.study_files import load_spec
    from search.trial.problems import make_problem

    common.quiet_libraries()
    budget = common.chosen_budget(args, BUDGETS, ("pairs", "epochs", "image_size"))
    if args.tasks:
        budget["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    data_dir = args.data_dir
    if data_dir is None and args.mode == "smoke":
        data_dir = str(common.synthetic_skin(args.work_dir / "data", n_train=24, n_val=12,
                                             size=32, seed=1))
    epochs, size = budget["epochs"], budget["image_size"]

    pair_rows, part_rows, notes = [], [], []
    for task in budget["tasks"]:
        spec = common.every_epoch(load_spec(task))
        # decodes or warms the cache: untimed
        data = loader.load(spec.data, data_dir, size, split=spec.split, synthetic=spec.synthetic)
        problem = make_problem(spec, data)
        params = baseline_params(spec)
        config = problem.config(params)
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp, \
                common.scoped_env(MEDTUNE_CHECKPOINTS=str(Path(tmp) / "checkpoints")):
            optuna_url = common.sqlite_url(Path(tmp) / "optuna.db")
            mlflow_url = common.sqlite_url(Path(tmp) / "mlflow.db")
            started = time.perf_counter()
            MlflowClient(mlflow_url).search_experiments()
            optuna.storages.RDBStorage(optuna_url)
            stores = time.perf_counter() - started

            def settings(name: str, n_epochs: int, seed: int, task: str = task, spec=spec,
                         optuna_url: str = optuna_url):
                return resolve_settings(spec, study_name=f"{task}-{name}", storage=optuna_url,
                                        data_dir=data_dir, seed=seed, n_trials=1, timeout=0,
                                        epochs=n_epochs, image_size=size)

            if budget["warmup"]:  # first-call costs (kernels, plotting) are once per process
                plain_fit(spec, problem, config, 1, args.seed)
                medtune_trial(spec, settings("warmup", 1, args.seed), mlflow_url)
            for i in range(budget["pairs"]):
                seed = args.seed + (i if args.mode == "full" else 0)
                mt_first = i % 2 == 1
                if mt_first:
                    mt = medtune_trial(spec, settings(f"pair{i}", epochs, seed), mlflow_url)
                plain = plain_fit(spec, problem, config, epochs, seed)
                if not mt_first:
                    mt = medtune_trial(spec, settings(f"pair{i}", epochs, seed), mlflow_url)
                if mt.pop("params") != params:
                    notes.append(f"{task}: trial 0 did not run the first baseline's params.")
                per_trial = mt["total"] - sum(mt.get(label, 0.0) for label in ONCE_PER_STUDY)
                pair_rows.append({"task": task, "model": spec.model, "pair": i, "seed": seed,
                                  "first": "medtune" if mt_first else "plain",
                                  "plain_s": plain["total"], "medtune_s": mt["total"],
                                  "ratio": mt["total"] / plain["total"],
                                  "ratio_per_trial": per_trial / plain["total"],
                                  "data_load_s": mt.get("data load (cached)", 0.0)})
                for label, seconds in breakdown(plain, mt).items():
                    part_rows.append({"task": task, "pair": i, "part": label,
                                      "group": GROUPS[label], "seconds": seconds,
                                      "pct_of_plain": 100 * seconds / plain["total"]})
                print(f"{task} pair {i}: plain {plain['total']:.2f} s, medtune "
                      f"{mt['total']:.2f} s, ratio {mt['total'] / plain['total']:.3f}",
                      file=sys.stderr)
        notes.append(f"{task}: creating fresh MLflow and Optuna SQLite stores took {stores:.2f} s "
                     "(once per folder, not per trial; not in the ratio).")
    return summarize(args, budget, data, pd.DataFrame(pair_rows), pd.DataFrame(part_rows), notes)


def summarize(args, budget, data, pairs, parts, notes: list[str]) -> common.Result:
    summary = pairs.groupby(["task", "model"], sort=False).agg(
        pairs=("pair", "count"), plain_median_s=("plain_s", "median"),
        medtune_median_s=("medtune_s", "median"), ratio_median=("ratio", "median"),
        ratio_min=("ratio", "min"), ratio_max=("ratio", "max"),
        ratio_per_trial_median=("ratio_per_trial", "median"),
    ).reset_index()
    summary.insert(2, "epochs", budget["epochs"])
    summary.insert(3, "image_size", budget["image_size"])
    summary["target_met"] = summary["ratio_median"] <= TARGET
    by_part = parts.groupby(["task", "part"], sort=False).agg(
        group=("group", "first"), median_s=("seconds", "median"),
        pct_of_plain=("pct_of_plain", "median"),
    ).reset_index()
    by_group = parts.groupby(["task", "group", "pair"], sort=False)[["seconds", "pct_of_plain"]] \
        .sum().groupby(["task", "group"], sort=False).median().reset_index()
    by_group = by_group.rename(columns={"seconds": "median_s"})

    notes = [
        f"Data: {data.source} ({len(data.y_train)} training, {len(data.y_val)} validation "
        f"images), {budget['image_size']}x{budget['image_size']}; the config is the task's "
        "first lab baseline (trial 0). Ratio = medtune trial / plain `keras.fit`, both without "
        f"the (cached) data load; target: median ratio <= {TARGET} for 10+ epochs. "
        "`ratio_per_trial` leaves out the once-per-study set-up and end (what each further "
        "trial of a longer study costs).",
        "Breakdown: seconds medtune spends beyond plain per trial (median over pairs), timed "
        "from outside by wrapping medtune's and the libraries' functions (`bench/probe.py`); "
        "'training' rows are medtune's own build/compile, tf.data input and fit loop (without "
        "its callbacks) minus plain's; 'unattributed' is the rest of the gap (can be negative: "
        "timing noise).",
        *notes,
    ]
    worst = by_part.sort_values("median_s", ascending=False).groupby("task", sort=False).head(3)
    for task, rows in worst.groupby("task", sort=False):
        ratio = float(summary.loc[summary["task"] == task, "ratio_median"].iloc[0])
        items = "; ".join(f"{r.part} {r.median_s:.2f} s ({r.pct_of_plain:.1f}% of plain)"
                          for r in rows.itertuples())
        notes.append(f"{task}: median ratio {ratio:.3f}; largest extra costs: {items}.")
    metrics = {f"{r.task}.ratio_median": r.ratio_median for r in summary.itertuples()}
    metrics |= {f"{r.task}.ratio_max": r.ratio_max for r in summary.itertuples()}
    return common.Result(
        name=NAME, mode=args.mode, command=args.command,
        tables={"summary": summary, "breakdown_by_category": by_group,
                "breakdown": by_part, "pairs": pairs},
        figures={"breakdown": figure(by_group, summary)},
        metrics=metrics, params={k: v for k, v in budget.items()} | {"seed": args.seed},
        notes=notes, shown=["summary", "breakdown_by_category", "breakdown"],
    )


def figure(by_group, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["task"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = by_group[by_group["task"] == task]
        ax.barh(rows["group"], rows["pct_of_plain"], color="tab:blue")
        ax.axvline(100 * (TARGET - 1), color="tab:red", linestyle="--", label="target (total)")
        ratio = float(summary.loc[summary["task"] == task, "ratio_median"].iloc[0])
        ax.set_title(f"{task}: medtune / plain = {ratio:.3f}")
        ax.set_xlabel("extra time, % of plain keras.fit")
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(common.main(NAME, add_arguments, run, description=__doc__))
