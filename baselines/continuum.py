"""Continuum (backends `continuum` and `continuum-dy`): program-level FCFS plus KV pinned across tool
calls with a time-to-live.

Sources followed:
* Li et al., "Continuum: Efficient and Robust Multi-Turn LLM Agent Scheduling with KV Cache
  Time-to-Live", arXiv 2511.02230 (v4 retitled "CacheTTL"): pin a tool-calling request's KV with a TTL
  set from the reload cost and the queueing delay eviction causes; program-level first-come-first-serve.
* Its preview code (github.com/Hanchenli/vllm-continuum; read in the forks Whrlicht/vllm-continuum and
  YEYVHAIOU/vllm-continuum, `vllm/v1/core/estimate_with_func.py`): `FIXED_THRESHOLD_CONTINUUM = 2.0`;
  `set_up_pin` pins for 2 s unless the tool's mean observed duration exceeds 2 s, and a tool never seen
  counts as 0 s, so it is pinned; the queueing delay is recorded from arrival to first schedule for a call
  that follows a tool and missed its context; `ContinuumRequestQueue.peek_request` serves "pinned
  request -> job_id level FCFS" (`request_queue.py`).
* A vLLM fork that implements continuum / continuum_dy / autellix / infercept side by side (by its
  constants, the public preview code our reference cites; our code index did not name its repository),
  `calc_ttl_continuum_dynamic` ("Sec. 4.2, Eq. (2)") maximises P(tau) x (T x eta + reload) - tau over
  the recorded durations, uses the fixed 2 s TTL while fewer than 100 durations exist at all ("cold-start
  handling follows the paper"), the global record until the tool has 100, T = mean over the last 200
  delays, eta = -corr(calls served so far, calls left) over finished programs with 1.0
  before two pairs exist.
* Our reference, shared/reference/mars-algorithm.md, "Baselines".

Where we differ from the preview code: victims follow the reference (the latest-arriving session), not
the preview's "spare last-step requests first"; T is the delay from arrival to first schedule of a resumed
call that found no pin (as the YEYVHAIOU fork records it), not from preemption to re-admission (as the
side-by-side fork does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.policy.helpers import (
    RollingMean,
    RunningCorrelation,
    ToolDurations,
    context_tokens,
    ecdf,
    kv_holders_first,
    longest_pin_first,
)
from harness.policy import FREE, PinView, Policy, R, RequestView, Retention, ScheduledStep


class ContinuumSettings(BaseModel):
    """`continuum`: fixed TTL."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ttl_s: float = Field(default=2.0, gt=0, description="how long a turn's KV stays pinned across a short tool")
    max_mean_tool_s: float = Field(default=2.0, ge=0,
                                   description="pin only after tools whose mean observed duration is at most this")


