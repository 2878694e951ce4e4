"""Crash-safe and parallel studies, with real processes: kill -9, resume, several workers."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import TS
from mlflow.tracking import MlflowClient
from servers import ctrl_c_reaches_it

from search.runtime.worker import owner_alive, owner_id

COUNTED = (TS.COMPLETE, TS.PRUNED)
REPO = Path(__file__).resolve().parents[1]


def study_file(tmp_path: Path, recovery: str = "") -> Path:
    """LeNet on Skin, with a checkpoint every epoch and no pruning, early stop or stuck stop,
    so a trial runs all its epochs and can be killed in the middle."""
    text = (Path(__file__).parents[1] / "studies" / "lenet_skin.toml").read_text()
    path = tmp_path / "lenet_recover.toml"
    path.write_text(text + f"\n[recovery]\ncheckpoint_every_s = 0\n{recovery}\n"
                           '\n[pruner]\ntype = "none"\n'
                           "\n[training]\nearly_stopping_patience = 100\n"
                           "stuck_after_epochs = 0\n")
    return path


def tune_command(task: Path, data: Path, storage: str, tracking: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", "tune", "--task", str(task),
            "--data-dir", str(data), "--storage", storage, "--tracking-uri", tracking,
            "--image-size", "32", *args]


def child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def load(storage: str, name: str) -> optuna.Study:
    from search.runtime.storages import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage))


@pytest.fixture
def skin_data(tmp_path) -> Path:
    from datasets import synthetic

    synthetic.write_skin(tmp_path / "course", n_train=160, n_val=40, size=32, seed=1)
    return tmp_path / "course"


def test_owner_check_tells_a_live_process_from_a_dead_one():
    assert owner_alive(owner_id()) is True
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert owner_alive(owner_id(dead.pid)) is False
    assert owner_alive("another-host:1:1") is None  # the heartbeat decides there


def mlflow_run_command(task: Path, data: Path, storage: str, *params: str) -> list[str]:
    """The README's `mlflow run . -e tune ... --env-manager local`, on tiny data."""
    settings = {"task": task, "data_dir": data, "storage": storage, "image_size": 32}
    return [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "tune",
            "--env-manager", "local",
            *[a for k, v in settings.items() for a in ("-P", f"{k}={v}")],
            *[a for p in params for a in ("-P", p)]]


def mlflow_run_env(tmp_path: Path, tracking: str) -> dict[str, str]:
    # `--env-manager local` runs `python` from PATH: the venv's, as after activating it.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return child_env(tmp_path) | {"MLFLOW_TRACKING_URI": tracking, "PATH": path}


def running_trial(storage: str, name: str, worker: subprocess.Popen, *, epochs: int,
                  skip: list[int]) -> int:
    """The first RUNNING original trial (not a retry, not in `skip`) `epochs` epochs in."""
    deadline = time.monotonic() + 240
    while True:
        assert worker.poll() is None, "the worker ended before it could be stopped"
        assert time.monotonic() < deadline, f"no trial reached epoch {epochs} in time"
        time.sleep(0.2)
        try:
            trials = load(storage, name).get_trials(states=(TS.RUNNING,))
        except KeyError:  # the study is not created yet
            continue
        victim = next((t.number for t in trials if len(t.intermediate_values) >= epochs
                       and "retry_of" not in t.user_attrs and t.number not in skip), None)
        if victim is not None:
            return victim


