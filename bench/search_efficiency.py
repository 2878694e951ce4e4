"""Benchmark 2: search efficiency at an equal budget of training epochs.

The budget is the total number of training epochs across all trials (a pruned trial counts the
epochs it ran). On the same task (LeNet, `lenet_skin`'s search space), data and budget, four
engines run through medtune itself (`search.study.run.run_study`, `epoch_budget`):

- `medtune`: the task's default study (TPE, the study file's pruner, lab baselines first,
  then `[start]`);
- `random`: Optuna random search, no pruning, no baselines;
- `keras-tuner`: Keras Tuner Hyperband (`engine="keras-tuner"`, max epochs = epochs per trial);
- `lab-grid`: the lab baselines alone, one after the other, each at the lab's epoch count
  truncated to what is left of the budget (one single-trial study per baseline, so the grid
  never trains past the budget), with early stopping but no stuck stop, as the lab trains.

Data: the real knee X-rays (`shared/data/knee`: Lab2 layout, Normal vs OA, its `test/` split kept
aside), MedMNIST pneumonia and breast (28x28, upsampled by medtune's loader; their test split is
kept aside), and on request the embedded synthetic Skin set (judged on a held-out synthetic set
drawn with another seed). Selection is on validation, judgement on test. Each engine x data x
seed gets a fresh Optuna SQLite storage; the studies' MLflow runs go to a temporary store.

The full run is about 20 hours on 2 cores, so each finished engine x data x seed is appended to a
ledger (`--ledger`, a JSON line each, with the code's commit; by default
`bench/search-ledger.jsonl`, committed like RESULTS.md so that the run carries over between
machines): a later run with the same settings reuses it instead of training again. A run can
thus be split over sittings (`--data breast`, then the full command) or resumed after an
interruption; `--from-ledger` reports what is finished without training the rest, `--redo`
trains everything again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import common
from search.records import facts  # (imports only Optuna)

if TYPE_CHECKING:  # heavy imports stay inside the functions that need them
    import keras
    import numpy as np
    import optuna
    import pandas as pd
    from matplotlib.figure import Figure

    from search.spec.study_files import StudySpec
    from search.trial.problems import Classification

NAME = "search"
BUDGETS: dict[str, dict[str, Any]] = {
    # Tiny synthetic images as a MedMNIST-style .npz (test split included), one trial per
    # engine: the script runs, nothing more.
    "smoke": {"data": ["medmnist"], "seeds": 1, "budget": 2, "epochs": 2, "image_size": 32},
    # The setting at one seed on the real knee X-rays: every engine gets the same total
    # of 300 epochs and at most the lab's epochs per trial (None: the study file's `lab` budget),
    # with early stopping for all.
    "quick": {"data": ["knee"], "seeds": 1, "budget": 300, "epochs": None, "image_size": 64},
    "full": {"data": ["knee", "pneumonia", "breast"], "seeds": 5, "budget": 300,
             "epochs": None, "image_size": 64},
}
FINALISTS = 3  # the candidate default for `[selection] finalists`
ENGINES = {
    "medtune": "medtune's default study",
    "random": "Optuna random search, no pruning, no baselines",
    "keras-tuner": "Keras Tuner Hyperband (factor: [pruner] reduction_factor, "
                   "max epochs = epochs per trial)",
    "lab-grid": "the lab baselines alone, each at the lab's epochs, truncated to the budget",
    "medtune-finalists": f"medtune's default study with its best {FINALISTS} finalists "
                         "re-checked at the end (fewer where their re-runs would take more than "
                         "[selection] share of the budget), the ensemble where it wins",
}
MEDMNIST = {"pneumonia": "pneumoniamnist.npz", "breast": "breastmnist.npz"}
MEDMNIST_DIR = common.REPO.parent / "shared" / "data" / "medmnist"
KNEE_DIR = common.REPO.parent / "shared" / "data" / "knee"  # Lab2 layout with a test/ split
LEDGER = common.BENCH_DIR / "search-ledger.jsonl"  # committed: the full run spans sittings
MANY_TRIALS = 10_000  # a cap that never binds: the epoch budget ends every study
EXPERIMENT = "bench-search"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="lenet_skin", help="study file the engines search")
    p.add_argument("--data", help="comma-separated, from: knee, pneumonia, breast, synthetic "
                   "(--smoke: medmnist, synthetic, both tiny)")
    p.add_argument("--engines", help=f"comma-separated, from: {', '.join(ENGINES)}")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 per engine and data set")
    p.add_argument("--budget", type=int, help="training epochs per study (all trials together)")
    p.add_argument("--epochs", type=int, help="epochs per trial (Hyperband's max epochs)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--medmnist-dir", type=Path, default=MEDMNIST_DIR,
                   help=f"folder holding {', '.join(MEDMNIST.values())} (default {MEDMNIST_DIR})")
    p.add_argument("--ledger", type=Path, help="JSON-lines file of finished engine x data x seed "
                   f"runs, reused by later runs with the same settings (default {LEDGER}; "
                   "--smoke: WORK_DIR/search-ledger-smoke.jsonl)")
    training = p.add_mutually_exclusive_group()
    training.add_argument("--redo", action="store_true",
                          help="train every engine x data x seed again, replacing its ledger "
                          "entry")
    training.add_argument("--from-ledger", action="store_true",
                          help="train nothing: report the runs the ledger holds, and list the "
                          "missing ones")


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class DataSet:
    """One data set as the engines get it (`data_dir`), with the split that judges them."""

    name: str
    data_dir: str | None  # None: the embedded synthetic set
    x_test: Any = None
    y_test: Any = None
    test_source: str = ""
    sizes: str = ""


def data_sets(args: argparse.Namespace, budget: dict, spec: StudySpec) -> list[DataSet]:
    """Each chosen data set with its test split (MedMNIST's own, or held-out synthetic)."""
    from datasets import loader, synthetic

    size, data_root = budget["image_size"], args.work_dir / "data"
    found = []
    for name in budget["data"]:
        if args.mode == "smoke":
            data_dir = str(tiny_set(name, data_root, spec))
        elif name in MEDMNIST:
            path = args.medmnist_dir / MEDMNIST[name]
            if not path.is_file():
                raise SystemExit(f"{path} not found: give --medmnist-dir, or leave {name} out "
                                 "with --data")
            data_dir = str(path)
        elif name == "knee":
            if not KNEE_DIR.is_dir():
                raise SystemExit(f"{KNEE_DIR} not found: leave knee out with --data")
            data_dir = str(KNEE_DIR)
        elif name == "synthetic":
            data_dir = None
        else:
            raise SystemExit(f"unknown data set {name!r}: choose from pneumonia, breast, "
                             "synthetic")
        # decodes once; every study reuses it
        data = loader.load(spec.data, data_dir, size, split=spec.split, synthetic=spec.synthetic)
        entry = DataSet(name, data_dir)
        if "x_test" in data.extra:
            entry.x_test, entry.y_test = data.extra["x_test"], data.extra["y_test"]
            entry.test_source = "the file's test split"
        else:  # same generator, another seed: independent images of the same distribution
            held_out = synthetic.ensure(spec.data, data_root, **{
                **spec.synthetic[spec.data], "n_train": 2, "seed": TEST_SEED,
                **({"n_val": 12, "size": 32} if args.mode == "smoke" else {"n_val": 400})})
            test = loader.load(spec.data, held_out, size, split=spec.split,
                               synthetic=spec.synthetic)
            entry.x_test, entry.y_test = test.x_val, test.y_val
            entry.test_source = f"a held-out synthetic set (generator seed {TEST_SEED})"
        entry.sizes = (f"{len(data.y_train)} training, {len(data.y_val)} validation (one "
                       f"image = {1 / len(data.y_val):.3f} of accuracy), {len(entry.y_test)} "
                       "test images")
        found.append(entry)
    return found


TEST_SEED = 1  # the embedded synthetic set is drawn with the study's [synthetic] seed, 0


def tiny_set(name: str, root: Path, spec: StudySpec) -> Path:
    """Smoke mode: a tiny synthetic skin set, or the same images as a MedMNIST-style .npz
    (28x28, labels (N, 1), with a test split) so that layout's path runs too."""
    import numpy as np

    from datasets import loader

    course = common.synthetic_skin(root, n_train=24, n_val=12, size=32, seed=TEST_SEED + 1)
    if name == "synthetic":
        return course
    path = root / "tiny-medmnist.npz"
    if not path.is_file():
        data = loader.load("skin", course, 28, split=spec.split, synthetic=spec.synthetic)
        # The validation images come class by class: alternate them, so both splits hold both
        splits = {"train": (data.x_train, data.y_train), "val": (data.x_val[0::2],
                  data.y_val[0::2]), "test": (data.x_val[1::2], data.y_val[1::2])}
        arrays = {f"{s}_{k}": v for s, (x, y) in splits.items()
                  for k, v in (("images", x), ("labels", y.reshape(-1, 1)))}
        np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- the engines


@dataclasses.dataclass
class Trial:
    """What the analysis needs of one finished trial, from either engine's Optuna record."""

    study: str
    number: int
    state: str
    values: list[float]  # the objective after each epoch the trial ran
    epochs: int
    initial: int  # epochs it continued from (Hyperband's promoted trials), else 0
    seed: int
    params: dict[str, Any]
    run_id: str
    baseline: bool  # an enqueued lab baseline
    stuck: bool  # stopped as stuck (constant predictions, or a loss that did not fall)


def records(study: optuna.Study) -> list[Trial]:
    found = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        steps = sorted(t.intermediate_values)
        # Both engines number steps by epoch from 0; a trial Hyperband promoted in Keras Tuner
        # starts at the epoch it continued from.
        initial = steps[0] if steps else 0
        values = [float(t.intermediate_values[s]) for s in steps]
        f = facts(t)
        found.append(Trial(study.study_name, t.number, t.state.name, values,
                           len(values) if f.epochs_run is None else f.epochs_run, initial,
                           f.seed_or_number(t.number), dict(t.params), f.run_id or "",
                           bool(f.baseline), f.stopped_because is not None))
    return found


def variants(spec: StudySpec) -> dict[str, Any]:
    """The spec each engine runs (the grid: one per baseline). Keras Tuner ignores sampler and
    baselines, and takes its factor from the pruner's `reduction_factor`. The study file's
    text, logged with each study, says what changed."""
    def changed(note: str, **fields: Any) -> StudySpec:
        return dataclasses.replace(spec, **fields, source=spec.source
                                   + f"\n# bench.search_efficiency: {note}\n")

    return {
        "medtune": spec,
        "random": changed("random sampler, no pruner, no baselines, no start", baselines=[],
                          start={}, sampler={"type": "random"}, pruner={"type": "none"}),
        "keras-tuner": spec,
        "medtune-finalists": changed(f"finalists = {FINALISTS}", selection={
            **spec.selection, "finalists": FINALISTS}),
        # Every baseline, whichever budgets the file marks it for: a study queues only those
        # marked for its budget, and one left unqueued would be a sampled trial instead. The
        # grid trains as the lab does, with early stopping but without medtune's stuck stop (a
        # slow start, as LR 1e-5's, gets its epochs).
        "lab-grid": [common.every_epoch(changed(
                         f"lab grid, baseline {i} alone, no pruner, no stuck stop",
                         baselines=[{**b, "budgets": list(spec.budget)}], start={},
                         pruner={"type": "none"}))
                     for i, b in enumerate(spec.baselines)],
    }


def run_engine(engine: str, specs: dict, data: DataSet, seed: int, budget: dict, tmp: Path,
               mlflow_url: str, scores: HeldOutScores
               ) -> tuple[list[Trial], float, dict[str, Any] | None]:
    """Run one engine's study (the grid: one study per baseline) to the epoch budget; its
    trials in the order they ran, its wall time without the benchmark's test scoring, and
    where the study re-checked finalists, its champion (`champion_of`)."""
    from search.spec.settings import resolve_settings
    from search.study.run import run_study

    key = f"{data.name}-{engine}-s{seed}"
    storage = common.sqlite_url(tmp / f"{key}.db")
    common_settings = {"storage": storage, "data_dir": data.data_dir, "timeout": 0,
                       "image_size": budget["image_size"]}
    trials: list[Trial] = []
    champion = None
    started, scored = time.perf_counter(), scores.seconds
    if engine == "lab-grid":
        spec = specs["medtune"]
        lab_epochs = spec.budget["lab"]["epochs"]
        left = budget["budget"]
        for i, grid_spec in enumerate(specs["lab-grid"]):
            if left <= 0:
                break
            # seed + i: trial i of a study seeds itself with seed + i, so the grid's baselines
            # train exactly as the default study's first (enqueued) trials do.
            settings = resolve_settings(grid_spec, study_name=f"{key}-b{i}", seed=seed + i,
                                        n_trials=1, epochs=min(lab_epochs, left),
                                        **common_settings)
            study, _ = run_study(grid_spec, settings, tracking_uri=mlflow_url,
                                 experiment=EXPERIMENT, verbose=False, show_progress_bar=False)
            if not all(facts(t).baseline is not None for t in study.trials):
                raise RuntimeError(f"{key}-b{i}: the grid's trial is not the lab baseline")
            done = records(study)
            trials += done
            left -= sum(t.epochs for t in done)
    else:
        spec = specs[engine]
        settings = resolve_settings(
            spec, study_name=key, seed=seed, n_trials=MANY_TRIALS, epochs=budget["epochs"],
            engine="keras-tuner" if engine == "keras-tuner" else "optuna",
            epoch_budget=budget["budget"], **common_settings)
        study, _ = run_study(spec, settings, tracking_uri=mlflow_url, experiment=EXPERIMENT,
                             verbose=False, show_progress_bar=False)
        trials = records(study)
        champion = champion_of(study) if spec.selection["finalists"] else None
    wall = time.perf_counter() - started - (scores.seconds - scored)
    return trials, wall, champion


def champion_of(study: optuna.Study) -> dict[str, Any] | None:
    """A re-checked study's champion as the study reports it: the finalist with the best mean
    (or their ensemble), its mean, SD and runs, its kept model, and the re-runs' epochs."""
    from search.champion.kept import champion_id
    from search.records import champion_trial, ensemble_id, study_facts

    record = study_facts(study).finalists
    best = champion_trial(study)
    if not record or best is None:
        return None
    ensemble = bool(ensemble_id(study))
    chosen = record["ensemble"] if ensemble else record["results"][str(best.number)]
    return {"trial": best.number, "params": dict(best.params), "ensemble": ensemble,
            "reported": chosen["mean"], "sd": chosen["sd"], "runs": chosen["n"],
            "finalists": len(record["trials"]), "method": record["method"],
            "model_id": champion_id(study), "epochs": record["epochs"]}


# --------------------------------------------------------------------------- the ledger


class Ledger:
    """Finished engine x data x seed runs, one JSON line each (appended as each one ends, so an
    interrupted run loses only the one in flight). A cell is keyed by the settings that decide
    its result; the entry also records the code's commit and the date, and the report shows
    which commits its rows came from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self.entries[self.key(entry["cell"])] = entry  # a later line wins
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise SystemExit(f"{path}, line {number}: not a ledger entry ({error}); "
                                     "delete that line, or give another --ledger") from None

    @staticmethod
    def key(cell: dict[str, Any]) -> str:
        return json.dumps(cell, sort_keys=True)

    def get(self, cell: dict[str, Any]) -> dict[str, Any] | None:
        return self.entries.get(self.key(cell))

    def add(self, cell: dict[str, Any], row: dict[str, Any],
            curve: list[float]) -> dict[str, Any]:
        import datetime as dt

        from search.tracking.manifest import git_commit

        git = git_commit()
        code = (git["commit"] or "unknown")[:10] + ("+changes" if git["dirty"] else "")
        entry = {"cell": cell, "code": code, "row": row, "curve": curve,
                 "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
        self.entries[self.key(cell)] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        return entry


def cell_of(spec: StudySpec, data: DataSet, engine: str, seed: int, budget: dict) -> dict:
    """What decides one engine x data x seed result (besides the code, recorded beside it)."""
    return {"task": spec.name, "data": data.name, "engine": engine, "seed": seed,
            "budget": budget["budget"], "epochs": budget["epochs"],
            "image_size": budget["image_size"], "sizes": data.sizes}


# --------------------------------------------------------------------------- test judgement


def accuracy_on(model: keras.Model, x: np.ndarray, y: np.ndarray, config: dict,
                n_classes: int) -> float:
    """Accuracy on a test split, through the same scaling as validation (tf.data, /255)."""
    import numpy as np

    from datasets.pipeline import make_dataset
    from models.losses import encode_targets, predicted_classes

    targets = encode_targets(y, config["loss"], n_classes)
    outputs = model.predict(make_dataset(x, targets, batch_size=256), verbose=0)
    return float(np.mean(predicted_classes(outputs, config["loss"]) == y))


class HeldOutScores:
    """Test accuracy of each completed Optuna trial's own model (best epoch's weights, which
    early stopping restored) as the objective hands it to `log_artifacts`, keyed by the trial's
    MLflow run id: the picked model is judged without training it again. medtune is not
    changed; the method is wrapped for the length of the `with` block."""

    def __init__(self) -> None:
        self.x = self.y = None
        self.by_run: dict[str, float] = {}
        self.seconds = 0.0  # taken out of the engines' wall times

    def __enter__(self) -> HeldOutScores:
        from search.trial.problems import Classification

        original = Classification.log_artifacts
        signature = inspect.signature(original)

        @functools.wraps(original)
        def log_artifacts(problem, *args: Any, **kwargs: Any) -> Any:
            result = original(problem, *args, **kwargs)
            if self.x is not None:
                started = time.perf_counter()
                given = signature.bind(problem, *args, **kwargs).arguments
                self.by_run[given["run"].run_id] = accuracy_on(
                    given["model"], self.x, self.y, given["config"], problem.data.n_classes)
                self.seconds += time.perf_counter() - started
            return result

        Classification.log_artifacts = log_artifacts
        self._restore = lambda: setattr(Classification, "log_artifacts", original)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


def replay(spec: StudySpec, problem: Classification, trial: Trial, epochs: int,
           data: DataSet) -> tuple[float, float]:
    """Retrain a trial from scratch with its params and seed for `epochs` (model, seed and
    early stopping as a trial; no stuck stop, no logging): its best validation value and its
    test accuracy."""
    import keras

    from search.trial.training import best_epoch, compiled_model, fit, fresh_keras_session

    config = problem.config(trial.params)
    with fresh_keras_session():
        keras.utils.set_random_seed(trial.seed)
        model = compiled_model(spec, problem, config)
        history = keras.callbacks.History()
        fit(spec, problem, model, config, epochs=epochs, seed=trial.seed, callbacks=[history])
        value, _ = best_epoch(history.history[spec.objective])
        return value, accuracy_on(model, data.x_test, data.y_test, config,
                                    problem.data.n_classes)


# --------------------------------------------------------------------------- analysis


def trace(trials: list[Trial], budget: int) -> tuple[list[float], Trial | None, int]:
    """Best validation value so far after each epoch spent, cut at the budget.

    Only trials that completed give a model to keep, so only their epochs raise the curve;
    pruned and failed trials' epochs count as spent. Returns the curve, the trial holding the
    best value and how many of that trial's epochs lie within the budget.
    """
    curve: list[float] = []
    best, holder, inside = -math.inf, None, {}
    for t in trials:
        for j in range(t.epochs):
            if len(curve) == budget:
                return curve, holder, inside.get(id(holder), 0)
            inside[id(t)] = j + 1
            if t.state == "COMPLETE" and j < len(t.values) and t.values[j] > best:
                best, holder = t.values[j], t
            curve.append(best if holder else math.nan)
    return curve, holder, inside.get(id(holder), 0)


def first_reaching(curve: list[float], target: float) -> float:
    """Epochs spent when the curve first reached `target` (inf: never within the budget)."""
    for epoch, value in enumerate(curve, start=1):
        if value >= target - 1e-9:
            return float(epoch)
    return math.inf


def run(args: argparse.Namespace) -> common.Result:
    from mlflow.tracking import MlflowClient

    from datasets import loader
    from search.spec.study_files import load_spec
    from search.trial.problems import make_problem

    common.quiet_libraries()
    budget = common.chosen_budget(args, BUDGETS, ("seeds", "budget", "epochs", "image_size"))
    spec = load_spec(args.task)
    budget["epochs"] = budget["epochs"] or spec.budget["lab"]["epochs"]  # the lab's, per trial
    if args.data:
        budget["data"] = [d.strip() for d in args.data.split(",") if d.strip()]
    engines = [e.strip() for e in args.engines.split(",")] if args.engines else list(ENGINES)
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"unknown engine(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(ENGINES)}")
    specs = variants(spec)
    sets = data_sets(args, budget, spec)
    seeds = list(range(budget["seeds"]))
    args.ledger = args.ledger or (
        args.work_dir / "search-ledger-smoke.jsonl" if args.mode == "smoke" else LEDGER)
    ledger = Ledger(args.ledger)
    args.missing = []

    rows: list[dict[str, Any]] = []
    curves: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp, HeldOutScores() as scores, \
            common.scoped_env(MEDTUNE_CHECKPOINTS=str(Path(tmp) / "checkpoints"),
                              MEDTUNE_KERAS_TUNER_DIR=str(Path(tmp) / "keras_tuner")):
        mlflow_url = common.sqlite_url(Path(tmp) / "mlflow.db")
        # The studies' artifacts beside their store, not in the current folder's mlruns/.
        MlflowClient(mlflow_url).create_experiment(
            EXPERIMENT, artifact_location=(Path(tmp) / "mlruns").as_uri())
        for data in sets:
            problem = make_problem(spec, loader.load(
                spec.data, data.data_dir, budget["image_size"], split=spec.split,
                synthetic=spec.synthetic))
            scores.x, scores.y = data.x_test, data.y_test
            for seed in seeds:
                for engine in engines:
                    cell = cell_of(spec, data, engine, seed, budget)
                    done = None if args.redo else ledger.get(cell)
                    if done:
                        how = f"from the ledger, {done['date']}"
                    elif args.from_ledger:
                        args.missing.append(f"{data.name} {engine} seed {seed}")
                        continue
                    else:
                        trials, wall, champion = run_engine(engine, specs, data, seed, budget,
                                                            Path(tmp), mlflow_url, scores)
                        row = judge(engine, trials, wall, data, seed, budget, spec, problem,
                                    scores)
                        if champion:
                            rechecked(row, champion, problem, data, mlflow_url)
                        done, how = ledger.add(cell, row, row.pop("curve")), "trained"
                    row, curve = {**done["row"], "code": done["code"]}, done["curve"]
                    curves[(data.name, engine, seed)] = curve
                    rows.append(row)
                    print(f"{data.name} {engine} seed {seed} ({how}): best val "
                          f"{row['best_val']:.4f}, test {row['test']:.4f}, {row['complete']} "
                          f"complete, {row['pruned']} pruned, {row['epochs_spent']} epochs, "
                          f"{row['wall_s']:.0f} s", file=sys.stderr, flush=True)
    if not rows:
        raise SystemExit(f"{args.ledger} holds none of these runs: run without --from-ledger "
                         "to train them, or give the --ledger that holds them")
    return summarize(args, budget, engines, sets, seeds, spec, rows, curves)


def judge(engine: str, trials: list[Trial], wall: float, data: DataSet, seed: int,
          budget: dict, spec: StudySpec, problem: Classification,
          scores: HeldOutScores) -> dict[str, Any]:
    """One engine x data x seed: its best within the budget, and that model's test accuracy."""
    curve, picked, inside = trace(trials, budget["budget"])
    states = [t.state for t in trials]
    row: dict[str, Any] = {
        "data": data.name, "engine": engine, "seed": seed,
        "best_val": curve[-1] if curve else math.nan, "test": math.nan, "test_from": "-",
        "replay_val": math.nan, "picked": "-", "wall_s": wall,
        "epochs_spent": sum(t.epochs for t in trials), "trials": len(trials),
        "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"), "stuck": sum(t.stuck for t in trials),
        # where the epochs went (to explain a result): lab baselines, pruned trials
        "baseline_epochs": sum(t.epochs for t in trials if t.baseline),
        "pruned_epochs": sum(t.epochs for t in trials if t.state == "PRUNED"),
        "params": "", "curve": curve,
    }
    if picked is None:
        return row
    row["picked"] = f"{picked.study} t{picked.number}"
    row["params"] = json.dumps(picked.params, sort_keys=True, default=str)
    if inside == picked.epochs and picked.run_id in scores.by_run:
        row["test"], row["test_from"] = scores.by_run[picked.run_id], "trial's model"
    else:  # a trial the budget cut: retrain it to its in-budget end
        epochs = picked.initial + inside
        row["replay_val"], row["test"] = replay(spec, problem, picked, epochs, data)
        why = "continued trial, replayed from scratch" if picked.initial else "replay"
        row["test_from"] = f"{why}, {epochs} epochs"
    return row


