"""MARS's external control plane (reference section 2): new sessions wait in a backlog outside the engine
and start their agent loop only while fewer than `active_limit` sessions are active. Once admitted, all
of a session's turns go straight to the engine.

Sans-IO: no clock and no I/O. The runner passes `now` and a `Signals` snapshot; decisions are return
values, and `state()` holds everything a decision was made from, so the event log explains each one.

What `admit(backlog, signals, now)` does, in order:

1. **Read.** CPU backlog = inflight tool calls / tool cores; EMA tool queue wait; KV usage, free and total
   blocks. Hysteresis flags: `cpu_overloaded` is set at backlog >= cpu_backlog_high or wait >=
   cpu_wait_high_s and cleared only at backlog <= cpu_backlog_low and wait <= cpu_wait_low_s;
   `kv_overloaded` is set at usage >= kv_high and cleared at usage <= kv_low. Caps: `cpu_cap` =
   clamp(ceil(cores * (low + high) / 2), window_min, pool_size); `kv_cap` = pool_size at usage <= kv_low,
   window_min at usage >= kv_high, linear (floored) in between; `budget_blocks` = free_blocks -
   ceil(total_blocks * (1 - kv_high)).
2. **Window (AIMD), rate-limited.** Shrink to max(window_min, floor(window * window_dec)) when either flag
   is set; else grow by window_inc (capped at pool_size) when the CPU is not busy (backlog <= low and
   wait <= low), usage <= kv_low and budget_blocks > 0. `admit` runs on every arrival, every session end
   and every `interval_s`, but the window changes at most once per `control_interval_s` (measured from
   its last update; the first call may update it). The flags, caps and budget are re-read on every call:
   they are observations, not control steps.
3. **Limit.** active_limit = min(window, cpu_cap, kv_cap, pool_size); free slots = active_limit - active.
4. **Fill the free slots** from the backlog, in an order that depends on pressure:
   * `longest` first-turn prompt first when `cpu_overloaded` (long prompts load the GPU, not the cores);
   * else `shortest` first when *under pressure*: `kv_overloaded`, or the backlog holds more sessions
     than there are free slots (someone must wait, so let the quick ones go first);
   * else `arrival` order (nothing overloaded and the whole backlog fits).
   Ties keep arrival order. A session whose first-turn blocks (ceil(first_prompt_tokens / block_size))
   exceed the remaining budget is skipped (a later, smaller one may still fit); admitted ones are charged.
   A *long* session (first_prompt_tokens > long_prefill_tokens) is admitted only when KV is not
   overloaded, fewer than max_long_running long sessions are active (counting this round's), and no short
   session in the backlog has waited >= max(long_wait_min_s, min(long_wait_max_s, 1 / rps)).
5. **The long lane** (ours, `long_lane`, default 1): before the slots are filled, while fewer than
   `long_lane` sessions admitted by the lane are active, outside tail mode (where packing takes over), KV
   is not overloaded and the KV signal is present, the long backlog session with the smallest first turn that
   fits the block budget is admitted *past the short-wait gate and outside the window*: it takes no slot
   of short sessions (lane sessions are not counted against `active_limit`) and its first turn is charged
   to the budget before theirs. Why: the gate alone holds every long session while short ones wait,
   which under overload is the whole arrival phase; they then run one at a time after the last arrival (each
   takes half the cache), a tail in which the tool cores idle - the throughput loss of issue 17. Long
   sessions load the GPU and the KV cache, hardly the tool cores that bound the short ones, so one at a
   time beside them uses the GPU's slack. `long_lane=0` is the ablation (the reference's gate alone).

Choices the reference leaves open (ours):

* **Waiting time** of a backlog session = now - the time `on_arrival` saw it (its `arrival_s` when
  `on_arrival` was not called). The short-wait gate looks at the backlog as passed in, before this round
  admits anyone: a starving short session admitted in this round opens the gate at the next call.
* **Arrival rate** for the gate: `rps` when given; otherwise the mean rate of the arrivals seen so far,
  (n - 1) / (last - first arrival time). Before two distinct arrival times it is unknown and the gate uses
  long_wait_max_s (the limit of 1 / rps as rps -> 0).
* **Tail mode** = arrivals are over, the KV signal is present and every backlog session is long. It
  lifts the three long-session gates and replaces the block budget by floor(tail_fit_fraction *
  free_blocks), so long sessions are packed while their first turns fit; and (ours) by that fraction of
  all blocks minus the first turns of the long sessions already active, since one on a tool call has
  freed blocks it will take back (packing on free blocks alone made long sessions preempt each other
  without end in the sim). Slots still apply. Without the KV signal there is nothing to pack against,
  so tail mode is off and the normal gates hold.
* **No deadlock.** The reference admits the oldest long session in tail mode when nothing runs. We apply
  it whenever arrivals are over: if nothing is active and the rules admit nothing, the oldest backlog
  session is admitted anyway, whatever its size. Otherwise a short session whose first turn exceeds even
  an empty engine's budget would stay in the backlog, and keep the run alive, forever. It fires only
  when the rules admit nothing, so a fitting session is never held back behind a bigger, older one.
  Nothing is active, so active_limit >= window_min >= 1 leaves it a slot: slots are never exceeded.
* **KV signal missing** (`signals.engine is None`, e.g. a server without the metric or a stale poll):
  KV counts as healthy. `kv_overloaded` is cleared, kv_cap = pool_size, the window may grow on the CPU
  rule alone, there is no block budget (`budget_blocks` is None) and no tail packing. CPU rules apply.
* **Active sessions** are counted here, from what `admit` returned and `on_session_end`.
* **Tool cores**: `tool_cores` when given, else the pool's `workers` from the signals (cores tool calls
  can use, i.e. net of stressors in queue mode).
* **Float noise**: floors and ceilings ignore errors below 1e-9 (90 * 0.7 is 62.99999999999999 in floats;
  the window must still shrink to 63).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.policy.signals import EngineSignals, Signals
from workloads.model import Session

Order = Literal["arrival", "shortest", "longest"]

_EPS = 1e-9

_ORDER_KEYS: dict[Order, Callable[[Session], int] | None] = {
    "arrival": None,
    "shortest": lambda s: s.first_prompt_tokens,
    "longest": lambda s: -s.first_prompt_tokens,
}


def _floor(x: float) -> int:
    """floor(), blind to float noise: 90 * 0.7 is 62.99999999999999 and must give 63."""
    return math.floor(x + _EPS)


def _ceil(x: float) -> int:
    """ceil(), blind to float noise: 2000 * (1 - 0.95) is 100.00000000000009 and must give 100."""
    return math.ceil(x - _EPS)


class MarsAdmissionSettings(BaseModel):
    """The parameters of the control plane (reference section 2 table), reachable as `--set mars.NAME=V`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pool_size: int = Field(default=30, ge=1, description="hard cap on active sessions")
    window_init: int = Field(default=30, ge=1, description="adaptive window at start")
    window_min: int = Field(default=4, ge=1, description="adaptive window floor")
    window_inc: int = Field(default=1, ge=0, description="additive increase per control step")
    window_dec: float = Field(default=0.7, gt=0, lt=1, description="multiplicative decrease per control step")
    control_interval_s: float = Field(default=0.2, gt=0, description="minimum time between window updates")
    kv_high: float = Field(default=0.90, gt=0, le=1, description="KV usage that sets kv_overloaded")
    kv_low: float = Field(default=0.85, ge=0, lt=1, description="KV usage that clears kv_overloaded")
    # The paper's value; the public preview code defaults to 2.0.
    cpu_backlog_high: float = Field(default=4.0, gt=0, description="inflight tools per core that set cpu_overloaded")
    cpu_backlog_low: float = Field(default=1.0, ge=0, description="inflight tools per core that clear cpu_overloaded")
    cpu_wait_high_s: float = Field(default=5.0, gt=0, description="EMA tool queue wait that sets cpu_overloaded")
    cpu_wait_low_s: float = Field(default=2.0, ge=0, description="EMA tool queue wait that clears cpu_overloaded")
    long_prefill_tokens: int = Field(default=50000, ge=0, description="first-turn prompt above this = long session")
    max_long_running: int = Field(default=2, ge=0, description="most long sessions active at once (outside tail mode)")
    long_wait_min_s: float = Field(default=0.2, ge=0, description="short-wait gate for long sessions: lower bound")
    long_wait_max_s: float = Field(default=5.0, ge=0, description="short-wait gate for long sessions: upper bound")
    tail_fit_fraction: float = Field(default=0.95, gt=0, le=1, description="tail mode packs into this share of free blocks")
    long_lane: int = Field(default=1, ge=0, description="long sessions admitted past the short-wait gate, outside the window (0: off)")

    @model_validator(mode="after")
    def _check_order(self) -> MarsAdmissionSettings:
        pairs = [("window_min", "window_init", False), ("window_init", "pool_size", False),
                 ("kv_low", "kv_high", True), ("cpu_backlog_low", "cpu_backlog_high", False),
                 ("cpu_wait_low_s", "cpu_wait_high_s", False), ("long_wait_min_s", "long_wait_max_s", False)]
        for low, high, strict in pairs:
            a, b = getattr(self, low), getattr(self, high)
            if a > b or (strict and a == b):
                raise ValueError(f"{low} ({a}) must be {'<' if strict else '<='} {high} ({b})")
        return self