@pytest.mark.slow(110)
def test_kill_9_twice_through_mlflow_run_loses_nothing(tmp_path, skin_data):
    """The README's command, its whole process group killed with kill -9 mid-trial twice,
    then run again: the study ends with the trials asked for, each dead trial retried from its
    checkpoint, and nothing RUNNING in Optuna or MLflow."""
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    command = mlflow_run_command(study_file(tmp_path), skin_data, storage,
                                 "epochs=6", "n_trials=6")
    env = mlflow_run_env(tmp_path, tracking)
    killed: list[int] = []
    complete_before: set[int] = set()
    for _ in range(2):
        worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        victim = running_trial(storage, "lenet_recover", worker, epochs=2, skip=killed)
        complete_before |= {t.number for t in load(storage, "lenet_recover").trials
                            if t.state == TS.COMPLETE}
        os.killpg(worker.pid, signal.SIGKILL)  # `mlflow run` and its worker both
        worker.wait()
        killed.append(victim)

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "6 of 6 trials done" in done.stdout

    trials = load(storage, "lenet_recover").trials
    by_number = {t.number: t for t in trials}
    assert len([t for t in trials if t.state in COUNTED]) == 6  # n_trials reached, exactly
    assert not [t for t in trials if t.state == TS.RUNNING]
    assert all(by_number[n].state == TS.COMPLETE for n in complete_before)  # nothing lost
    for number in killed:
        assert by_number[number].state == TS.FAIL
        assert "died during the trial" in by_number[number].user_attrs["fail_reason"]

    client = MlflowClient(tracking)
    every = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in every} <= {"FINISHED", "FAILED", "KILLED"}  # none RUNNING
    children = [r for r in every if "medtune.trial_number" in r.data.tags]
    names = [r.info.run_name for r in children]
    assert len(names) == len(set(names)) == len([t for t in trials if t.state != TS.WAITING])
    runs = {int(r.data.tags["medtune.trial_number"]): r for r in children}
    for number in killed:
        assert runs[number].info.status == "FAILED"
        assert "died during the trial" in runs[number].data.tags["error"]
        # Retried once, with the same params and seed, from its last checkpointed epoch.
        (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == number]
        assert retry.params == by_number[number].params and retry.state == TS.COMPLETE
        assert retry.user_attrs["seed"] == by_number[number].user_attrs["seed"]
        assert int(runs[retry.number].data.tags["resumed_from_epoch"]) >= 2
        steps = [m.step for m in client.get_metric_history(runs[retry.number].info.run_id,
                                                           "val_accuracy")]
        assert steps == [1, 2, 3, 4, 5, 6]  # earlier epochs carried over, then the rest
    (checkpoints,) = Path(os.environ["MEDTUNE_CHECKPOINTS"]).glob("lenet_recover-*")
    assert not list(checkpoints.glob("t*"))  # every trial ended: no checkpoint left


@pytest.mark.slow(50)
def test_ctrl_c_ends_with_one_line_and_the_cut_trial_is_retried(tmp_path, skin_data):
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    command = tune_command(study_file(tmp_path), skin_data, storage, tracking,
                           "--epochs", "4", "--n-trials", "2")
    env = child_env(tmp_path)
    worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_it)
    victim = running_trial(storage, "lenet_recover", worker, epochs=2, skip=[])
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130
    assert "Traceback" not in err
    assert f"medtune: interrupted; trial {victim} will be retried on the next run" in err
    cut = load(storage, "lenet_recover").trials[victim]
    assert cut.state == TS.FAIL

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(storage, "lenet_recover").trials
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == victim]
    assert retry.state == TS.COMPLETE and retry.params == cut.params
    assert len([t for t in trials if t.state in COUNTED]) == 2
    client = MlflowClient(tracking)
    run = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert int(run.data.tags["resumed_from_epoch"]) >= 2  # from the interrupted checkpoint
    assert client.get_run(cut.user_attrs["mlflow_run_id"]).info.status != "RUNNING"


