"""MARS's agent-centric engine scheduler (reference section 3): a multi-level feedback queue over LLM
calls, quantum-capped prefill chunks, chunk shrinking before preemption, and a victim rule that evicts
decodes last.

Levels (0 = most urgent):
* remaining-work level: a decoding request is 0; otherwise its remaining prefill tokens map to
  0 (<= 2048), 1 (<= 8192), 2 (<= 32768) or 3;
* feedback level: +1 (at most 3) when a step used the request's whole quantum and prefill remains;
  reset to 0 when it decodes, when it enters the engine, and when it is preempted;
* effective level = max(feedback, remaining) - floor(seconds since last scheduled / aging_s), at least 0.
  A request that has not run since it entered the engine (or since it was preempted) counts as
  long-waiting, so new, resumed and preempted calls start at level 0.

Orders: running by (effective level, last scheduled, arrival); waiting with preempted requests first
(the most recently preempted at the very front, as vLLM prepends them), then by (effective level,
insertion order, arrival). A prefill chunk is capped at the quantum of its effective level
(2048 / 1024 / 512 / 256) whenever other work competes for the step (ours: a request alone in the engine
gains nothing from a cap, so it is not slowed down at light load; `cap_when_alone` restores the strict
rule). When KV allocation fails for a prefill chunk it is halved (down to one block) before anyone is
preempted; the victim is the highest (level with decode = -1, KV blocks held, arrival).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.policy import Policy, R, RequestView, ScheduledStep


class SchedulerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduler: Literal["mlfq", "fcfs"] = Field(default="mlfq", description="ablation: fcfs = vLLM's order")
    chunk_shrink: bool = Field(default=True, description="halve a prefill chunk before preempting")
    quanta: tuple[int, int, int, int] = (2048, 1024, 512, 256)
    level_thresholds: tuple[int, int, int] = (2048, 8192, 32768)
    aging_s: float = Field(default=30.0, gt=0)
    cap_when_alone: bool = False

    @model_validator(mode="after")
    def _check(self) -> SchedulerSettings:
        if any(q < 1 for q in self.quanta) or list(self.level_thresholds) != sorted(self.level_thresholds):
            raise ValueError("quanta must be >= 1 and level_thresholds increasing")
        return self


@dataclass
class _State:
    seq: int  # insertion order into the engine's waiting queue
    feedback: int = 0
    last_run_s: float | None = None  # None: not run since entering or since preemption
    preempted_at: int | None = None  # preemption sequence number while waiting after a preemption
    cap: int | None = None  # quantum given for the step being planned
    level_at: tuple[float, int] | None = None  # (now, level): the level within one step, computed once


class MlfqScheduler(Policy):
    """The engine-side hooks of MARS. Retention (on_turn_end) is added by MarsPolicy."""

    name = "mars-mlfq"

    def __init__(self, settings: SchedulerSettings | None = None) -> None:
        self.settings = settings or SchedulerSettings()
        self._state: dict[str, _State] = {}
        self._seq = 0
        self._preemptions = 0

    # ------------------------------------------------------------------------------ levels
    def _st(self, req: RequestView) -> _State:
        state = self._state.get(req.request_id)
        if state is None:
            self._seq += 1
            state = self._state[req.request_id] = _State(seq=self._seq)
        return state

    def remaining_level(self, req: RequestView) -> int:
        if req.is_decoding:
            return 0
        remaining = req.remaining_prefill_tokens
        for level, limit in enumerate(self.settings.level_thresholds):
            if remaining <= limit:
                return level
        return len(self.settings.level_thresholds)

    def level(self, req: RequestView, now: float) -> int:
        """Effective level: the worse of feedback and remaining work, lifted by aging."""
        state = self._st(req)
        if state.last_run_s is None:
            return 0
        cached = state.level_at
        if cached is not None and cached[0] == now:  # nothing a level depends on changes within a step
            return cached[1]
        base = max(state.feedback, self.remaining_level(req))
        level = max(0, base - int((now - state.last_run_s) // self.settings.aging_s))
        state.level_at = (now, level)
        return level

    # ------------------------------------------------------------------------------ hooks
    def on_arrival(self, req: RequestView, now: float) -> None:
        self._st(req)

    def order_running(self, running: list[R], now: float) -> list[R]:
        if self.settings.scheduler == "fcfs":
            return running
        return sorted(running, key=lambda r: (self.level(r, now), self._st(r).last_run_s or 0.0, r.arrival_s))

    def order_waiting(self, waiting: list[R], now: float) -> list[R]:
        if self.settings.scheduler == "fcfs":
            return waiting

        def key(r: R) -> tuple:
            state = self._st(r)
            if state.preempted_at is not None:
                return (0, -state.preempted_at, 0, 0.0)
            return (1, self.level(r, now), state.seq, r.arrival_s)

        return sorted(waiting, key=key)

    def prefill_cap(self, req: RequestView, now: float) -> int | None:
        state = self._st(req)
        state.cap = None
        if self.settings.scheduler == "fcfs":
            return None
        if not self.settings.cap_when_alone and not self._competing(req):
            return None
        state.cap = self.settings.quanta[min(self.level(req, now), len(self.settings.quanta) - 1)]
        return state.cap

    def _competing(self, req: RequestView) -> bool:
        engine = self.engine
        if engine is None:
            return True
        others = len(engine.running) + len(engine.waiting)
        return others - 1 > 0

    def on_allocation_failure(self, req: RequestView, tokens: int, now: float) -> int:
        block = self.engine.block_size if self.engine is not None else 16
        if not self.settings.chunk_shrink or req.is_decoding or tokens <= block:
            return 0
        return max(block, tokens // 2)

    def choose_victim(self, running: Sequence[R], now: float) -> R:
        if self.settings.scheduler == "fcfs":
            return running[-1]
        return max(running, key=lambda r: (-1 if r.is_decoding else self.level(r, now), r.num_blocks, r.arrival_s))

    def on_preempted(self, req: RequestView, now: float) -> None:
        state = self._st(req)
        self._preemptions += 1
        state.feedback = 0
        state.last_run_s = None
        state.level_at = None
        state.preempted_at = self._preemptions

    def on_scheduled(self, step: ScheduledStep) -> None:
        for req, tokens in step.scheduled:
            state = self._st(req)
            state.preempted_at = None
            state.level_at = None
            state.last_run_s = step.start_s
            if req.is_decoding or req.num_output_tokens > 0 and req.remaining_prefill_tokens == 0:
                state.feedback = 0
            elif state.cap is not None and tokens >= state.cap and req.remaining_prefill_tokens > 0:
                state.feedback = min(len(self.settings.quanta) - 1, state.feedback + 1)
            state.cap = None

    def on_finished(self, req: RequestView, now: float) -> None:
        self._state.pop(req.request_id, None)
