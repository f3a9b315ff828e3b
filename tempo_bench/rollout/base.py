"""The rollout interface shared by every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    greedy: bool = False  # argmax decoding; temperature and top_p are then ignored
    # one seed per prompt (rollout.seeding=question): a prompt's samples then depend on its seed
    # alone, not on the other prompts of the call (nor on how a step is split over ranks)
    seeds: tuple[int, ...] | None = None


@dataclass
class Generation:
    """Samples for P prompts, n each, prompt-major: sample j of prompt i is row i * n + j.

    ``token_ids`` are the response tokens (the EOS included when the response ended, so training
    learns to stop); ``logprobs`` their log-probabilities under the sampling distribution
    (logits / temperature) of the policy that generated them; ``texts`` decoded without specials."""

    n: int
    prompt_ids: list[list[int]]
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    texts: list[str]
    finished: list[bool]

    @property
    def num_prompts(self) -> int:
        return len(self.prompt_ids)

    def group(self, i: int) -> range:
        return range(i * self.n, (i + 1) * self.n)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    def prompts(self, indices) -> "Generation":
        """The samples of the prompts at ``indices`` (in that order), as a Generation of their own."""
        rows = [r for i in indices for r in self.group(i)]
        return Generation(self.n, [self.prompt_ids[i] for i in indices], [self.token_ids[r] for r in rows],
                          [self.logprobs[r] for r in rows], [self.texts[r] for r in rows],
                          [self.finished[r] for r in rows])


def concat_generations(parts: list[Generation]) -> Generation:
    """One Generation of several with the same n, prompts in the order given."""
    n = {part.n for part in parts}
    if len(n) != 1:
        raise ValueError(f"cannot join generations of different n: {sorted(n)}")
    return Generation(n.pop(), *([item for part in parts for item in getattr(part, field)]
                                 for field in ("prompt_ids", "token_ids", "logprobs", "texts", "finished")))


class RolloutBackend(ABC):
    """Generates from the current policy. ``sync_weights`` is called after every policy update
    (a no-op where the backend shares the training model's weights)."""

    # consecutive ranks that serve one engine together (vLLM tensor parallel across ranks): they
    # make every generate call together, with the same prompts
    ranks_per_engine: int = 1

    @classmethod
    def create(cls, config, policy, tokenizer, out_dir, longest_prompt: int | None = None) -> "RolloutBackend":
        """The backend for a run (config: RunConfig; policy: the peft model being trained;
        out_dir: the run's folder, for files a backend needs; longest_prompt: the longest of the
        run's prompts in tokens, for a backend that reserves its context up front)."""
        return cls(policy, tokenizer)

    @classmethod
    def check(cls, config, longest_prompt: int) -> None:
        """Refuse (ConfigError, naming the setting) a run this backend cannot serve, before any run
        is created. ``longest_prompt``: the run's longest prompt in tokens."""
        return None

    @abstractmethod
    def generate(self, prompts: list[str], sampling: SamplingParams) -> Generation: ...

    def sync_weights(self) -> None:
        return None

    def close(self) -> None:
        return None
