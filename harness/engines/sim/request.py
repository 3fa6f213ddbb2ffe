"""One LLM call inside the simulated engine, with the token accounting of a vLLM V1 `Request`.

`num_tokens` = prompt + output sampled so far. A step computes tokens [num_computed, num_computed + n);
when it reaches `num_tokens` the step samples one output token (so the last sampled token's KV is
computed by the next step, as in vLLM). Preemption is recompute: the computed count drops to 0 and the
whole context (prompt and output so far) is prefilled again, minus whatever the prefix cache still holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.engines.sim.kv_cache import BlockKey
from harness.policy.driver import is_decoding, remaining_prefill_tokens


@dataclass(eq=False)
class SimRequest:
    request_id: str
    session_id: str
    turn: int
    is_last_turn: bool
    tool_name: str | None
    session_arrival_s: float
    arrival_s: float
    num_prompt_tokens: int
    max_tokens: int
    prefix_id: str | None = None
    prefix_tokens: int = 0

    num_output_tokens: int = 0
    num_computed_tokens: int = 0
    blocks: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading blocks already registered in the prefix cache
    last_scheduled_s: float | None = None
    first_scheduled_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    last_token_s: float = math.nan
    itl_s: list[float] = field(default_factory=list)
    cached_tokens: int = 0  # prefix-cache hit when first scheduled
    recomputed_tokens: int = 0
    num_preemptions: int = 0
    lost_until: int = 0  # tokens computed before the last preemption (recomputing them counts)
    _keys: list[BlockKey] = field(default_factory=list, repr=False)  # block_key(i) for i < len, memoised

    # ------------------------------------------------------------------- RequestView for policies
    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def pending_tokens(self) -> int:
        """Tokens whose KV the next steps must compute before the next output token is sampled."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        return is_decoding(self.num_output_tokens, self.num_computed_tokens, self.num_tokens)

    @property
    def remaining_prefill_tokens(self) -> int:
        return remaining_prefill_tokens(self.num_output_tokens, self.num_computed_tokens, self.num_tokens)

    @property
    def finished(self) -> bool:
        return self.num_output_tokens >= self.max_tokens

    def prefix_blocks(self, block_size: int) -> int:
        """Leading blocks that lie wholly inside the shared prefix."""
        return self.prefix_tokens // block_size if self.prefix_id is not None else 0

    def block_key(self, index: int, block_size: int) -> BlockKey:
        """Content key of block `index` of this session's context (see kv_cache): shared-prefix blocks
        are keyed by the prefix, the rest by the session, so the key is the same in every turn."""
        if index < self.prefix_blocks(block_size):
            return ("p", self.prefix_id, index)
        return ("s", self.session_id, index)

    def block_keys(self, n: int, block_size: int) -> list[BlockKey]:
        """Content keys of the first `n` blocks (a prefix of a memoised list: do not modify it)."""
        keys = self._keys
        for index in range(len(keys), n):
            keys.append(self.block_key(index, block_size))
        return keys[:n] if len(keys) > n else keys

    def sample_token(self, t: float) -> None:
        """One output token produced at time `t` (TTFT, inter-token latency)."""
        if self.num_output_tokens == 0:
            self.first_token_s = t
        else:
            self.itl_s.append(t - self.last_token_s)
        self.last_token_s = t
        self.num_output_tokens += 1

    def row(self) -> dict:
        """This call as a row of the calls table (harness.tables.CALL_COLUMNS)."""
        return {
            "session_id": self.session_id,
            "turn": self.turn,
            "arrival_s": self.arrival_s,
            "first_scheduled_s": self.first_scheduled_s,
            "first_token_s": self.first_token_s,
            "finish_s": self.finish_s,
            "prompt_tokens": self.num_prompt_tokens,
            "output_tokens": self.num_output_tokens,
            "cached_tokens": self.cached_tokens,
            "recomputed_tokens": self.recomputed_tokens,
            "preemptions": self.num_preemptions,
            "itl_s": list(self.itl_s),
        }
