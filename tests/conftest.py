import contextlib
import fcntl
import io
import os
import shutil
import sqlite3
from collections.abc import Callable

# Before TensorFlow is imported anywhere: keep its start-up chatter out of the test log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402
from servers import mlflow_server, postgres_url  # noqa: E402, F401

SHARED_MEDMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow(seconds): about how long the test takes alone on "
                            "two cores; the longest start first (`-m 'not slow'`: the rest)")


def pytest_collection_modifyitems(items):
    """Longest first, so that the workers end together: the last test to start is a short one."""
    def seconds(item) -> float:
        mark = item.get_closest_marker("slow")
        return mark.args[0] if mark else 0.0

    items.sort(key=seconds, reverse=True)  # stable: the rest in their files' order


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: a worker more than the cores. A test spends much of its time waiting on a
    subprocess, a server or a file lock; the extra worker keeps both cores busy meanwhile."""
    return min((os.cpu_count() or 1) + 1, 4)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-array cache, so no test reads another's arrays, and its
    own checkpoint folder."""
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MEDTUNE_CHECKPOINTS", str(tmp_path_factory.mktemp("checkpoints")))


def write_png(path: Path, seed: int, size: int = 40, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype="uint8"), mode).save(path)
    return path


def data_settings() -> dict:
    """`loader.load`'s study settings, `split` and `synthetic`, as `studies/_defaults.toml` has
    them."""
    from search.spec.study_files import DEFAULTS, parse_study, studies_dir

    defaults = parse_study((studies_dir() / DEFAULTS).read_text(), DEFAULTS)
    return {"split": defaults["split"], "synthetic": defaults["synthetic"]}


@pytest.fixture
def tiny_skin(tmp_path) -> Path:
    """A course root holding a small synthetic Lab2/Skin set (32x32 images)."""
    from datasets import synthetic

    synthetic.write_skin(tmp_path / "course", n_train=24, n_val=12, size=32, seed=1)
    return tmp_path / "course"


@pytest.fixture
def tiny_course(tmp_path) -> Path:
    """A course root with small synthetic Skin, Bone, X-ray (9 organs) and lung-mask sets."""
    from datasets import synthetic

    root = tmp_path / "course"
    synthetic.write_skin(root, n_train=24, n_val=12, size=32, seed=1)
    synthetic.write_bone(root, n_train=24, n_val=12, size=32, seed=1)
    synthetic.write_xray9(root, n_train=36, n_test=18, size=32, seed=1)
    synthetic.write_lungs(root, n_pairs=20, size=32, seed=1)
    return root


# --- running studies the way users do, against stores in a temporary folder --------------

TS = optuna.trial.TrialState


@pytest.fixture
def trial_run(tmp_path):
    """A trial's MLflow run in a fresh SQLite tracking store, for `search.trial.run.run_trial`."""
    from mlflow.tracking import MlflowClient

    from search.tracking.trial_run import TrialRun

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    # Without a location MLflow puts artifacts in ./mlruns of the working directory: the repo's.
    artifacts = (tmp_path / "mlruns").as_uri()
    experiment = client.create_experiment("trials", artifact_location=artifacts)
    run_id = client.create_run(experiment).info.run_id
    return TrialRun(client, run_id, "trial")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # optuna.db, mlflow.db and mlruns/ land here
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def tune(workdir, *args: str) -> int:
    """`medtune tune` in this process on the test's stores, without the report at its end
    (`--report` asks for it; test_ui and the README test see `medtune tune` write it)."""
    from search.cli import main

    return main([
        "tune", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
        "--storage", f"sqlite:///{workdir}/optuna.db", "--image-size", "32", "--epochs", "2",
        "--no-report", *args,
    ])


def runs(workdir, experiment=None):
    """The runs of one experiment (default: of all; each task logs into its own experiment):
    the client, the runs that are not trials (studies, exports, comparisons; not the pointer
    runs of continuations) and the trials' runs, each sorted by name."""
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    ids = ([client.get_experiment_by_name(experiment).experiment_id] if experiment
           else [e.experiment_id for e in client.search_experiments()])
    all_runs = client.search_runs(ids, order_by=["attributes.run_name"])
    parents = [r for r in all_runs if "medtune.trial_number" not in r.data.tags
               and r.data.tags.get("medtune.kind") != "continuation"]
    children = [r for r in all_runs if "medtune.trial_number" in r.data.tags]
    return client, parents, children


