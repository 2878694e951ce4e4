"""Why an Optuna storage cannot be opened, in one line that says what to check.

SQLAlchemy's own errors come as a long traceback around a driver message; the CLI prints a
`ValueError` as one line, so each failure becomes one, with the URL's password masked.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.urls import mask_password

JOURNAL = "journal:"  # as search.recovery.JOURNAL, which imports this module
SERVER_HINT = "is the server running, and do host, port, user and database name match?"
URL_FORMS = ("dialect+driver://user:password@host:port/database (e.g. "
             "postgresql+psycopg2://...), sqlite:///path/to/file.db or journal:path/to/file.log")


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
