"""Hand-built stand-ins for what policies read: a RequestView and an EngineView."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.policy.driver import is_decoding, remaining_prefill_tokens


@dataclass(eq=False)
class Req:
    """A hand-built RequestView."""

    request_id: str
    arrival_s: float = 0.0
    num_prompt_tokens: int = 1000
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    num_blocks: int = 0
    session_id: str = "s"
    turn: int = 0
    is_last_turn: bool = False
    tool_name: str | None = "grep"
    session_arrival_s: float = 0.0
    last_scheduled_s: float | None = None
    num_preemptions: int = 0

    @property
    def is_decoding(self) -> bool:
        return is_decoding(self.num_output_tokens, self.num_computed_tokens, self.num_prompt_tokens + self.num_output_tokens)

    @property
    def remaining_prefill_tokens(self) -> int:
        return remaining_prefill_tokens(self.num_output_tokens, self.num_computed_tokens,
                                        self.num_prompt_tokens + self.num_output_tokens)


@dataclass
class Engine:
    running: list = field(default_factory=list)
    waiting: list = field(default_factory=list)
    pins: dict = field(default_factory=dict)
    kv_usage: float = 0.5
    num_free_blocks: int = 1000
    num_total_blocks: int = 2000
    block_size: int = 16

    host_load_s_per_token: float | None = None  # None: no host tier

    def prefill_seconds(self, tokens: int) -> float:
        return tokens * 1e-5

    def offload_seconds(self, tokens: int) -> float | None:
        return None if self.host_load_s_per_token is None else tokens * self.host_load_s_per_token