def rechecked(row: dict[str, Any], champion: dict[str, Any], problem: Classification,
              data: DataSet, mlflow_url: str) -> None:
    """A re-checked study's row: its champion (not the search's best trial) is the pick, its
    finalists' mean the value it reports, and its kept model what the test split judges; the
    re-runs' epochs count as spent."""
    from search.champion.kept import load
    from search.trial.training import fresh_keras_session

    with fresh_keras_session():
        model = load(champion["model_id"], mlflow_url)
        test = accuracy_on(model, data.x_test, data.y_test, problem.config(champion["params"]),
                           problem.data.n_classes)
    row.update({
        "picked": f"{row['picked'].split(' t')[0]} t{champion['trial']}"
                  + (" ensemble" if champion["ensemble"] else ""),
        "params": json.dumps(champion["params"], sort_keys=True, default=str),
        "test": test, "test_from": "champion's kept model" + (
            " (the finalists' ensemble)" if champion["ensemble"] else ""),
        "reported": champion["reported"], "reported_sd": champion["sd"],
        "reported_runs": champion["runs"], "finalists": champion["finalists"],
        "recheck": champion["method"], "epochs_spent": row["epochs_spent"] + champion["epochs"],
        "recheck_epochs": champion["epochs"]})


def summarize(args: argparse.Namespace, budget: dict, engines: list[str], sets: list[DataSet],
              seeds: list[int], spec: StudySpec, rows: list[dict],
              curves: dict[tuple[str, str, int], list[float]]) -> common.Result:
    import pandas as pd

    runs = pd.DataFrame(rows)
    # The value an engine reports for its pick: the finalists' mean where it re-checked them,
    # else the best validation value (older ledger rows have no `reported`).
    runs["reported"] = runs.get("reported", runs["best_val"]).fillna(runs["best_val"])
    runs["drop"] = runs["reported"] - runs["test"]
    if "reported_sd" in runs:
        runs["within_sd"] = (runs["drop"].abs() <= runs["reported_sd"]).where(
            runs["reported_sd"].notna())
    picked = runs[["data", "engine", "seed", "picked", "best_val", "params"]]
    runs = runs.drop(columns="params")
    grid = "lab-grid" in engines
    if grid:  # epochs each engine needed to reach the grid's best (same data and seed)
        for i, row in runs.iterrows():
            grid_curve = curves.get((row["data"], "lab-grid", row["seed"]), [])
            target = grid_curve[-1] if grid_curve else math.nan
            runs.loc[i, "grid_best"] = target
            runs.loc[i, "grid_epochs"] = len(grid_curve) if grid_curve else math.nan
            runs.loc[i, "epochs_to_grid_best"] = first_reaching(
                curves[(row["data"], row["engine"], row["seed"])], target) \
                if grid_curve else math.nan  # the grid's run of this seed is not in yet

    summary_rows = []
    for (data, engine), g in runs.groupby(["data", "engine"], sort=False):
        entry = {
            "data": data, "engine": engine, "seeds": len(g),
            "best_val_median": g["best_val"].median(), "best_val_min": g["best_val"].min(),
            "best_val_max": g["best_val"].max(), "test_median": g["test"].median(),
            "test_min": g["test"].min(), "test_max": g["test"].max(),
            "drop_median": g["drop"].median(),
            "within_sd": (f"{int(g['within_sd'].sum())}/{int(g['within_sd'].notna().sum())}"
                          if "within_sd" in g and g["within_sd"].notna().any() else "-"),
            "wall_median_s": g["wall_s"].median(), "epochs_spent_median":
            g["epochs_spent"].median(), "complete_median": g["complete"].median(),
            "pruned_median": g["pruned"].median(), "stuck_median": g["stuck"].median(),
            "failed": int(g["failed"].sum()), "code": ", ".join(sorted(set(g["code"]))),
        }
        if grid:
            reached = g["epochs_to_grid_best"].dropna()  # seeds whose grid run is in
            entry["epochs_to_grid_best_median"] = (
                reached.median() if math.isfinite(reached.median()) else "not reached")
            entry["reached_grid_best"] = f"{int(reached.map(math.isfinite).sum())}/{len(reached)}"
        summary_rows.append(entry)
    summary = pd.DataFrame(summary_rows)
    goal, verdicts = goals(runs, engines)
    notes = describe(args, budget, engines, sets, seeds, spec, runs, verdicts)
    metrics: dict[str, float] = {}
    for r in summary.itertuples():
        metrics[f"{r.data}.{r.engine}.best_val_median"] = r.best_val_median
        metrics[f"{r.data}.{r.engine}.test_median"] = r.test_median
        metrics[f"{r.data}.{r.engine}.wall_median_s"] = r.wall_median_s
    for row in goal.to_dict("records"):
        metrics[f"{row['data']}.goal_met"] = float(row["goal_met"] is True)
    curve_rows = [{"data": d, "engine": e, "seed": s, "epochs_spent": i + 1, "best_val": v}
                  for (d, e, s), curve in curves.items() for i, v in enumerate(curve)]
    tables = {"summary": summary, "goal": goal, "runs": runs, "picked": picked,
              "curves": pd.DataFrame(curve_rows)}
    return common.Result(
        name=NAME, mode=args.mode, command=args.command, tables=tables,
        figures={"best_so_far": figure(runs, curves, engines, sets, seeds, budget)},
        metrics=metrics,
        params={**{k: v for k, v in budget.items() if k != "data"},
                "data": ",".join(budget["data"]), "engines": ",".join(engines),
                "task": spec.name, "seeds": budget["seeds"]},
        notes=notes, shown=["summary", "goal", "runs"],
    )


