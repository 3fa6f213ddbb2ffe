"""The gateway's control plane, sans-IO: the sessions it has seen, the backlog, the admission controller of
the harness (the very object `--backend mars-admission` builds), the routing of sessions to upstreams, the
tool side of the information stream, and the `priority` of each call. The web layer (harness.serve.app)
owns the clock, the sockets and the waiting; it tells this class what happened and acts on its answers.

A gateway session:

* **arrives** with its first call (or its first call after it ended): it joins the backlog and the
  controller's `on_arrival`; the call waits until `admit` picks the session. Later calls of an admitted
  session pass at once. A session the gateway has not seen before is simply a new session.
* **ends** when `session_idle_s` pass after its last call ended with none in flight (the gateway cannot see an
  agent's task end; an agent loop's next call follows its tool within seconds), or at once on the events
  endpoint's `session_end`. A call arriving after the end starts a new session under the same id.
* Its **tool time** is the gap between the end of a call and the start of its next one. For the CPU side of
  the information stream (ToolSignals), a session between calls counts as one tool call in flight - unless it
  reports its tools on the events endpoint (`tool_started` / `tool_finished`, with cores and the time the
  tool waited for a core), which then replace the guess for that session. The EMA of tool queue wait comes
  from those reports only (0 without them): a gap does not say how much of it was waiting.

What a gateway cannot do as the harness does: arrivals never end (`on_arrivals_done` is never called), so
mars_impl's tail mode and no-deadlock rule do not fire; a first call whose prompt would exceed the KV budget
even of an idle server waits until the web layer's admission timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.engines.http import Router
from harness.policy.admission import AdmissionController
from harness.policy.signals import EngineSignals, Signals, ToolSignals
from harness.tools import Ema
from mars_impl.scheduler import SchedulerSettings, prefill_level
from workloads.model import MAX_ARRIVAL_S, MAX_TOKENS, Session, Turn

EventSink = Callable[..., None]  # sink(kind, t, **fields)
MAX_SIGNAL_AGE_S = 2.0  # an engine reading older than this is missing (as harness.signals.SignalStream)
TOOL_WAIT_EMA_ALPHA = 0.2  # as the harness's tool pool


@dataclass
class GatewaySession:
    """One agent task as the gateway sees it."""

    id: str
    source: str  # header | user | hash (harness.serve.identity)
    session: Session  # what the admission controller decides on
    arrived_s: float
    admitted_s: float | None = None
    replica: int | None = None
    in_flight: int = 0
    calls: int = 0
    last_end_s: float | None = None  # when its last call ended
    last_prompt_tokens: int = 0
    reports_tools: bool = False  # it sends tool events: its gaps are not guessed to be tools
    tools: dict[str, int] = field(default_factory=dict)  # reported tools running: tool id -> cores


class UnknownSession(LookupError):
    """An event names a session the gateway does not hold."""


class ControlPlane:
    def __init__(self, admission: AdmissionController, replicas: int, tool_cores: int, session_idle_s: float,
                 scheduler: SchedulerSettings | None = None, sink: EventSink | None = None) -> None:
        if tool_cores < 1:
            raise ValueError(f"tool_cores must be >= 1, got {tool_cores}")
        if session_idle_s <= 0:
            raise ValueError(f"session_idle_s must be > 0, got {session_idle_s}")
        self.admission = admission
        self.router = Router(replicas, "session")
        self.tool_cores = tool_cores
        self.session_idle_s = session_idle_s
        self.scheduler = scheduler or SchedulerSettings()
        self.sink: EventSink = sink or (lambda kind, t, **fields: None)
        self.sessions: dict[str, GatewaySession] = {}  # backlog and admitted
        self.backlog: list[GatewaySession] = []  # arrival order
        self.tool_wait = Ema(TOOL_WAIT_EMA_ALPHA)
        self._engine: EngineSignals | None = None
        self._engine_at: float | None = None
        self._state: dict[str, Any] = {}
        self.admitted_total = 0
        self.ended_total: dict[str, int] = {}

    # ------------------------------------------------------------------------------ calls
    def call_arrives(self, session_id: str, source: str, prompt_tokens: int, output_tokens: int,
                     now: float) -> GatewaySession:
        """A call came in: its session, new (then in the backlog, and admission runs) or known."""
        gs = self.sessions.get(session_id)
        if gs is None:
            turn = Turn(new_tokens=min(max(0, prompt_tokens), MAX_TOKENS), output_tokens=min(output_tokens, MAX_TOKENS))
            session = Session(id=session_id, arrival_s=min(max(0.0, now), MAX_ARRIVAL_S), turns=(turn,))
            gs = GatewaySession(session_id, source, session, now)
            self.sessions[session_id] = gs
            self.backlog.append(gs)
            self.admission.on_arrival(session, now)
            self.sink("session_arrived", now, session_id=session_id, source=source, prompt_tokens=prompt_tokens)
            self.admit(now)
        return gs

    def call_started(self, gs: GatewaySession, now: float) -> int:
        """An admitted session's call goes upstream now: its replica (index)."""
        if gs.last_end_s is not None and gs.in_flight == 0:
            self.sink("tool_gap", now, session_id=gs.id, gap_s=now - gs.last_end_s)
        gs.in_flight += 1
        gs.calls += 1
        assert gs.replica is not None
        self.router.calls[gs.replica] += 1
        return gs.replica

    def untracked_replica(self) -> int:
        """Where a call that belongs to no session goes (`--untagged pass`): the upstream holding the fewest
        sessions."""
        held = self.router.held
        return min(range(len(held)), key=held.__getitem__)

    def priority(self, gs: GatewaySession, prompt_tokens: int) -> int:
        """The call's MARS priority for a vLLM server with priority scheduling (lower = served earlier): the
        MLFQ remaining-work level of its new prefill, i.e. its prompt beyond the previous call's (the previous
        output counts as new: the gateway does not read replies)."""
        new = prompt_tokens - gs.last_prompt_tokens if gs.calls > 1 else prompt_tokens
        gs.last_prompt_tokens = prompt_tokens
        return prefill_level(max(0, new), self.scheduler)

    def call_ended(self, gs: GatewaySession, now: float) -> None:
        gs.in_flight = max(0, gs.in_flight - 1)
        gs.last_end_s = now

    def abandon(self, gs: GatewaySession, now: float, reason: str) -> None:
        """A backlog session's waiting call gave up (client gone, admission timeout): it leaves the backlog."""
        if gs.admitted_s is None and gs in self.backlog:
            self.backlog.remove(gs)
            self._end(gs, now, reason)

    # ------------------------------------------------------------------------------ admission
    def admit(self, now: float) -> list[GatewaySession]:
        """One admission round (on arrivals, session ends and every interval): the sessions admitted now."""
        if not self.backlog:
            return []
        by_id = {gs.session.id: gs for gs in self.backlog}
        chosen = self.admission.admit([gs.session for gs in self.backlog], self.signals(now), now)
        state = self.admission.state()
        if any(state.get(k) != self._state.get(k) for k in self.admission.event_keys):
            self.sink("admission", now, **state)
        self._state = state
        admitted = []
        for session in chosen:
            gs = by_id[session.id]
            self.backlog.remove(gs)
            gs.admitted_s = now
            gs.replica = self.router.place(gs.id)
            self.admitted_total += 1
            admitted.append(gs)
            self.sink("session_admitted", now, session_id=gs.id, replica=gs.replica, waited_s=now - gs.arrived_s)
        return admitted

    # ------------------------------------------------------------------------------ session ends
    def expire(self, now: float) -> list[GatewaySession]:
        """Admitted sessions idle for session_idle_s (no call in flight, none since): they end now."""
        idle = [gs for gs in self.sessions.values()
                if gs.admitted_s is not None and gs.in_flight == 0 and not gs.tools
                and now - (gs.last_end_s if gs.last_end_s is not None else gs.admitted_s) >= self.session_idle_s]
        for gs in idle:
            self._end(gs, now, "idle")
        return idle

    def end_session(self, session_id: str, now: float, reason: str = "session_end") -> GatewaySession:
        gs = self.sessions.get(session_id)
        if gs is None:
            raise UnknownSession(session_id)
        if gs.admitted_s is None:
            self.backlog.remove(gs)
        self._end(gs, now, reason)
        return gs

    def _end(self, gs: GatewaySession, now: float, reason: str) -> None:
        self.sessions.pop(gs.id, None)
        self.admission.on_session_end(gs.session, now)
        if gs.replica is not None:
            self.router.end(gs.id)
        self.ended_total[reason] = self.ended_total.get(reason, 0) + 1
        self.sink("session_ended", now, session_id=gs.id, reason=reason, calls=gs.calls)

    # ------------------------------------------------------------------------------ tools (events endpoint)
    def tool_started(self, session_id: str, tool_id: str, cores: int, wait_s: float | None, now: float) -> None:
        gs = self._known(session_id)
        gs.reports_tools = True
        gs.tools[tool_id] = cores
        if wait_s is not None:
            self.tool_wait.update(wait_s)
        self.sink("tool_started", now, session_id=session_id, tool_id=tool_id, cores=cores)

    def tool_finished(self, session_id: str, tool_id: str, now: float) -> None:
        gs = self._known(session_id)
        gs.reports_tools = True
        gs.tools.pop(tool_id, None)
        gs.last_end_s = now  # idle from here on: the agent's next call follows its tool
        self.sink("tool_finished", now, session_id=session_id, tool_id=tool_id)

    def _known(self, session_id: str) -> GatewaySession:
        gs = self.sessions.get(session_id)
        if gs is None:
            raise UnknownSession(session_id)
        return gs

    # ------------------------------------------------------------------------------ information stream
    def observe_engine(self, reading: EngineSignals | None, now: float) -> None:
        """A poll of the upstreams' /metrics (combined); None: the poll failed or has no KV signal."""
        if reading is not None:
            self._engine, self._engine_at = reading, now

    def tool_signals(self) -> ToolSignals:
        inflight = 0
        for gs in self.sessions.values():
            if gs.reports_tools:
                inflight += len(gs.tools)
            elif gs.admitted_s is not None and gs.in_flight == 0 and gs.last_end_s is not None:
                inflight += 1  # between calls: taken to be on a tool
        return ToolSignals(workers=self.tool_cores, inflight=inflight, ema_wait_s=self.tool_wait.value or 0.0)

    def signals(self, now: float) -> Signals:
        engine, age = self._engine, None
        if self._engine_at is not None:
            age = now - self._engine_at
            if age > MAX_SIGNAL_AGE_S:
                engine = None
        return Signals(time_s=now, engine=engine, engine_age_s=age, tools=self.tool_signals())

    # ------------------------------------------------------------------------------ views
    @property
    def admitted(self) -> Iterable[GatewaySession]:
        return (gs for gs in self.sessions.values() if gs.admitted_s is not None)

    def state(self) -> dict[str, Any]:
        """The control plane now, for /metrics and /v1/mars/state."""
        return {"backlog": len(self.backlog), "admitted": sum(1 for _ in self.admitted),
                "admitted_total": self.admitted_total, "ended_total": dict(self.ended_total),
                "sessions_per_upstream": self.router.held, "window": self._state.get("window"),
                "active_limit": self._state.get("active_limit"), "tool_inflight": self.tool_signals().inflight,
                "kv_usage": self._engine.kv_usage if self._engine else None}
