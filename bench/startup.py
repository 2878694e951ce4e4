"""Benchmark 3: from launch to the first training batch, on a fresh cache and on a warm one.

A Lab2-layout folder of PNG images (default 1000 at 512x512, written once by the synthetic
skin generator into --work-dir) is tuned with `medtune tune` in a new process
(`bench._first_batch`), which stops at the first training batch. The first study starts with
an empty `$MEDTUNE_CACHE` (decode + resize + cache) and fresh stores; later studies (new
names, same stores and cache) start from the cached arrays. Per launch: interpreter start,
imports (TensorFlow, Keras, Optuna, MLflow), data work (`datasets.loader.load` and the tf.data
set-up), and the rest (stores, MLflow runs, model build and compile, fit set-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

NAME = "startup"
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"n_train": 8, "n_val": 8, "source_size": 64, "sizes": [32], "cached_runs": 1},
    "quick": {"n_train": 800, "n_val": 200, "source_size": 512, "sizes": [64], "cached_runs": 2},
    "full": {"n_train": 800, "n_val": 200, "source_size": 512, "sizes": [64, 128],
             "cached_runs": 3},
}
GOAL_S = 1.0  # cached data work for 1000 images
PHASES = ("interpreter_s", "imports_s", "data_work_s", "other_setup_s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="lenet_skin", help="a task on skin data (default lenet_skin)")
    p.add_argument("--sizes", help="comma-separated training image sizes (default: the mode's)")
    p.add_argument("--cached-runs", type=int, help="launches on the warm cache per size")


def launch(task: str, data_dir: Path, size: int, study: str, folder: Path, cache: Path) -> dict:
    """One `medtune tune` process up to its first training batch; its timings."""
    out = folder / f"{study}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    env |= {"MEDTUNE_CACHE": str(cache), "MEDTUNE_CHECKPOINTS": str(folder / "checkpoints"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # run in `folder`, so MLflow's default artifact root (./mlruns) is the bench's, not
            # the project's; `bench` still imports from the repo
            "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO),
                                                        os.environ.get("PYTHONPATH")]))}
    args = ["tune", "--task", task, "--data-dir", str(Path(data_dir).resolve()),
            "--image-size", str(size),
            "--epochs", "1", "--n-trials", "1", "--study", study,
            "--storage", common.sqlite_url(folder / "optuna.db"),
            "--tracking-uri", common.sqlite_url(folder / "mlflow.db")]
    launched = time.time()
    done = subprocess.run([sys.executable, "-m", "bench._first_batch", str(launched), str(out),
                           "--", *args], cwd=folder, env=env, capture_output=True, text=True)
    report = json.loads(out.read_text()) if out.exists() else {}
    if done.returncode != 0 or "first_batch" not in report:
        raise RuntimeError(f"{study}: {report.get('error', 'no report')}\n{done.stderr[-3000:]}")
    data_work = report["data_load_s"] + report["pipelines_s"]
    total = report["first_batch"] - launched
    return {
        "from_cache": report["from_cache"], "n_images": report["n_images"],
        "interpreter_s": report["main"] - launched,
        "imports_s": report["imported"] - report["main"],
        "data_load_s": report["data_load_s"], "pipelines_s": report["pipelines_s"],
        "data_work_s": data_work,
        "other_setup_s": report["first_batch"] - report["imported"] - data_work,
        "total_s": total,
    }


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> common.Result:
    import pandas as pd

    budget = dict(BUDGETS[args.mode])
    if args.sizes:
        budget["sizes"] = [int(s) for s in args.sizes.split(",")]
    if args.cached_runs is not None:
        budget["cached_runs"] = args.cached_runs
    from datasets import synthetic

    shape = {"n_train": budget["n_train"], "n_val": budget["n_val"],
             "size": budget["source_size"]}
    existed = (args.work_dir / "data" / synthetic.set_folder("skin", **shape, seed=0)).exists()
    started = time.perf_counter()
    course = common.synthetic_skin(args.work_dir / "data", **shape)
    written = time.perf_counter() - started
    source_mib = folder_bytes(course) / 2**20
    n_images = budget["n_train"] + budget["n_val"]

    rows, sizes = [], []
    for size in budget["sizes"]:
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
            folder, cache = Path(tmp), Path(tmp) / "cache"
            runs = ["cold"] + [f"cached{i + 1}" for i in range(budget["cached_runs"])]
            for name in runs:
                row = launch(args.task, course, size, f"startup-{name}", folder, cache)
                rows.append({"image_size": size, "run": name, **row})
                print(f"{size}px {name}: first batch after {row['total_s']:.2f} s "
                      f"(data {row['data_work_s']:.2f} s)", file=sys.stderr)
                if name == "cold":
                    sizes.append({"image_size": size, "n_images": n_images,
                                  "cache_mib": folder_bytes(cache / "arrays") / 2**20,
                                  "source_mib": source_mib})
    launches = pd.DataFrame(rows)
    cache_table = pd.DataFrame(sizes)
    cached = launches[launches["run"] != "cold"]
    summary = launches.assign(kind=launches["run"].where(launches["run"] == "cold", "cached")) \
        .groupby(["image_size", "kind"], sort=False)[
            ["total_s", "interpreter_s", "imports_s", "data_work_s", "other_setup_s"]
        ].median().reset_index()
    worst_cached = float(cached["data_work_s"].max()) if len(cached) else float("nan")
    notes = [
        f"Data: {n_images} PNG images at {budget['source_size']}x{budget['source_size']} "
        f"({source_mib:.0f} MiB, Lab2 layout, synthetic skin set in {course}"
        + (", written by an earlier run" if existed else f", written in {written:.1f} s")
        + f"), task {args.task}. Each launch is a new `medtune tune` process that stops at the "
        "first training batch; `summary` is the median per kind of launch.",
        "Phases: `interpreter_s` = launch to the first line of Python; `imports_s` = importing "
        "TensorFlow, Keras, Optuna, MLflow and medtune; `data_work_s` = `datasets.loader.load` "
        "(listing, fingerprint, decode + resize + cache write, or cache read) plus the tf.data "
        "set-up; `other_setup_s` = stores, MLflow runs, model build and compile, fit set-up "
        "(the cold launch also creates the SQLite stores).",
        f"Goal: cached data work at most {GOAL_S:g} s for 1000 images: worst cached launch "
        f"{worst_cached:.3f} s ({'met' if worst_cached <= GOAL_S else 'NOT met'}"
        + ("" if n_images == 1000 else f"; this run had {n_images} images") + ").",
    ]
    metrics = {f"{r.image_size}px.{r.kind}.{c}": getattr(r, c) for r in summary.itertuples()
               for c in ("total_s", "data_work_s", "imports_s")}
    metrics |= {f"{r.image_size}px.cache_mib": r.cache_mib for r in cache_table.itertuples()}
    return common.Result(
        name=NAME, mode=args.mode, command=args.command,
        tables={"summary": summary, "cache": cache_table, "launches": launches},
        figures={"startup": figure(launches)}, metrics=metrics,
        params={**budget, "task": args.task}, notes=notes,
    )


def figure(launches):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(launches) + 1.5))
    labels = [f"{r.image_size}px {r.run}" for r in launches.itertuples()]
    left = [0.0] * len(launches)
    for phase in PHASES:
        values = list(launches[phase])
        ax.barh(labels, values, left=left, label=phase.removesuffix("_s"))
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("seconds from launch to the first training batch")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(common.main(NAME, add_arguments, run, description=__doc__))
