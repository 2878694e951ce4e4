"""Real servers for multi-worker tests, started the way users start them, on 127.0.0.1 only.

Fixtures (registered for every test by the import in conftest.py):

``postgres_url`` (session)
    A PostgreSQL server of its own: a fresh cluster in a temporary folder, listening on
    127.0.0.1 at a free port (its unix socket inside that folder too), with a login role
    ``medtune`` that has a random password. ``postgres_url.new_database("optuna")`` (or just
    ``postgres_url("optuna")``) creates a fresh database, named from the prefix plus a
    counter, and returns its SQLAlchemy URL
    ``postgresql+psycopg2://medtune:<password>@127.0.0.1:<port>/optuna_<n>``. Skips when no
    ``initdb``/``pg_ctl`` is installed (on PATH or in /usr/lib/postgresql/*/bin). PostgreSQL
    refuses to run as root, so as root the cluster belongs to the ``postgres`` system user
    (Debian's package creates it): initdb and pg_ctl run through ``runuser -u postgres --``,
    in a folder under /tmp that this user owns. The server is stopped (``pg_ctl stop -m fast``)
    at the end of the session, whatever happened.

``mlflow_server`` (session: one server start costs several seconds; tests share it and keep
apart by creating experiments with names of their own)
    ``mlflow server`` from this virtual environment, its backend store a fresh PostgreSQL
    database of ``postgres_url``, serving artifacts (``mlflow-artifacts:/``) from a temporary
    folder, so workers anywhere reach them through the server. Yields the tracking URI
    ``http://127.0.0.1:<port>`` once ``GET /health`` answers; its process group is terminated
    (then killed) at the end of the session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def ctrl_c_reaches_it() -> None:
    """A child's `preexec_fn`: Ctrl-C (SIGINT) acts on it as on a command typed in a terminal.
    A test run started in the background (`.ci/run &`) ignores SIGINT, and children inherit
    that, so a test that sends SIGINT would otherwise see nothing happen."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
PG_ROLE = "medtune"
PG_SUPERUSER = "postgres"  # the cluster's bootstrap superuser: unix socket only, no password
PG_OS_USER = "postgres"  # who runs the server when the tests run as root
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"(no log: {e})"


# --- PostgreSQL ------------------------------------------------------------------------------


def find_pg_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's versioned folders."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in versioned),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
        reverse=True,
    )
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


