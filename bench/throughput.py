"""Benchmark 6: training images per second, one medtune trial against plain `keras.fit`.

The same model (VGG16 of `vgg_skin`, its first lab baseline with batch 32), data, epochs and seed
on the same device, in one process:

- plain: build, compile, `model.fit(unit_range(x), y, validation_data=...)` on NumPy arrays, no
  callbacks;
- medtune: `run_study` of a new one-trial study: its tf.data input and every callback a trial
  has (epoch lines, MLflow per-epoch logging, checkpoints, early stopping, NaN check, pruning).

A clock callback, added last to each `fit`, stamps each epoch's start. Throughput = training
images of the timed epochs / their wall time (training, validation and every callback, so a
periodic checkpoint counts), leaving out the first epoch (tracing, warm-up) and the last (the
trial's end). After an untimed run of each side (not in --smoke), pairs alternate which side
goes first. Goal: medtune >= 0.95 of plain on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import common
from search.records import facts  # (imports only Optuna)

NAME = "throughput"
TASK = "vgg_skin"
BATCH = 32
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"image_size": 32, "n_train": 64, "n_val": 32, "epochs": 3, "pairs": 1,
              "warmup": False},
    "quick": {"image_size": 32, "n_train": 1024, "n_val": 128, "epochs": 5, "pairs": 4,
              "warmup": True},
    "full": {"image_size": 128, "n_train": 4096, "n_val": 512, "epochs": 8, "pairs": 4,
             "warmup": True},
}
TARGET = 0.95  # medtune's images/s over plain's, on a GPU


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int)
    p.add_argument("--n-train", type=int, help="training images (synthetic skin set)")
    p.add_argument("--epochs", type=int, help="per fit; the first and last are not timed (>= 3)")
    p.add_argument("--pairs", type=int, help="timed (plain, medtune) pairs")
    p.add_argument("--precision", choices=["float32", "mixed_float16"], default="float32",
                   help="`[training] precision` of both sides (default float32)")
    p.add_argument("--seed", type=int, default=0)


def epoch_clock():
    """A Keras callback stamping each epoch's start."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.starts: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.starts.append(time.perf_counter())

        def timed_seconds(self) -> tuple[int, float]:
            """(epochs, seconds) from the start of the second epoch to the start of the last."""
            if len(self.starts) < 3:
                raise RuntimeError(f"{len(self.starts)} epochs ran; timing needs at least 3")
            return len(self.starts) - 2, self.starts[-1] - self.starts[1]

    return EpochClock()


@contextlib.contextmanager
def clocked_fit() -> Iterator[list]:
    """Every `keras.Model.fit` in the block gets an `epoch_clock` as its last callback."""
    import keras

    clocks = []
    original = keras.Model.fit

    def fit(model, *args, callbacks=None, **kwargs):
        clocks.append(epoch_clock())
        return original(model, *args, callbacks=[*(callbacks or []), clocks[-1]], **kwargs)

    keras.Model.fit = fit
    try:
        yield clocks
    finally:
        keras.Model.fit = original


def plain_fit(spec, problem, config: dict, epochs: int, seed: int) -> tuple[int, float]:
    """A hand-written Keras script on the same arrays: (timed epochs, seconds)."""
    import keras

    from datasets.images import unit_range
    from models import build_model, settings_from
    from models.losses import encode_targets
    from search.trial.training import compile_model, precision_policy

    data = problem.data
    keras.utils.set_random_seed(seed)
    with precision_policy(spec.training["precision"]):
        model = build_model(spec.model, **settings_from(spec.model, config))
        compile_model(model, config, *problem.loss_and_metrics(config))
    x = unit_range(data.x_train[..., None])
    y = encode_targets(data.y_train, config["loss"], data.n_classes)
    val = (unit_range(data.x_val[..., None]),
           encode_targets(data.y_val, config["loss"], data.n_classes))
    with clocked_fit() as clocks:
        model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_data=val, shuffle=True,
                  verbose=0)
    keras.backend.clear_session()
    gc.collect()
    return clocks[0].timed_seconds()


def medtune_trial(spec, settings, tracking_uri: str) -> tuple[int, float]:
    """One one-trial study, as `medtune tune` runs it: (timed epochs, seconds)."""
    from search.study.run import run_study

    with clocked_fit() as clocks, contextlib.redirect_stdout(io.StringIO()):
        study, _ = run_study(spec, settings, tracking_uri=tracking_uri,
                             experiment="bench-throughput", verbose=True,
                             show_progress_bar=False)
    (trial,) = [t for t in study.trials if t.state.is_finished()]
    if trial.state.name != "COMPLETE":
        raise RuntimeError(f"{settings.study_name}: the trial ended {trial.state.name}: "
                           f"{facts(trial).fail_reason}")
    return clocks[0].timed_seconds()


def bench_spec(precision: str):
    """`vgg_skin` whose first trial is its first lab baseline with batch 32."""
    from search.spec.study_files import load_spec

    spec = common.every_epoch(load_spec(TASK))
    baseline = {**spec.baselines[0], "batch_size": BATCH}
    return dataclasses.replace(spec, baselines=[baseline],
                               training={**spec.training, "precision": precision})


