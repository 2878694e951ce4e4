"""`medtune` / `python -m search.cli`: list the tasks, or tune one of them."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _optional(kind):
    """argparse type where "" means "not given" (MLproject passes empty defaults as "")."""

    def parse(text: str):
        if text in ("", "None", "none"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _whole(text: str) -> int:
    value = float(text)  # MLproject "float" parameters arrive as e.g. "10.0"
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


_whole.__name__ = "int"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="medtune", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("tasks", help="list the lab tasks (the files in studies/)")

    tune = commands.add_parser("tune", help="run (or continue) a task's Optuna study")
    tune.add_argument("--task", required=True, help="task name (see `medtune tasks`) or .toml")
    tune.add_argument("--budget", default="quick",
                      help="quick (default: minutes on a laptop) or lab (the lab sheets' budget)")
    tune.add_argument("--n-trials", type=_optional(_whole),
                      help="finished trials the study should reach in total (budget's default)")
    tune.add_argument("--timeout", type=_optional(float),
                      help="start no new trial after S seconds (budget's default; 0: no limit)")
    tune.add_argument("--epochs", type=_optional(_whole), help="max epochs per trial")
    tune.add_argument("--image-size", type=_optional(_whole), help="square input size in pixels")
    tune.add_argument("--data-dir", type=_optional(str),
                      help="course data folder, its data set folder, or a MedMNIST .npz "
                           "(default: the embedded synthetic data)")
    tune.add_argument("--storage", type=_optional(str),
                      help="Optuna storage URL (default sqlite:///optuna.db)")
    tune.add_argument("--study", type=_optional(str), help="study name (default: the task name)")
    tune.add_argument("--base", type=_optional(str),
                      help="transfer tasks: VGG16 ImageNet weights file (default: the Keras "
                           "cache), or models:/<name>@<alias> for a registered medtune VGG16")
    tune.add_argument("--seed", type=_whole, default=0)
    tune.add_argument("--experiment", default="medtune",
                      help="MLflow experiment when not started by `mlflow run`")
    tune.add_argument("--tracking-uri", type=_optional(str),
                      help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                           "sqlite:///mlflow.db)")
    compare = commands.add_parser("compare", help="the best trials of several studies")
    compare.add_argument("--studies", required=True,
                         help="study names, separated by commas or spaces (e.g. task names)")
    compare.add_argument("--storage", type=_optional(str),
                         help="Optuna storage URL (default sqlite:///optuna.db)")
    compare.add_argument("--top", type=_whole, default=3, help="trials per study (default 3)")
    compare.add_argument("--experiment", default="medtune")
    compare.add_argument("--tracking-uri", type=_optional(str))
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    from search.spec import load_spec, task_names

    try:
        if args.command == "tasks":
            for name in task_names():
                spec = load_spec(name)
                print(f"{name:16} {spec.description}")
            return 0
        if args.command == "compare":
            return _compare(args)
        return _tune(args, load_spec(args.task))
    except ValueError as error:  # bad input: say what and how to fix it, no traceback
        print(f"medtune: error: {error}", file=sys.stderr)
        return 2


def _tune(args: argparse.Namespace, spec) -> int:
    from search.study import mask_password, resolve_settings, run_study

    settings = resolve_settings(
        spec, budget=args.budget, study_name=args.study, storage=args.storage,
        data_dir=args.data_dir, seed=args.seed, n_trials=args.n_trials, timeout=args.timeout,
        epochs=args.epochs, image_size=args.image_size, base=args.base,
    )
    print(
        f"medtune: {spec.name} ({spec.description})\n"
        f"  budget {settings.budget}: {settings.n_trials} trials, up to {settings.epochs} epochs, "
        f"{settings.image_size}x{settings.image_size} images"
        + (f", timeout {settings.timeout:g} s" if settings.timeout else "") + "\n"
        f"  data: {settings.data_dir or 'embedded synthetic set (no --data-dir given)'}\n"
        f"  study {settings.study_name!r} in {mask_password(settings.storage)}",
        flush=True,
    )
    started = time.monotonic()
    study, tracker = run_study(spec, settings, tracking_uri=args.tracking_uri,
                               experiment=args.experiment,
                               show_progress_bar=sys.stderr.isatty())  # a bar in a log is noise
    _print_summary(study, tracker, spec.objective, time.monotonic() - started)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from search import compare, plots
    from search.study import DEFAULT_STORAGE
    from search.tracking import log_comparison

    names = [n for n in args.studies.replace(",", " ").split() if n]
    table = compare.best_trials(args.storage or DEFAULT_STORAGE, names, top=args.top)
    if table.empty:
        raise ValueError(f"no completed trials in {', '.join(names)} yet: run `medtune tune` first")
    text = compare.markdown(table)
    print(text)
    run_id = log_comparison(
        f"compare {' vs '.join(names)}",
        {"best_trials.md": text, "best_trials.csv": table.to_csv(index=False)},
        plots.best_trials_bars(table), experiment=args.experiment, tracking_uri=args.tracking_uri,
    )
    print(f"logged to MLflow run {run_id}")
    return 0


def _print_summary(study, tracker, objective: str, seconds: float) -> None:
    import optuna

    TS = optuna.trial.TrialState
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TS.COMPLETE, TS.PRUNED, TS.FAIL)}
    print(f"\n=== {study.study_name}: {sum(counts.values())} finished trials "
          f"({', '.join(f'{n} {k}' for k, n in counts.items())}) in {seconds:.0f} s")
    if counts["complete"]:
        best = study.best_trial
        print(f"best trial: #{best.number}  {objective} = {best.value:.4f}")
        for key, value in best.params.items():
            print(f"  {key:16} {value}")
        print(f"best trial's MLflow run: {best.user_attrs.get('mlflow_run_id')}")
    print(f"study's MLflow run:      {tracker.parent_run_id} "
          f"(experiment {tracker.experiment_id})")
    print(f"look at it:              {tracker.ui_hint()}")


if __name__ == "__main__":
    sys.exit(main())
