"""Benchmark 7: what keeping the best trials' models in MLflow costs, and what export takes.

1. The README's main command (`mlflow run . -e tune -P task=vgg_skin --env-manager local`) in a
   temporary copy of the working tree, then `mlflow run . -e export -P study=vgg_skin
   --env-manager local` (the kept champion, no retraining; goal: at most 30 s on 2 cores) and
   the same with `-P replay=true` (the best trial retrained first), each timed as a whole
   process, `mlflow run` included.
2. A 50-trial VGG study (`medtune tune --task vgg_skin --n-trials 50 --timeout 0 --epochs 1
   --image-size 32`: one epoch a trial at 32 px, so that 50 trials end in minutes on 2 cores):
   the storage its kept models take once it ends, against what keeping every trial's model
   would take, and each kept trial's time to log its model (`trial.keep_seconds`) against its
   whole time (`trial.seconds`; a 1-epoch trial makes that share large: an upper bound).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.default_run import mlflow_command, project_env, working_copy
from search.records import facts  # (imports only Optuna)

NAME = "kept_models"
GOAL_S = 30.0
BUDGETS: dict[str, dict[str, str]] = {  # -P settings of the tune command; the 50-trial study
    "smoke": {"n_trials": "2", "epochs": "1", "image_size": "32"},
    "quick": {"n_trials": "2", "epochs": "2"},
    "full": {},  # the README's command
}
LONG = {"smoke": ("lenet_skin", 3, 1, 32), "quick": ("vgg_skin", 10, 2, 64),
        "full": ("vgg_skin", 50, 1, 32)}  # task, trials, epochs, image size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="store_true", help="keep the temporary working copy")
    p.add_argument("--limit-s", type=float, default=7200, help="stop a command after this long")


def timed(argv: list[str], cwd: Path, env: dict[str, str], limit_s: float) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=limit_s)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {done.returncode}:\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def storage(copy: Path, study: str) -> dict:
    """What a finished study keeps: its live models and their files, and what its trials'
    runs say of keeping them."""
    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{copy}/mlflow.db")
    # (under `mlflow run` the study logs into the experiment `mlflow run` chose)
    experiments = [e.experiment_id for e in client.search_experiments()]
    live = client.search_logged_models(experiments,
                                       filter_string=f"tags.`medtune.study` = '{study}'")
    models = [Path(m.artifact_location.removeprefix("file://")) for m in live]
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{copy}/optuna.db").trials
    ever = [t for t in trials if facts(t).model_id]
    runs = client.search_runs(experiments, f"tags.`medtune.kind` = 'trial' and "
                              f"tags.`medtune.study` = '{study}'")
    keep = [(r.data.metrics["trial.keep_seconds"], r.data.metrics["trial.seconds"])
            for r in runs if "trial.keep_seconds" in r.data.metrics]
    kept_mib = sum(folder_mib(m) for m in models)
    per_model = kept_mib / len(models) if models else 0.0
    return {"trials": len(trials), "complete": sum(t.value is not None for t in trials),
            "models_ever_kept": len(ever), "models_live": len(models),
            "live_models_mib": kept_mib, "all_complete_kept_mib_estimate":
                per_model * sum(t.value is not None for t in trials),
            "mlruns_mib": folder_mib(copy / "mlruns"),
            "keep_s_median": common.median([k for k, _ in keep]) if keep else None,
            "keep_share_median": common.median([k / s for k, s in keep]) if keep else None,
            "keep_share_max": max((k / s for k, s in keep), default=None)}


def run(args: argparse.Namespace) -> common.Result:
    import pandas as pd

    params = dict(BUDGETS[args.mode])
    task = "lenet_skin" if args.mode == "smoke" else "vgg_skin"
    if args.mode == "smoke":
        params["data_dir"] = str(common.synthetic_skin(args.work_dir / "data", n_train=24,
                                                       n_val=12, size=32, seed=1))
    copy = Path(tempfile.mkdtemp(prefix="kept-models-", dir=args.work_dir))
    try:
        working_copy(copy)
        env = project_env(MEDTUNE_CACHE=str(copy / ".medtune-cache"))
        tune_s, _ = timed(mlflow_command(task, params), copy, env, args.limit_s)
        export = ["mlflow", "run", ".", "-e", "export", "-P", f"study={task}",
                  "--env-manager", "local"]
        export_s, _ = timed(export, copy, env, args.limit_s)
        replay_s, _ = timed([*export, "-P", "replay=true"], copy, env, args.limit_s)
        short = storage(copy, task)

        long_task, n, epochs, size = LONG[args.mode]
        study = f"{long_task}-{n}-trials"
        long_data = ["--data-dir", params["data_dir"]] if "data_dir" in params else []
        long_s, _ = timed([sys.executable, "-m", "search.cli", "tune", "--task", long_task,
                           "--study", study, "--n-trials", str(n), "--timeout", "0",
                           "--epochs", str(epochs), "--image-size", str(size),
                           "--experiment", study, *long_data], copy, env, args.limit_s)
        long = storage(copy, study)
    finally:
        if not args.keep:
            shutil.rmtree(copy, ignore_errors=True)

    exports = pd.DataFrame([
        {"command": " ".join(mlflow_command(task, params)), "wall_s": tune_s},
        {"command": " ".join(export), "wall_s": export_s},
        {"command": " ".join([*export, "-P", "replay=true"]), "wall_s": replay_s},
    ])
    stores = pd.DataFrame([{"study": f"{task} (the command above)", **short},
                           {"study": f"{study}: {epochs} epochs a trial, {size} px", **long,
                            "wall_s": long_s}])
    notes = [
        f"Export of the kept champion: {export_s:.1f} s, `mlflow run` included; goal at most "
        f"{GOAL_S:.0f} s: {'met' if export_s <= GOAL_S else 'NOT met'}"
        + ("" if args.mode == "full" else " (not the default budget in this mode)")
        + f". With the replay: {replay_s:.1f} s.",
        "`models_live`: the study's kept models once it ended (at most `[selection] top_k`); "
        "`live_models_mib`: their files; `all_complete_kept_mib_estimate`: what keeping the "
        "model of every completed trial would take (the live models' mean size times the "
        "completed trials); `models_ever_kept`: trials that logged a model at the time they "
        "ended (the others never ranked among the best). `keep_share`: a kept trial's "
        "`trial.keep_seconds` / `trial.seconds`.",
    ]
    return common.Result(
        name=NAME, mode=args.mode, command=args.command,
        tables={"export": exports, "storage": stores},
        metrics={"export_s": export_s, "replay_s": replay_s,
                 "live_models_mib_50": float(long["live_models_mib"]),
                 **({"keep_share_median": long["keep_share_median"]}
                    if long["keep_share_median"] is not None else {})},
        params={"task": task, **params, "long": f"{long_task} {n} trials {epochs} epochs"},
        notes=notes,
    )


if __name__ == "__main__":
    sys.exit(common.main(NAME, add_arguments, run, description=__doc__))
