"""The scheduling-policy hooks (DESIGN section 4), shared by the simulated and the real engine.

A policy is sans-IO: it never reads a clock or touches a socket. Engines call its hooks from their step
loop with `now` as an argument and act on the return values. The default implementation of every hook
is vanilla vLLM V1 behaviour, so a policy overrides only what makes it different.

The engine's step, mirroring vLLM V1 `Scheduler.schedule()`:
  1. running requests, in `order_running` order, each get up to its remaining tokens (capped by the
     token budget and `prefill_cap`); when KV blocks run out, `on_allocation_failure` may shrink the
     chunk, otherwise `choose_victim` picks a running request to preempt (recompute);
  2. only if nothing was preempted, waiting requests in `order_waiting` order are admitted into the
     batch while budget, sequence slots and blocks last;
  3. `on_scheduled` sees the step; `on_turn_end` decides what happens to a finished call's KV blocks
     when its session goes off to run a tool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class RequestView(Protocol):
    """What a policy may read about one LLM call. Engines adapt their request objects to this."""

    @property
    def request_id(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def turn(self) -> int: ...
    @property
    def is_last_turn(self) -> bool: ...
    @property
    def tool_name(self) -> str | None:
        """The tool the session calls after this call (None on the last turn)."""
    @property
    def session_arrival_s(self) -> float: ...
    @property
    def arrival_s(self) -> float:
        """When this call reached the engine."""
    @property
    def num_prompt_tokens(self) -> int: ...
    @property
    def num_output_tokens(self) -> int: ...
    @property
    def num_computed_tokens(self) -> int: ...
    @property
    def num_blocks(self) -> int:
        """KV blocks the call holds now."""
    @property
    def is_decoding(self) -> bool:
        """The prompt (and any output to recompute after preemption) is fully computed."""
    @property
    def remaining_prefill_tokens(self) -> int: ...
    @property
    def last_scheduled_s(self) -> float | None: ...
    @property
    def num_preemptions(self) -> int: ...


R = TypeVar("R", bound=RequestView)


class PinView(Protocol):
    """KV blocks kept for a session across a tool call."""

    @property
    def session_id(self) -> str: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def computed_tokens(self) -> int: ...
    @property
    def since_s(self) -> float: ...
    @property
    def deadline_s(self) -> float: ...


class EngineView(Protocol):
    """Read-only engine state a policy may consult (engines implement it; a policy never changes it)."""

    @property
    def running(self) -> Sequence[RequestView]: ...
    @property
    def waiting(self) -> Sequence[RequestView]: ...
    @property
    def pins(self) -> Mapping[str, PinView]: ...
    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks referenced by requests or pins."""
    @property
    def num_free_blocks(self) -> int: ...
    @property
    def num_total_blocks(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    def prefill_seconds(self, tokens: int) -> float:
        """Estimated time to prefill `tokens` tokens from scratch (re-prefill cost of a freed context)."""
    def offload_seconds(self, tokens: int) -> float | None:
        """Time to load `tokens` of KV back from a host-memory tier; None when the engine has none."""
    def cached_prefix_tokens(self, req: RequestView) -> int:
        """Tokens of a waiting request's context the prefix cache holds now (what admission would hit)."""
    def max_new_tokens(self, req: RequestView) -> int:
        """Output tokens the call may still produce: its request's max_tokens minus what it produced."""


@dataclass(frozen=True)
class Retention:
    """What to do with a call's KV blocks when its session goes to run a tool."""

    action: str  # "free" | "keep" | "offload" | "discard"
    seconds: float = 0.0  # how long to keep (pin) or hold offloaded

    @staticmethod
    def keep(seconds: float) -> Retention:
        return Retention("keep", seconds) if seconds > 0 else FREE

    @staticmethod
    def offload() -> Retention:
        return OFFLOAD


FREE = Retention("free")
OFFLOAD = Retention("offload")  # copy to the host tier (if any) and free the device blocks
DISCARD = Retention("discard")  # free and drop the session's blocks from the prefix cache (ablations)


@dataclass(frozen=True)
class ScheduledStep:
    """One engine step as the policy sees it: (request, tokens computed) pairs and the step's time."""

    start_s: float
    duration_s: float
    scheduled: Sequence[tuple[RequestView, int]]
    preempted: Sequence[RequestView]


class Policy:
    """Vanilla vLLM V1: FCFS, chunked prefill, prefix caching with LRU, recompute preemption of the
    request that entered the running queue last, KV freed at the end of every call."""

    name = "vllm"
    engine: EngineView | None = None

    def bind(self, engine: EngineView) -> None:
        """The engine this policy schedules; called once before the first hook."""
        self.engine = engine

    def on_arrival(self, req: RequestView, now: float) -> None:
        """A call reached the engine's waiting queue."""

    def order_running(self, running: list[R], now: float) -> list[R]:
        """Order in which running requests get the step's token budget (vLLM: admission order)."""
        return running

    def order_waiting(self, waiting: list[R], now: float) -> list[R]:
        """Order in which waiting requests are admitted (vLLM FCFS: queue order, preempted at the front)."""
        return waiting

    def prefill_cap(self, req: RequestView, now: float) -> int | None:
        """Most prompt tokens this request may compute in one step; None = only the engine's limits."""
        return None

    def on_allocation_failure(self, req: RequestView, tokens: int, now: float) -> int:
        """KV blocks for `tokens` new tokens of `req` are short: return fewer tokens to retry with, or 0 to
        preempt a victim instead (vLLM)."""
        return 0

    def choose_victim(self, running: Sequence[R], now: float) -> R:
        """The running request to preempt (vLLM FCFS: the one that entered the running queue last)."""
        return running[-1]

    def on_preempted(self, req: RequestView, now: float) -> None:
        """`req` lost its blocks and goes back to the front of the waiting queue."""

    def on_scheduled(self, step: ScheduledStep) -> None:
        """A step finished computing."""

    def on_finished(self, req: RequestView, now: float) -> None:
        """A call produced its last token."""

    def on_turn_end(self, req: RequestView, now: float) -> Retention:
        """The call finished and its session goes to run `req.tool_name`: keep, offload or free its KV."""
        return FREE

    def choose_pin_to_release(self, pins: Mapping[str, PinView], now: float) -> str:
        """Blocks are short and sessions hold pinned KV: the session whose pin goes first
        (default: the one that expires first)."""
        return min(pins, key=lambda s: (pins[s].deadline_s, s))

    def on_tool_end(self, session_id: str, tool_name: str, duration_s: float, now: float) -> None:
        """A session's tool call finished after `duration_s` (queue wait included); its next call follows."""

    def admission_gate(self, now: float) -> Callable[[RequestView, int, int, int], bool] | None:
        """The engine is about to admit waiting requests into the step being planned: return a gate it asks
        before each one, in `order_waiting` order, or None to admit while the token budget, sequence slots
        and KV blocks last (vLLM). The gate is called as `gate(req, cached_tokens, new_tokens,
        locked_tokens)`: the request's prefix-cache hit, the tokens it would compute this step, and the
        hit tokens nobody references now (admitting it takes them out of the free + evictable pool). The
        first refusal ends admission for this step, as a blocked queue head does. A gate lives for one
        step, so it can charge what it admits against a budget (SGLang's PrefillAdder)."""
        return None
