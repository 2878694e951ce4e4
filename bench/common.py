"""What every benchmark shares: modes, the machine's description, and publishing results.

A benchmark module defines `NAME`, `add_arguments(parser)` and `run(args) -> Result`, and ends
with `sys.exit(common.main(NAME, add_arguments, run))`. `main` prints the result's tables,
replaces the benchmark's section of bench/RESULTS.md and logs an MLflow run (tables as CSV,
figures as PNG). A new benchmark (e.g. search efficiency) adds its entry to `BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
WORK_DIR = BENCH_DIR / ".work"  # generated data sets and working copies (git-ignored)
EXPERIMENT = "medtune-bench"
MODES = ("smoke", "quick", "full")

# Section order in RESULTS.md: key -> heading.
BENCHMARKS = {
    "overhead": "1. Overhead: one medtune trial against plain keras.fit",
    "search": "2. Search efficiency against Keras Tuner, random search and the lab grid",
    "startup": "3. Data start-up: launch to first training batch, cold and cached",
    "default_run": "4. The default run: `mlflow run . -e tune -P task=vgg_skin`",
    "growth": "5. How cost grows over a long study",
    "throughput": "6. Throughput: images per second, a medtune trial against plain keras.fit",
    "kept_models": "7. Kept models: export without retraining, and the storage a study keeps",
    "shifted": "8. Shifted images: a study's champion on contrast, brightness and border shifts",
}
# A benchmark whose module is not named after its key (`python -m bench.<module>`).
MODULES = {"search": "search_efficiency"}


def module(name: str) -> str:
    """The module in bench/ that runs benchmark `name`."""
    return MODULES.get(name, name)


def default_tracking_uri() -> str:
    """The benchmarks' own MLflow store, bench/mlflow.db, so the project's store stays clean."""
    return f"sqlite:///{BENCH_DIR / 'mlflow.db'}"


@dataclass
class Result:
    """What one benchmark run found: tables (pandas DataFrames), figures, headline numbers."""

    name: str
    mode: str
    command: str
    tables: dict[str, Any] = field(default_factory=dict)  # file stem -> DataFrame
    figures: dict[str, Any] = field(default_factory=dict)  # file stem -> matplotlib Figure
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # the budget the run used
    notes: list[str] = field(default_factory=list)  # Markdown paragraphs, in order
    shown: list[str] = field(default_factory=list)  # tables to put in RESULTS.md (default all)


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, Python, packages and the code's commit."""
    from search.tracking.manifest import git_commit, package_versions

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "memory_gib": round(_meminfo().get("MemTotal", 0) / 2**30, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # a busy machine skews timings
    }


def _meminfo() -> dict[str, int]:
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[name] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return values


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- arguments


def parser(name: str, description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{module(name)}", description=description)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--quick", dest="mode", action="store_const", const="quick",
                       help="minutes: smaller budgets, one seed")
    modes.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                       help="seconds, on tiny data: checks the script runs (figures meaningless)")
    p.set_defaults(mode="full")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help=f"Markdown file whose section this run replaces (default {RESULTS})")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store for the results run (default sqlite:///bench/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR,
                   help="generated data and temporary stores (default bench/.work)")
    return p


def command(name: str, argv: list[str]) -> str:
    return shlex.join(["python", "-m", f"bench.{module(name)}", *argv])