class ContinuumDynamicSettings(BaseModel):
    """`continuum-dy`: TTL chosen per call from the tool's duration distribution."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tool_min_samples: int = Field(default=100, ge=1,
                                  description="a tool's own CDF once it has this many samples, the global CDF before")
    cold_start_samples: int = Field(default=100, ge=0,
                                    description="fewer tool durations than this in all: pin for cold_start_ttl_s")
    cold_start_ttl_s: float = Field(default=2.0, ge=0, description="the fixed TTL used during the cold start")
    queue_delay_window: int = Field(default=200, ge=1, description="T = mean over this many last resumed calls")
    eta_prior: float = Field(default=1.0, ge=0, le=1, description="eta before the correlation is defined")


class _ProgramFcfs(Policy):
    """What both Continuum variants share: a session's first arrival orders all its calls (in the
    waiting queue after the calls resuming onto a pin, as the preview queue), the latest session is
    evicted first, tool durations are recorded, a pin is decided at each tool call."""

    def __init__(self) -> None:
        self.tools = ToolDurations()

    @staticmethod
    def _program_order(req: RequestView) -> tuple[float, str, float, str]:
        return (req.session_arrival_s, req.session_id, req.arrival_s, req.request_id)

    def order_running(self, running: list[R], now: float) -> list[R]:
        return sorted(running, key=self._program_order)

    def order_waiting(self, waiting: list[R], now: float) -> list[R]:
        return kv_holders_first(sorted(waiting, key=self._program_order))

    def choose_victim(self, running: Sequence[R], now: float) -> R:
        return max(running, key=self._program_order)

    def choose_pin_to_release(self, pins: Mapping[str, PinView], now: float) -> str:
        return longest_pin_first(pins)

    def on_tool_end(self, session_id: str, tool_name: str, duration_s: float, now: float) -> None:
        self.tools.add(tool_name, duration_s)

    def on_turn_end(self, req: RequestView, now: float) -> Retention:
        if req.is_last_turn or req.tool_name is None:  # nothing follows: never pin
            return FREE
        return Retention.keep(self.pin_seconds(req))

    def pin_seconds(self, req: RequestView) -> float:
        """How long to pin the KV of `req`, which ends in a call of `req.tool_name`; 0 = free it."""
        raise NotImplementedError


class ContinuumPolicy(_ProgramFcfs):
    """Fixed TTL: pin for `ttl_s` after a tool whose mean observed duration is at most
    `max_mean_tool_s`. A tool never observed is pinned (as the preview code, which counts it as 0 s):
    the TTL bounds what a wrong guess costs, and the first observation corrects it."""

    name = "continuum"

    def __init__(self, settings: ContinuumSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or ContinuumSettings()

    def pin_seconds(self, req: RequestView) -> float:
        mean = self.tools.mean(req.tool_name)
        if mean is not None and mean > self.settings.max_mean_tool_s:
            return 0.0
        return self.settings.ttl_s


def best_ttl(durations: Sequence[float], benefit_s: float) -> float:
    """The TTL t maximising P(D <= t) x benefit_s - t over the empirical CDF of `durations`; 0 (no pin)
    when the best value is <= 0 or there is no sample.

    The support points suffice: the empirical CDF is a right-continuous step function, constant between
    consecutive sample values, so on each such interval the objective only falls (by -t) and its maximum
    sits at the interval's left end, a sample value; below the smallest sample P = 0 and the value is -t.
    Ties go to the shorter TTL.
    """
    if not len(durations):
        return 0.0
    support, probability = ecdf(durations)
    value = probability * benefit_s - support
    best = int(np.argmax(value))
    return float(support[best]) if value[best] > 0 else 0.0


class ContinuumDynamicPolicy(_ProgramFcfs):
    """Dynamic TTL = best_ttl(durations of the tool, T x eta + reload_time(context)).

    * durations: the tool's own once it has `tool_min_samples`, all tools' before; while fewer than
      `cold_start_samples` durations exist at all, the fixed `cold_start_ttl_s` (cold start, as the preview).
    * T: mean over the last `queue_delay_window` resumed calls that found no pin (turn > 0 and nothing
      computed on arrival, i.e. they did not adopt a pinned context) of arrival -> first schedule.
      0 before the first sample: then only the reload cost argues for a pin.
    * eta: -corr(turn index, turns remaining after it) over the calls of finished sessions (a session's
      length is known when its last call finishes), clamped to [0, 1]. `eta_prior` (1.0, the preview
      code's value) until it is defined: a single session always gives corr = -1, i.e. 1.0, so the prior
      is what the first data would say anyway.
    * reload_time: the engine's own estimate, `EngineView.prefill_seconds(context tokens)`.
    """

    name = "continuum-dy"

    def __init__(self, settings: ContinuumDynamicSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or ContinuumDynamicSettings()
        self.queue_delay = RollingMean(self.settings.queue_delay_window)
        self.turns_left = RunningCorrelation()
        self._cold_resumes: dict[str, float] = {}  # request id -> arrival, until first scheduled

    # ------------------------------------------------------------------------- what it learns
    def on_arrival(self, req: RequestView, now: float) -> None:
        if req.turn > 0 and req.num_computed_tokens == 0:
            self._cold_resumes[req.request_id] = req.arrival_s

    def on_scheduled(self, step: ScheduledStep) -> None:
        for req, _ in step.scheduled:
            arrived = self._cold_resumes.pop(req.request_id, None)
            if arrived is not None:
                self.queue_delay.add(step.start_s - arrived)

    def on_finished(self, req: RequestView, now: float) -> None:
        if req.is_last_turn:
            for turn in range(req.turn + 1):
                self.turns_left.add(turn, req.turn - turn)

    def eta(self) -> float:
        corr = self.turns_left.value()
        return self.settings.eta_prior if corr is None else min(1.0, max(0.0, -corr))

    # ------------------------------------------------------------------------- the decision
    def durations_for(self, tool: str) -> Sequence[float]:
        """The sample the TTL is chosen from: the tool's own once it has enough, all tools' before."""
        if self.tools.count(tool) >= self.settings.tool_min_samples:
            return self.tools.samples(tool)
        return self.tools.samples()

    def benefit_s(self, req: RequestView) -> float:
        """Seconds a pin saves if the tool returns in time: T x eta + re-prefill of the context."""
        if self.engine is None:
            raise RuntimeError("continuum-dy needs an engine (bind) for its reload-time estimate")
        return self.queue_delay.mean(0.0) * self.eta() + self.engine.prefill_seconds(context_tokens(req))

    def pin_seconds(self, req: RequestView) -> float:
        assert req.tool_name is not None
        if self.tools.count() < self.settings.cold_start_samples:
            return self.settings.cold_start_ttl_s
        return best_ttl(self.durations_for(req.tool_name), self.benefit_s(req))