def run(args: argparse.Namespace) -> common.Result:
    import optuna
    import pandas as pd

    from datasets import loader
    from search.runtime.devices import device_tag
    from search.spec.settings import resolve_settings
    from search.trial.problems import make_problem

    common.quiet_libraries()
    budget = common.chosen_budget(args, BUDGETS, ("image_size", "n_train", "epochs", "pairs"))
    size, epochs = budget["image_size"], budget["epochs"]
    data_dir = str(common.synthetic_skin(args.work_dir / "data", n_train=budget["n_train"],
                                         n_val=budget["n_val"], size=size, seed=1))
    spec = bench_spec(args.precision)
    # decodes or warms the cache: untimed
    data = loader.load(spec.data, data_dir, size, split=spec.split, synthetic=spec.synthetic)
    problem = make_problem(spec, data)
    params = {k: v for k, v in spec.baselines[0].items() if k != "note"}
    config = problem.config(params)
    device = device_tag()

    rows = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp, \
            common.scoped_env(MEDTUNE_CHECKPOINTS=str(Path(tmp) / "checkpoints")):
        optuna_url = common.sqlite_url(Path(tmp) / "optuna.db")
        mlflow_url = common.sqlite_url(Path(tmp) / "mlflow.db")
        optuna.storages.RDBStorage(optuna_url)  # the stores exist before the first pair

        def settings(name: str, n_epochs: int):
            return resolve_settings(spec, study_name=f"throughput-{name}", storage=optuna_url,
                                    data_dir=data_dir, seed=args.seed, n_trials=1, timeout=0,
                                    epochs=n_epochs, image_size=size)

        if budget["warmup"]:  # first-call costs (kernels, libraries' set-up) are once per process
            plain_fit(spec, problem, config, 3, args.seed)
            medtune_trial(spec, settings("warmup", 3), mlflow_url)
        for i in range(budget["pairs"]):
            sides = ["medtune", "plain"] if i % 2 else ["plain", "medtune"]
            for side in sides:
                n, seconds = (medtune_trial(spec, settings(str(i), epochs), mlflow_url)
                              if side == "medtune"
                              else plain_fit(spec, problem, config, epochs, args.seed))
                images_s = n * len(data.y_train) / seconds
                rows.append({"pair": i, "side": side, "first": sides[0], "timed_epochs": n,
                             "seconds": seconds, "images_per_s": images_s})
                print(f"pair {i} {side}: {images_s:.1f} images/s", file=sys.stderr)
    return summarize(args, budget, data, device, pd.DataFrame(rows))


def summarize(args, budget, data, device: str, rows) -> common.Result:
    import pandas as pd

    wide = rows.pivot(index="pair", columns="side", values="images_per_s")
    ratios = wide["medtune"] / wide["plain"]
    summary = pd.DataFrame([{
        "model": "vgg16", "device": device, "precision": args.precision,
        "image_size": budget["image_size"], "batch_size": BATCH, "n_train": len(data.y_train),
        "epochs": budget["epochs"], "pairs": len(wide),
        "plain_images_per_s": float(wide["plain"].median()),
        "medtune_images_per_s": float(wide["medtune"].median()),
        "ratio_median": float(ratios.median()), "ratio_min": float(ratios.min()),
        "ratio_max": float(ratios.max()),
        "target_met": bool(ratios.median() >= TARGET),
    }])
    on_gpu = device.startswith("GPU")
    notes = [
        f"Data: {data.source} ({len(data.y_train)} training, {len(data.y_val)} validation "
        f"images), {budget['image_size']}x{budget['image_size']}, batch {BATCH}; the config is "
        f"{TASK}'s first lab baseline with batch {BATCH}. Images/s = training images of the "
        "timed epochs (all but the first and the last) / their wall time, which includes "
        "validation and every callback. Ratio = medtune / plain images/s; goal: >= "
        f"{TARGET} on a GPU.",
        f"Device: {device}." + ("" if on_gpu else
                                " These are CPU figures: the goal is set for a GPU, where "
                                "the per-epoch costs that a CPU's slow epochs hide weigh "
                                "more; a GPU run (`python -m bench.throughput` on a GPU "
                                "machine with the GPU install) judges it."),
    ]
    return common.Result(
        name=NAME, mode=args.mode, command=args.command,
        tables={"summary": summary, "pairs": rows},
        figures={"throughput": figure(rows, device)},
        metrics={"ratio_median": float(ratios.median()),
                 "plain_images_per_s": float(wide["plain"].median()),
                 "medtune_images_per_s": float(wide["medtune"].median())},
        params={**budget, "batch_size": BATCH, "precision": args.precision, "device": device,
                "seed": args.seed},
        notes=notes,
    )


def figure(rows, device: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for offset, side in ((-0.2, "plain"), (0.2, "medtune")):
        part = rows[rows["side"] == side]
        ax.bar(part["pair"] + offset, part["images_per_s"], width=0.4, label=side)
    ax.set_xlabel("pair")
    ax.set_ylabel("training images / s")
    ax.set_title(f"VGG16, batch {BATCH}, {device}")
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(common.main(NAME, add_arguments, run, description=__doc__))