def goals(runs: pd.DataFrame, engines: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Per data set: is medtune's default at least as good as every other engine (median test
    accuracy of the picked model), and does it reach the grid's best validation value within a
    third of the grid's epochs?"""
    import pandas as pd

    rows, verdicts = [], []
    if "medtune" not in engines:
        return pd.DataFrame(), verdicts
    grid = "epochs_to_grid_best" in runs  # lab-grid among the engines
    for data, g in runs.groupby("data", sort=False):
        median = g.groupby("engine", sort=False)["test"].median()
        if "medtune" not in median:  # a partial ledger (--from-ledger)
            continue
        others = median.drop("medtune")
        row: dict[str, Any] = {"data": data, "medtune_test": median["medtune"]}
        if len(others):
            rival = others.idxmax()
            row |= {"best_other": rival, "best_other_test": others[rival],
                    "as_good_as_all": bool(median["medtune"] >= others.max() - 1e-9)}
        mine = g[g["engine"] == "medtune"]
        mine = mine.dropna(subset=["epochs_to_grid_best"]) if grid else mine[:0]
        if len(mine):  # medtune runs whose seed has a grid run
            reach = mine["epochs_to_grid_best"].median()
            row |= {"grid_best": g[g["engine"] == "lab-grid"]["best_val"].median(),
                    "grid_epochs": mine["grid_epochs"].median(),
                    "third_of_grid": mine["grid_epochs"].median() / 3,
                    "medtune_epochs_to_grid_best": reach if math.isfinite(reach)
                    else "not reached",
                    "within_third": bool(reach <= mine["grid_epochs"].median() / 3)}
        checks = [row[k] for k in ("as_good_as_all", "within_third") if k in row]
        row["goal_met"] = all(checks) if checks else "-"
        rows.append(row)
        verdicts.append(verdict(row))
    return pd.DataFrame(rows), verdicts


