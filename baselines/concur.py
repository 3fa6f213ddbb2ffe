"""CONCUR (arXiv 2601.22705, Chen et al., ICML 2026): agent-level admission control in the manner of TCP
congestion control, in front of an unmodified engine (backend `concur`: this controller + vLLM FCFS).

What the paper specifies (from its abstract, the authors' blog post and public summaries; the full text
was not available here): the KV cache is a shared resource that agentic batch inference congests
*cumulatively* - agents live long and their contexts grow - so cache efficiency collapses ("middle-phase
thrashing": evictions, then recompute of the evicted histories, then more evictions) before memory is
formally exhausted. Request-level cache management reacts too late; CONCUR instead regulates how many
*agents* are active at once, with a feedback loop on runtime cache signals (KV occupancy and the prefix
cache's hit rate), admitting whole agents and never pausing one it admitted (execution continuity). It
needs nothing from the engine but its cache metrics.

The control law here (its form and every constant are **assumptions**, see docs/baselines.md):

* Every `control_interval_s` the controller reads KV usage and the change, since its last update, of the
  engine's cumulative preemption and prefix-cache counters (`EngineSignals.preemptions`,
  `prefix_query_tokens`, `prefix_hit_tokens`).
* **Congestion** (the "loss" of TCP): usage >= `kv_high`, or more than `max_preemptions` preemptions in
  the interval, or the interval's hit rate (hits / queries, judged only when at least
  `hit_min_query_tokens` were queried) below `hit_rate_low`. On congestion the window shrinks
  multiplicatively: window = max(window_min, floor(window * window_dec)), and `ssthresh` = that window.
* **Healthy**: no congestion and usage <= `kv_low` (between `kv_low` and `kv_high`: hold). The window
  grows by `window_inc` - or doubles, in slow start (`slow_start` and window < ssthresh) - up to
  `window_max`, only while it binds (active >= window, RFC 7661's rule against growing an unused window).
* **Admission**: whole sessions in arrival order while active < window. At least one session is admitted
  whenever none is active (no deadlock; window_min >= 1 makes this hold by construction).

It reads no tool-pool signal: CONCUR controls the GPU cache only, which is what separates it from MARS's
control plane (mars_impl/admission.py), whose window also answers to CPU-side backlog and queue wait.
A missing KV signal counts as healthy (the window may grow, nothing shrinks it); a missing counter
removes that congestion test only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.policy.signals import EngineSignals, Signals
from workloads.model import Session

_EPS = 1e-9


class ConcurSettings(BaseModel):
    """CONCUR's parameters (`--set concur.NAME=V`); every default is an assumption (docs/baselines.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    window_init: int = Field(default=8, ge=1, description="active-agent window at start")
    window_min: int = Field(default=1, ge=1, description="window floor (>= 1: never deadlocks)")
    window_max: int = Field(default=64, ge=1, description="window ceiling")
    window_inc: int = Field(default=1, ge=0, description="additive increase per healthy control step")
    window_dec: float = Field(default=0.5, gt=0, lt=1, description="multiplicative decrease on congestion")
    slow_start: bool = Field(default=False, description="double the window while below ssthresh (TCP slow start)")
    control_interval_s: float = Field(default=1.0, gt=0, description="time between window updates")
    kv_high: float = Field(default=0.95, gt=0, le=1, description="KV usage at or above this is congestion")
    kv_low: float = Field(default=0.85, ge=0, lt=1, description="KV usage at or below this allows growth")
    max_preemptions: int = Field(default=0, ge=0, description="more preemptions than this in an interval: congestion")
    hit_rate_low: float = Field(default=0.5, ge=0, le=1, description="interval prefix-hit rate below this: congestion")
    hit_min_query_tokens: int = Field(default=4096, ge=1, description="judge the hit rate only over this many queried tokens")
    grow_only_when_full: bool = Field(default=True, description="grow only while active >= window (window validation)")

    @model_validator(mode="after")
    def _check_order(self) -> ConcurSettings:
        for low, high, strict in (("window_min", "window_init", False), ("window_init", "window_max", False),
                                  ("kv_low", "kv_high", True)):
            a, b = getattr(self, low), getattr(self, high)
            if a > b or (strict and a == b):
                raise ValueError(f"{low} ({a}) must be {'<' if strict else '<='} {high} ({b})")
        return self


