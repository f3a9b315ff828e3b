"""Grading in worker processes, with a per-item timeout.

math-verify's timeouts (and :data:`tempo_bench.grading.answers.VERDICT_TIMEOUT_S`) rely on SIGALRM, which
only a process's main thread can use. Each worker here is its own process, so its verdicts keep
their 5 s budget; on top, the parent gives every item (one question's samples) ``timeout_s`` of
waiting. A worker stuck past that (in C code that ignores the alarm) is killed with the pool,
the item is graded "no answer", and the remaining items go to a fresh pool.

    pool = GradingPool("math500", workers=4)
    answers, clusters = pool.grade_groups([[text, text, ...], ...])
    correct = pool.check(golds, answers)
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.pool import Pool

from tempo_bench.core.processes import terminate_with_parent
from tempo_bench.grading.answers import GENERIC, NUMERIC, Grader
from tempo_bench.tasks.real import get_task


def grader_by_name(name: str) -> Grader:
    """The grader of a task name: a real benchmark's (tempo_bench.tasks.get_task) or the generic one."""
    if name in (GENERIC.name, NUMERIC.name):
        return GENERIC if name == GENERIC.name else NUMERIC

    return get_task(name)  # raises ValueError naming the known tasks


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # workers parse text; they must not compete for cores
    terminate_with_parent()  # a run killed with SIGKILL leaves no grading process behind


def _ready(name: str) -> bool:
    grader_by_name(name)  # imports the grader's modules (math-verify, sympy)
    return True


def _grade_group(name: str, texts: list[str]):
    return grader_by_name(name).grade_group(texts)


def _check_group(name: str, gold: str, answers: list[str | None]):
    return grader_by_name(name).check_group(gold, answers)


class GradingPool(Grader):
    """A :class:`Grader` whose batch methods run in ``workers`` processes (spawned, so they hold
    no copy of the training process's torch state)."""

    def __init__(self, grader: Grader, workers: int, timeout_s: float = 60.0):
        if workers < 1:
            raise ValueError(f"a grading pool needs at least one worker, got {workers}")
        self.inner, self.workers, self.timeout_s = grader, workers, timeout_s
        self.name = grader.name
        self.timeouts = 0  # items given up on (for the run's logs)
        self._pool: Pool | None = None

    def extract_answer(self, text: str) -> str | None:
        return self.inner.extract_answer(text)

    def equivalent(self, gold: str, extracted: str | None) -> bool:
        return self.inner.equivalent(gold, extracted)

    def _workers(self) -> Pool:
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers, initializer=_init_worker)
            # start-up (a fresh interpreter importing the grader) is not an item's time
            self._pool.map(_ready, [self.name] * self.workers, chunksize=1)
        return self._pool

    def _map(self, func, items: list[tuple], fallback) -> list:
        """``func(name, *item)`` for every item, in order; ``fallback(item)`` for an item that
        did not finish within ``timeout_s`` of being waited for."""
        results: list = [None] * len(items)
        todo = list(range(len(items)))
        while todo:
            pool = self._workers()
            pending = [(i, pool.apply_async(func, (self.name, *items[i]))) for i in todo]
            todo = []
            for pos, (i, handle) in enumerate(pending):
                try:
                    results[i] = handle.get(self.timeout_s)
                except multiprocessing.TimeoutError:
                    self.timeouts += 1
                    results[i] = fallback(items[i])
                    self._restart()  # the stuck worker dies with its pool
                    todo = [j for j, _ in pending[pos + 1:]]
                    break
        return results

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def grade_groups(self, groups):
        graded = self._map(_grade_group, [(texts,) for texts in groups],
                           lambda item: ([None] * len(item[0]), [None] * len(item[0])))
        return [a for a, _ in graded], [c for _, c in graded]

    def check(self, golds, answers):
        return self._map(_check_group, list(zip(golds, answers)), lambda item: [False] * len(item[1]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def make_grader(grader: Grader, workers: int, timeout_s: float) -> Grader:
    """``grader`` itself (in-process) for workers=0, else a pool running it."""
    return GradingPool(grader, workers, timeout_s) if workers > 0 else grader
