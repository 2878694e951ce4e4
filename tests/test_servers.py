"""The real servers of tests/servers.py: PostgreSQL for Optuna, an MLflow tracking server."""

import uuid

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient


def quadratic(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -10, 10) - 2) ** 2


def test_postgres_is_local_and_password_protected(postgres_url):
    url = postgres_url.new_database("check")
    assert url.startswith(f"postgresql+psycopg2://medtune:{postgres_url.password}@127.0.0.1:")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SHOW listen_addresses")).scalar() == "127.0.0.1"
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == "medtune"
    finally:
        engine.dispose()
    wrong = sqlalchemy.create_engine(url.replace(postgres_url.password, "wrong"))
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password"):
        wrong.connect()
    wrong.dispose()


def test_optuna_study_on_postgres(postgres_url):
    storage = postgres_url.new_database("optuna")
    study = optuna.create_study(study_name="quadratic", storage=storage)
    study.optimize(quadratic, n_trials=3)

    # A second handle, as another worker would open it.
    loaded = optuna.load_study(study_name="quadratic", storage=storage)
    trials = loaded.get_trials()
    assert len(trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert loaded.best_value == min(t.value for t in trials)
    assert loaded.best_value == pytest.approx((loaded.best_params["x"] - 2) ** 2)


def test_mlflow_server_round_trip(mlflow_server, tmp_path):
    assert mlflow_server.startswith("http://127.0.0.1:")
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment(f"servers-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 0.25, step=1)
    client.log_text(run_id, "hello from a worker\n", "notes/hello.txt")
    client.set_terminated(run_id)

    # Read back through a second client, as another worker would.
    reader = MlflowClient(tracking_uri=mlflow_server)
    run = reader.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.25}
    # Artifacts go through the server's proxy, not to a path on this machine.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert [a.path for a in reader.list_artifacts(run_id, "notes")] == ["notes/hello.txt"]
    local = reader.download_artifacts(run_id, "notes/hello.txt", str(tmp_path))
    with open(local) as f:
        assert f.read() == "hello from a worker\n"
