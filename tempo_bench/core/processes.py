"""Worker processes of compare and sweep: quiet libraries, and interruption that ends in clean
records rather than tracebacks.

A terminal's Ctrl-C reaches every process of the foreground group at once. Workers therefore
ignore SIGINT and leave the decision to their parent, which sends them SIGTERM; a worker in the
middle of a run turns SIGTERM into KeyboardInterrupt, so the run's own cleanup marks it KILLED in
MLflow (and its trial as interrupted) before the worker exits; an idle worker exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

_IN_RUN = False
_TERMINATED = False  # SIGTERM received: this worker is asked to stop
_INTERRUPT_SIGNAL = signal.SIGINT  # what turns into KeyboardInterrupt here: SIGTERM in a worker


def quiet_libraries() -> None:
    """Keep the terminal for our progress bars and summaries: MLflow's schema-migration INFO lines
    and a deprecation warning peft triggers inside transformers say nothing to the user."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _on_terminate(signum, frame):
    global _TERMINATED
    _TERMINATED = True
    if _IN_RUN:
        raise KeyboardInterrupt  # unwinds through the run's cleanup: MLflow run KILLED, trial marked
    os._exit(128 + signum)


def _redeliver_swallowed_interrupt(unraisable) -> None:
    """A signal handler's exception that lands in a finaliser or a weakref callback (SQLAlchemy's
    state cleanup, run by the garbage collector) is swallowed and printed as "Exception ignored",
    and the run would go on. Send the signal again a moment later, from another thread, so that
    its handler runs outside the callback (the main thread is back in the run's own code by then;
    if not, this repeats)."""
    swallowed = unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt)
    in_run = _IN_RUN or _INTERRUPT_SIGNAL == signal.SIGINT
    if swallowed and in_run:
        threading.Timer(0.05, os.kill, (os.getpid(), _INTERRUPT_SIGNAL)).start()
        return
    sys.__unraisablehook__(unraisable)


def deliver_swallowed_interrupts() -> None:
    """Install the hook above (the command line calls it; workers through `init_worker`)."""
    sys.unraisablehook = _redeliver_swallowed_interrupt


def init_worker() -> None:
    """Call first in a spawned worker process."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _INTERRUPT_SIGNAL
    _INTERRUPT_SIGNAL = signal.SIGTERM
    signal.signal(signal.SIGTERM, _on_terminate)
    terminate_with_parent()
    deliver_swallowed_interrupts()
    quiet_libraries()


def terminate_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when its parent dies (a parent killed with SIGKILL
    cannot stop its workers, which then ran on for good, about 700 MB each): the run in progress
    ends as interrupted, an idle worker exits. Elsewhere ParentWatch notices at the next step."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def interruptible_run():
    """While inside, SIGTERM interrupts the run as Ctrl-C would."""
    global _IN_RUN
    _IN_RUN = True
    try:
        yield
    finally:
        _IN_RUN = False


_STOP_REQUESTED = False  # SIGTERM reached a `run`: stop at the end of the current step


@contextmanager
def stop_at_step_end_on_sigterm():
    """While inside (a `run` command's process, not a worker), SIGTERM, what a cluster scheduler
    sends before it kills a job, asks the run to checkpoint at the end of its current step and stop
    (Run.train polls :func:`stop_requested`); a second SIGTERM interrupts at once, as Ctrl-C."""
    global _STOP_REQUESTED

    def on_sigterm(signum, frame):
        global _STOP_REQUESTED
        if _STOP_REQUESTED:
            raise KeyboardInterrupt
        _STOP_REQUESTED = True
        print("\nSIGTERM: the run checkpoints at the end of this step and stops", file=sys.stderr)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP_REQUESTED = False


def stop_requested() -> bool:
    return _STOP_REQUESTED


def exit_if_terminated() -> None:
    """A pool worker whose run SIGTERM interrupted exits once the run's cleanup is done: the pool
    would otherwise hand it the next task, or leave it waiting for one while its parent waits for
    it to end (`stop_processes`' timeout, then SIGKILL)."""
    if _TERMINATED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)


def stop_processes(pids: list[int], timeout_s: float = 60.0) -> None:
    """SIGTERM each live worker and wait up to ``timeout_s`` for all of them to finish their
    cleanup; SIGKILL what is left."""
    import time

    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it if it ended
        return waited == 0
    except ChildProcessError:  # not our child (or already reaped)
        return process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class ParentWatch:
    """A run hook that stops an orphaned worker: if the parent was killed (SIGKILL gives it no
    chance to stop its workers), the run ends as interrupted at the next step instead of writing
    on while the user resumes the same work elsewhere."""

    def __init__(self):
        self.parent = os.getppid()

    def __call__(self, step, evals) -> None:
        if os.getppid() != self.parent:
            global _TERMINATED
            _TERMINATED = True  # the worker exits once the run's cleanup is done (exit_if_terminated)
            print(f"parent process {self.parent} is gone: stopping after step {step}", file=sys.stderr)
            raise KeyboardInterrupt


def launched_world_size() -> int:
    """How many ranks the launcher started (torchrun sets WORLD_SIZE); 1 for a plain launch."""
    return int(os.environ.get("WORLD_SIZE", "1"))
