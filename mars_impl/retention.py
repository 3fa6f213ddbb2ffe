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
so every resume is cold: the ablation that shows what the LRU cache alone is worth), and `warm`:

**`warm` — bounded pinning for warm tool returns** (ours; what the event log of `benefit` showed, see
docs/baselines.md "MARS retention"): under MARS's admission the KV cache is mostly free, so the LRU prefix
cache already serves a session that returns within a fraction of a second; the returns that miss are the
ones whose tool call waited seconds in the tool pool's queue, which a TTL from the tool's whole history
(its p90) does not cover, while pins for every call hold a large share of the cache that the admission
controller counts as used. `warm` differs from `benefit` in three ways:

* the tool time is the tool's **recent** durations (the last `warm_window`, queue wait included; all tools'
  recent ones until the tool has `min_samples`), so the TTL follows the pool's current queue wait;
* the TTL is the one that maximises P(D <= t) x V - pi x E[min(D, t)] x B / N over the support of those
  durations (Continuum-dy's objective with MARS's pressure-priced holding cost), V = R(C) + T, T the mean
  wait from arrival to first schedule of the last `warm_window` resumed calls that found no pin (what a
  cold resume waits besides its re-prefill, learned as Continuum-dy learns it); no pin when the best
  value is <= 0;
* a **budget**: the pinned blocks, this pin's included, stay within `pin_budget_share` of the blocks no
  running or waiting call holds (free blocks plus pinned ones: the admission controller's KV headroom), so
  pins never take the headroom that admits the backlog; over it, the call's KV is freed (or offloaded).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.policy.helpers import RollingMean, ToolDurations, context_tokens, ecdf
from harness.policy import DISCARD, FREE, OFFLOAD, EngineView, PinView, Retention, RequestView, ScheduledStep


class RetentionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    retention: Literal["benefit", "warm", "lru", "off"] = "benefit"
    pin_quantile: float = Field(default=0.9, gt=0, le=1, description="pin deadline: this quantile of tool time")
    max_pin_s: float = Field(default=60.0, gt=0)
    min_samples: int = Field(default=10, ge=1, description="samples before a tool's own history is used")
    prior_tool_s: float = Field(default=1.0, gt=0, description="assumed tool time before any observation")
    retention_kv_low: float = Field(default=0.85, ge=0, le=1, description="no holding cost below this usage")
    retention_kv_high: float = Field(default=0.90, ge=0, le=1, description="full holding cost from this usage")
    warm_window: int = Field(default=200, ge=1,
                             description="warm: recent tool durations (and cold-resume waits) the TTL is chosen from")
    pin_budget_share: float = Field(default=0.5, ge=0, le=1,
                                    description="warm: most pinned blocks, as a share of free + pinned blocks")


class RetentionPolicy:
    """Decides keep / free at each tool call and which pin goes first under pressure."""

    def __init__(self, settings: RetentionSettings | None = None) -> None:
        self.settings = settings or RetentionSettings()
        self.durations = ToolDurations()
        self._benefit_per_block: dict[str, float] = {}
        window = self.settings.warm_window
        self._recent: dict[str | None, deque[float]] = {None: deque(maxlen=window)}  # None: every tool
        self.cold_wait = RollingMean(window)  # arrival -> first schedule of resumed calls that found no pin
        self._cold: dict[str, float] = {}  # request id -> arrival, until first scheduled

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
        if s.retention == "warm":
            return self._decide_warm(req, engine)
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
        return self._settle(req, engine, context, reprefill, keep_value, p_done * reprefill, deadline)

    def _settle(self, req: RequestView, engine: EngineView, context: int, reprefill: float, keep_value: float,
                benefit: float, deadline: float) -> Retention:
        """Both retention modes end here: keep (pinned until `deadline`; `benefit` seconds, spread over the
        blocks, orders releases under pressure), offload to the host tier or free, whichever is worth most;
        free when neither keeping nor offloading is worth anything."""
        load = engine.offload_seconds(context)
        offload_value = reprefill - load if load is not None else 0.0
        if max(keep_value, offload_value) <= 0:
            return FREE
        if offload_value > keep_value:
            return OFFLOAD
        self._benefit_per_block[req.session_id] = benefit / max(1, req.num_blocks)
        return Retention.keep(deadline)

    # ------------------------------------------------------------------------------ warm
    def recent_samples(self, tool: str) -> np.ndarray:
        """The tool's last `warm_window` durations once it has `min_samples` in all, else every tool's last."""
        own = self._recent.get(tool)
        if own is None or self.durations.count(tool) < self.settings.min_samples:
            own = self._recent[None]
        return np.asarray(own, dtype=float)

    def pin_budget(self, engine: EngineView) -> int:
        """Blocks all pins together may hold: `pin_budget_share` of the blocks no call holds (free + pinned)."""
        pinned = sum(p.num_blocks for p in engine.pins.values())
        return int(self.settings.pin_budget_share * (engine.num_free_blocks + pinned))

    def warm_ttl(self, samples: np.ndarray, value_s: float, cost_per_s: float) -> tuple[float, float]:
        """(TTL, its value): the support point t <= max_pin_s maximising P(D <= t) x value_s - cost_per_s x
        E[min(D, t)]; (0, 0) when no t has a positive value. Ties go to the shorter TTL."""
        support, probability = ecdf(samples)
        keep = support <= self.settings.max_pin_s
        if not keep.any():
            return 0.0, 0.0
        support, probability = support[keep], probability[keep]
        held = 0.0
        if cost_per_s > 0:  # E[min(D, t)] at every support point: the sorted sample's prefix sums
            ordered = np.sort(samples)
            below = np.searchsorted(ordered, support, side="right")
            prefix = np.concatenate(([0.0], np.cumsum(ordered)))
            held = (prefix[below] + support * (ordered.size - below)) / ordered.size
        value = probability * value_s - cost_per_s * held
        best = int(np.argmax(value))
        return (float(support[best]), float(value[best])) if value[best] > 0 else (0.0, 0.0)

    def _decide_warm(self, req: RequestView, engine: EngineView) -> Retention:
        s = self.settings
        assert req.tool_name is not None
        samples = self.recent_samples(req.tool_name)
        if not samples.size:
            samples = np.asarray([s.prior_tool_s])
        context = context_tokens(req)
        reprefill = engine.prefill_seconds(context) if context else 0.0
        value_s = reprefill + self.cold_wait.mean(0.0)
        cost_per_s = self.pressure(engine) * req.num_blocks / max(1, engine.num_total_blocks)
        ttl, keep_value = self.warm_ttl(samples, value_s, cost_per_s)
        pinned = sum(p.num_blocks for p in engine.pins.values())
        if ttl > 0 and pinned + req.num_blocks > self.pin_budget(engine):
            ttl, keep_value = 0.0, 0.0
        return self._settle(req, engine, context, reprefill, keep_value, keep_value, ttl)

    def on_arrival(self, req: RequestView) -> None:
        """A resumed call that holds no KV on arrival found no pin: time its wait (warm's T)."""
        if req.turn > 0 and req.num_computed_tokens == 0 and req.num_blocks == 0:
            self._cold[req.request_id] = req.arrival_s

    def on_scheduled(self, step: ScheduledStep) -> None:
        if not self._cold:
            return
        for req, _ in step.scheduled:
            arrived = self._cold.pop(req.request_id, None)
            if arrived is not None:
                self.cold_wait.add(step.start_s - arrived)

    def _samples(self, tool: str) -> np.ndarray:
        """The tool's own durations once it has `min_samples`, else every tool's."""
        own: Sequence[float] = self.durations.samples(tool)
        return np.asarray(own if len(own) >= self.settings.min_samples else self.durations.samples(None), dtype=float)

    def pin_to_release(self, pins: Mapping[str, PinView]) -> str:
        """Lowest benefit per block first; then the one expiring first."""
        return min(pins, key=lambda sid: (self._benefit_per_block.get(sid, 0.0), pins[sid].deadline_s, sid))

    def on_tool_end(self, session_id: str, tool_name: str, duration_s: float) -> None:
        self.durations.add(tool_name, duration_s)
        self._recent.setdefault(tool_name, deque(maxlen=self.settings.warm_window)).append(duration_s)
        self._recent[None].append(duration_s)
        self._benefit_per_block.pop(session_id, None)