def _delta(now: int | None, before: int | None) -> int | None:
    """Change of a cumulative counter; None when either reading is missing (a restarted count: 0)."""
    if now is None or before is None:
        return None
    return max(0, now - before)


class ConcurAdmission:
    """CONCUR's agent-level admission controller (harness.policy.admission.AdmissionController)."""

    name = "concur"
    event_keys = ("window", "congested", "reason")

    def __init__(self, settings: ConcurSettings | None = None) -> None:
        self.settings = settings or ConcurSettings()
        s = self.settings
        self.interval_s: float | None = s.control_interval_s
        self.window = s.window_init
        self.ssthresh = s.window_max if s.slow_start else s.window_init
        self.arrivals_done = False
        self.congested = False
        self.reason = "start"
        self._active: set[str] = set()
        self._updated_at: float | None = None
        self._last: EngineSignals | None = None  # counters at the last window update
        self._reading: dict[str, Any] = {"kv_usage": None, "preemptions": None, "hit_rate": None}

    # ------------------------------------------------------------------------------ hooks
    def on_arrival(self, session: Session, now: float) -> None:
        pass

    def on_session_end(self, session: Session, now: float) -> None:
        self._active.discard(session.id)

    def on_arrivals_done(self, now: float) -> None:
        self.arrivals_done = True

    def admit(self, backlog: Sequence[Session], signals: Signals, now: float) -> list[Session]:
        if self._updated_at is None or now - self._updated_at >= self.settings.control_interval_s - _EPS:
            self._update(signals.engine, now)
        slots = max(0, self.window - self.active)
        chosen = list(backlog[:slots])
        if not chosen and not self._active and backlog:
            chosen = [backlog[0]]  # no deadlock (unreachable while window_min >= 1; kept as the invariant)
        self._active.update(s.id for s in chosen)
        return chosen

    def state(self) -> dict[str, Any]:
        return {"window": self.window, "ssthresh": self.ssthresh, "active": self.active,
                "congested": self.congested, "reason": self.reason, **self._reading}

    @property
    def active(self) -> int:
        return len(self._active)

    # ------------------------------------------------------------------------------ the control law
    def congestion(self, engine: EngineSignals | None) -> str | None:
        """Why the KV cache is congested now ('kv_usage', 'preemptions', 'hit_rate'), or None. Reads the
        counters' change since the last window update; records the reading for state()."""
        s = self.settings
        if engine is None:
            self._reading = {"kv_usage": None, "preemptions": None, "hit_rate": None}
            return None
        last = self._last
        preempted = _delta(engine.preemptions, last.preemptions if last else None)
        queries = _delta(engine.prefix_query_tokens, last.prefix_query_tokens if last else None)
        hits = _delta(engine.prefix_hit_tokens, last.prefix_hit_tokens if last else None)
        hit_rate = hits / queries if queries and hits is not None and queries >= s.hit_min_query_tokens else None
        self._reading = {"kv_usage": engine.kv_usage, "preemptions": preempted, "hit_rate": hit_rate}
        if engine.kv_usage >= s.kv_high:
            return "kv_usage"
        if preempted is not None and preempted > s.max_preemptions:
            return "preemptions"
        if hit_rate is not None and hit_rate < s.hit_rate_low:
            return "hit_rate"
        return None

    def _update(self, engine: EngineSignals | None, now: float) -> None:
        s = self.settings
        self._updated_at = now
        cause = self.congestion(engine)
        if engine is not None:
            self._last = engine
        self.congested = cause is not None
        if cause is not None:
            self.window = max(s.window_min, math.floor(self.window * s.window_dec + _EPS))
            self.ssthresh = self.window
            self.reason = cause
            return
        if engine is not None and engine.kv_usage > s.kv_low:
            self.reason = "hold"
            return
        if s.grow_only_when_full and self.active < self.window:
            self.reason = "idle"
            return
        if s.slow_start and self.window < self.ssthresh:
            self.window = min(self.ssthresh, s.window_max, max(self.window * 2, self.window + s.window_inc))
            self.reason = "slow_start"
        else:
            self.window = min(s.window_max, self.window + s.window_inc)
            self.reason = "grow"
