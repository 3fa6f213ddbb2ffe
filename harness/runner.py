"""The agent runner: arrivals -> backlog -> admission -> one agent loop per session (LLM call, tool call, next
turn ...), on the clock of the engine it composes. Engine-agnostic: it hands calls to an `Engine`
(harness.engines.base) and is told when they finish; events stream to the results sink as they happen;
the tables and timeline come back at the end.
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import simpy

from harness.agent import AgentLoop
from harness.engines.base import Engine
from harness.errors import stop_requested
from harness.policy.admission import AdmissionController
from harness.policy.signals import ToolSignals
from harness.signals import SignalStream
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS, conform, empty_frame, timeline_frame
from harness.tools import ToolPool
from workloads.model import USER_TOOL, Session


class ToolRunner(Protocol):
    """Runs tool calls on the run's clock (TimedTools: their modelled time; RealToolPool: real processes)."""

    pool: Any  # the signals: workers, inflight, ema_wait_s, busy_cores

    def run(self, job_id: Hashable, cpu_seconds: float, cores: int, command: str | None = None, session_id: str = "",
            tool: str = "") -> simpy.Event: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class Sink(Protocol):
    """Where a run streams its events (harness.results.RunWriter)."""

    def event(self, kind: str, t: float, **fields: Any) -> None: ...
    def call(self, t: float, row: dict[str, Any]) -> None: ...
    def session(self, t: float, row: dict[str, Any]) -> None: ...