def verdict(row: dict) -> str:
    parts = []
    if "as_good_as_all" in row:
        parts.append(
            f"median test accuracy of the picked model {row['medtune_test']:.3f} against "
            f"{row['best_other_test']:.3f} for the best other engine ({row['best_other']}): "
            + ("at least as good" if row["as_good_as_all"] else "**worse**"))
    if "within_third" in row:
        reach = row["medtune_epochs_to_grid_best"]
        reach = (f"reached the lab grid's best ({row['grid_best']:.3f}) after {reach:.0f} epochs"
                 if isinstance(reach, float) else
                 f"did not reach the lab grid's best ({row['grid_best']:.3f}) within the budget")
        parts.append(f"{reach}, against a third of the grid's {row['grid_epochs']:.0f} epochs "
                     f"({row['third_of_grid']:.1f}): "
                     + ("met" if row["within_third"] else "**not met**"))
    met = "goal met" if row["goal_met"] is True else "**goal not met**"
    return f"**{row['data']}**: {met}; " + "; ".join(parts) + "."


def describe(args: argparse.Namespace, budget: dict, engines: list[str], sets: list[DataSet],
             seeds: list[int], spec: StudySpec, runs: pd.DataFrame,
             verdicts: list[str]) -> list[str]:
    from search.study.run import queued_baselines

    ledger = args.ledger.resolve()
    ledger_name = ledger.relative_to(common.REPO) if ledger.is_relative_to(common.REPO) \
        else ledger.name

    b, e, s = budget["budget"], budget["epochs"], budget["image_size"]
    lab = spec.budget["lab"]["epochs"]
    data = "; ".join(
        f"{d.name}: " + (f"`{Path(d.data_dir).name}`" if d.data_dir else "the embedded synthetic "
                         "Skin set (rendered at 128 px)")
        + f", {d.sizes}, test = {d.test_source}" for d in sets)
    notes = [
        f"Task `{spec.name}` (model {spec.model}, its search space), images {s}x{s} "
        f"(MedMNIST's 28x28 upsampled to {s} by medtune's anti-aliased resize); budget {b} "
        f"training epochs per study (all trials together), {e} epochs per trial, early stopping "
        f"patience {spec.training['early_stopping_patience']} (medtune's default, for every "
        f"engine, the grid included); seeds {seeds}. Data: {data}.",
        "Engines: `medtune` = the task's default study: sampler "
        f"{json.dumps(spec.sampler)}, pruner {json.dumps(spec.pruner)}, the "
        f"first {len(queued_baselines(spec, 'quick'))} of its lab baselines enqueued (the "
        "quick budget's); `random` = Optuna's random "
        "sampler, no pruner, no baselines; `keras-tuner` = `engine=\"keras-tuner\"` (Hyperband, "
        f"factor 3, max epochs {e}); `lab-grid` = the lab baselines alone, in order, each at "
        f"the lab's {lab} epochs truncated to what is left of the budget, early stopping but no "
        "stuck stop (one single-trial study per baseline; baseline i is seeded as trial i of "
        "the default study, so the default study's first trial trains exactly as the grid's "
        f"first one does, for its {e} epochs or until medtune stops it as stuck).",
        "How it is counted: a study stops once its trials trained the budget "
        "(`epoch_budget`); the trial in flight finishes, so `epochs_spent` (and the wall time) "
        "may pass the budget by up to one trial. The best validation value, the curve and the "
        "picked model count only the first "
        f"{b} epochs spent: after each epoch, the best per-epoch validation accuracy of the "
        "trials that completed (a pruned or failed trial's epochs count as spent and give no "
        "model). The picked model is the trial holding that value; its test accuracy is that "
        "trial's own model (best epoch's weights, scored when the trial ended: "
        "`trial's model`, Keras Tuner's too), or, for a trial the budget cut, a replay "
        "with its params and seed for its epochs within the budget (`replay_val` is then the "
        "replay's validation value; a Hyperband trial that continued from its parent's weights "
        "is replayed from scratch for its total epochs). `epochs_to_grid_best`: epochs spent when "
        "an engine first matched the grid's best of the same data and seed (for the grid: "
        "where it found its own best; `inf`: never within the budget). Keras Tuner's trials end "
        "COMPLETE (a trial not promoted stops at its rung) or, when stuck, PRUNED. "
        "`baseline_epochs`, `pruned_epochs`: epochs a study spent on the enqueued lab "
        "baselines and on trials its pruner stopped. Wall time: the study or studies, MLflow "
        "logging included, test scoring excluded. Each row is read from the ledger (`"
        f"{ledger_name}`) where a run with the same settings had finished it; `code` is the "
        "commit that trained it (`+changes`: with uncommitted changes).",
        *verdicts,
    ]
    if {"medtune", "lab-grid"} <= set(engines):
        mine = runs[runs["engine"] == "medtune"].groupby("data", sort=False)
        spent = "; ".join(f"{data} {g['baseline_epochs'].median():.0f} on the baselines, "
                          f"{g['pruned_epochs'].median():.0f} on pruned trials"
                          for data, g in mine)
        notes.append(
            f"Where medtune's default spent its {b} epochs (median over seeds): {spent}. Its "
            f"first trial is the grid's first baseline cut at {e} epochs (same params and seed: "
            "the two curves coincide up to there, or until medtune stops it as stuck), so it "
            "reaches the grid's best within a third of the grid's epochs only if the grid found "
            "its best inside those epochs, or a later trial beats the lab's recipe in what is "
            "left of that third.")
    ended = runs[(runs["engine"] == "keras-tuner") & (runs["epochs_spent"] < b)]
    if len(ended):
        notes.append(f"Keras Tuner's Hyperband finished all its brackets before the budget in "
                     f"{len(ended)} run(s) (it spent {', '.join(map(str, ended['epochs_spent']))}"
                     " epochs).")
    if args.missing:
        notes.append(f"**Partial** (`--from-ledger`): {len(runs)} of "
                     f"{len(runs) + len(args.missing)} runs are in the ledger; medians are over "
                     "the seeds each engine has (the `seeds` column), so engines are compared on "
                     f"different seeds. Not run yet: {'; '.join(args.missing)}.")
    if args.mode == "quick":
        notes.append(f"Quick mode: one seed on {', '.join(budget['data'])}, so the spread "
                     "columns are one run and the verdicts are indicative only; the full mode "
                     "runs five seeds on knee, pneumonia and breast.")
    return notes


