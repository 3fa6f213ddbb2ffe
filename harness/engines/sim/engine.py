"""The simulated engine and tool pool as simpy processes: they own time, `EngineCore` and `ToolPool`
own the decisions.

Fast-forward: a step whose batch is all decodes, with nobody waiting, is followed by identical steps
until a call finishes, a block allocation might fail, or another process's event is due. Those steps
are applied in a tight loop without a scheduler pass (the scheduler would choose exactly the same
batch), which makes long decode phases cheap. Results are identical with and without it (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import simpy

from harness.engines.sim.core import EngineCore, StepPlan
from harness.engines.sim.cost_model import IDLE_WAKE_AFTER_S
from harness.engines.sim.request import SimRequest
from harness.policy import ScheduledStep
from harness.tools import ToolPool

StepTime = Callable[[list[tuple[SimRequest, int]]], float]


class SimEngine:
    """The engine step loop: schedule, wait the step's modelled time, apply it, notify finished calls."""

    def __init__(
        self,
        env: simpy.Environment,
        core: EngineCore,
        step_time: StepTime,
        gpu_share: float = 1.0,
        fast_forward: bool = True,
        on_step: Callable[[float], None] | None = None,
        idle_wake_s: float = 0.0,
    ) -> None:
        self.env = env
        self.core = core
        self.step_time = step_time
        self.gpu_share = gpu_share
        self.fast_forward = fast_forward
        self.on_step = on_step  # called with the time at the start of every step (timeline sampling)
        self.idle_wake_s = idle_wake_s
        self.busy_s = 0.0
        self.steps = 0
        self._idle_since: float | None = -math.inf  # the engine starts idle (cold)
        self._done: dict[int, simpy.Event] = {}
        self._wake: simpy.Event | None = None
        env.process(self._loop())

    def submit(self, req: SimRequest) -> simpy.Event:
        """Hand a call to the engine; the event succeeds with the request when it finishes."""
        done = self.env.event()
        self._done[id(req)] = done
        self.core.add(req, self.env.now)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return done

    def _duration(self, scheduled: list[tuple[SimRequest, int]]) -> float:
        return self.step_time(scheduled) / self.gpu_share

    def _loop(self) -> Any:
        env, core = self.env, self.core
        while True:
            if not core.has_work:
                if self._idle_since is None:
                    self._idle_since = env.now
                self._wake = env.event()
                yield self._wake
                continue
            if self.on_step is not None:
                self.on_step(env.now)
            plan = core.schedule(env.now)
            if not plan.scheduled and plan.preempted:
                continue  # the step only preempted (a request that preempted itself ends it): plan again
            if not plan.scheduled:
                # Nothing fits (pinned KV holds the cache): wait for a new call or the next pin expiry.
                self._wake = env.event()
                expiry = min((p.deadline_s for p in core.pins.values()), default=None)
                waits = [self._wake] + ([env.timeout(max(0.0, expiry - env.now))] if expiry is not None else [])
                yield env.any_of(waits)
                continue
            duration = self._duration(plan.scheduled) + plan.transfer_s
            if self._idle_since is not None:
                if self.idle_wake_s and env.now - self._idle_since >= IDLE_WAKE_AFTER_S:
                    duration += self.idle_wake_s
                self._idle_since = None
            yield env.timeout(duration)
            self._account(duration)
            self._notify(core.complete(plan, env.now))
            if self.fast_forward:
                yield from self._fast_forward(plan)

    def _account(self, duration: float) -> None:
        self.busy_s += duration
        self.steps += 1

    def _notify(self, finished: list[SimRequest]) -> None:
        for req in finished:
            self._done.pop(id(req)).succeed(req)

    def _repeatable(self, plan: StepPlan) -> bool:
        """The next step would schedule exactly this batch again, one decode token each."""
        core = self.core
        if core.waiting or plan.preempted or len(plan.scheduled) != len(core.running):
            return False
        return all(n == 1 and req.is_decoding for req, n in plan.scheduled) and \
            len(plan.scheduled) <= core.limits.max_num_batched_tokens

    def _fast_forward(self, plan: StepPlan) -> Any:
        """Apply repeated all-decode steps directly while nothing else can happen in between."""
        env, core, kv = self.env, self.core, self.core.kv
        bs = kv.block_size
        while self._repeatable(plan):
            batch = [(req, 1) for req, _ in plan.scheduled]
            reqs = [req for req, _ in batch]
            steps_left = min(req.max_tokens - req.num_output_tokens for req in reqs)
            # stop before another process's next event and before a pin expires (the scheduler frees it)
            horizon = min([env.peek(), *(p.deadline_s for p in core.pins.values())])
            t = env.now
            applied = 0
            while applied < steps_left:
                new_blocks = sum(1 for r in reqs if r.num_computed_tokens + 1 > len(r.blocks) * bs)
                if new_blocks > kv.num_free_blocks:
                    break  # an allocation could fail: let the scheduler decide
                duration = self._duration(batch)
                if t + duration > horizon:
                    break
                if self.on_step is not None:
                    self.on_step(t)
                for r in reqs:
                    if r.num_computed_tokens + 1 > len(r.blocks) * bs:
                        r.blocks.extend(kv.allocate(1))  # type: ignore[arg-type]
                step = StepPlan(start_s=t, scheduled=batch)
                t += duration
                self._account(duration)
                finished = core.complete(step, t)
                applied += 1
                if finished:
                    yield env.timeout(t - env.now)
                    self._notify(finished)
                    return
            if applied == 0:
                return
            yield env.timeout(t - env.now)
            # the next iteration re-checks whether the batch is still repeatable after the wait


class SimToolPool:
    """Runs a sans-IO `ToolPool` on simulated time: `run` returns an event that fires at completion."""

    def __init__(self, env: simpy.Environment, pool: ToolPool) -> None:
        self.env = env
        self.pool = pool
        self._done: dict[Hashable, simpy.Event] = {}
        self._wake: simpy.Event = env.event()
        env.process(self._loop())

    def run(self, job_id: Hashable, cpu_seconds: float, cores: int, command: str | None = None) -> simpy.Event:
        """Model the call's CPU time (a recorded `command` is never run here: see harness.real_tools)."""
        done = self.env.event()
        self._done[job_id] = done
        self.pool.submit(job_id, cpu_seconds, cores, self.env.now)
        if not self._wake.triggered:
            self._wake.succeed()
        return done

    def _loop(self) -> Any:
        env = self.env
        while True:
            self._wake = env.event()
            due = self.pool.next_event_time()
            if due is None:
                yield self._wake
            else:
                yield env.any_of([self._wake, env.timeout(max(0.0, due - env.now))])
            for completion in self.pool.advance(env.now):
                self._done.pop(completion.job_id).succeed(completion)


__all__ = ["ScheduledStep", "SimEngine", "SimToolPool"]
