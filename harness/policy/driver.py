"""The policy driver: the machinery between a policy's hooks and an engine, written once for every engine.

A policy (harness.policy.hooks) only answers questions; an engine only moves blocks and tokens. What lies
between - and what both engines once wrote each on their own - lives here, sans-IO (`now` is an argument,
blocks are opaque, freeing them is the engine's callback):

* the **pin table** (`PinTable`): KV kept for a session across its tool call - made at a turn end the
  policy chose to keep, consumed when the session's next call is scheduled onto it, expired at its
  deadline, released one at a time in the policy's order when blocks run short - with its counters;
* the **turn-end decision** (`PolicyDriver.turn_end`): `on_finished`, then FREE on a session's last turn,
  else the policy's `on_turn_end`;
* the **recompute ledger** and scheduling bookkeeping (`PolicyDriver.scheduled` / `preempted`): tokens
  computed again after a preemption, first and last time a call was scheduled;
* **chunk capping and shrinking** (`cap_chunk`, `fit_chunk`): the policy's per-request prefill cap, and
  when a chunk's blocks do not fit: release a pin, else let the policy shrink the chunk, else the engine
  preempts a victim;
* **one definition of a request's phase** (`is_decoding`, `remaining_prefill_tokens`).

The simulated engine (harness.engines.sim.core) and the vLLM scheduler plugin (harness.engines.vllm.
scheduler) are thin adapters over one `PolicyDriver` each, so for the same state they make the same
decisions (tests/test_conformance.py drives both through the same trace).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.policy.hooks import FREE, Policy, RequestView, Retention

COUNTERS = ("preemptions", "pins_made", "pins_used", "pins_expired", "pins_released_early", "chunks_shrunk",
            "chunks_capped")


def is_decoding(num_output_tokens: int, num_computed_tokens: int, num_tokens: int) -> bool:
    """A call decodes once it produced a token and every token but the last sampled one is computed (the
    last one's KV is computed by the step that samples the next)."""
    return num_output_tokens > 0 and num_computed_tokens >= num_tokens - 1


def remaining_prefill_tokens(num_output_tokens: int, num_computed_tokens: int, num_tokens: int) -> int:
    """Prompt (or, after a preemption, context) tokens still to prefill; 0 while decoding."""
    if is_decoding(num_output_tokens, num_computed_tokens, num_tokens):
        return 0
    return max(0, num_tokens - num_computed_tokens)


@dataclass
class Pin:
    """KV blocks kept for a session across a tool call, until `deadline_s` (harness.policy.PinView)."""

    session_id: str
    blocks: list[Any]  # opaque: block ids (sim) or vLLM KVCacheBlocks (the real engine)
    computed_tokens: int
    since_s: float
    deadline_s: float

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


class PinTable:
    """The pins of an engine, by session. `free(blocks)` gives a pin's blocks back to the engine."""

    def __init__(self, policy: Policy, free: Callable[[list[Any]], None], counters: dict[str, int]) -> None:
        self.policy = policy
        self.free = free
        self.counters = counters
        self.pins: dict[str, Pin] = {}

    def __bool__(self) -> bool:
        return bool(self.pins)

    def make(self, session_id: str, blocks: list[Any], computed_tokens: int, now: float, seconds: float) -> None:
        """Keep `blocks` for `session_id` for `seconds` (a pin it still held is released first)."""
        old = self.pins.pop(session_id, None)
        if old is not None:
            self.free(old.blocks)
        self.pins[session_id] = Pin(session_id, blocks, computed_tokens, now, now + seconds)
        self.counters["pins_made"] += 1

    def consume(self, session_id: str) -> bool:
        """The session's next call was scheduled and holds the pinned blocks itself (as its prefix hits):
        the pin's references go. False when the session had no pin."""
        pin = self.pins.pop(session_id, None)
        if pin is None:
            return False
        self.free(pin.blocks)
        self.counters["pins_used"] += 1
        return True

    def expire(self, now: float) -> None:
        """Release every pin whose deadline has come."""
        if not self.pins:
            return
        for session in [s for s, p in self.pins.items() if p.deadline_s <= now]:
            self.free(self.pins.pop(session).blocks)
            self.counters["pins_expired"] += 1

    def release_one(self, now: float) -> str | None:
        """Blocks are short: release the pin the policy gives up first; its session, or None without pins."""
        if not self.pins:
            return None
        session = self.policy.choose_pin_to_release(self.pins, now)
        self.free(self.pins.pop(session).blocks)
        self.counters["pins_released_early"] += 1
        return session

    def next_deadline(self) -> float | None:
        return min((p.deadline_s for p in self.pins.values()), default=None)


class PolicyDriver:
    """One engine's policy, its pins and its counters; the engine adapter calls these at the points of its
    step that vLLM V1's `Scheduler.schedule()` defines (see harness.policy.hooks for the step)."""

    def __init__(self, policy: Policy, free_blocks: Callable[[list[Any]], None]) -> None:
        self.policy = policy
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.pins = PinTable(policy, free_blocks, self.counters)

    # ------------------------------------------------------------------------------ chunk sizes
    def cap_chunk(self, req: RequestView, n: int, now: float) -> int:
        """A prefill chunk of `n` tokens under the policy's per-request cap (never below one token)."""
        if req.is_decoding:
            return n
        cap = self.policy.prefill_cap(req, now)
        if cap is not None and max(1, cap) < n:
            self.counters["chunks_capped"] += 1
            return max(1, cap)
        return n

    def fit_chunk(self, req: RequestView, n: int, now: float, fits: Callable[[int], bool]) -> tuple[int, bool]:
        """Make a running request's chunk of `n` tokens fit in the KV blocks: while `fits(n)` is False,
        release a pin (policy's order), else let the policy shrink the chunk (`on_allocation_failure`).
        Returns the chunk and whether it fits; when it does not, the engine preempts a victim and asks again.
        `fits` may allocate as it succeeds (the simulated engine's does)."""
        while not fits(n):
            if self.pins.release_one(now) is not None:
                continue
            smaller = self.policy.on_allocation_failure(req, n, now)
            if 0 < smaller < n:
                self.counters["chunks_shrunk"] += 1
                n = smaller
                continue
            return n, False
        return n, True

    # ------------------------------------------------------------------------------ bookkeeping
    @staticmethod
    def scheduled(req: Any, start_s: float, before: int, n: int) -> None:
        """`req` computed tokens [before, before + n) in the step that started at `start_s`: the recompute
        ledger (tokens below `lost_until` were computed before a preemption) and first/last scheduled."""
        if req.lost_until > before:
            req.recomputed_tokens += min(before + n, req.lost_until) - before
        if req.last_scheduled_s is None:
            req.first_scheduled_s = start_s
        req.last_scheduled_s = start_s

    def preempted(self, req: Any, computed_tokens: int, now: float) -> None:
        """`req` lost its blocks after computing `computed_tokens` (recompute preemption)."""
        req.lost_until = max(req.lost_until, computed_tokens)
        self.counters["preemptions"] += 1
        self.policy.on_preempted(req, now)

    # ------------------------------------------------------------------------------ turn ends
    def turn_end(self, req: RequestView, now: float) -> Retention:
        """A call finished: `on_finished`, then what happens to its KV - FREE on the session's last turn,
        else the policy's `on_turn_end`. A keep with no time is a FREE."""
        self.policy.on_finished(req, now)
        decision = FREE if req.is_last_turn else self.policy.on_turn_end(req, now)
        if decision.action == "keep" and decision.seconds <= 0:
            return FREE
        return decision

    def stats(self) -> Mapping[str, int]:
        return dict(self.counters)
