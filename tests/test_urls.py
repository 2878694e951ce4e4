"""Passwords in storage and tracking URLs never shown: every form, in the manifest too."""

import optuna
import pytest

from search.runtime.urls import mask_password
from search.tracking.manifest import manifest
from search.tracking.plots import trials_table

SECRET = "s3cr/et@x"
MASKED = {  # URL -> as shown
    f"postgresql://user:{SECRET}@db:5432/optuna": "postgresql://user:***@db:5432/optuna",
    "postgresql://user:secret@db/optuna": "postgresql://user:***@db/optuna",
    "mysql+pymysql://user:se:cr/et@db/optuna": "mysql+pymysql://user:***@db/optuna",
    "postgresql://:secret@db/optuna": "postgresql://:***@db/optuna",
    "postgresql://user@db/optuna?password=secret": "postgresql://user@db/optuna?password=***",
    "postgresql://db/optuna?sslmode=require&password=secret&connect_timeout=5":
        "postgresql://db/optuna?sslmode=require&password=***&connect_timeout=5",
    "postgresql://u:secret@db/optuna?Password=secret": "postgresql://u:***@db/optuna?Password=***",
    "https://user:secret@mlflow.example.org:5000": "https://user:***@mlflow.example.org:5000",
}
UNCHANGED = ["sqlite:///optuna.db", "sqlite:////abs/path/o.db", "journal:runs/study.log",
             "postgresql://user@db:5432/optuna", "postgresql://db:5432/optuna",
             "http://127.0.0.1:5000", "file:///tmp/mlruns", "mlruns"]


@pytest.mark.parametrize("url", MASKED)
def test_password_is_masked(url):
    shown = mask_password(url)
    assert shown == MASKED[url]
    assert "secret" not in shown and "s3cr" not in shown


@pytest.mark.parametrize("url", UNCHANGED)
def test_urls_without_password_are_unchanged(url):
    assert mask_password(url) == url


@pytest.mark.parametrize("url", MASKED)
def test_urls_inside_a_message_are_masked(url):
    message = f"no study 'x' in {url}; studies there: a, b"
    assert mask_password(message) == f"no study 'x' in {MASKED[url]}; studies there: a, b"


@pytest.mark.parametrize("url", MASKED)
def test_manifest_masks_the_storage(url):
    made = manifest(settings={"storage": url, "seed": 0, "nested": {"uri": [url]}},
                    sampler={}, pruner={"type": "median"}, data={"source": url},
                    study_file='model = "lenet"')
    assert made["settings"]["storage"] == MASKED[url]
    assert made["settings"]["nested"]["uri"] == [MASKED[url]]
    assert made["data"]["source"] == MASKED[url]
    assert "secret" not in repr(made) and "s3cr" not in repr(made)


def test_trials_table_masks_fail_reasons():
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("fail_reason", f"OperationalError: postgresql://u:{SECRET}@db/o down")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert trials_table(study)["fail_reason"].tolist() == [
        "OperationalError: postgresql://u:***@db/o down"]
