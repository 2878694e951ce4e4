"""Benchmark 8: does a study's champion hold up on images unlike its hospital's?

X-rays from another hospital differ in contrast, brightness and borders (a black frame, burnt-in
labels). This loads a finished study's champion from MLflow (its kept model, as `medtune
export` would register it) and scores it on its own validation split as it is and on shifted
copies of it: lower and higher contrast, darker and brighter, and a black border. Selection
never sees these; they say how much of the validation value survives a change of scanner.

    python -m bench.shifted --study unet_xray --storage sqlite:///optuna.db \\
        --tracking-uri sqlite:///mlflow.db

Run it from the folder the study ran in (or give its stores); it trains nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

import numpy as np

from bench import common

NAME = "shifted"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", help="the study to judge (smoke: a tiny one it runs itself)")
    p.add_argument("--storage", default="sqlite:///optuna.db")
    p.add_argument("--study-tracking-uri", default="sqlite:///mlflow.db",
                   help="where the study logged its runs and kept models")


def shifts() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each shift, on uint8 images (N, S, S)."""
    def contrast(factor: float):
        def apply(x):
            mean = x.mean(axis=(1, 2), keepdims=True)
            return np.clip(mean + factor * (x.astype("float32") - mean), 0, 255).astype("uint8")
        return apply

    def brightness(delta: float):
        return lambda x: np.clip(x.astype("float32") + 255 * delta, 0, 255).astype("uint8")

    def border(share: float):
        def apply(x):
            out, k = x.copy(), max(1, round(x.shape[1] * share))
            out[:, :k], out[:, -k:], out[:, :, :k], out[:, :, -k:] = 0, 0, 0, 0
            return out
        return apply

    return {"as is": lambda x: x, "contrast x0.6": contrast(0.6),
            "contrast x1.4": contrast(1.4), "brightness -0.15": brightness(-0.15),
            "brightness +0.15": brightness(0.15), "black border 8%": border(0.08)}


def run(args: argparse.Namespace) -> common.Result:
    import optuna
    import pandas as pd

    from search.champion import kept
    from search.records import champion_trial, study_facts
    from search.runtime.storages import open_storage
    from search.spec.study_files import spec_from_record
    from search.study.run import prepare_problem
    from search.trial.training import compiled_model

    if args.mode == "smoke":
        args.study, args.storage, args.study_tracking_uri = smoke_study(args)
    elif not args.study:
        raise SystemExit("give --study: the finished study whose champion to judge")
    study = optuna.load_study(study_name=args.study, storage=open_storage(args.storage))
    record = study_facts(study)
    recorded, spec = record.settings, spec_from_record(record.study_file)
    problem, _, _ = prepare_problem(spec, recorded["data_dir"], recorded["image_size"],
                                    recorded.get("base"), args.study_tracking_uri)
    best = champion_trial(study)
    config = problem.config(best.params)
    model = compiled_model(spec, problem, config)
    model.set_weights(kept.load(kept.champion_id(study), args.study_tracking_uri).get_weights())
    data = problem.data
    rows = []
    for name, shift in shifts().items():
        problem.data = dataclasses.replace(data, x_val=shift(data.x_val))
        _, val = problem.datasets(config, seed=0)
        scores = model.evaluate(val, return_dict=True, verbose=0)
        rows.append({"images": name, **{k: v for k, v in scores.items() if k != "loss"}})
    problem.data = data
    table = pd.DataFrame(rows)
    metric = spec.objective.removeprefix("val_")
    drop = float(table[metric].iloc[0] - table[metric].iloc[1:].min())
    return common.Result(
        name=NAME, mode=args.mode, command=args.command, tables={"shifted": table},
        metrics={f"{metric}_as_is": float(table[metric].iloc[0]), "largest_drop": drop},
        params={"study": args.study, "trial": best.number, "data": recorded["data_dir"] or "",
                "image_size": recorded["image_size"]},
        notes=[f"The champion of study `{args.study}` (trial {best.number}) on its validation "
               f"split as it is and shifted; the largest drop in {metric}: {drop:.3f}."])


def smoke_study(args: argparse.Namespace) -> tuple[str, str, str]:
    """A one-trial U-Net study on tiny synthetic lungs, in the work folder."""
    from datasets import synthetic
    from search.cli import main

    folder = args.work_dir / "shifted"
    synthetic.write_lungs(folder / "course", n_pairs=20, size=32, seed=1)
    stores = (common.sqlite_url(folder / "optuna.db"), common.sqlite_url(folder / "mlflow.db"))
    if main(["tune", "--task", "unet_xray", "--n-trials", "1", "--epochs", "1",
             "--image-size", "32", "--data-dir", str(folder / "course"), "--storage", stores[0],
             "--tracking-uri", stores[1], "--study", "shifted-smoke"]) != 0:
        raise RuntimeError("the smoke study failed")
    return "shifted-smoke", *stores


if __name__ == "__main__":
    sys.exit(common.main(NAME, add_arguments, run, description=__doc__))
