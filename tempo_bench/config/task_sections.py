"""The task section of a run configuration: the embedded toy task, or a real benchmark with a
labeled pool (a discriminated union on ``name``)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from tempo_bench.core.registry import unknown_name
from tempo_bench.tasks.real import is_task_file, load_task_file, task_spec


class Strict(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    # inf and nan are never a setting (train.lr=inf passed and failed at step 2 without naming lr)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ToyTaskConfig(Strict):
    """The embedded column-addition task (tempo_bench/tasks/addition.py)."""

    name: Literal["toy_addition"] = "toy_addition"
    test_size: int = Field(64, ge=1, description="unlabeled test questions (D_U)")
    test_digits: list[int] = Field([3], description="operand digit counts of test questions")
    test_chain_fraction: float | None = Field(
        0.5, ge=0, le=1, description="share of test questions with a chain carry (None: natural)"
    )
    labeled_size: int = Field(256, ge=0, description="labeled questions D_L: the first of the pool")
    pool_size: int = Field(4096, ge=1, description="the large labeled pool (the RLVR stage trains on it)")
    labeled_digits: list[int] = Field([1, 2, 3], description="digit counts of labeled questions")
    labeled_chain_fraction: float | None = Field(None, ge=0, le=1)
    seed: int = Field(1234, description="data seed: the same questions for every method and run")

    @model_validator(mode="after")
    def _digits_in_range(self):
        for field in ("test_digits", "labeled_digits"):
            bad = [d for d in getattr(self, field) if not 1 <= d <= 6]
            if bad or not getattr(self, field):
                raise ValueError(f"{field} must list digit counts between 1 and 6, got {bad or '[]'}")
        if self.labeled_size > self.pool_size:
            raise ValueError(f"labeled_size ({self.labeled_size}) must not exceed pool_size ({self.pool_size})")
        return self


TEST_TASKS = ("aime24", "aime25", "amc", "math500", "gsm8k", "gpqa")
LABELED_POOLS = ("dapo17k", "math_train", "gsm8k_train", *TEST_TASKS)


class RealTaskConfig(Strict):
    """A real benchmark as the unlabeled test set D_U, and a labeled pool D_L
    (tempo_bench/tasks/real.py). Files load locally; without a file, from the hub. Wherever a task
    name goes, a task file (a path ending in .yaml) may go instead: a data set of your own."""

    name: str = Field(description=f"test set: {', '.join(TEST_TASKS)}, or a task file (.yaml)")
    source: str | None = Field(None, description="local JSON list / JSONL / parquet (None: the hub)")
    limit: int | None = Field(None, ge=1, description="first N test questions only")
    labeled: str = Field("dapo17k", description=f"labeled pool D_L is drawn from: {', '.join(LABELED_POOLS)}, "
                         "or a task file (.yaml)")
    labeled_source: str | None = Field(None, description="local file of the labeled pool (None: the hub)")
    labeled_size: int = Field(512, ge=0, description="labeled questions drawn from the pool (D_L)")
    seed: int = Field(1234, description="data seed: which labeled questions are drawn")

    @field_validator("name", "labeled")
    @classmethod
    def _known(cls, name: str, info) -> str:
        return known_task(name, TEST_TASKS if info.field_name == "name" else LABELED_POOLS)

    @model_validator(mode="after")
    def _same_grading(self):
        kinds = {task_spec(n).kind == "choice" for n in (self.name, self.labeled)}
        if self.labeled_size and len(kinds) > 1:
            raise ValueError(f"labeled pool {self.labeled!r} and test task {self.name!r} are graded "
                             "differently (multiple choice vs free answer); pick a pool of the same kind")
        return self


def known_task(name: str, allowed: tuple[str, ...]) -> str:
    """A task name of ``allowed``, or a task file that loads (its errors name file and field)."""
    if is_task_file(name):
        load_task_file(name)
        return name
    if name not in allowed:
        raise ValueError(unknown_name("task", name, list(allowed)) + ", or a task file (.yaml)")
    return name


def _task_section(value) -> str:
    """Which task section a `task` mapping is: the toy's, or a real benchmark's (any other name)."""
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return "toy_addition" if name in (None, "toy_addition") else "real"


TaskSection = Annotated[Union[Annotated[ToyTaskConfig, Tag("toy_addition")], Annotated[RealTaskConfig, Tag("real")]],
                        Discriminator(_task_section)]
TASK_SECTIONS = {"toy_addition": ToyTaskConfig, "real": RealTaskConfig}  # the tags error locations carry
