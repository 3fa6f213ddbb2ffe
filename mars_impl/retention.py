"""Retain-or-evict at every tool call (reference section 4; the formula is ours).

When a call ends in a tool call, the session's KV blocks can be kept (pinned until a deadline), or
freed (they stay in the LRU prefix cache until the allocator reuses them). Both sides of the decision
are measured in seconds of engine time, so they compare directly:

  benefit = P(tool done by t) x R(C)        R(C) = time to re-prefill the C context tokens (EngineView
                                             prefill_seconds): what a cold resume costs the engine
  cost    = pi x E[min(D, t)] x B / N        B blocks held out of N for the expected holding time; pi is
                                             the KV pressure: 0 below the low watermark, rising linearly
                                             to 1 at the high one, and 1 whenever requests wait that
                                             cannot get blocks. Blocks held while memory is short deny the
                                             engine that fraction of its capacity for that long.

  keep (pin until t) iff benefit > cost; t = the p90 of the tool's observed durations (so a pin
  outlives most calls of that tool but not its tail), at most `max_pin_s`.

With a host-memory tier (`--kv-offload-gib`), offloading is a third choice worth R(C) - L(C), L the time
to load the context back over the host link (the copy out overlaps the tool call; host memory is not
the scarce resource, so holding it costs nothing): the engine picks the best of keep (benefit - cost),
offload (R - L) and free (0), keep on ties.

Below the low watermark the cost is 0, so every session is kept (nothing waits for those blocks, and the
pin protects the context if pressure rises during the tool call). Under pressure, a session with a
short tool and a large context (re-prefill dear, holding cheap) is kept and one with a long tool is
freed. Tool durations come from each tool's observed history (queue wait included: that is how long the
blocks would be held), from all tools until a tool has `min_samples`, and from `prior_tool_s` before any
observation. When blocks run out the engine releases pins lowest benefit per block first.

Modes: `benefit` (the above), `lru` (never pin: only the prefix cache survives tool calls — the public
preview code), `off` (never pin, and the session's context is dropped from the cache at every tool call,
so every resume is cold: the ablation that shows what the LRU cache alone is worth).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.policy.helpers import ToolDurations, context_tokens
from harness.policy import DISCARD, FREE, OFFLOAD, EngineView, PinView, Retention, RequestView


class RetentionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    retention: Literal["benefit", "lru", "off"] = "benefit"
    pin_quantile: float = Field(default=0.9, gt=0, le=1, description="pin deadline: this quantile of tool time")
    max_pin_s: float = Field(default=60.0, gt=0)
    min_samples: int = Field(default=10, ge=1, description="samples before a tool's own history is used")
    prior_tool_s: float = Field(default=1.0, gt=0, description="assumed tool time before any observation")
    retention_kv_low: float = Field(default=0.85, ge=0, le=1, description="no holding cost below this usage")
    retention_kv_high: float = Field(default=0.90, ge=0, le=1, description="full holding cost from this usage")


class RetentionPolicy:
    """Decides keep / free at each tool call and which pin goes first under pressure."""

    def __init__(self, settings: RetentionSettings | None = None) -> None:
        self.settings = settings or RetentionSettings()
        self.durations = ToolDurations()
        self._benefit_per_block: dict[str, float] = {}

    def pressure(self, engine: EngineView) -> float:
        """0 below the low watermark, 1 at the high one or when waiting work cannot get blocks."""
        s = self.settings
        if any(r.num_computed_tokens == 0 and r.num_blocks == 0 for r in engine.waiting) and \
                engine.num_free_blocks < engine.num_total_blocks * (1 - s.retention_kv_high):
            return 1.0
        usage = engine.kv_usage
        if usage <= s.retention_kv_low:
            return 0.0
        if usage >= s.retention_kv_high:
            return 1.0
        return (usage - s.retention_kv_low) / (s.retention_kv_high - s.retention_kv_low)

    def decide(self, req: RequestView, engine: EngineView, now: float) -> Retention:
        s = self.settings
        if s.retention == "lru" or req.tool_name is None:
            return FREE
        if s.retention == "off":
            return DISCARD
        samples = self._samples(req.tool_name)
        if samples.size:
            deadline = min(s.max_pin_s, float(np.quantile(samples, s.pin_quantile)))
            p_done = float(np.mean(samples <= deadline))
            holding = float(np.mean(np.minimum(samples, deadline)))
        else:
            deadline, p_done, holding = min(s.max_pin_s, s.prior_tool_s), 1.0, min(s.max_pin_s, s.prior_tool_s)
        context = context_tokens(req)
        reprefill = engine.prefill_seconds(context) if context else 0.0
        keep_value = p_done * reprefill - self.pressure(engine) * holding * req.num_blocks / max(1, engine.num_total_blocks)
        load = engine.offload_seconds(context)
        offload_value = reprefill - load if load is not None else 0.0
        if max(keep_value, offload_value) <= 0:
            return FREE
        if offload_value > keep_value:
            return OFFLOAD
        self._benefit_per_block[req.session_id] = p_done * reprefill / max(1, req.num_blocks)
        return Retention.keep(deadline)

    def _samples(self, tool: str) -> np.ndarray:
        """The tool's own durations once it has `min_samples`, else every tool's."""
        own: Sequence[float] = self.durations.samples(tool)
        return np.asarray(own if len(own) >= self.settings.min_samples else self.durations.samples(None), dtype=float)

    def pin_to_release(self, pins: Mapping[str, PinView]) -> str:
        """Lowest benefit per block first; then the one expiring first."""
        return min(pins, key=lambda sid: (self._benefit_per_block.get(sid, 0.0), pins[sid].deadline_s, sid))

    def on_tool_end(self, session_id: str, tool_name: str, duration_s: float) -> None:
        self.durations.add(tool_name, duration_s)
        self._benefit_per_block.pop(session_id, None)