# ------------------------------------------------------------------------------------- pure rules
def cpu_cap(tool_cores: int, s: MarsAdmissionSettings) -> int:
    """Active sessions the tool pool sustains: the cores times the middle of the backlog band."""
    raw = _ceil(tool_cores * (s.cpu_backlog_low + s.cpu_backlog_high) / 2)
    return max(s.window_min, min(s.pool_size, raw))


def kv_cap(usage: float, s: MarsAdmissionSettings) -> int:
    """pool_size below the low mark, window_min above the high mark, a straight line (floored) between."""
    if usage <= s.kv_low:
        return s.pool_size
    if usage >= s.kv_high:
        return s.window_min
    share = (usage - s.kv_low) / (s.kv_high - s.kv_low)
    return _floor(s.pool_size - share * (s.pool_size - s.window_min))


def budget_blocks(engine: EngineSignals, s: MarsAdmissionSettings) -> int:
    """Free blocks above the reserve that keeps usage under kv_high: what new first turns may take."""
    return engine.free_blocks - _ceil(engine.total_blocks * (1 - s.kv_high))


def long_wait_threshold(rate: float | None, s: MarsAdmissionSettings) -> float:
    """How long a short session may wait before long ones are held back: about one inter-arrival gap."""
    gap = 1 / rate if rate else math.inf
    return max(s.long_wait_min_s, min(s.long_wait_max_s, gap))


