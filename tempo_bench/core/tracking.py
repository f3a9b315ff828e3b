"""Where runs are recorded: the MLflow tracking store and the folders runs write to, checked
before any work and opened safely by several processes at once.

- ``check_tracking(uri)``: a server that does not answer within a timeout, a database that cannot
  be reached, or a sqlite file whose folder cannot be written is a StorageError naming the URL,
  before anything runs (MLflow itself would retry a sqlite store in an unwritable folder for
  about 100 s and then raise).
- ``tracking_client(uri)``: an MlflowClient whose store has been created under a file lock. Two
  processes creating one new sqlite store at the same moment otherwise race in its schema
  migration and break it for good (``table _alembic_tmp_experiments already exists``).
- ``ensure_writable(folder)``: an output folder that cannot be created or written is an error at
  once, not a traceback after a run.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from tempo_bench.core.errors import StorageError

CONNECT_TIMEOUT_S = 10.0


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory sqlite)."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    if uri.startswith("sqlite:////"):  # absolute: sqlite:////abs/path parses to //abs/path
        path = "/" + path.lstrip("/")
    else:
        path = path[1:] if path.startswith("/") else path
    return Path(path) if path and path != ":memory:" else None


def ensure_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that a file can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise StorageError(f"cannot write to the {what} {folder}: {err.strerror or err}") from None
    return folder


def redact(url: str) -> str:
    """A URL as it may be printed: the password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL
        return url


def check_database(url: str, timeout_s: float | None = None, what: str = "database") -> None:
    """Connect once to a PostgreSQL / MySQL / sqlite URL, with a connect timeout."""
    import sqlalchemy

    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    args = {"connect_timeout": int(timeout_s)} if url.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # driver errors differ per backend; all mean the same to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(f"the {what} at {redact(url)} cannot be reached or opened: {first}") from None


def fail_fast_http() -> None:
    """MLflow's HTTP client retries a failing request for minutes by default; during an outage
    the run spools its writes and tries again later instead (core/loggers.py). Read by MLflow at
    each request, and inherited by worker processes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def check_tracking(uri: str, timeout_s: float | None = None) -> None:
    """A tracking store that cannot be used is an error before any work starts (within
    ``timeout_s``, default CONNECT_TIMEOUT_S)."""
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    if uri.startswith(("http://", "https://")):
        import urllib.request

        fail_fast_http()
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).read()
        except OSError as err:
            raise StorageError(f"the MLflow tracking server at {uri} does not answer within {timeout_s:.0f} s "
                               f"({err}); start it, or drop --tracking-uri to log to a local sqlite store") from None
        return
    path = sqlite_path(uri)
    if path is not None:
        ensure_writable(path.parent, "folder of the MLflow store")
        if path.exists() and not os.access(path, os.W_OK):
            raise StorageError(f"the MLflow store {path} is not writable")
    elif uri.startswith(("postgresql", "mysql", "mssql")):
        check_database(uri, timeout_s, "MLflow tracking database")
    elif uri.startswith("file:") or "://" not in uri:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            # MLflow 3 refuses its file store with a traceback after the run has been set up
            raise StorageError(f"{uri} is an MLflow file store, which MLflow no longer writes by default; use "
                               "sqlite:///<folder>/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)")
        ensure_writable(Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri),
                        "MLflow file store")
    elif not uri.startswith(("databricks", "uc")):
        raise StorageError(f"tracking URI {uri!r}: unknown scheme {urlparse(uri).scheme!r}; use http(s)://, "
                           "sqlite:///, postgresql://, mysql:// or mssql://")


@contextmanager
def store_lock(uri: str, timeout_s: float = 300.0):
    """Hold an exclusive file lock beside a sqlite store (nothing for other stores: a server or
    a database serialises its own writes). Held while the store's schema is created, and while
    an experiment is looked up or created."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    ensure_writable(path.parent, "folder of the MLflow store")
    try:
        with FileLock(f"{path}.lock", timeout=timeout_s):
            yield
    except Timeout:
        raise StorageError(f"the MLflow store {path} stayed locked for {timeout_s:.0f} s by another process "
                           f"(lock file {path}.lock)") from None


def tracking_client(uri: str):
    """An MlflowClient on ``uri`` whose store exists (created, if new, by one process at a time;
    an existing sqlite store is opened without the lock, so a read-only one can be read)."""
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    if path is not None and path.is_file():
        return MlflowClient(tracking_uri=uri)
    with store_lock(uri):
        return MlflowClient(tracking_uri=uri)
