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

Orders: running by (effective level, last scheduled, arrival). Waiting: every waiting request is at level
0 (it has not run since it entered the engine or since its preemption), so the MLFQ order of the waiting
queue is preempted requests first (the most recently preempted at the very front), then insertion order -
the order both engines keep their waiting queue in (vLLM's FCFS queue prepends preempted requests), so the
policy leaves it as it is and costs nothing per step there. A prefill chunk is capped at the quantum of its effective level
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
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

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


def prefill_level(tokens: int, settings: SchedulerSettings) -> int:
    """The remaining-work level of `tokens` of prefill still to do: 0 up to the first threshold, ... 3 beyond
    the last. Also the `priority` the gateway (harness.serve) gives a call on a vLLM server with priority
    scheduling, where a lower value is served earlier."""
    for level, limit in enumerate(settings.level_thresholds):
        if tokens <= limit:
            return level
    return len(settings.level_thresholds)


@dataclass
class _State:
    feedback: int = 0
    last_run_s: float | None = None  # None: not run since entering or since preemption
    base: int = 0  # max(feedback, remaining-work level) after its last step: both change only when it runs
    cap: int | None = None  # quantum given for the step being planned


class MlfqScheduler(Policy):
    """The engine-side hooks of MARS. Retention (on_turn_end) is added by MarsPolicy."""

    name = "mars-mlfq"

    def __init__(self, settings: SchedulerSettings | None = None) -> None:
        self.settings = settings or SchedulerSettings()
        self._state: dict[str, _State] = {}

    # ------------------------------------------------------------------------------ levels
    def _st(self, req: RequestView) -> _State:
        state = self._state.get(req.request_id)
        if state is None:
            state = self._state[req.request_id] = _State()
        return state

    def remaining_level(self, req: RequestView) -> int:
        return 0 if req.is_decoding else self._tokens_level(req.remaining_prefill_tokens)

    def _tokens_level(self, remaining: int) -> int:
        return prefill_level(remaining, self.settings)

    def level(self, req: RequestView, now: float) -> int:
        """Effective level: the worse of feedback and remaining work, lifted by aging."""
        state = self._st(req)
        if state.last_run_s is None:
            return 0
        return max(0, state.base - int((now - state.last_run_s) // self.settings.aging_s))

    # ------------------------------------------------------------------------------ hooks
    def on_arrival(self, req: RequestView, now: float) -> None:
        self._st(req)

    def order_running(self, running: list[R], now: float) -> list[R]:
        if self.settings.scheduler == "fcfs" or len(running) < 2:
            return running
        states, st, aging = self._state, self._st, self.settings.aging_s

        def key(r: R) -> tuple[int, float, float]:  # (level, last scheduled, arrival), `level` inlined
            state = states.get(r.request_id) or st(r)
            last = state.last_run_s
            if last is None:
                return (0, 0.0, r.arrival_s)
            level = state.base - int((now - last) // aging)
            return (level if level > 0 else 0, last, r.arrival_s)

        return sorted(running, key=key)

    # order_waiting: the engine's queue order is the MLFQ order (see the module docstring)

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
        state.feedback = 0
        state.last_run_s = None

    def on_scheduled(self, step: ScheduledStep) -> None:
        states, st, start, top = self._state, self._st, step.start_s, len(self.settings.quanta) - 1
        for req, tokens in step.scheduled:
            state = states.get(req.request_id) or st(req)
            state.last_run_s = start
            cap, state.cap = state.cap, None
            if req.is_decoding:
                state.feedback = state.base = 0
                continue
            remaining = req.remaining_prefill_tokens
            if remaining == 0 and req.num_output_tokens > 0:
                state.feedback = 0
            elif cap is not None and tokens >= cap and remaining > 0:
                state.feedback = min(top, state.feedback + 1)
            state.base = max(state.feedback, self._tokens_level(remaining))

    def on_finished(self, req: RequestView, now: float) -> None:
        self._state.pop(req.request_id, None)
