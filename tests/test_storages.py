"""A storage that cannot be opened is one line naming it (password masked) and what to check."""

import optuna
import pytest

from search.engines.recovery import Recovery

SETTINGS = {"heartbeat_interval": 20, "grace_period": 120, "retries": 1}


def open_storage(url):
    return Recovery(SETTINGS).storage(url)


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unreachable_server_is_one_line_with_the_password_masked():
    # Nothing listens on port 1: refused at once, no server needed.
    with pytest.raises(ValueError) as error:
        open_storage("postgresql+psycopg2://medtune:s3cr/et@127.0.0.1:1/optuna")
    message = one_line(error)
    assert message.startswith(
        "cannot reach the Optuna storage postgresql+psycopg2://medtune:***@127.0.0.1:1/optuna: ")
    assert "Connection refused" in message and "s3cr" not in message
    assert message.endswith("is the server running, and do host, port, user and database "
                            "name match?")


@pytest.mark.parametrize("prefix", ["sqlite:///", "journal:"])
def test_file_storage_in_a_missing_folder_names_the_folder(tmp_path, monkeypatch, prefix):
    monkeypatch.chdir(tmp_path)
    url = f"{prefix}no/such/dir/o.db"
    with pytest.raises(ValueError) as error:
        open_storage(url)
    assert one_line(error) == (
        f"cannot open the Optuna storage {url}: the folder {tmp_path / 'no/such/dir'} does "
        "not exist; create it or give another path")


def test_unknown_kind_of_database_is_named():
    with pytest.raises(ValueError) as error:
        open_storage("nosuchdb+nosuchdriver://u:pw@127.0.0.1:1/optuna")
    message = one_line(error)
    assert message.startswith("cannot open the Optuna storage nosuchdb+nosuchdriver://u:***@")
    assert "not a storage URL" in message and "pw@" not in message


def test_a_good_sqlite_storage_still_opens(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    assert isinstance(storage, optuna.storages.RDBStorage)


def test_the_cli_prints_an_unreachable_storage_as_one_line(workdir, tiny_skin, capsys):
    from conftest import tune

    url = "postgresql+psycopg2://medtune:s3cret@127.0.0.1:1/optuna"
    assert tune(workdir, "--task", "lenet_skin", "--data-dir", str(tiny_skin),
                "--storage", url) == 2
    err = capsys.readouterr().err
    assert err.startswith("medtune: error: cannot reach the Optuna storage "
                          "postgresql+psycopg2://medtune:***@127.0.0.1:1/optuna: ")
    assert err.count("\n") == 1 and "s3cret" not in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["compare", "--studies", "x"], ["export", "--study", "x"]])
def test_compare_and_export_print_an_unreachable_storage_as_one_line(capsys, command):
    from search.cli import main

    url = "postgresql+psycopg2://medtune:s3cret@127.0.0.1:1/optuna"
    assert main([*command, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medtune: error: cannot reach the Optuna storage "
                          "postgresql+psycopg2://medtune:***@127.0.0.1:1/optuna: ")
    assert err.count("\n") == 1 and "s3cret" not in err
