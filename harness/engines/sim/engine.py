"""The simulated engine: `SimEngine` (the harness.engines.base.Engine of `--engine sim`) runs `EngineCore`'s
decisions on simulated time with a `StepLoop` (a simpy process: it owns time, the core owns the decisions).

Fast-forward: a step whose batch is all decodes, with nobody waiting, is followed by identical steps
until a call finishes, a block allocation might fail, or another process's event is due. Those steps
are applied in a tight loop without a scheduler pass (the scheduler would choose exactly the same
batch), which makes long decode phases cheap. Results are identical with and without it (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import simpy

from harness.calls import CallSpec
from harness.engines.base import BuildContext
from harness.engines.sim.core import EngineCore, HostTier, StepPlan
from harness.engines.sim.cost_model import IDLE_WAKE_AFTER_S
from harness.engines.sim.kv_cache import KVCache
from harness.engines.sim.radix_cache import RadixCache
from harness.engines.sim.request import SimRequest
from harness.engines.sim.testbed import SimSetup, StepTime, build_setup
from harness.policy import Policy
from harness.policy.signals import EngineSignals


class StepLoop:
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


class SimEngine:
    """The simulated testbed's engine behind the Engine interface: KV cache (block or radix), the scheduler
    core with the policy's driver, and the step loop, on a simpy environment of its own."""

    name = "sim"

    def __init__(self, setup: SimSetup, policy: Policy) -> None:
        self.env = simpy.Environment()
        self.setup = setup
        self.policy = policy
        cache = RadixCache if setup.prefix_cache == "radix" else KVCache
        self.kv = cache(setup.num_blocks, setup.block_size, setup.enable_prefix_caching)
        host = HostTier(setup.host_tier_tokens, setup.host_load_s_per_token) if setup.host_tier_tokens else None
        self.core = EngineCore(self.kv, setup.limits, policy, setup.prefill_seconds, host)
        self.loop = StepLoop(self.env, self.core, setup.step_time, setup.gpu_share, setup.fast_forward,
                             idle_wake_s=setup.idle_wake_s)

    def bind(self, on_step: Callable[[float], None]) -> None:
        self.loop.on_step = on_step

    def start(self) -> None:
        pass

    def fits(self, spec: CallSpec) -> bool:
        return self.kv.blocks_for(spec.prompt_tokens + spec.max_tokens) <= self.kv.num_blocks

    def submit(self, spec: CallSpec, measured: bool) -> simpy.Event:
        return self.loop.submit(SimRequest(
            request_id=spec.call_id, session_id=spec.session_id, turn=spec.turn, is_last_turn=spec.is_last_turn,
            tool_name=spec.tool_name, session_arrival_s=spec.session_arrival_s, arrival_s=self.env.now,
            num_prompt_tokens=spec.prompt_tokens, max_tokens=spec.max_tokens, prefix_id=spec.prefix_id,
            prefix_tokens=spec.prefix_tokens))

    def tool_ended(self, session_id: str, tool_name: str, duration_s: float) -> None:
        self.policy.on_tool_end(session_id, tool_name, duration_s, self.env.now)

    def signals(self) -> EngineSignals:
        kv, core = self.kv, self.core
        return EngineSignals(kv_usage=kv.usage, free_blocks=kv.num_free_blocks, total_blocks=kv.num_blocks,
                             block_size=kv.block_size, running=len(core.running), waiting=len(core.waiting),
                             preemptions=core.driver.counters["preemptions"],
                             prefix_query_tokens=core.prefix_query_tokens, prefix_hit_tokens=core.prefix_hit_tokens)

    def timeline(self) -> dict[str, Any]:
        kv, core = self.kv, self.core
        return {"kv_usage": kv.usage, "free_blocks": kv.num_free_blocks, "running": len(core.running),
                "waiting": len(core.waiting), "pinned": len(core.pins), "gpu_busy_s": self.loop.busy_s,
                "preemptions": core.driver.counters["preemptions"]}

    def stats(self) -> dict[str, Any]:
        core, counters = self.core, self.core.driver.counters
        return {"engine_steps": self.loop.steps, "gpu_busy_s": self.loop.busy_s,
                "preemptions": counters["preemptions"], "kv_evictions": self.kv.evictions,
                "num_gpu_blocks": self.kv.num_blocks,
                **{k: counters[k] for k in ("pins_made", "pins_used", "pins_expired", "pins_released_early")},
                "host_offloads": core.host.offloads if core.host else 0,
                "host_loads": core.host.loads if core.host else 0}

    def close(self) -> None:
        pass


def build(ctx: BuildContext) -> SimEngine:
    """The engine registry's builder for `--engine sim`."""
    return SimEngine(build_setup(ctx.config), ctx.policy)


__all__ = ["SimEngine", "StepLoop", "StepTime", "build"]
