"""`medtune` (`python -m search.cli`): list tasks, tune one, compare studies, export the best."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys

from search.engines.catalog import DEFAULT as DEFAULT_ENGINE
from search.engines.catalog import ENGINES, get_engine

INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


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


def _not_interrupts(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def _yes_no(text: str) -> bool:
    """A switch that MLproject can pass as a value: true/false, yes/no, 1/0 ("": false)."""
    value = text.strip().lower()
    if value in ("", "false", "no", "0", "off"):
        return False
    if value in ("true", "yes", "1", "on"):
        return True
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _workers(text: str) -> int | None:
    """`--workers`: a number, or auto (None: one per GPU)."""
    return None if text.strip().lower() == "auto" else _whole(text)


_workers.__name__ = "int or auto"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="medtune", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("tasks", help="list the lab tasks (the files in studies/)")

    _tune_arguments(commands.add_parser("tune", help="run (or continue) a task's Optuna study"))
    export = commands.add_parser(
        "export", help="register a study's champion, kept in MLflow, as `champion`")
    export.add_argument("--study", required=True,
                        help="study name: the task's name, unless `tune --study` gave another")
    export.add_argument("--storage", type=_optional(str),
                        help="Optuna storage URL (default sqlite:///optuna.db)")
    export.add_argument("--name", type=_optional(str),
                        help="registered model name (default: the study name)")
    export.add_argument("--replay", type=_yes_no, nargs="?", const=True, default=False,
                        help="first retrain the best trial as it ran and register nothing "
                             "unless it reaches the recorded value (a reproducibility check)")
    export.add_argument("--tolerance", type=_optional(float), default=None,
                        help="with --replay: refuse to register when the replay misses the "
                             "recorded value by more than this (default: the study file's "
                             "[export] tolerance)")
    export.add_argument("--experiment", type=_optional(str),
                        help="MLflow experiment (default: the task's name)")
    export.add_argument("--tracking-uri", type=_optional(str))

    compare = commands.add_parser("compare", help="the best trials of several studies")
    compare.add_argument("--studies", required=True,
                         help="study names, separated by commas or spaces (e.g. task names)")
    compare.add_argument("--storage", type=_optional(str),
                         help="Optuna storage URL (default sqlite:///optuna.db)")
    compare.add_argument("--top", type=_whole, default=3, help="trials per study (default 3)")
    compare.add_argument("--experiment", default="medtune")
    compare.add_argument("--tracking-uri", type=_optional(str))

    report = commands.add_parser(
        "report", help="the lab report of a study (HTML and Markdown), or of several compared")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="study name (the task's name, unless tune --study)")
    which.add_argument("--compare", nargs="+", metavar="STUDY",
                       help="several studies on one page (e.g. alexnet_skin vgg_skin)")
    report.add_argument("--storage", type=_optional(str),
                        help="Optuna storage URL (default sqlite:///optuna.db)")
    report.add_argument("--out", type=_optional(str),
                        help="folder to write into (default reports/<study>)")
    report.add_argument("--tracking-uri", type=_optional(str))

    dashboard = commands.add_parser(
        "dashboard", help="optuna-dashboard over the studies' storage, on 127.0.0.1")
    dashboard.add_argument("--storage", type=_optional(str),
                           help="Optuna storage URL (default sqlite:///optuna.db)")
    dashboard.add_argument("--port", type=_whole, default=8080, help="port (default 8080)")
    return top


def _tune_arguments(tune: argparse.ArgumentParser) -> None:
    tune.add_argument("--task", required=True, help="task name (see `medtune tasks`) or .toml")
    tune.add_argument("--budget", default="quick",
                      help="quick (default: minutes on a laptop) or lab (the lab sheets' budget)")
    tune.add_argument("--n-trials", type=_optional(_whole),
                      help="finished trials the study should reach in total (budget's default)")
    tune.add_argument("--timeout", type=_optional(float),
                      help="start no new trial after S seconds (budget's default; 0: no limit)")
    tune.add_argument("--epochs", type=_optional(_whole), help="max epochs per trial")
    tune.add_argument("--epoch-budget", type=_optional(_whole),
                      help="stop once all trials together have trained this many epochs")
    tune.add_argument("--refit-epochs", type=_optional(_whole), default=0,
                      help="when the study ends, continue its best trial to N epochs under early "
                           "stopping (the champion, if it beats the trial on validation; 0: no)")
    tune.add_argument("--finalists", type=_optional(_whole),
                      help="when the study ends, train its best N configurations again with "
                           "other seeds and name the best mean champion (default: the study "
                           "file's [selection] finalists)")
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
    tune.add_argument("--engine", default=DEFAULT_ENGINE,
                      help="; ".join(f"{e.name}: {e.description}" for e in ENGINES.values())
                      + f" (default {DEFAULT_ENGINE})")
    tune.add_argument("--workers", type=_workers, default=1,
                      help="processes sharing the study on this machine (default 1), or auto: "
                           "one per GPU (1 without); for several machines start the same "
                           "command on each (see README)")
    tune.add_argument("--gpus", type=_optional(str),
                      help="GPU ids the workers use, e.g. 0,2 (default: all); each worker sees "
                           "one, round-robin")
    tune.add_argument("--seed", type=_whole, default=0)
    tune.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                      help="write the study's lab report when it ends (default: yes; "
                           "`medtune report` writes it later)")
    tune.add_argument("--experiment", type=_optional(str),
                      help="MLflow experiment (default: the task's name; under `mlflow run`, "
                           "the experiment it chose)")
    tune.add_argument("--tracking-uri", type=_optional(str),
                      help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                           "sqlite:///mlflow.db)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    # A kept model is a few MB: MLflow's download bars would be noise between the epoch lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Optuna logs a trial cut by Ctrl-C with its traceback; medtune says it in one line.
    logging.getLogger("optuna.study._optimize").addFilter(_not_interrupts)
    from search.spec.study_files import load_spec, task_names

    try:
        if args.command == "tasks":
            for name in task_names():
                spec = load_spec(name)
                print(f"{name:16} {spec.description}")
            return 0
        if args.command == "compare":
            from search.serving.compare import compare_command

            return compare_command(args.studies, args.storage, args.top, args.experiment,
                                   args.tracking_uri)
        if args.command == "export":
            from search.serving.export import export_command

            return export_command(args.study, args.storage, name=args.name, replay=args.replay,
                                  tolerance=args.tolerance, tracking_uri=args.tracking_uri,
                                  experiment=args.experiment)
        if args.command == "dashboard":
            from search.serving.dashboard import dashboard_command

            return dashboard_command(args.storage, args.port)
        if args.command == "report":
            from search.report.page import report_command

            return report_command(args.study, args.compare, args.storage, args.tracking_uri,
                                  args.out)
        return _tune(args, load_spec(args.task), sys.argv[1:] if argv is None else argv)
    except ValueError as error:  # bad input: say what and how to fix it, no traceback
        print(f"medtune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C: one line, what was logged stays
        trial = getattr(stop, "trial", None)
        print("medtune: interrupted; " + (
            f"trial {trial} will be retried on the next run" if trial is not None
            else "run the same command again to continue"), file=sys.stderr)
        return INTERRUPTED


def _tune(args: argparse.Namespace, spec, argv: list[str]) -> int:
    from search.champion.finalists import reserve
    from search.engines.limits import stop_reason
    from search.records import study_facts
    from search.report.page import write_after_tune
    from search.runtime import worker
    from search.runtime.devices import device_line, plan_gpus, worker_envs
    from search.runtime.urls import mask_password
    from search.spec.settings import resolve_settings
    from search.study.printed import print_summary
    from search.study.run import run_study

    settings = resolve_settings(
        spec, budget=args.budget, study_name=args.study, storage=args.storage,
        data_dir=args.data_dir, seed=args.seed, n_trials=args.n_trials, timeout=args.timeout,
        epochs=args.epochs, image_size=args.image_size, base=args.base, engine=args.engine,
        epoch_budget=args.epoch_budget, refit_epochs=args.refit_epochs,
        finalists=args.finalists,
    )
    if worker.WORKER_ENV in os.environ:  # one of several workers: the command that started it ends
        settings = dataclasses.replace(settings, study_end=False)
    gpus = plan_gpus(args.workers, args.gpus)
    args.workers = len(gpus)
    print(
        f"medtune: {spec.name} ({spec.description})\n"
        f"  budget {settings.budget}: {settings.n_trials} trials, up to {settings.epochs} epochs, "
        f"{settings.image_size}x{settings.image_size} images"
        + (f", timeout {settings.timeout:g} s" if settings.timeout else "") + "\n"
        f"  data: {settings.data_dir or 'embedded synthetic set (no --data-dir given)'}\n"
        f"  study {settings.study_name!r} in {mask_password(settings.storage)}"
        + (f", engine {settings.engine}" if settings.engine != DEFAULT_ENGINE else "") + "\n"
        f"  {device_line(gpus, spec.training.get('precision', 'float32'))}",
        flush=True,
    )
    timeout = settings.timeout  # the budget's, counted from the first start (restarts too)
    settings = dataclasses.replace(settings, timeout=worker.timeout_left(settings.timeout))
    run = functools.partial(run_study, spec, tracking_uri=args.tracking_uri,
                            experiment=args.experiment)
    if args.workers > 1:
        if not get_engine(settings.engine).parallel:
            raise ValueError(f"the {settings.engine} engine runs in one process: drop --workers")
        # The study and its parent run, once; the refit waits for the workers' trials.
        run(dataclasses.replace(settings, n_trials=0, refit_epochs=0, finalists=0))
        failed = worker.run_workers(worker_envs(gpus, dict(os.environ)), argv)
        study, tracker = run(dataclasses.replace(settings, n_trials=0))  # the final summary
    else:
        failed = 0
        # A bar in a log, or from each of several workers, is noise.
        bar = sys.stderr.isatty() and worker.WORKER_ENV not in os.environ
        guard = worker.MemoryGuard(spec.recovery["restart_after_growth_mb"])
        study, tracker = run(settings, show_progress_bar=bar, guard=guard)
        if guard.exceeded:
            print(f"medtune: {guard.exceeded}; restarting this worker to release it "
                  "(the study continues where it is)", flush=True)
            return worker.RESTART
    seconds = worker.seconds_since_start()
    recheck = study_facts(study).finalists  # its epochs were kept from the search
    room = (lambda s: reserve(s, len(recheck["trials"]), recheck["runs"], settings.epochs)
            ) if recheck else None
    why = stop_reason(study, n_trials=settings.n_trials, epoch_budget=settings.epoch_budget,
                      timeout=timeout, seconds=seconds, engine=settings.engine, room=room)
    print_summary(study, tracker, spec.objective, settings.n_trials, seconds, why)
    if (args.report and settings.study_end
            and any(t.value is not None for t in study.get_trials(deepcopy=False))):
        write_after_tune(study, tracker.tracking_uri, spec)
    if failed:
        print(f"medtune: error: {failed} of {args.workers} workers failed (see their output "
              "above); run the same command again to continue the study", file=sys.stderr)
        return 1
    return 0




def run() -> None:
    """The `medtune` command: `main`, restarting the process when a worker asks for it."""
    from search.runtime import worker  # its clock starts before the study's imports

    code = main()
    if code == worker.RESTART:
        worker.restart(sys.argv[1:])
    sys.exit(code)

if __name__ == "__main__":
    run()
