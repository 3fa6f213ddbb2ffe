"""The agent runner on the simulated testbed: arrivals -> backlog -> admission -> one agent loop per
session (LLM call, tool call, next turn ...), all on simpy time. Events stream to the results sink as
they happen; the tables and timeline come back at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import simpy

from harness.policy.admission import AdmissionController, AdmitAll
from harness.agent import AgentLoop
from harness.engines.sim.core import EngineCore, HostTier, SchedulerLimits
from harness.engines.sim.engine import SimEngine, SimToolPool, StepTime
from harness.engines.sim.kv_cache import KVCache
from harness.engines.sim.radix_cache import RadixCache
from harness.engines.sim.request import SimRequest
from harness.errors import stop_requested
from harness.policy import Policy
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS, conform, empty_frame
from harness.tools import ToolMode, ToolPool
from harness.policy.signals import EngineSignals, ToolSignals
from harness.signals import SignalStream
from workloads.model import Session


class ToolRunner(Protocol):
    """Runs tool calls on the run's environment (SimToolPool: modelled; RealToolPool: real processes)."""

    pool: Any  # the signals: workers, inflight, ema_wait_s, busy_cores

    def run(self, job_id: Hashable, cpu_seconds: float, cores: int, command: str | None = None) -> simpy.Event: ...