@pytest.mark.slow(70)
def test_two_workers_share_one_journal_study(tmp_path, skin_data):
    storage = f"journal:{tmp_path}/study.log"
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    command = tune_command(study_file(tmp_path), skin_data, storage, tracking,
                           "--epochs", "2", "--n-trials", "8", "--workers", "2")
    done = subprocess.run(command, cwd=tmp_path, env=child_env(tmp_path), capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 workers started" in done.stdout
    check_shared_study(storage, tracking, n_trials=8, workers=2)


def check_shared_study(storage: str, tracking: str, *, n_trials: int, workers: int) -> None:
    """Trial count and run count agree, nothing is duplicated, every worker took trials."""
    trials = load(storage, "lenet_recover").trials
    finished = [t for t in trials if t.state in COUNTED]
    # MaxTrialsCallback stops each worker once the study has n_trials; trials already
    # running then still finish, at most one per other worker.
    assert n_trials <= len(finished) <= n_trials + workers - 1
    assert not [t for t in trials if t.state == TS.RUNNING]
    owners = {t.user_attrs["owner"].rsplit(":", 1)[0] for t in finished}
    assert len(owners) == workers  # both processes ran trials
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("lenet_recover").experiment_id
    every = client.search_runs([experiment])
    parents = [r for r in every if "medtune.trial_number" not in r.data.tags]
    children = [r for r in every if "medtune.trial_number" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    numbers = sorted(int(r.data.tags["medtune.trial_number"]) for r in children)
    assert numbers == sorted(t.number for t in finished)  # one run per trial, no duplicates
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert {t.user_attrs["mlflow_run_id"] for t in finished} == {r.info.run_id for r in children}


@pytest.mark.slow(80)
def test_two_machines_share_postgresql_and_an_mlflow_server(tmp_path, skin_data, postgres_url,
                                                            mlflow_server):
    """Two workers started separately (as on two hosts) on one PostgreSQL study, logging to a
    `mlflow server` with its own database and artifact store."""
    storage = postgres_url.new_database("optuna")
    command = tune_command(study_file(tmp_path), skin_data, storage, mlflow_server,
                           "--epochs", "2", "--n-trials", "8")
    env = child_env(tmp_path)
    workers = [subprocess.Popen(command, cwd=tmp_path / name, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for name in ("host_a", "host_b") if (tmp_path / name).mkdir() is None]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
        assert postgres_url.password not in output  # the storage URL is printed masked
    check_shared_study(storage, mlflow_server, n_trials=8, workers=2)
    run = MlflowClient(mlflow_server).search_runs(
        [MlflowClient(mlflow_server).get_experiment_by_name("lenet_recover").experiment_id],
        "tags.`medtune.trial_number` = '0'")[0]
    assert run.data.params["learning_rate"]
    parent = MlflowClient(mlflow_server).get_run(run.data.tags["mlflow.parentRunId"])
    assert postgres_url.password not in str(parent.data.params)
    assert "***" in parent.data.params["storage"]


@pytest.mark.slow(120)
def test_resident_memory_stays_bounded_over_12_trials(tmp_path):
    """Keras keeps a few MB per trial even after clear_session + gc (see MemoryGuard: 5-11 MB
    per trial measured here, so a 200-trial worker would grow by 1-2 GB). With
    `restart_after_growth_mb = 40` each worker process restarts once it has grown 40 MB past
    its first trial (here after 2-3 trials: a process's second trial ends 30-60 MB above its
    first). Checked over 12 trials: every trial of a process but its last ends within 40 MB
    (+15 for the moment of reading) of that process's first; the last one is the trial that
    crossed the line, after which a fresh process takes over the same study. Twelve trials are
    four to six processes, enough to see it restart more than once.
    (Where a fresh process starts varies by up to ~80 MB, which is not growth.)"""
    from datasets import synthetic

    LIMIT = 40  # MB

    synthetic.write_skin(tmp_path / "course", n_train=40, n_val=20, size=32, seed=1)
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    command = tune_command(study_file(tmp_path, f"restart_after_growth_mb = {LIMIT}"),
                           tmp_path / "course", storage, tracking,
                           "--epochs", "1", "--n-trials", "12", "--timeout", "0")
    done = subprocess.run(command, cwd=tmp_path, env=child_env(tmp_path), capture_output=True,
                          text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("lenet_recover").experiment_id
    rss = {int(r.data.tags["medtune.trial_number"]): r.data.metrics["worker_rss_mb"]
           for r in client.search_runs([experiment]) if "medtune.trial_number" in r.data.tags}
    assert sorted(rss) == list(range(12))
    assert len(load(storage, "lenet_recover").trials) == 12  # one study throughout

    processes: list[list[int]] = [[]]  # trial numbers each worker process ran, from its output
    for line in done.stdout.splitlines():
        if line.startswith("lenet_recover-t"):
            processes[-1].append(int(line[len("lenet_recover-t"):].split()[0]))
        elif "restarting this worker" in line:
            processes.append([])
    print("worker RSS (MB) by process:", [[rss[n] for n in p] for p in processes])
    assert len(processes) >= 3  # it grew, and restarted, more than once
    for trials in processes[:-1]:
        assert all(rss[n] - rss[trials[0]] <= LIMIT + 15 for n in trials[:-1]), trials
        assert rss[trials[-1]] - rss[trials[0]] > LIMIT - 15  # what made it restart


def test_a_silent_worker_on_another_host_is_failed_by_the_heartbeat(tmp_path):
    """What the owner check cannot see (another machine's worker), the heartbeat does."""
    from search.engines.recovery import Recovery
    from search.tracking.study_run import StudyTracker

    recovery = Recovery({"heartbeat_interval": 1, "grace_period": 2, "retries": 1})
    study = optuna.create_study(study_name="remote", storage=recovery.storage(
        f"sqlite:///{tmp_path}/optuna.db"))
    recovery.tracker = StudyTracker.open(study, settings={}, tags={},
                                         tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("owner", "other-host:123:456")
    tracker = recovery.tracker
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id  # left RUNNING
    trial.set_user_attr("mlflow_run_id", run_id)
    study._storage.record_heartbeat(trial._trial_id)  # its last sign of life
    recovery.fail_orphans(study)  # another host: the owner check leaves it alone
    assert study.trials[0].state == TS.RUNNING
    deadline = time.monotonic() + 30
    while study.trials[0].state == TS.RUNNING:  # until its grace period of 2 s has passed
        assert time.monotonic() < deadline, "the silent trial was never failed"
        time.sleep(0.2)
        optuna.storages.fail_stale_trials(study)  # what each worker runs before each trial
    assert study.trials[0].state == TS.FAIL
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and "no heartbeat for 2 s" in run.data.tags["error"]
    retry = study.trials[1]
    assert retry.state == TS.WAITING and retry.params == {"x": trial.params["x"]}
    assert retry.user_attrs["retry_of"] == 0 and "owner" not in retry.user_attrs
