"""Autellix with PLAS (backend `autellix`): a multi-level feedback queue keyed by program-level attained
service, so sessions that have received little service so far go first.

Sources followed:
* Luo et al., "Autellix: An Efficient Serving Engine for LLM Agents as General Programs", arXiv
  2502.13965: PLAS (Program-Level Attained Service) for single-threaded programs: a call enters the queue
  its program's attained service so far selects, is demoted when it uses up its queue's quantum, and a
  program whose waiting time reaches beta x its service is promoted to the top queue (anti-starvation).
* The vLLM fork holding the public preview baselines side by side (see baselines/continuum.py),
  `_autellix_*` and `AutellixRequestQueue`: service thresholds 2048 / 8192 / 32768 tokens, quanta
  2048 / 1024 / 512 / 256 tokens, beta = 2.0; service and wait both counted in tokens (a waiting call
  accrues every step's scheduled tokens); the quantum is an allowance spent by every scheduled token and
  a chunk is capped at what is left of it; victim = max (queue, KV blocks, arrival).
* kungfu-team/autellix (`vllm/v1/core/sched/autellix/mlfq.py`, `policy_core.py`), a reproduction:
  promotion resets the call's quantum, program-level service is never reset.
* Our reference, shared/reference/mars-algorithm.md, "Baselines".

Precise definitions used here (per session, one call in the engine at a time):
* service = tokens computed for all the session's calls so far (prompt chunks, recomputation after
  preemption and decode tokens alike), accumulated from `ScheduledStep.scheduled`;
* queue of a new call = how many thresholds its session's service has reached (0 = top);
* quantum allowance = the queue's quantum when the call enters it; each scheduled token spends one; a step
  that spends the rest while the call is not finished demotes it one queue (at most to the last) with that
  queue's full quantum. The quantum decides a call's queue, never the size of its prefill chunks: the
  engine chunks prompts as it always does (`cap_prefill=true` restores the preview code's cap);
* wait = tokens the engine computed for other calls since the session's current call last ran (or
  arrived), counted only while that call sat in the engine (waiting, or running but not scheduled); tool
  time never counts. It is measured in tokens, like service, so wait / service is unit-free - the
  engine's work is its clock;
* starvation: wait >= starvation_ratio x service moves the call to the top queue with a fresh quantum.
Running and waiting requests are ordered by (queue, call arrival).

Where we differ from the preview code, and why (checked against the paper):
* The preview caps every prefill chunk at what is left of the call's quantum (256 tokens in the last
  queue). The paper's Algorithm 1 moves calls between queues by their quantum; it does not shrink an
  engine step's chunks (kungfu-team/autellix charges the quantum per decode step and leaves prefill chunking
  to vLLM). With the cap, on `paper` at 0.2/s (seeds 0-4) a 60k-token prompt in the last queue computes
  256 tokens per step for ~230 steps while holding its KV, the running set fills with half-computed
  prompts, and the engine preempts 2,035 ± 782 times per run (cache hit 0.29): mean JCT 205 ± 91 s, about
  2x vLLM's (105 ± 73 s). Without it: 5.8 ± 3.7 preemptions, 87.7 ± 54.8 s, below vLLM's (the paper's direction). So
  the default follows the paper; `cap_prefill=true` reproduces the preview.
* Its victim is max (queue, KV blocks, arrival); ours by default is max (queue, arrival), vLLM's own
  priority victim rule (`victim_tiebreak="blocks"` restores the preview's). Measured on the `paper` preset
  (seed 1, older vLLM's first-chunk admission): with "most blocks first" two long prompts in the last queue
  preempt each other in turn - each preemption makes the other the bigger one - and each eats the other's prefix
cache, so their prompts are recomputed many times over (572k preemptions and ~12 minutes of simulation per
run, mean JCT 25,404 s); with the stable arrival order the run takes ~20 s. The preview's wait is
cumulative over the program's life (past calls' waits added, the current call's reset only on promotion);
ours restarts whenever the session's call runs, so only a current starvation promotes. Within a queue it
serves waiting calls in insertion order with preempted ones in front; we order by arrival.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.policy import Policy, R, RequestView, ScheduledStep


class AutellixSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    service_thresholds: tuple[int, ...] = Field(
        default=(2048, 8192, 32768), description="attained-service tokens at which a program enters the next queue")
    quanta: tuple[int, ...] = Field(default=(2048, 1024, 512, 256),
                                    description="tokens a call may receive in each queue before it is demoted")
    starvation_ratio: float = Field(default=2.0, gt=0, description="promote to the top queue when wait/service >= this")
    cap_prefill: bool = Field(default=False, description="cap a prefill chunk at what is left of the call's quantum "
                              "(the public preview code; not in the paper, and the cause of its collapse here)")
    victim_tiebreak: Literal["arrival", "blocks"] = Field(
        default="arrival", description="within the lowest queue preempt the latest call ('arrival', as vLLM's "
        "priority victim) or the one holding most KV blocks first ('blocks', the preview code)")

    @model_validator(mode="after")
    def _shape(self) -> AutellixSettings:
        t = self.service_thresholds
        if any(v <= 0 for v in t) or any(b <= a for a, b in zip(t, t[1:])):
            raise ValueError("service_thresholds must be positive and strictly increasing")
        if len(self.quanta) != len(t) + 1:
            raise ValueError(f"quanta needs one entry per queue ({len(t) + 1}), got {len(self.quanta)}")
        if any(q < 1 for q in self.quanta):
            raise ValueError("every quantum must be at least 1 token")
        return self


@dataclass
class _Program:
    """PLAS state of one session."""

    service: int = 0  # tokens computed for all its calls
    waiting_since: int = 0  # the policy's token clock when its current call arrived or last ran
    queue: int = 0  # queue of its current call, 0 = top
    allowance: int = 0  # tokens left of the current call's quantum in that queue


class AutellixPolicy(Policy):
    name = "autellix"

    def __init__(self, settings: AutellixSettings | None = None) -> None:
        self.settings = settings or AutellixSettings()
        self._programs: dict[str, _Program] = {}
        self._in_engine: dict[str, str] = {}  # request id -> session id, from arrival to finish
        self._ended: set[str] = set()  # sessions whose last call finished this step
        self._clock = 0  # tokens the engine computed in all: a program's wait is read off it, O(1) per step

    # ------------------------------------------------------------------------------- queries
    def queue_for_service(self, service: int) -> int:
        """The queue a call enters after its session received `service` tokens."""
        return bisect_right(self.settings.service_thresholds, service)

    def program(self, session_id: str) -> _Program:
        program = self._programs.get(session_id)
        if program is None:
            program = self._programs[session_id] = _Program()
        return program

    def wait_tokens(self, session_id: str) -> int:
        """Tokens computed for other calls since the session's current call arrived or last ran."""
        return self._clock - self.program(session_id).waiting_since

    def _key(self, req: RequestView) -> tuple[int, float, str]:
        return (self.program(req.session_id).queue, req.arrival_s, req.request_id)

    # ------------------------------------------------------------------------------- hooks
    def on_arrival(self, req: RequestView, now: float) -> None:
        p = self.program(req.session_id)
        self._enter(p, self.queue_for_service(p.service))
        p.waiting_since = self._clock
        self._in_engine[req.request_id] = req.session_id

    def order_running(self, running: list[R], now: float) -> list[R]:
        self._promote_starving(running)
        return sorted(running, key=self._key)

    def order_waiting(self, waiting: list[R], now: float) -> list[R]:
        self._promote_starving(waiting)
        return sorted(waiting, key=self._key)

    def prefill_cap(self, req: RequestView, now: float) -> int | None:
        if not self.settings.cap_prefill:
            return None
        return max(1, self.program(req.session_id).allowance)

    def choose_victim(self, running: Sequence[R], now: float) -> R:
        if self.settings.victim_tiebreak == "blocks":
            return max(running, key=lambda r: (self.program(r.session_id).queue, r.num_blocks, r.arrival_s,
                                               r.request_id))
        return max(running, key=lambda r: (self.program(r.session_id).queue, r.arrival_s, r.request_id))

    def on_finished(self, req: RequestView, now: float) -> None:
        self._in_engine.pop(req.request_id, None)
        if req.is_last_turn:
            self._ended.add(req.session_id)

    def on_scheduled(self, step: ScheduledStep) -> None:
        self._clock += sum(n for _, n in step.scheduled)
        for req, n in step.scheduled:
            p = self.program(req.session_id)
            p.service += n
            p.waiting_since = self._clock
            p.allowance -= n
            if p.allowance <= 0 and req.request_id in self._in_engine:  # quantum used up, work remains
                self._enter(p, min(p.queue + 1, len(self.settings.quanta) - 1))
        for session in self._ended:
            self._programs.pop(session, None)
        self._ended.clear()

    # ------------------------------------------------------------------------------- mechanics
    def _enter(self, p: _Program, queue: int) -> None:
        p.queue = queue
        p.allowance = self.settings.quanta[queue]

    def _promote_starving(self, reqs: Sequence[RequestView]) -> None:
        for req in reqs:
            p = self.program(req.session_id)
            if p.queue > 0 and self._clock - p.waiting_since >= self.settings.starvation_ratio * p.service:
                self._enter(p, 0)
