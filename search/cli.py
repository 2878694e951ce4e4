"""`medtune` (`python -m search.cli`): list tasks, tune one, compare studies, export the best."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import subprocess
import sys

from search.engines import DEFAULT as DEFAULT_ENGINE
from search.engines import ENGINES, get_engine

WORKER_ENV = "MEDTUNE_WORKER"  # set in the processes `--workers N` starts
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
    from search.spec import load_spec, task_names

    try:
        if args.command == "tasks":
            for name in task_names():
                spec = load_spec(name)
                print(f"{name:16} {spec.description}")
            return 0
        if args.command == "compare":
            return _compare(args)
        if args.command == "export":
            return _export(args)
        if args.command == "dashboard":
            return _dashboard(args)
        if args.command == "report":
            from search.report_page import report_command

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
    from search import worker
    from search.finalists import reserve
    from search.limits import stop_reason
    from search.records import FINALISTS_ATTR
    from search.settings import resolve_settings
    from search.study import run_study
    from search.urls import mask_password

    settings = resolve_settings(
        spec, budget=args.budget, study_name=args.study, storage=args.storage,
        data_dir=args.data_dir, seed=args.seed, n_trials=args.n_trials, timeout=args.timeout,
        epochs=args.epochs, image_size=args.image_size, base=args.base, engine=args.engine,
        epoch_budget=args.epoch_budget, refit_epochs=args.refit_epochs,
        finalists=args.finalists,
    )
    if WORKER_ENV in os.environ:  # one of several workers: the command that started it ends
        settings = dataclasses.replace(settings, study_end=False)
    gpus = _plan_gpus(args)
    print(
        f"medtune: {spec.name} ({spec.description})\n"
        f"  budget {settings.budget}: {settings.n_trials} trials, up to {settings.epochs} epochs, "
        f"{settings.image_size}x{settings.image_size} images"
        + (f", timeout {settings.timeout:g} s" if settings.timeout else "") + "\n"
        f"  data: {settings.data_dir or 'embedded synthetic set (no --data-dir given)'}\n"
        f"  study {settings.study_name!r} in {mask_password(settings.storage)}"
        + (f", engine {settings.engine}" if settings.engine != DEFAULT_ENGINE else "") + "\n"
        f"  {_device_line(gpus, spec.training.get('precision', 'float32'))}",
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
        failed = _run_workers(gpus, argv)
        study, tracker = run(dataclasses.replace(settings, n_trials=0))  # the final summary
    else:
        failed = 0
        # A bar in a log, or from each of several workers, is noise.
        bar = sys.stderr.isatty() and WORKER_ENV not in os.environ
        guard = worker.MemoryGuard(spec.recovery["restart_after_growth_mb"])
        study, tracker = run(settings, show_progress_bar=bar, guard=guard)
        if guard.exceeded:
            print(f"medtune: {guard.exceeded}; restarting this worker to release it "
                  "(the study continues where it is)", flush=True)
            return worker.RESTART
    seconds = worker.seconds_since_start()
    recheck = study.user_attrs.get(FINALISTS_ATTR)  # its epochs were kept from the search
    room = (lambda s: reserve(s, len(recheck["trials"]), recheck["runs"], settings.epochs)
            ) if recheck else None
    why = stop_reason(study, n_trials=settings.n_trials, epoch_budget=settings.epoch_budget,
                      timeout=timeout, seconds=seconds, engine=settings.engine, room=room)
    _print_summary(study, tracker, spec.objective, settings.n_trials, seconds, why)
    if settings.study_end and any(t.value is not None for t in study.get_trials(deepcopy=False)):
        _write_report(study, tracker.tracking_uri, spec)
    if failed:
        print(f"medtune: error: {failed} of {args.workers} workers failed (see their output "
              "above); run the same command again to continue the study", file=sys.stderr)
        return 1
    return 0


def _write_report(study, tracking_uri: str, spec) -> None:
    """The study's report, written where `medtune report` writes it; a failure only warns:
    the study stands, and `medtune report` can write it later."""
    from pathlib import Path

    from search.report_page import report_study

    try:
        html_path, _ = report_study(study, tracking_uri, Path("reports", study.study_name),
                                    spec=spec)
        print(f"  report: {html_path} (and report.md beside it)", flush=True)
    except Exception as error:  # noqa: BLE001 (anything: the study is done, its report is not)
        print(f"medtune: the report was not written ({type(error).__name__}: {error}); "
              f"`medtune report --study {study.study_name}` writes it", file=sys.stderr)


def _plan_gpus(args: argparse.Namespace) -> list[str | None]:
    """Each worker's GPU (None: its devices as they are); sets `args.workers` to their number.
    One worker runs in this process, which then sees only its GPU (before TensorFlow uses one)."""
    from search import devices

    chosen = devices.parse_gpus(args.gpus)
    available = devices.available_gpus() if chosen or args.workers != 1 else []
    gpus = devices.assign_gpus(args.workers, chosen, available)
    args.workers = len(gpus)
    if len(gpus) == 1 and gpus[0] is not None:
        os.environ[devices.VISIBLE] = gpus[0]
    devices.prepare_gpus()
    return gpus


def _device_line(gpus: list[str | None], precision: str) -> str:
    from search.devices import banner_line

    return banner_line(gpus) + ("" if precision == "float32" else f", precision {precision}")


def _worker_envs(gpus: list[str | None], base: dict[str, str]) -> list[dict[str, str]]:
    """The environment of each worker: its number, and only its GPU visible when it has one."""
    from search.devices import GPU_ENV, VISIBLE

    return [{**GPU_ENV, **base, WORKER_ENV: str(i), **({VISIBLE: gpu} if gpu is not None else {})}
            for i, gpu in enumerate(gpus)]


def _worker_argv(argv: list[str]) -> list[str]:
    """This command without --workers, --gpus and --refit-epochs: what each worker runs (the
    refit, like the finalists' re-check, runs once, in this process, when the workers are
    done)."""
    flags = ("--workers", "--gpus", "--refit-epochs")
    return [a for i, a in enumerate(argv)
            if a not in flags and (i == 0 or argv[i - 1] not in flags)
            and not a.startswith(tuple(f"{f}=" for f in flags))]


def _run_workers(gpus: list[str | None], argv: list[str]) -> int:
    """Start one process of this same command per entry of `gpus`, each a worker that sees only
    its GPU; wait; count failures."""
    command = [sys.executable, "-m", "search.cli", *_worker_argv(argv)]
    workers = [subprocess.Popen(command, env=env) for env in _worker_envs(gpus, dict(os.environ))]
    print(f"medtune: {len(workers)} workers started (pids "
          f"{', '.join(str(w.pid) for w in workers)})", flush=True)
    return sum(w.wait() != 0 for w in workers)


def _compare(args: argparse.Namespace) -> int:
    from search import compare, plots
    from search.settings import DEFAULT_STORAGE
    from search.tracking import log_comparison
    from search.urls import mask_password

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
        params={"studies": " ".join(names), "top": args.top,
                "storage": mask_password(args.storage or DEFAULT_STORAGE)},
    )
    print(f"logged to MLflow run {run_id}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from search.export import export_best
    from search.settings import DEFAULT_STORAGE

    done = export_best(args.study, args.storage or DEFAULT_STORAGE, name=args.name,
                       replay=args.replay, tolerance=args.tolerance,
                       tracking_uri=args.tracking_uri, experiment=args.experiment)
    model = done.registered
    source = (f"trial {done.trial}'s refit" if done.champion == "refit"
              else f"trial {done.trial}") + f" ({done.value:.4f} on validation)"
    if done.model_id:
        print(f"\nthe study's champion: {source}, kept in MLflow as models:/{done.model_id}")
    if done.replayed is not None:
        print(f"replayed trial {done.trial}: {done.replayed:.4f} (recorded {done.recorded:.4f}, "
              f"tolerance {done.tolerance})")
    print(f"registered {model.name} version {model.version} as champion"
          + (f"; version {model.previous} is now challenger" if model.previous else ""))
    print(f"  predict: mlflow.pyfunc.load_model({model.model_uri!r}).predict(['image.png'])")
    print(f"  serve:   mlflow models serve -m {model.model_uri} --env-manager local -p 5001")
    print(f"  Keras:   mlflow.keras.load_model({model.keras_uri!r})")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the same Optuna storage the studies use (a journal file too)."""
    from optuna_dashboard import run_server

    from search.recovery import open_storage
    from search.settings import DEFAULT_STORAGE
    from search.urls import mask_password

    storage = args.storage or DEFAULT_STORAGE
    print(f"medtune: optuna-dashboard of {mask_password(storage)} on "
          f"http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    run_server(open_storage(storage), host="127.0.0.1", port=args.port)
    return 0


def _print_summary(study, tracker, objective: str, target: int, seconds: float,
                   why: str) -> None:
    import optuna

    from search.finalists import summary_lines
    from search.limits import COUNTED, counted_trials
    from search.records import FINALISTS_ATTR, REFIT_ATTR, TEST_ATTR, champion_trial

    TS = optuna.trial.TrialState
    failed = study.get_trials(deepcopy=False, states=(TS.FAIL,))
    retried = {n for t in study.get_trials(deepcopy=False)
               for n in t.user_attrs.get("retry_history", [])}
    counts = [(len(study.get_trials(deepcopy=False, states=(s,))), s.name.lower())
              for s in COUNTED]
    counts += [(sum(t.number not in retried for t in failed), "failed"),
               (sum(t.number in retried for t in failed), "retried (worker lost or interrupted)")]
    print(f"\n=== {study.study_name}: {counted_trials(study)} of {target} trials done: "
          f"{', '.join(f'{n} {what}' for n, what in counts)}; {_duration(seconds)}")
    print(f"stopped because {why}")
    if counts[0][0]:
        recheck = study.user_attrs.get(FINALISTS_ATTR)
        if recheck:
            print("\n".join(summary_lines(recheck, objective)))
        best = champion_trial(study)
        print(f"{'champion' if recheck else 'best trial'}: #{best.number}  {objective} = "
              f"{best.value:.4f}" + (" in the search, {mean:.4f} ± {sd:.4f} over {n} runs".format(
                  **recheck["results"][str(best.number)]) if recheck else ""))
        for key, value in best.params.items():
            print(f"  {key:16} {value}")
        print(f"best trial's MLflow run: {best.user_attrs.get('mlflow_run_id')}")
        refit = study.user_attrs.get(REFIT_ATTR)
        if refit and refit["trial"] == best.number:
            print(f"refit of trial #{best.number} from epoch {refit['from_epoch']} to "
                  f"{refit['epochs']}: {objective} {refit['value']:.4f} at epoch "
                  f"{refit['best_epoch']} ("
                  + ("the champion" if refit["champion"] else
                     "not above the trial's: the trial's weights stay the champion") + ")")
        test = study.user_attrs.get(TEST_ATTR)
        if test and test["trial"] == best.number:  # judged once, never used to select
            which = "refit" if test.get("model") == "refit" else "best trial"
            scores = ", ".join(f"{k} {v:.4f}" for k, v in test.items()
                               if k.startswith("test_") and k != "test_loss")
            print(f"{which} on the test split ({test['n_test']} images, never used to select): "
                  + scores)
    print(f"study's MLflow run:      {tracker.parent_run_id} "
          f"(experiment {tracker.experiment_id})")
    print(f"look at it:              {tracker.ui_hint()}")


def _duration(seconds: float) -> str:
    """`37 s`, or `1684 s (28 min 4 s)`."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds:.0f} s ({int(seconds // 60)} min {seconds % 60:.0f} s)"


def run() -> None:
    """The `medtune` command: `main`, restarting the process when a worker asks for it."""
    from search import worker  # its clock starts before the study's imports

    code = main()
    if code == worker.RESTART:
        worker.restart(sys.argv[1:])
    sys.exit(code)

if __name__ == "__main__":
    run()