def finished(workdir, name):
    """The study's trials that ran (the lab baselines not reached yet wait in the queue)."""
    loaded = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/optuna.db")
    return loaded.get_trials(states=(TS.COMPLETE, TS.PRUNED, TS.FAIL))




def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `build` fills once per test run, whichever xdist worker asks first; the others
    wait for it on a file lock and read the same folder. (A session fixture alone is built
    once per worker.) Tests that change what is in it take a copy."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, which its workers share
    folder = base / f"once-{name}"
    with open(base / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def tuned_study(root: Path, *args: str, test_split: bool = False) -> Path:
    """`medtune tune` of LeNet on a tiny synthetic Skin set in `root` (with a test split that
    copies validation, where asked, so its score agrees with the trials'); the stores in
    `root/stores`, the checkpoints in `root/checkpoints`."""
    from datasets import synthetic

    synthetic.write_skin(root / "course", n_train=24, n_val=12, size=32, seed=1)
    if test_split:
        skin = root / "course" / "Lab2" / "Skin"
        shutil.copytree(skin / "validation", skin / "test")
    stores = root / "stores"
    stores.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(stores)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"):
            patch.delenv(name, raising=False)
        patch.setenv("MEDTUNE_CACHE", str(root / "cache"))
        patch.setenv("MEDTUNE_CHECKPOINTS", str(root / "checkpoints"))
        assert tune(stores, *args, "--data-dir", str(root / "course")) == 0
    return stores


@pytest.fixture(scope="session")
def lenet_template(tmp_path_factory) -> Path:
    """A 2-trial LeNet study of a tiny Skin set, trained once per test run; tests that only
    read it, or change a copy of it, take `copy_stores(lenet_template, ...)` instead of training
    their own. Its checkpoint folder is `checkpoints/` beside it."""
    root = built_once(tmp_path_factory, "lenet", lambda folder: tuned_study(
        folder, "--task", "lenet_skin", "--n-trials", "2"))
    return root / "stores"


def copy_stores(template: Path, dest: Path) -> Path:
    """A copy of a study's stores (optuna.db, mlflow.db, mlruns/) in `dest`, its artifact
    locations renamed to the copy's, so that a test may change it as its own."""
    shutil.copytree(template, dest, dirs_exist_ok=True)
    with sqlite3.connect(dest / "mlflow.db") as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")]
        for table in tables:
            for column in [c[1] for c in db.execute(f"PRAGMA table_info({table})")
                           if c[2].upper().startswith(("VARCHAR", "TEXT"))]:
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) "
                           f"WHERE {column} LIKE ?", (str(template), str(dest), f"%{template}%"))
    # MLflow keeps a run's artifact store by run id for the process: the copy's runs have the
    # template's ids, and must not write into the template's folder.
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()
    return dest


@pytest.fixture(scope="session")
def finalists_template(tmp_path_factory) -> Path:
    """A 3-trial LeNet study whose two best trials were each trained twice more with other
    seeds (`--finalists 2`, `[selection] small_data = 0`), then judged on a test split that
    copies validation; trained once per test run. Beside its `stores/`: the study file
    `lenet_skin.toml`, the data `course/` and what `medtune tune` printed, `out.txt`."""
    def build(folder: Path) -> None:
        task = folder / "lenet_skin.toml"  # the task's own name: the study is `lenet_skin`
        task.write_text((Path(__file__).parents[1] / "studies" / "lenet_skin.toml").read_text()
                        + "\n[selection]\nsmall_data = 0\n")
        with contextlib.redirect_stdout(io.StringIO()) as out:
            tuned_study(folder, "--task", str(task), "--n-trials", "3", "--finalists", "2",
                        test_split=True)
        (folder / "out.txt").write_text(out.getvalue())

    return built_once(tmp_path_factory, "finalists", build)