class Sink(Protocol):
    """Where a run streams its events (harness.results.RunWriter)."""

    def event(self, kind: str, t: float, **fields: Any) -> None: ...
    def call(self, t: float, row: dict[str, Any]) -> None: ...
    def session(self, t: float, row: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class SimSetup:
    """The simulated testbed: engine cost and limits, KV size and the CPU tool pool."""

    step_time: StepTime
    num_blocks: int
    prefill_seconds: Callable[[int], float] | None = None
    block_size: int = 16
    limits: SchedulerLimits = SchedulerLimits()
    enable_prefix_caching: bool = True
    fast_forward: bool = True
    gpu_share: float = 1.0
    idle_wake_s: float = 0.0  # extra time of a step that follows an idle engine (cost_model.IDLE_WAKE_AFTER_S)
    tool_cores: int = 8
    tool_mode: ToolMode = "queue"
    cpu_stress: int = 0
    timeline_interval_s: float = 1.0
    fingerprint: str = ""  # identifies the cost model + settings, for caching isolated JCTs
    host_tier_tokens: int = 0  # host-memory KV tier (0 = none)
    host_load_s_per_token: float = 0.0
    prefix_cache: str = "block"  # "block": vLLM's hashed-block LRU cache; "radix": SGLang's radix tree

    def idle(self) -> SimSetup:
        """The same testbed without contention: the reference for isolated JCT."""
        return replace(self, cpu_stress=0, gpu_share=1.0)


@dataclass
class Outcome:
    calls: pd.DataFrame
    sessions: pd.DataFrame
    timeline: pd.DataFrame
    end_s: float
    stats: dict[str, Any] = field(default_factory=dict)


class _NullSink:
    def event(self, kind: str, t: float, **fields: Any) -> None:
        pass

    def call(self, t: float, row: dict[str, Any]) -> None:
        pass

    def session(self, t: float, row: dict[str, Any]) -> None:
        pass


class AgentRun:
    """The simpy processes of arrivals, admission and agent loops around an engine; subclasses supply the
    engine (simulated, or a real one on a real-time environment) through the methods marked below."""

    def __init__(self, env: simpy.Environment, sessions: Sequence[Session], admission: AdmissionController,
                 tools: ToolPool | ToolRunner, sink: Sink | None = None, background: Sequence[Session] = (),
                 timeline_interval_s: float = 1.0) -> None:
        self.env = env
        self.sessions = sorted(sessions, key=lambda s: (s.arrival_s, s.id))
        self.background = sorted(background, key=lambda s: (s.arrival_s, s.id))  # unmeasured GPU contention
        self.background_calls = 0
        self.admission = admission
        self.sink: Sink = sink or _NullSink()
        self.timeline_interval_s = timeline_interval_s
        self.tools: ToolRunner = SimToolPool(env, tools) if isinstance(tools, ToolPool) else tools
        self.signals = SignalStream(self.engine_signals, self.tool_signals)
        self.backlog: list[Session] = []
        self._admission_state: dict[str, Any] = {}
        self.loops: dict[str, AgentLoop] = {}
        self.active = 0
        self.arrived = 0
        self.call_rows: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []
        self._next_sample = 0.0

    # ------------------------------------------------------------------- the engine (subclasses)
    def engine_signals(self) -> EngineSignals:
        raise NotImplementedError

    def engine_timeline(self) -> dict[str, Any]:
        """The engine's columns of a timeline sample."""
        raise NotImplementedError

    def engine_stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def fits_at_all(self, req: SimRequest) -> bool:
        raise NotImplementedError

    def submit(self, req: SimRequest) -> simpy.Event:
        """Hand a call to the engine; the event succeeds when it finished (its fields filled in)."""
        raise NotImplementedError

    def tool_ended(self, session_id: str, tool_name: str, duration_s: float) -> None:
        """A session's tool call finished (the policy's `on_tool_end`)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- signals
    def tool_signals(self) -> ToolSignals:
        pool = self.tools.pool
        return ToolSignals(workers=pool.workers, inflight=pool.inflight, ema_wait_s=pool.ema_wait_s)

    def _sample(self, now: float) -> None:
        """Called at every engine step: a timeline sample when one is due, and the stop check."""
        if stop_requested.is_set():
            raise KeyboardInterrupt  # a Ctrl-C whose exception was swallowed on its way
        if now < self._next_sample:
            return
        interval = self.timeline_interval_s
        self._next_sample = (math.floor(now / interval) + 1) * interval
        pool = self.tools.pool
        self.timeline.append({
            "t": now, **self.engine_timeline(),
            "tool_inflight": pool.inflight, "tool_busy_cores": pool.busy_cores, "active_sessions": self.active,
            "backlog": len(self.backlog), **{f"admission_{k}": v for k, v in self._admission_state.items()},
        })

    # ----------------------------------------------------------------------------- processes
    def _arrivals(self) -> Any:
        for session in self.sessions:
            if session.arrival_s > self.env.now:
                yield self.env.timeout(session.arrival_s - self.env.now)
            self.arrived += 1
            self.backlog.append(session)
            self.admission.on_arrival(session, self.env.now)
            self.sink.event("session_arrived", self.env.now, session_id=session.id, num_turns=len(session.turns))
            if self.arrived == len(self.sessions):
                self.admission.on_arrivals_done(self.env.now)
            self._admit()

    def _background_arrivals(self) -> Any:
        """Contention traffic: starts at arrival, bypasses admission, and is not measured."""
        for session in self.background:
            if session.arrival_s > self.env.now:
                yield self.env.timeout(session.arrival_s - self.env.now)
            self.env.process(self._agent(AgentLoop(session, admitted_s=self.env.now), measured=False))

    def _ticks(self, interval: float) -> Any:
        while self.arrived < len(self.sessions) or self.backlog:
            yield self.env.timeout(interval)
            self._admit()

    def _admit(self) -> None:
        if not self.backlog:
            return
        now = self.env.now
        chosen = self.admission.admit(list(self.backlog), self.signals.snapshot(now), now)
        state = self.admission.state()
        keys = self.admission.event_keys
        if any(state.get(k) != self._admission_state.get(k) for k in keys):
            self.sink.event("admission", now, **state)
        self._admission_state = state
        for session in chosen:
            self.backlog.remove(session)
            self.active += 1
            loop = AgentLoop(session, admitted_s=now)
            self.loops[session.id] = loop
            self.sink.event("session_admitted", now, session_id=session.id)
            self.env.process(self._agent(loop))

    def _agent(self, loop: AgentLoop, measured: bool = True) -> Any:
        env = self.env
        while True:
            spec = loop.next_call()
            req = SimRequest(
                request_id=f"{spec.session_id}#{spec.turn}", session_id=spec.session_id, turn=spec.turn,
                is_last_turn=spec.is_last_turn, tool_name=spec.tool_name, session_arrival_s=spec.session_arrival_s,
                arrival_s=env.now, num_prompt_tokens=spec.prompt_tokens, max_tokens=spec.max_tokens,
                prefix_id=spec.prefix_id, prefix_tokens=spec.prefix_tokens,
            )
            if not self.fits_at_all(req):
                loop.fail(f"call {spec.turn} needs more KV blocks than the engine has")
                if measured:
                    self.sink.event("session_failed", env.now, session_id=spec.session_id, reason=loop.failed)
                break
            yield self.submit(req)
            if measured:
                row = req.row()
                self.call_rows.append(row)
                self.sink.call(env.now, row)
            else:
                self.background_calls += 1
            tool = loop.call_finished(req.arrival_s, env.now, req.num_prompt_tokens, req.num_output_tokens)
            if tool is None:
                break
            done = yield self.tools.run((spec.session_id, spec.turn), tool.cpu_seconds, tool.cores, tool.command)
            loop.tool_finished(done.wait_s, done.finished_s - done.started_s)
            self.tool_ended(spec.session_id, tool.name, done.finished_s - done.submitted_s)
        if not measured:
            return
        self.active -= 1
        self.admission.on_session_end(loop.session, env.now)
        if loop.done:
            self.sink.session(env.now, loop.row())
        self._admit()

    # ----------------------------------------------------------------------------- run
    def run(self, isolated: dict[str, float] | None = None) -> Outcome:
        wall = time.perf_counter()
        self.env.process(self._arrivals())
        if self.background:
            self.env.process(self._background_arrivals())
        if self.admission.interval_s:
            self.env.process(self._ticks(self.admission.interval_s))
        self.env.run()
        isolated = isolated or {}
        session_rows = [self.loops[s.id].row(isolated.get(s.id, math.nan)) if s.id in self.loops
                        else _never_admitted(s) for s in self.sessions]
        calls = conform(pd.DataFrame(self.call_rows, columns=list(CALL_COLUMNS)), CALL_COLUMNS) \
            if self.call_rows else empty_frame(CALL_COLUMNS)
        stats = {"sim_s": self.env.now, "wall_s": time.perf_counter() - wall, **self.engine_stats(),
                 "background_calls": self.background_calls}
        return Outcome(calls, conform(pd.DataFrame(session_rows), SESSION_COLUMNS), pd.DataFrame(self.timeline),
                       self.env.now, stats)


class SimRun(AgentRun):
    """One simulation: the agent runner around the simulated engine, on simpy time."""

    def __init__(self, sessions: Sequence[Session], policy: Policy, admission: AdmissionController, setup: SimSetup,
                 sink: Sink | None = None, background: Sequence[Session] = ()) -> None:
        env = simpy.Environment()
        super().__init__(env, sessions, admission, ToolPool(setup.tool_cores, setup.tool_mode,
                                                            stress_cores=setup.cpu_stress),
                         sink, background, setup.timeline_interval_s)
        self.setup = setup
        cache = RadixCache if setup.prefix_cache == "radix" else KVCache
        self.kv = cache(setup.num_blocks, setup.block_size, setup.enable_prefix_caching)
        self.policy = policy
        host = HostTier(setup.host_tier_tokens, setup.host_load_s_per_token) if setup.host_tier_tokens else None
        self.core = EngineCore(self.kv, setup.limits, policy, setup.prefill_seconds, host)
        self.engine = SimEngine(env, self.core, setup.step_time, setup.gpu_share, setup.fast_forward,
                                on_step=self._sample, idle_wake_s=setup.idle_wake_s)

    def engine_signals(self) -> EngineSignals:
        kv = self.kv
        return EngineSignals(kv_usage=kv.usage, free_blocks=kv.num_free_blocks, total_blocks=kv.num_blocks,
                             block_size=kv.block_size, running=len(self.core.running), waiting=len(self.core.waiting))

    def engine_timeline(self) -> dict[str, Any]:
        return {"kv_usage": self.kv.usage, "free_blocks": self.kv.num_free_blocks, "running": len(self.core.running),
                "waiting": len(self.core.waiting), "pinned": len(self.core.pins), "gpu_busy_s": self.engine.busy_s,
                "preemptions": self.core.driver.counters["preemptions"]}

    def engine_stats(self) -> dict[str, Any]:
        core, counters = self.core, self.core.driver.counters
        return {"engine_steps": self.engine.steps, "gpu_busy_s": self.engine.busy_s,
                "preemptions": counters["preemptions"], "kv_evictions": self.kv.evictions,
                "num_gpu_blocks": self.kv.num_blocks,
                **{k: counters[k] for k in ("pins_made", "pins_used", "pins_expired", "pins_released_early")},
                "host_offloads": core.host.offloads if core.host else 0,
                "host_loads": core.host.loads if core.host else 0}

    def fits_at_all(self, req: SimRequest) -> bool:
        return self.core.fits_at_all(req)

    def submit(self, req: SimRequest) -> simpy.Event:
        return self.engine.submit(req)

    def tool_ended(self, session_id: str, tool_name: str, duration_s: float) -> None:
        self.policy.on_tool_end(session_id, tool_name, duration_s, self.env.now)


def _never_admitted(session: Session) -> dict[str, Any]:
    loop = AgentLoop(session, admitted_s=math.nan)
    return loop.row()


def simulate(sessions: Sequence[Session], policy: Policy, setup: SimSetup, admission: AdmissionController | None = None,
             sink: Sink | None = None, isolated: dict[str, float] | None = None,
             background: Sequence[Session] = ()) -> Outcome:
    """Run `sessions` through the simulated testbed under `policy`, with unmeasured `background` traffic."""
    return SimRun(sessions, policy, admission or AdmitAll(), setup, sink, background).run(isolated)


# ----------------------------------------------------------------------------------- isolated JCT
def _session_key(session: Session, setup: SimSetup) -> str:
    """Cache key: the session's content (not its id or arrival) and the testbed."""
    content = session.model_dump(mode="json", exclude={"id", "arrival_s", "kind"})
    text = json.dumps([content, setup.fingerprint], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def isolated_jcts(sessions: Sequence[Session], setup: SimSetup, cache: Path | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """JCT of each session alone on the idle testbed (vanilla vLLM policy), cached by content + testbed."""
    idle = setup.idle()
    known: dict[str, float] = {}
    if cache is not None and cache.exists():
        known = json.loads(cache.read_text())
    out: dict[str, float] = {}
    dirty = False
    for session in sessions:
        key = _session_key(session, idle)
        if key not in known:
            alone = session.with_arrival(0.0)
            result = simulate([alone], Policy(), idle)
            known[key] = float(result.sessions["finish_s"].iloc[0] - alone.arrival_s)
            dirty = True
        out[session.id] = known[key]
        if progress is not None:
            progress(1)
    if cache is not None and dirty:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # runs in parallel share the cache
        tmp.write_text(json.dumps(known))
        tmp.replace(cache)
    return out