def figure(runs: pd.DataFrame, curves: dict[tuple[str, str, int], list[float]],
           engines: list[str], sets: list[DataSet], seeds: list[int], budget: dict) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def counted(n: int) -> str:
        return f"{n} seed{'s' * (n != 1)}"

    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4), squeeze=False)
    for ax, data in zip(axes[0], sets, strict=True):
        ax.set_xlabel("training epochs spent (all trials)")
        ax.set_ylabel("best validation accuracy so far")
        ran = {(e, s) for e in engines for s in seeds if (data.name, e, s) in curves}
        if not ran:  # --from-ledger: none of this data set's runs has finished yet
            ax.set_title(f"{data.name}: not run yet")
            ax.text(0.5, 0.5, "no finished run in the ledger", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
            continue
        for engine in engines:
            lines = [curves[(data.name, engine, s)] for s in seeds if (engine, s) in ran]
            if not lines:
                continue
            n = max(len(c) for c in lines)
            padded = np.array([c + [c[-1] if c else math.nan] * (n - len(c)) for c in lines])
            # A median only where every seed has a value (an engine whose Hyperband ended
            # early keeps its last value).
            label = engine if len(lines) == len(seeds) else f"{engine} ({counted(len(lines))})"
            ax.plot(np.arange(1, n + 1), np.median(padded, axis=0), label=label,
                    linewidth=2 if engine == "medtune" else 1.2)
        spent = runs[(runs["data"] == data.name) & (runs["engine"] == "lab-grid")]
        if len(spent):
            third = min(spent["epochs_spent"].median(), budget["budget"]) / 3
            ax.axvline(third, color="grey", linestyle=":", label="a third of the grid's epochs")
        complete = len(ran) == len(engines) * len(seeds)
        ax.set_title(f"{data.name} (median of {counted(len(seeds))})" if complete
                     else f"{data.name} (partial: median of the seeds run)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(common.main(NAME, add_arguments, run, description=__doc__))
