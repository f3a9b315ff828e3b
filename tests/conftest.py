import os

# Set before torch loads: passive OpenMP waiting and one thread per test process, so a test that
# trains is not slowed 20x by busy-waiting threads on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# A shell that starts a job in the background (`nohup pytest &`, a CI script) starts it with
# SIGINT ignored, and the commands the fault tests interrupt with SIGINT would inherit that and
# run on. The tests stand for an interactive user: Ctrl-C interrupts.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- a tracking store made once --------------------------------------------------------------------
# Creating an MLflow sqlite store runs every schema migration: about 6 s on this machine, paid by
# each test that gives a command a new --out folder. Tests that exercise something else
# (interruption, resume, sweeps) start from a copy of one store made per session; the tests of
# store creation itself (two runs creating one store at once) do not use it.
import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory):
    from tempo_bench.core.tracking import tracking_client

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking_client(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


def copy_store(empty_store, folder):
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.copy(empty_store, folder / "mlflow.db")


@pytest.fixture
def created_store(_empty_store):
    """``created_store(folder)``: folder/mlflow.db, the store a command with ``--out folder``
    uses, already created (empty)."""
    return lambda folder: copy_store(_empty_store, folder)