def main(
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Result],
    argv: list[str] | None = None,
    description: str | None = None,
) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(name, description)
    add_arguments(p)
    args = p.parse_args(argv)
    args.command = command(name, argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = run(args)
    publish(result, args.results, None if args.no_mlflow else
            (args.tracking_uri or default_tracking_uri()))
    return 0


# --------------------------------------------------------------------------- publishing


def publish(result: Result, results: Path, tracking_uri: str | None) -> str | None:
    """Print the tables, replace the section in `results`, log the MLflow run (if a URI)."""
    info = machine()
    section = markdown_section(result, info, save_figures(result, results))
    print(section)
    write_section(results, result.name, section)
    print(f"written to {results}")
    if tracking_uri is None:
        return None
    run_id = log_run(result, info, section, tracking_uri)
    print(f"logged to MLflow run {run_id} in {tracking_uri}")
    return run_id


def markdown_table(df: Any, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table (no `tabulate` needed)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def save_figures(result: Result, results: Path) -> dict[str, str]:
    """Each figure as a PNG in `plots/` beside the results file, so the Markdown shows it:
    stem -> its path relative to the results file."""
    saved = {}
    for stem, figure in result.figures.items():
        path = results.parent / "plots" / f"{result.name}-{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        saved[stem] = path.relative_to(results.parent).as_posix()
    return saved


def markdown_section(result: Result, info: dict[str, Any],
                     figures: dict[str, str] | None = None) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    git = info["git"]
    commit = f"{git['commit'][:10]}{' (uncommitted changes)' if git['dirty'] else ''}" \
        if git.get("commit") else "unknown"
    mode = {"smoke": "smoke-mode figures (tiny data: they show the script runs, nothing more)",
            "quick": "**quick-mode figures** (smaller budgets, one seed)",
            "full": "full-mode figures"}[result.mode]
    lines = [
        f"## {BENCHMARKS[result.name]}",
        "",
        f"{mode}; {info['date']}; {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['cpu']}; load average before the run {info['load_average']}; "
        f"Python {info['python']}; code {commit}.",
        "",
        f"Packages: {packages}.",
        "",
        f"Command: `{result.command}`",
        "",
    ]
    for stem in result.shown or list(result.tables):
        lines += [f"`{stem}.csv`:", "", markdown_table(result.tables[stem]), ""]
    for stem, path in (figures or {}).items():
        lines += [f"![{stem}]({path})", ""]
    for note in result.notes:
        lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def empty_results() -> str:
    parts = ["# medtune benchmarks\n",
             "Written by the scripts in `bench/` (see bench/README.md); each run replaces its own "
             "section. Timings depend on the machine and on what else runs on it.\n"]
    for key, heading in BENCHMARKS.items():
        start, end = _markers(key)
        parts.append(f"{start}\n## {heading}\n\nNot run yet.\n{end}\n")
    return "\n".join(parts)


def write_section(path: Path, name: str, section: str) -> None:
    """Replace benchmark `name`'s section between its markers (appended if it has none)."""
    text = path.read_text() if path.exists() else empty_results()
    start, end = _markers(name)
    block = f"{start}\n{section}{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def log_run(result: Result, info: dict[str, Any], section: str, tracking_uri: str) -> str:
    """One MLflow run per benchmark run: budget and machine as params, tables, figures."""
    import matplotlib.pyplot as plt
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = found.experiment_id if found else client.create_experiment(
        EXPERIMENT, artifact_location=_artifact_location(tracking_uri)
    )
    tags = {"bench.name": result.name, "bench.mode": result.mode, "bench.command": result.command,
            "bench.git_commit": str(info["git"].get("commit"))}
    run_id = client.create_run(experiment_id, run_name=f"{result.name} ({result.mode})",
                               tags=tags).info.run_id
    params = {**result.params, "mode": result.mode, "cores": info["cores"],
              "memory_gib": info["memory_gib"], "cpu": info["cpu"], "python": info["python"],
              **{f"pkg.{k}": v for k, v in info["packages"].items()}}
    stamp = int(dt.datetime.now().timestamp() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, 0) for k, v in result.metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for stem, table in result.tables.items():
        client.log_text(run_id, table.to_csv(index=False), f"tables/{stem}.csv")
    for stem, figure in result.figures.items():
        client.log_figure(run_id, figure, f"plots/{stem}.png")
        plt.close(figure)
    client.log_text(run_id, section, "results.md")
    client.log_text(run_id, json.dumps(info, indent=1), "machine.json")
    client.set_terminated(run_id)
    return run_id


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store (not in the current folder's mlruns/)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "mlruns").resolve().as_uri()
    return None


# --------------------------------------------------------------------------- small helpers


def quiet_libraries() -> None:
    """Optuna's per-trial INFO lines and MLflow's would bury the benchmark's own output."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def synthetic_skin(root: Path, *, n_train: int, n_val: int, size: int, seed: int = 0) -> Path:
    """A Lab2-layout skin set written once under `root` (reused by later runs): its course root."""
    from datasets import synthetic

    dest = synthetic.ensure("skin", root, n_train=n_train, n_val=n_val, size=size, seed=seed)
    return dest.parents[1]  # <root>/<set folder>, which holds Lab2/Skin


def every_epoch(spec: Any) -> Any:
    """A study spec whose trials train every epoch they are given: no stuck stop (a timing
    benchmark compares a trial with plain `fit` over the same epochs; the lab grid trains as
    the lab does)."""
    import dataclasses

    return dataclasses.replace(spec, training={**spec.training, "stuck_after_epochs": 0})


def chosen_budget(args: argparse.Namespace, budgets: dict[str, dict[str, Any]],
                  keys: tuple[str, ...]) -> dict[str, Any]:
    """The mode's budget (`--smoke`, `--quick` or full), with the options in `keys` the user gave
    (an option left out, None, keeps the mode's value)."""
    budget = dict(budgets[args.mode])
    budget |= {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    return budget


@contextlib.contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    """Set environment variables for a block (e.g. medtune's checkpoint folder into a temporary
    one, so a benchmark leaves nothing in the project), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
