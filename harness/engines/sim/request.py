"""One LLM call inside the simulated engine, with the token accounting of a vLLM V1 `Request`.

`num_tokens` = prompt + output sampled so far. A step computes tokens [num_computed, num_computed + n);
when it reaches `num_tokens` the step samples one output token (so the last sampled token's KV is
computed by the next step, as in vLLM). Preemption is recompute: the computed count drops to 0 and the
whole context (prompt and output so far) is prefilled again, minus whatever the prefix cache still holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.calls import CallRecord
from harness.engines.sim.kv_cache import BlockKey
from harness.policy.driver import is_decoding, remaining_prefill_tokens


@dataclass(eq=False, kw_only=True)
class SimRequest(CallRecord):
    """A call inside the simulated engine: the harness's record of it (timings, tokens) plus the engine's
    accounting (computed tokens, blocks, prefix-cache keys) and what policies read (RequestView)."""

    is_last_turn: bool
    tool_name: str | None
    session_arrival_s: float
    prefix_id: str | None = None
    prefix_tokens: int = 0

    num_computed_tokens: int = 0
    blocks: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading blocks already registered in the prefix cache
    last_scheduled_s: float | None = None
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
