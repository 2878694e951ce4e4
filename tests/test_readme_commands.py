"""Every `mlflow run . -e ...` command the README shows, run as written (in a copy of the
project, so its `optuna.db`, `mlflow.db` and `mlruns/` land there), in the README's order.
Tune commands get tiny-data overrides appended; the others run exactly as written."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from servers import ctrl_c_reaches_it

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ runs from the checkout; it is not an installed package

from bench.default_run import working_copy  # noqa: E402

TINY = ("-P", "n_trials=1", "-P", "epochs=1", "-P", "image_size=32")


def readme_commands() -> list[str]:
    """`mlflow run . -e ...` as the README writes them, up to a comment or closing backtick."""
    found = re.findall(r"(mlflow run \. -e [^`#\n]*)", (REPO / "README.md").read_text())
    return list(dict.fromkeys(command.strip() for command in found))


def test_the_readme_lists_each_entry_point():
    entry_points = {shlex.split(c)[4] for c in readme_commands()}
    assert entry_points == {"tune", "tasks", "compare", "export", "report", "dashboard"}


@pytest.mark.slow(220)
def test_every_readme_mlflow_run_command_works_as_written(tmp_path, tiny_course):
    copy = working_copy(tmp_path / "medtune")
    bin_dir = Path(sys.executable).parent  # the venv's `mlflow` and `python`, as when active
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    outputs = {}
    for command in readme_commands():
        argv = shlex.split(command)
        if argv[4] == "tune":
            argv += [*TINY, "-P", f"data_dir={tiny_course}"]
        if argv[4] == "dashboard":  # a server: it must answer, then it is stopped
            outputs[command] = serves(argv, copy, env, "http://127.0.0.1:8080/")
            continue
        done = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        outputs[command] = done.stdout

    assert "vgg_skin" in outputs["mlflow run . -e tasks --env-manager local"]
    compared = outputs['mlflow run . -e compare -P studies="vgg_skin alexnet_skin" '
                       "--env-manager local"]
    assert "vgg_skin" in compared and "alexnet_skin" in compared
    assert "registered vgg_skin version 1 as champion" in outputs[
        "mlflow run . -e export -P study=vgg_skin --env-manager local"]
    assert "report: reports/vgg_skin/report.html" in outputs[
        "mlflow run . -e report -P study=vgg_skin --env-manager local"]
    assert "<h2>Results</h2>" in (copy / "reports" / "vgg_skin" / "report.html").read_text()
    client = MlflowClient(f"sqlite:///{copy}/mlflow.db")
    assert str(client.get_model_version_by_alias("vgg_skin", "champion").version) == "1"
    study_run_under_mlflow_run(client, copy)
    every = client.search_runs([e.experiment_id for e in client.search_experiments()])
    # Every run ended; all but the dashboard's FINISHED (stopped with Ctrl-C, it ends as the
    # race between `mlflow run` and the server decides: FINISHED, KILLED or FAILED).
    served = [r for r in every if r.data.tags.get("mlflow.project.entryPoint") == "dashboard"]
    assert len(served) == 1 and served[0].info.status != "RUNNING"
    assert {r.info.status for r in every if r not in served} == {"FINISHED"}
    assert "optuna-dashboard of sqlite:///optuna.db on http://127.0.0.1:8080" in outputs[
        "mlflow run . -e dashboard --env-manager local"]


def study_run_under_mlflow_run(client: MlflowClient, copy: Path) -> None:
    """`mlflow run . -e tune`: the run `mlflow run` made is the study's run, its trials its
    children (two levels); `mlflow run . -e export`, whose run already holds the entry point's
    params (`storage=''`, `tolerance=''`), registers the kept model, trains nothing."""
    import optuna

    every = [e.experiment_id for e in client.search_experiments()]
    (trial_run,) = client.search_runs(every, "tags.`medtune.study` = 'vgg_skin' and "
                                             "tags.`medtune.kind` = 'trial'")
    study_run = client.get_run(trial_run.data.tags["mlflow.parentRunId"])
    experiment = client.get_experiment(study_run.info.experiment_id)  # `mlflow run`'s choice
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.parentRunId" not in study_run.data.tags
    assert study_run.info.run_name == "vgg_skin"
    assert study_run.data.tags["mlflow.project.entryPoint"] == "tune"
    assert study_run.data.params["n_trials"] == "1" and study_run.data.params["budget"] == "quick"
    assert study_run.data.params["timeout"] == "''"  # as `mlflow run` logged it; medtune's value:
    assert study_run.data.params["resolved.timeout"] == "420"
    (version,) = client.search_model_versions("name = 'vgg_skin'")
    export = client.get_run(version.run_id)
    assert export.data.tags["mlflow.project.entryPoint"] == "export"
    assert export.info.run_name == "export vgg_skin" and export.info.status == "FINISHED"
    assert export.data.params["replay"] == "false"  # the kept model, not retrained:
    best = optuna.load_study(study_name="vgg_skin", storage=f"sqlite:///{copy}/optuna.db"
                             ).best_trial
    assert export.data.tags["medtune.model_id"] == best.user_attrs["model_id"]


def serves(argv: list[str], cwd: Path, env: dict[str, str], url: str) -> str:
    """Start a server command, wait until `url` answers 200, stop it as Ctrl-C would."""
    import signal
    import time
    import urllib.request

    try:  # another server on the port would answer in its place
        urllib.request.urlopen(url, timeout=2)
        pytest.fail(f"something already answers on {url}: stop it and run again")
    except OSError:
        pass
    server = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              preexec_fn=ctrl_c_reaches_it)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"{url} did not answer"
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    return output