def first_turn_blocks_of(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def first_turn_blocks(session: Session, block_size: int) -> int:
    return first_turn_blocks_of(session.first_prompt_tokens, block_size)


class ArrivalRate:
    """Mean arrival rate of the arrivals seen so far: (n - 1) / (last - first); None until defined."""

    def __init__(self) -> None:
        self.count = 0
        self.first_s: float | None = None
        self.last_s: float | None = None

    def observe(self, now: float) -> None:
        self.count += 1
        self.first_s = now if self.first_s is None else self.first_s
        self.last_s = now

    @property
    def rate(self) -> float | None:
        if self.first_s is None or self.last_s is None or self.last_s - self.first_s <= _EPS:
            return None
        return (self.count - 1) / (self.last_s - self.first_s)


# ------------------------------------------------------------------------------------- one round
def _as_dict(cls: type, value: Any) -> dict[str, Any]:
    """A dataclass's fields, all None before the first round (so state() always has the same keys)."""
    return asdict(value) if value is not None else {f.name: None for f in fields(cls)}


@dataclass(frozen=True)
class Reading:
    """The signals as the rules see them in one call of `admit` (caps and budget included)."""

    cpu_backlog: float
    cpu_wait_s: float
    kv_usage: float | None
    cpu_cap: int
    kv_cap: int
    budget_blocks: int | None  # None: no KV signal, no budget check


@dataclass(frozen=True)
class Round:
    """How one call of `admit` filled the slots, for `state()`."""

    active_limit: int
    free_slots: int
    order: Order
    tail_mode: bool
    long_gate: str  # open | kv_overloaded | short_waiting | max_long_running | tail
    long_wait_s: float
    admitted: int
    no_deadlock: bool  # the oldest session was admitted by the no-deadlock rule
    lane_admitted: bool  # the long lane admitted a session this round


class MarsAdmission:
    """MARS's admission controller (harness.policy.admission.AdmissionController); see the module docstring."""

    name = "mars"
    # A change of any of these is an event in the results (the readings change on every call).
    event_keys = ("window", "active_limit", "cpu_overloaded", "kv_overloaded", "order", "tail_mode", "long_gate",
                  "no_deadlock")

    def __init__(self, settings: MarsAdmissionSettings | None = None, tool_cores: int | None = None,
                 rps: float | None = None) -> None:
        if tool_cores is not None and tool_cores < 1:
            raise ValueError(f"tool_cores must be >= 1, got {tool_cores}")
        if rps is not None and rps <= 0:
            raise ValueError(f"rps must be > 0, got {rps}")
        self.settings = settings or MarsAdmissionSettings()
        self.interval_s: float | None = self.settings.control_interval_s
        self.tool_cores = tool_cores
        self.rps = rps
        self.window = self.settings.window_init
        self.cpu_overloaded = False
        self.kv_overloaded = False
        self.arrivals_done = False
        self._window_at: float | None = None  # time of the last window update
        self._arrived_at: dict[str, float] = {}  # backlog session id -> time on_arrival saw it
        self._active: dict[str, int] = {}  # active session id -> first-turn prompt tokens if long, else 0
        self._lane: set[str] = set()  # active sessions the long lane admitted (outside the window)
        self._rate = ArrivalRate()
        self._reading: Reading | None = None
        self._round: Round | None = None

    # ------------------------------------------------------------------------------ hooks
    def on_arrival(self, session: Session, now: float) -> None:
        self._arrived_at[session.id] = now
        self._rate.observe(now)

    def on_session_end(self, session: Session, now: float) -> None:
        self._active.pop(session.id, None)
        self._lane.discard(session.id)

    def on_arrivals_done(self, now: float) -> None:
        self.arrivals_done = True

    def admit(self, backlog: Sequence[Session], signals: Signals, now: float) -> list[Session]:
        reading = self._read(signals)
        self._update_window(reading, now)
        chosen = self._fill(backlog, signals.engine, reading, now)
        for session in chosen:
            self._arrived_at.pop(session.id, None)
            self._active[session.id] = session.first_prompt_tokens if self.is_long(session) else 0
        return chosen

    def state(self) -> dict[str, Any]:
        """Everything the last round decided from, flat, for the event log and the timeline.

        `active` and `long_running` count this round's admissions; `free_slots` is what the round had
        before admitting (`admitted` of them used). Reading and round fields are None before any round.
        """
        out: dict[str, Any] = {
            "window": self.window, "active": self.active, "long_running": self.long_running,
            "lane_running": self.lane_running,
            "cpu_overloaded": self.cpu_overloaded, "kv_overloaded": self.kv_overloaded,
        }
        return {**out, **_as_dict(Reading, self._reading), **_as_dict(Round, self._round)}

    # ------------------------------------------------------------------------------ views
    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def lane_running(self) -> int:
        """Active sessions the long lane admitted; they take no slot of the window."""
        return len(self._lane)

    @property
    def long_running(self) -> int:
        return sum(1 for tokens in self._active.values() if tokens)

    @property
    def arrival_rate(self) -> float | None:
        """The rate the short-wait gate uses: the configured rps, else the observed one."""
        return self.rps if self.rps is not None else self._rate.rate

    def is_long(self, session: Session) -> bool:
        return session.first_prompt_tokens > self.settings.long_prefill_tokens

    def waited(self, session: Session, now: float) -> float:
        return now - self._arrived_at.get(session.id, session.arrival_s)

    # ------------------------------------------------------------------------------ 1. read
    def _read(self, signals: Signals) -> Reading:
        s, tools, engine = self.settings, signals.tools, signals.engine
        cores = self.tool_cores if self.tool_cores is not None else tools.workers
        backlog = tools.inflight / cores if cores else 0.0
        wait = tools.ema_wait_s
        if backlog >= s.cpu_backlog_high or wait >= s.cpu_wait_high_s:
            self.cpu_overloaded = True
        elif self._cpu_calm(backlog, wait):
            self.cpu_overloaded = False
        if engine is None:
            self.kv_overloaded = False
        elif engine.kv_usage >= s.kv_high:
            self.kv_overloaded = True
        elif engine.kv_usage <= s.kv_low:
            self.kv_overloaded = False
        self._reading = Reading(
            cpu_backlog=backlog, cpu_wait_s=wait, kv_usage=engine.kv_usage if engine else None,
            cpu_cap=cpu_cap(cores, s), kv_cap=kv_cap(engine.kv_usage, s) if engine else s.pool_size,
            budget_blocks=budget_blocks(engine, s) if engine else None,
        )
        return self._reading

    def _cpu_calm(self, backlog: float, wait: float) -> bool:
        """Not busy: the condition that clears cpu_overloaded and allows the window to grow."""
        return backlog <= self.settings.cpu_backlog_low and wait <= self.settings.cpu_wait_low_s

    def _kv_healthy(self, reading: Reading) -> bool:
        """Room to grow: usage at or below the low mark and a positive budget (or no KV signal at all)."""
        if reading.kv_usage is None or reading.budget_blocks is None:
            return True
        return reading.kv_usage <= self.settings.kv_low and reading.budget_blocks > 0

    # ------------------------------------------------------------------------------ 2. window
    def _update_window(self, reading: Reading, now: float) -> None:
        s = self.settings
        if self._window_at is not None and now - self._window_at < s.control_interval_s - _EPS:
            return
        self._window_at = now
        if self.cpu_overloaded or self.kv_overloaded:
            self.window = max(s.window_min, _floor(self.window * s.window_dec))
        elif self._cpu_calm(reading.cpu_backlog, reading.cpu_wait_s) and self._kv_healthy(reading):
            self.window = min(s.pool_size, self.window + s.window_inc)

    # ------------------------------------------------------------------------------ 3-4. fill
    def _fill(self, backlog: Sequence[Session], engine: EngineSignals | None, reading: Reading,
              now: float) -> list[Session]:
        s = self.settings
        limit = min(self.window, reading.cpu_cap, reading.kv_cap, s.pool_size)
        slots = max(0, limit - (self.active - self.lane_running))
        tail = self._tail_mode(backlog, engine)
        order = self._order(len(backlog), slots)
        threshold = long_wait_threshold(self.arrival_rate, s)
        gate = "tail" if tail else self._long_gate(backlog, threshold, now)
        budget = self._round_budget(engine, reading, tail)
        chosen: list[Session] = []
        longs = self.long_running
        lane = None if tail else self._lane_pick(backlog, engine, budget)
        if lane is not None and engine is not None and budget is not None:
            self._lane.add(lane.id)
            chosen.append(lane)
            longs += 1
            budget -= first_turn_blocks(lane, engine.block_size)
            slots += 1  # outside the window: the short sessions keep their slots
        key = _ORDER_KEYS[order]
        for session in sorted(backlog, key=key) if key else backlog:
            if session is lane:
                continue
            if len(chosen) >= slots:
                break
            long = self.is_long(session)
            if long and not tail and (gate != "open" or longs >= s.max_long_running):
                continue
            blocks = first_turn_blocks(session, engine.block_size) if engine else 0
            if budget is not None:
                if blocks > budget:
                    continue
                budget -= blocks
            chosen.append(session)
            longs += long
        no_deadlock = not chosen and not self._active and self.arrivals_done and bool(backlog)
        if no_deadlock:
            chosen = [backlog[0]]
            longs += self.is_long(backlog[0])
        if gate == "open" and longs >= s.max_long_running:
            gate = "max_long_running"
        self._round = Round(active_limit=limit, free_slots=slots, order=order, tail_mode=tail, long_gate=gate,
                            long_wait_s=threshold, admitted=len(chosen), no_deadlock=no_deadlock,
                            lane_admitted=lane is not None)
        return chosen

    def _lane_pick(self, backlog: Sequence[Session], engine: EngineSignals | None,
                   budget: int | None) -> Session | None:
        """The long session the lane admits now, if any (module docstring, step 5): the lane has room, KV is
        not overloaded, and of the long backlog sessions whose first turn fits the budget, the smallest
        (the least KV held and the soonest done; ties: the oldest). Needs the KV signal: a reservation
        with nothing to reserve against would be the gate removed, which thrashes (issue 17)."""
        if len(self._lane) >= self.settings.long_lane or self.kv_overloaded or engine is None or budget is None:
            return None
        fits = [x for x in backlog if self.is_long(x) and first_turn_blocks(x, engine.block_size) <= budget]
        return min(fits, key=lambda x: x.first_prompt_tokens, default=None)

    def _tail_mode(self, backlog: Sequence[Session], engine: EngineSignals | None) -> bool:
        """Arrivals over and only long sessions left: pack them by KV fit (needs the KV signal)."""
        return self.arrivals_done and engine is not None and bool(backlog) and all(map(self.is_long, backlog))

    def _order(self, waiting: int, slots: int) -> Order:
        if self.cpu_overloaded:
            return "longest"
        if self.kv_overloaded or waiting > slots:
            return "shortest"
        return "arrival"

    def _long_gate(self, backlog: Sequence[Session], threshold: float, now: float) -> str:
        """Why long sessions may not start this round ('open' if they may, up to max_long_running)."""
        if self.kv_overloaded:
            return "kv_overloaded"
        if any(not self.is_long(x) and self.waited(x, now) >= threshold - _EPS for x in backlog):
            return "short_waiting"
        return "open"

    def _round_budget(self, engine: EngineSignals | None, reading: Reading, tail: bool) -> int | None:
        """Blocks this round's first turns may take: the reserve-protected budget, or the tail-mode fit."""
        if engine is None:
            return None
        if tail:
            return self._tail_budget(engine)
        return reading.budget_blocks

    def _tail_budget(self, engine: EngineSignals) -> int:
        """Tail packing: what fits in `tail_fit_fraction` of the free blocks, and (ours) in that fraction of
        all blocks once the first turns of the long sessions already active are set aside. Free blocks
        alone overstate the room: an active long session on a tool call has freed its KV and will need it
        back, and packing on free blocks alone makes the long sessions preempt each other without end."""
        f = self.settings.tail_fit_fraction
        committed = sum(first_turn_blocks_of(tokens, engine.block_size) for tokens in self._active.values() if tokens)
        return max(0, min(_floor(f * engine.free_blocks), _floor(f * engine.total_blocks) - committed))