class TimedTools:
    """Runs a sans-IO `ToolPool` on the environment's clock: `run` returns an event that fires when the call
    has had its modelled CPU time (simulated time, or real time on a real engine's clock)."""

    def __init__(self, env: simpy.Environment, pool: ToolPool) -> None:
        self.env = env
        self.pool = pool
        self._done: dict[Hashable, simpy.Event] = {}
        self._wake: simpy.Event = env.event()
        env.process(self._loop())

    def run(self, job_id: Hashable, cpu_seconds: float, cores: int, command: str | None = None, session_id: str = "",
            tool: str = "") -> simpy.Event:
        """Model the call's CPU time (a recorded `command` is never run here: see harness.real_tools)."""
        done = self.env.event()
        self._done[job_id] = done
        self.pool.submit(job_id, cpu_seconds, cores, self.env.now, session_id, tool)
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

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


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
    """The simpy processes of arrivals, admission and agent loops around an engine, on its clock.

    The harness is the client, and two load controls act on its side, before the system under test (its
    admission controller included) sees a session, as `vllm bench serve` applies them:

    * `max_concurrency` — at most this many sessions in flight (handed to the system and not finished); a
      session arriving at the cap waits in the client queue and is handed over when one ends. Its JCT still
      counts from its scheduled arrival (the client queue is part of what the user waits for); vllm bench
      instead starts a request's e2el when the semaphore lets it go and reports the wait apart as
      `client_queue_time`. Our per-call figures (ttft, e2el...) start when the call is handed to the engine,
      as vllm's do; a session's `admitted_s - arrival_s` holds its client-queue and admission waits together.
    * `warmup` — sessions run before the measured ones start (all handed over at once, under the same cap,
      past the admission controller, with unmeasured calls), as vllm bench's `--num-warmups`. The measured
      sessions' arrival times are shifted by the warm-up's length, so the tables' clock still starts with
      the run.
    """

    def __init__(self, engine: Engine, sessions: Sequence[Session], admission: AdmissionController,
                 tools: ToolRunner, sink: Sink | None = None, background: Sequence[Session] = (),
                 timeline_interval_s: float = 1.0, max_concurrency: int | None = None,
                 warmup: Sequence[Session] = ()) -> None:
        self.engine = engine
        self.env = engine.env
        self.sessions = sorted(sessions, key=lambda s: (s.arrival_s, s.id))
        self.warmup = list(warmup)
        self.max_concurrency = max_concurrency
        self.in_flight = 0  # handed to the system (backlog or admitted, warm-ups too), not finished
        self.max_in_flight = 0
        self.client_queue: deque[Session] = deque()  # arrived, held back by max_concurrency
        self.warmup_end_s = 0.0
        self.warmed = self.env.event()  # fires when the warm-up has ended
        self.warmup_calls = 0
        self.background = sorted(background, key=lambda s: (s.arrival_s, s.id))  # unmeasured GPU contention
        self.background_calls = 0
        self.admission = admission
        self.sink: Sink = sink or _NullSink()
        self.timeline_interval_s = timeline_interval_s
        self.tools = tools
        self.signals = SignalStream(engine.signals, self.tool_signals)
        self.backlog: list[Session] = []
        self._admission_state: dict[str, Any] = {}
        self.loops: dict[str, AgentLoop] = {}
        self.active = 0
        self.arrived = 0
        self.call_rows: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []
        self._next_sample = 0.0
        self._wall: float | None = None
        self.stats: dict[str, Any] = {}  # the engine's and tools' figures, once the run ran to its end
        engine.bind(self._sample)

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
            "t": now, **self.engine.timeline(),
            "tool_inflight": pool.inflight, "tool_busy_cores": pool.busy_cores, "active_sessions": self.active,
            "backlog": len(self.backlog), **{f"admission_{k}": v for k, v in self._admission_state.items()},
        })

    # ----------------------------------------------------------------------------- processes
    def _arrivals(self) -> Any:
        if self.warmup:
            yield from self._warmup()
        start = self.warmup_end_s
        for session in self.sessions:
            if start:
                session = session.with_arrival(round(start + session.arrival_s, 6))
            if session.arrival_s > self.env.now:
                yield self.env.timeout(session.arrival_s - self.env.now)
            self.sink.event("session_arrived", self.env.now, session_id=session.id, num_turns=len(session.turns))
            if self._at_cap():
                self.client_queue.append(session)
            else:
                self._hand_over(session)

    def _at_cap(self) -> bool:
        return self.max_concurrency is not None and self.in_flight >= self.max_concurrency

    def _hand_over(self, session: Session) -> None:
        """The session reaches the system under test: its backlog and admission controller."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.arrived += 1
        self.backlog.append(session)
        self.admission.on_arrival(session, self.env.now)
        if self.env.now > session.arrival_s:
            self.sink.event("session_sent", self.env.now, session_id=session.id)  # after waiting in the client queue
        if self.arrived == len(self.sessions):
            self.admission.on_arrivals_done(self.env.now)
        self._admit()

    def _released(self) -> None:
        """A session in flight ended: the first one the client holds back goes."""
        self.in_flight -= 1
        if self.client_queue and not self._at_cap():
            self._hand_over(self.client_queue.popleft())

    def _warmup(self) -> Any:
        """Run the warm-up sessions to their end, under the concurrency cap; nothing of them is measured."""
        env, waiting, running = self.env, deque(self.warmup), []

        def one(session: Session) -> Any:
            yield env.process(self._agent(AgentLoop(session, admitted_s=env.now), measured=False))
            self.in_flight -= 1
            if waiting:
                start(waiting.popleft())

        def start(session: Session) -> None:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            running.append(env.process(one(session)))

        self.sink.event("warmup_started", env.now, sessions=len(self.warmup))
        while waiting and not self._at_cap():
            start(waiting.popleft())
        while len(running) < len(self.warmup) or not all(p.triggered for p in running):
            yield env.all_of(list(running))
        self.warmup_end_s = env.now
        self.warmup_calls = self.background_calls  # background traffic waits for the warm-up: these are its calls
        self.warmed.succeed()
        self.sink.event("warmup_done", env.now, sessions=len(self.warmup))

    def _background_arrivals(self) -> Any:
        """Contention traffic: starts at arrival, bypasses admission, and is not measured; with a warm-up,
        its clock starts with the measured sessions'."""
        if self.warmup:
            yield self.warmed
        for session in self.background:
            at = self.warmup_end_s + session.arrival_s
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
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
        env, engine = self.env, self.engine
        while True:
            spec = loop.next_call()
            if not engine.fits(spec):
                loop.fail(f"call {spec.turn} needs more KV blocks than the engine has")
                if measured:
                    self.sink.event("session_failed", env.now, session_id=spec.session_id, reason=loop.failed)
                break
            record = yield engine.submit(spec, measured)
            if measured:
                row = record.row()
                self.call_rows.append(row)
                self.sink.call(env.now, row)
            else:
                self.background_calls += 1
            if record.error is not None:  # a failed call (no token, timed out) ends its session, not the run
                loop.fail(f"call {spec.turn} failed: {record.error}")
                if measured:
                    self.sink.event("session_failed", env.now, session_id=spec.session_id, reason=loop.failed)
                break
            tool = loop.call_finished(record.arrival_s, env.now, record.num_prompt_tokens, record.num_output_tokens)
            if tool is None:
                break
            if tool.name == USER_TOOL:  # a conversation's user thinking: time passes, no core is used
                started = env.now
                if tool.cpu_seconds > 0:
                    yield env.timeout(tool.cpu_seconds)
                loop.tool_finished(0.0, env.now - started)
                engine.tool_ended(spec.session_id, tool.name, env.now - started)
                continue
            done = yield self.tools.run((spec.session_id, spec.turn), tool.cpu_seconds, tool.cores, tool.command,
                                        spec.session_id, tool.name)
            if done.failed is not None and measured:  # the agent sees the error and goes on, as agent frameworks do
                self.sink.event("tool_failed", env.now, session_id=spec.session_id, turn=spec.turn, tool=tool.name,
                                reason=done.failed)
            loop.tool_finished(done.wait_s, done.finished_s - done.started_s)
            engine.tool_ended(spec.session_id, tool.name, done.finished_s - done.submitted_s)
        if not measured:
            return
        self.active -= 1
        self.admission.on_session_end(loop.session, env.now)
        if loop.done:
            self.sink.session(env.now, loop.row())
        self._released()
        self._admit()

    # ----------------------------------------------------------------------------- run
    def run(self, isolated: dict[str, float] | None = None,
            bound: tuple[dict[str, float], dict[str, float]] | None = None) -> Outcome:
        """Run to the end (`isolated`, `bound`: each session's reference JCTs, see harness.bound); the tools and
        the engine are closed afterwards, also on an error or Ctrl-C (then `outcome` has what was measured)."""
        # On a real-time clock, what the process holds now (workload, model, tokenizer, imported libraries) is left
        # out of the garbage collector's scans until the run ends: a full collection of a heap with torch and
        # transformers in it held the GIL for up to 200 ms, stalling a real engine's client loop and with it the
        # TTFT it measures. (A simulated run has no wall clock to disturb and skips the ~35 ms collection.)
        realtime = isinstance(self.env, simpy.RealtimeEnvironment)
        if realtime:
            gc.collect()
            gc.freeze()
        try:
            self.engine.start()
            self._wall = time.perf_counter()
            self.env.process(self._arrivals())
            if self.background:
                self.env.process(self._background_arrivals())
            if self.admission.interval_s:
                self.env.process(self._ticks(self.admission.interval_s))
            self.env.run()
            stats = {**self._clock(), **self.engine.stats(), **self.tools.stats(),
                     "background_calls": self.background_calls - self.warmup_calls}
            if self.warmup or self.max_concurrency is not None:
                stats["load_controls"] = {"max_concurrency": self.max_concurrency,
                                          "max_sessions_in_flight": self.max_in_flight,
                                          "warmup_sessions": len(self.warmup), "warmup_calls": self.warmup_calls,
                                          "warmup_end_s": self.warmup_end_s}
            self.stats = stats
        finally:
            self.tools.close()
            self.engine.close()
            if realtime:
                gc.unfreeze()
        return self.outcome(isolated, bound)

    def _clock(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall if self._wall is not None else 0.0
        return {"sim_s": self.env.now, "wall_s": wall}

    def outcome(self, isolated: dict[str, float] | None = None,
                bound: tuple[dict[str, float], dict[str, float]] | None = None) -> Outcome:
        """The tables of what the run measured so far: every session (one still running or never admitted is
        not completed) and every call that ended. After a run that stopped early, its partial result."""
        isolated, (floor, pool) = isolated or {}, bound or ({}, {})
        session_rows = [self.loops[s.id].row(isolated.get(s.id, math.nan), floor.get(s.id, math.nan),
                                             pool.get(s.id, math.nan))
                        if s.id in self.loops
                        else _never_admitted(s.with_arrival(round(self.warmup_end_s + s.arrival_s, 6))
                                             if self.warmup_end_s else s) for s in self.sessions]
        calls = conform(pd.DataFrame(self.call_rows, columns=list(CALL_COLUMNS)), CALL_COLUMNS) \
            if self.call_rows else empty_frame(CALL_COLUMNS)
        stats = self.stats or {**self._clock(), "background_calls": self.background_calls}
        return Outcome(calls, conform(pd.DataFrame(session_rows), SESSION_COLUMNS), timeline_frame(self.timeline),
                       self.env.now, stats)


def _never_admitted(session: Session) -> dict[str, Any]:
    loop = AgentLoop(session, admitted_s=math.nan)
    return loop.row()
