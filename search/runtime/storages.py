"""Opening an Optuna storage (the one place that does), and why one cannot be opened, in one
line that says what to check.

SQLAlchemy's own errors come as a long traceback around a driver message; the CLI prints a
`ValueError` as one line, so each failure becomes one, with the URL's password masked.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from search.runtime.urls import mask_password

JOURNAL = "journal:"  # journal:path/to/study.log, Optuna's file storage for several processes
OPEN_ERRORS = (OperationalError, ArgumentError, ImportError, OSError)  # no server, folder, ...
SERVER_HINT = "is the server running, and do host, port, user and database name match?"
URL_FORMS = ("dialect+driver://user:password@host:port/database (e.g. "
             "postgresql+psycopg2://...), sqlite:///path/to/file.db or journal:path/to/file.log")


def open_storage(url: str, heartbeat: tuple[int, int, Callable] | None = None
                 ) -> optuna.storages.BaseStorage:
    """The Optuna storage at `url` (a journal file, or any URL Optuna takes); with `heartbeat`
    (interval s, grace period s, stale-trial callback), heartbeats where the storage has them.
    What keeps it from opening is one line naming the storage and what to check."""
    if url.startswith(JOURNAL):
        try:
            return JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
        except OPEN_ERRORS as error:
            raise storage_error(url, error) from None
    beats = {} if heartbeat is None else dict(zip(
        ("heartbeat_interval", "grace_period", "heartbeat_stale_trial_callback"), heartbeat,
        strict=True))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # SQLite: wait for another worker's write
                return RDBStorage(url, engine_kwargs=engine, **beats)
        except (IntegrityError, ProgrammingError):
            # Workers starting together on a new database both create Optuna's tables;
            # one loses that race, and then finds the other's tables.
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)
        except OPEN_ERRORS as error:
            # no server, no folder, no driver, no URL: one line, not SQLAlchemy's traceback
            raise storage_error(url, error) from None
    raise AssertionError("unreachable")


def storage_error(url: str, error: BaseException) -> ValueError:
    """A one-line `ValueError` for `error`, raised while opening the Optuna storage `url`."""
    shown = mask_password(url)
    if isinstance(error, ImportError):  # Optuna's, around the driver's ModuleNotFoundError
        missing = error.__cause__ or error
        return ValueError(
            f"cannot open the Optuna storage {shown}: its database driver is not installed "
            f"({missing}); install it, or name an installed driver in the URL "
            "(e.g. postgresql+psycopg2://)")
    if isinstance(error, ArgumentError):
        return ValueError(f"cannot open the Optuna storage {shown}: not a storage URL "
                          f"({_first_line(error)}); write it as {URL_FORMS}")
    if url.startswith(JOURNAL):
        return ValueError(f"cannot open the Optuna storage {shown}: "
                          f"{_file_reason(url.removeprefix(JOURNAL), error)}")
    if url.startswith("sqlite"):
        return ValueError(f"cannot open the Optuna storage {shown}: "
                          f"{_file_reason(make_url(url).database or '', error)}")
    return ValueError(f"cannot reach the Optuna storage {shown}: "
                      f"{mask_password(_first_line(error))}; {SERVER_HINT}")


def _file_reason(path: str, error: BaseException) -> str:
    """A file storage (SQLite, journal): a missing folder, or else the error as it came."""
    folder = Path(path).expanduser().resolve().parent
    if path not in ("", ":memory:") and not folder.is_dir():
        return f"the folder {folder} does not exist; create it or give another path"
    reason = error.strerror if isinstance(error, OSError) and error.strerror else _first_line(error)
    return f"{reason}; check that {path} is a file this user may write"


def _first_line(error: BaseException) -> str:
    """The driver's own message (`error.orig`) when SQLAlchemy wraps one, first line only."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
