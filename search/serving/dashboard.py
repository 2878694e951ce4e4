"""`medtune dashboard`: optuna-dashboard in the browser, on the storage the studies use."""

from __future__ import annotations

from search.runtime.storages import open_storage
from search.runtime.urls import mask_password
from search.spec.settings import DEFAULT_STORAGE


def dashboard_command(storage: str | None, port: int) -> int:
    """optuna-dashboard on the same Optuna storage the studies use (a journal file too)."""
    from optuna_dashboard import run_server  # here: `medtune` starts faster without it

    storage = storage or DEFAULT_STORAGE
    print(f"medtune: optuna-dashboard of {mask_password(storage)} on "
          f"http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
    run_server(open_storage(storage), host="127.0.0.1", port=port)
    return 0