class PostgresServer:
    """A running test cluster; hands out URLs of fresh databases owned by the ``medtune`` role."""

    def __init__(self, port: int, password: str, socket_dir: Path, data_dir: Path):
        self.host = HOST
        self.port = port
        self.user = PG_ROLE
        self.password = password
        self.socket_dir = socket_dir
        self.data_dir = data_dir
        self._count = 0

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of an existing database, as the ``medtune`` role over TCP."""
        return (
            f"postgresql+psycopg2://{self.user}:{self.password}"
            f"@{self.host}:{self.port}/{database}"
        )

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, over the cluster's unix socket (autocommit)."""
        import psycopg2

        conn = psycopg2.connect(
            host=str(self.socket_dir), port=self.port, user=PG_SUPERUSER, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def new_database(self, prefix: str = "db") -> str:
        """Create a fresh database named ``<prefix>_<n>`` and return its SQLAlchemy URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,50}", prefix):
            raise ValueError(f"database prefix {prefix!r}: use [a-z0-9_], 51 characters at most")
        self._count += 1
        name = f"{prefix}_{self._count}"
        self.admin(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        return self.url(name)

    __call__ = new_database

    def __repr__(self) -> str:
        return f"PostgresServer({self.host}:{self.port}, data={self.data_dir})"


def _pg_base_dir(tmp_path_factory, as_postgres: bool) -> tuple[Path, bool]:
    """The cluster's folder, and whether the fixture must remove it itself.

    pytest's folders live under /tmp/pytest-of-<user> (mode 0700), which the postgres user
    cannot enter; as root the cluster goes to a folder of its own under /tmp, given to it.
    """
    if not as_postgres:
        return tmp_path_factory.mktemp("postgres"), False
    base = Path(tempfile.mkdtemp(prefix="medtune-pg-", dir="/tmp"))
    shutil.chown(base, user=PG_OS_USER, group=PG_OS_USER)
    os.chmod(base, 0o700)
    return base, True


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[PostgresServer]:
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb/pg_ctl on PATH or in "
            "/usr/lib/postgresql/*/bin); install Debian's `postgresql` package, as .ci/run does"
        )
    as_postgres = os.geteuid() == 0
    prefix: list[str] = []
    if as_postgres:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            pytest.skip(f"running as root, and there is no {PG_OS_USER!r} user to run PostgreSQL")
        if runuser is None:
            pytest.skip("running as root, and there is no runuser to start PostgreSQL as postgres")
        prefix = [runuser, "-u", PG_OS_USER, "--"]

    base, remove_base = _pg_base_dir(tmp_path_factory, as_postgres)
    data_dir, socket_dir, log_file = base / "data", base / "socket", base / "server.log"
    # No PG* variables from the caller's shell: every setting is on the command line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*prefix, *args], cwd=base, env=env, capture_output=True, text=True, check=check
        )

    started = False
    try:
        pg("mkdir", "-m", "0700", str(socket_dir))
        password = secrets.token_urlsafe(18)
        try:
            pg(
                str(bindir / "initdb"), "-D", str(data_dir), "-U", PG_SUPERUSER, "-E", "UTF8",
                "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
            )
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"initdb failed:\n{e.stdout}\n{e.stderr}") from e
        # A throwaway cluster: no durability, so the tests do not wait on disk flushes.
        settings = {
            "listen_addresses": f"'{HOST}'",
            "unix_socket_directories": f"'{socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with open(data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# medtune tests\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

        # The port is picked before the server takes it: on a clash, try another.
        for attempt in range(3):
            port = free_port()
            result = pg(
                str(bindir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file),
                "-o", f"-p {port}", "-w", "-t", str(START_TIMEOUT_S), "start", check=False,
            )
            if result.returncode == 0:
                started = True
                break
            if attempt == 2 or "already in use" not in log_tail(log_file):
                raise RuntimeError(
                    f"pg_ctl start failed ({result.returncode}):\n{result.stdout}\n"
                    f"{result.stderr}\nserver log:\n{log_tail(log_file)}"
                )

        server = PostgresServer(port, password, socket_dir, data_dir)
        server.admin(f"CREATE ROLE \"{PG_ROLE}\" LOGIN PASSWORD '{password}'")
        yield server
    finally:
        if started:
            stop = pg(str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop",
                      check=False)
            if stop.returncode != 0:
                print(f"pg_ctl stop failed: {stop.stdout}{stop.stderr}", file=sys.stderr)
        if remove_base:
            shutil.rmtree(base, ignore_errors=True)


# --- MLflow tracking server ------------------------------------------------------------------


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]


def _stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Terminate the server's process group (mlflow starts uvicorn as a child), then kill it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived the grace
    proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(postgres_url, tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow_server")
    artifacts, log_file = folder / "artifacts", folder / "server.log"
    artifacts.mkdir()
    port = free_port()
    uri = f"http://{HOST}:{port}"
    command = [
        *_mlflow_command(), "server",
        "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", postgres_url.new_database("mlflow"),
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
    ]
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    # Keep it light: no huey job-runner processes (they serve MLflow's GenAI jobs only).
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited ({proc.returncode}) before answering:\n"
                    f"{' '.join(command)}\n{log_tail(log_file)}"
                )
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server at {uri} did not answer /health within {START_TIMEOUT_S} s:"
                    f"\n{' '.join(command)}\n{log_tail(log_file)}"
                )
            time.sleep(0.25)
        yield uri
    finally:
        _stop_group(proc)
