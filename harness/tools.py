"""The CPU tool pool: where agent tool calls (run tests, grep, compile) wait for and share CPU cores.

Sans-IO, like h11: no clock and no simpy here. `now` is always an argument and completions are return
values, so the simulator wraps the pool in a few lines (sleep until `next_event_time()`, or until a new
`submit`, then `advance(now)`) and tests drive it with plain numbers.

A tool call needs `cores` cores for `cpu_seconds` of wall time when it has them (the work is cpu_seconds
on each of its cores, i.e. cores * cpu_seconds core-seconds). Two disciplines, swapped by `mode`:

* ``"queue"`` — the MARS testbed's "one call per core, FIFO wait". Head-of-line FIFO: the call at the
  head of the queue starts as soon as enough cores are free, and no call behind it overtakes it, even a
  smaller one that would fit. A started call runs at full speed and finishes after its cpu_seconds. A
  tool-order policy (`order`, harness.policy.tools) may put the waiting calls in its own order first;
  they then start head-of-line in that order.
* ``"timeshare"`` — every call starts at once and the OS shares the cores (processor sharing). With
  demand D = cores of the running calls + stress cores and N pool cores, every call progresses at rate
  N / D when D > N, else at full speed; rates change whenever a call arrives or leaves. Finish times are
  exact (piecewise-linear progress), not stepped.

Rules shared by both:

* A call asking for more cores than the pool has is clamped to the pool (`workers` cores) and runs
  longer, so its core-seconds are conserved: a 4-core, 3 s call on a 2-core pool runs 2 cores for 6 s.
* `stress_cores` = k background CPU stressors, there for the whole run. In queue mode they own k cores,
  so tools get `cores - k` (k >= cores leaves no core for tools: ValueError). In timeshare mode they add
  k to the demand (k >= cores is allowed: tools just crawl).
* Ties are broken by submission order: calls finishing at the same instant complete in the order they
  were submitted, and the queue is strictly in submission order.
* Times closer than `TIME_TOLERANCE_S` (1e-9 s, absolute) are the same instant. Sim times stay far below
  1e6 s, where a double still resolves 1e-10 s, so the tolerance only absorbs rounding, e.g. simpy's
  `now + (t - now)` landing one ulp before `next_event_time()`.

Signals (MARS reference section 1, the CPU side of the unified information stream) are read with
`snapshot(now)`; `busy_core_seconds` and `completed` are the counters results are computed from
(utilisation over a span = busy_core_seconds / (workers * span)).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

from harness.policy.tools import ToolOrder, ToolRequest, checked_order

ToolMode = Literal["queue", "timeshare"]

TIME_TOLERANCE_S = 1e-9


@dataclass(frozen=True)
class ToolCompletion:
    """One finished tool call. `wait_s` = started_s - submitted_s (always 0 in timeshare mode)."""

    job_id: Hashable
    cores: int  # as requested, before clamping
    cpu_seconds: float
    submitted_s: float
    started_s: float
    finished_s: float
    wait_s: float
    failed: str | None = None  # real tools: why the call failed (killed at a limit, non-zero exit)


@dataclass(frozen=True)
class ToolPoolSignals:
    """The pool's signals at `time_s`, as the admission controller reads them.

    inflight = queued + running calls; workers = cores tool calls can use; backlog_per_core =
    inflight / workers; busy_cores = cores' worth of CPU the tool calls use now (in timeshare mode a
    fraction when stressors take their share); ema_wait_s as documented on `ToolPool`.
    """

    time_s: float
    inflight: int
    running: int
    queued: int
    busy_cores: float
    workers: int
    ema_wait_s: float
    backlog_per_core: float


class Ema:
    """Exponential moving average; the first sample initialises it (no bias towards a made-up 0)."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value: float | None = None  # None until the first sample

    def update(self, sample: float) -> float:
        self.value = sample if self.value is None else (1.0 - self.alpha) * self.value + self.alpha * sample
        return self.value


class _Job:
    __slots__ = ("job_id", "seq", "requested_cores", "cores", "cpu_seconds", "work_s", "submitted_s", "started_s",
                 "request")

    def __init__(self, job_id: Hashable, seq: int, requested: int, granted: int, cpu_seconds: float, now: float,
                 session_id: str = "", tool: str = ""):
        self.job_id = job_id
        self.request = ToolRequest(job_id, session_id, tool, requested, now, seq)
        self.seq = seq  # submission order: breaks every tie
        self.requested_cores = requested
        self.cores = granted
        self.cpu_seconds = cpu_seconds
        self.work_s = cpu_seconds * requested / granted  # wall seconds at full speed on the granted cores
        self.submitted_s = now
        self.started_s: float | None = None


class _Discipline(Protocol):
    """How calls get cores. `move_to` only ever moves forward; the pool owns the clock and the counters."""

    @property
    def running(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def busy_cores(self) -> float: ...
    def move_to(self, t: float) -> None: ...
    def add(self, job: _Job, t: float) -> list[_Job]: ...  # -> calls started now
    def next_finish(self) -> float | None: ...
    def finish_next(self, t: float) -> tuple[_Job, list[_Job]]: ...  # -> (finished call, calls started now)


class _HeadOfLineFifo:
    """`capacity` cores, one FIFO queue; the head starts when enough cores are free, nobody overtakes it."""

    def __init__(self, capacity: int, order: ToolOrder | None = None) -> None:
        self.capacity = capacity
        self.order = order
        self._busy = 0
        self._waiting: deque[_Job] = deque()
        self._finishing: list[tuple[float, int, _Job]] = []  # heap of (finish time, seq, job)

    @property
    def running(self) -> int:
        return len(self._finishing)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy_cores(self) -> float:
        return float(self._busy)

    def move_to(self, t: float) -> None:
        pass  # running calls go at full speed: their finish times are fixed when they start

    def add(self, job: _Job, t: float) -> list[_Job]:
        self._waiting.append(job)
        return self._start_heads(t)

    def next_finish(self) -> float | None:
        return self._finishing[0][0] if self._finishing else None

    def finish_next(self, t: float) -> tuple[_Job, list[_Job]]:
        _, _, job = heapq.heappop(self._finishing)
        self._busy -= job.cores
        return job, self._start_heads(t)

    def _start_heads(self, t: float) -> list[_Job]:
        started: list[_Job] = []
        if self.order is not None and len(self._waiting) > 1 and self._busy < self.capacity:
            self._waiting = in_order(self.order, self._waiting, t)
        while self._waiting and self._waiting[0].cores <= self.capacity - self._busy:
            job = self._waiting.popleft()
            job.started_s = t
            self._busy += job.cores
            heapq.heappush(self._finishing, (t + job.work_s, job.seq, job))
            started.append(job)
        return started


def in_order(policy: ToolOrder, waiting: deque, now: float) -> deque:
    """The waiting calls (anything with a `request`, in submission order) in the policy's order."""
    by_request = {id(item.request): item for item in waiting}
    requests = sorted((item.request for item in waiting), key=lambda r: r.seq)
    ordered = checked_order(policy, requests, now)
    return deque(by_request[id(r)] for r in ordered)


class _ProcessorSharing:
    """Every call runs at once; all progress at the same rate min(1, capacity / demand).

    Because the rate is common to all calls, one *virtual clock* V (full-speed seconds every running call
    has received, V' = rate) replaces per-call remaining work: a call submitted at V = v finishes when
    V reaches v + work_s. The heap of those virtual finish points never needs reordering when the rate
    changes, so each event is O(log n) and the finish times are exact. V restarts at 0 whenever the pool
    empties, to keep it small and precise.
    """

    def __init__(self, capacity: int, stress_cores: int) -> None:
        self.capacity = capacity
        self.stress_cores = stress_cores
        self._demand = 0  # cores asked for by running calls
        self._clock = 0.0
        self._virtual = 0.0
        self._finishing: list[tuple[float, int, _Job]] = []  # heap of (virtual finish, seq, job)

    @property
    def running(self) -> int:
        return len(self._finishing)

    @property
    def queued(self) -> int:
        return 0

    @property
    def rate(self) -> float:
        demand = self._demand + self.stress_cores
        return 1.0 if demand <= self.capacity else self.capacity / demand

    @property
    def busy_cores(self) -> float:
        return self._demand * self.rate

    def move_to(self, t: float) -> None:
        if self._finishing and t > self._clock:
            self._virtual += self.rate * (t - self._clock)
        self._clock = max(self._clock, t)

    def add(self, job: _Job, t: float) -> list[_Job]:
        self.move_to(t)
        job.started_s = t
        self._demand += job.cores
        heapq.heappush(self._finishing, (self._virtual + job.work_s, job.seq, job))
        return [job]

    def next_finish(self) -> float | None:
        if not self._finishing:
            return None
        return self._clock + max(0.0, self._finishing[0][0] - self._virtual) / self.rate

    def finish_next(self, t: float) -> tuple[_Job, list[_Job]]:
        self.move_to(t)
        virtual_finish, _, job = heapq.heappop(self._finishing)
        self._demand -= job.cores
        # The caller may finish it up to the tolerance early: count it as fully served.
        self._virtual = max(self._virtual, virtual_finish) if self._finishing else 0.0
        return job, []


class ToolPool:
    """The CPU tool pool model: `submit` calls, `advance` time, read `snapshot` signals.

    Usage (any event loop): after every `submit`, and whenever the time reaches `next_event_time()`,
    call `advance(now)` and deliver the completions it returns. `advance` may also be called with any
    later time: it processes every completion up to `now`, in order, each at its exact time. `submit` and
    `snapshot` refuse a `now` past a completion that has not been advanced over (it would be lost).

    `ema_wait_s` — EMA (alpha `ema_alpha`, first sample initialises it, 0.0 before any sample) of the time
    calls lose to contention, so "the tool pool is jammed" shows in both modes:
    * queue mode: the queue wait (enqueue -> start), sampled when a call starts, as in the MARS reference
      (a call waiting at the head does not move the EMA until it starts);
    * timeshare mode: calls never wait to start, so the sample is the slowdown-induced extra time,
      finished - submitted - (its duration alone on an idle pool: cpu_seconds unless clamped), sampled
      when a call finishes.
    """

    def __init__(self, cores: int, mode: ToolMode = "queue", stress_cores: int = 0, ema_alpha: float = 0.2,
                 order: ToolOrder | None = None) -> None:
        if mode not in get_args(ToolMode):
            raise ValueError(f"tool mode must be one of {', '.join(get_args(ToolMode))}, got {mode!r}")
        if cores < 1:
            raise ValueError(f"tool pool needs at least 1 core, got {cores}")
        if stress_cores < 0:
            raise ValueError(f"stress cores must be >= 0, got {stress_cores}")
        if mode == "queue" and stress_cores >= cores:
            raise ValueError(
                f"{stress_cores} stress cores leave none of the {cores} tool cores for tool calls in queue mode "
                f"(stressors own their cores there); use fewer stress cores or --tool-mode timeshare"
            )
        self.mode: ToolMode = mode
        self.cores = cores
        self.stress_cores = stress_cores
        self.workers = cores - stress_cores if mode == "queue" else cores
        self._discipline: _Discipline = (
            _HeadOfLineFifo(self.workers, order) if mode == "queue" else _ProcessorSharing(cores, stress_cores)
        )
        self._ema = Ema(ema_alpha)
        self.order = order
        self._clock: float | None = None  # set by the first call
        self._inflight: dict[Hashable, _Job] = {}
        self._seq = 0
        self.busy_core_seconds = 0.0  # integral of busy_cores over time, up to the last submit/advance
        self.completed = 0  # calls finished

    # ------------------------------------------------------------------------------------ signals
    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def running(self) -> int:
        return self._discipline.running

    @property
    def queued(self) -> int:
        return self._discipline.queued

    @property
    def busy_cores(self) -> float:
        return self._discipline.busy_cores

    @property
    def ema_wait_s(self) -> float:
        return self._ema.value if self._ema.value is not None else 0.0

    @property
    def backlog_per_core(self) -> float:
        return self.inflight / self.workers

    def snapshot(self, now: float) -> ToolPoolSignals:
        self._check_time(now)
        return ToolPoolSignals(
            time_s=now,
            inflight=self.inflight,
            running=self.running,
            queued=self.queued,
            busy_cores=self.busy_cores,
            workers=self.workers,
            ema_wait_s=self.ema_wait_s,
            backlog_per_core=self.backlog_per_core,
        )

    # --------------------------------------------------------------------------------- operations
    def submit(self, job_id: Hashable, cpu_seconds: float, cores: int, now: float, session_id: str = "",
               tool: str = "") -> None:
        """A tool call arrives. `job_id` must not be in flight; `cores` above `workers` is clamped;
        `session_id` and `tool` are what a tool-order policy sees of it beside its cores."""
        if job_id in self._inflight:
            raise ValueError(f"tool call {job_id!r} is already in the pool")
        if not (math.isfinite(cpu_seconds) and cpu_seconds >= 0):
            raise ValueError(f"tool call {job_id!r}: cpu_seconds must be a finite number >= 0, got {cpu_seconds}")
        if cores < 1:
            raise ValueError(f"tool call {job_id!r}: cores must be >= 1, got {cores}")
        self._check_time(now)
        self._move_to(now)
        assert self._clock is not None
        job = _Job(job_id, self._seq, cores, min(cores, self.workers), cpu_seconds, self._clock, session_id, tool)
        self._seq += 1
        self._inflight[job_id] = job
        for started in self._discipline.add(job, self._clock):
            self._on_start(started)

    def next_event_time(self) -> float | None:
        """When the next running call finishes if nothing new is submitted; None if nothing runs."""
        t = self._discipline.next_finish()
        if t is None or self._clock is None:
            return t
        return max(t, self._clock)

    def advance(self, now: float) -> list[ToolCompletion]:
        """Move to `now`; the calls that finished at or before it, in finish order (ties: submission order)."""
        if self._clock is not None and now < self._clock - TIME_TOLERANCE_S:
            raise ValueError(f"tool pool time went backwards: advance({now}) after time {self._clock}")
        done = []
        while (t := self.next_event_time()) is not None and t <= now + TIME_TOLERANCE_S:
            self._move_to(t)
            job, started_now = self._discipline.finish_next(t)
            done.append(self._on_finish(job, t))
            for started in started_now:
                self._on_start(started)
        self._move_to(now)
        return done

    # ------------------------------------------------------------------------------------ helpers
    def _check_time(self, now: float) -> None:
        if math.isnan(now):
            raise ValueError("tool pool time is NaN")
        if self._clock is not None and now < self._clock - TIME_TOLERANCE_S:
            raise ValueError(f"tool pool time went backwards: {now} after {self._clock}")
        t = self.next_event_time()
        if t is not None and now > t + TIME_TOLERANCE_S:
            raise ValueError(f"tool pool: a call finishes at {t}; call advance() up to {now} first")

    def _move_to(self, now: float) -> None:
        """Integrate busy cores up to `now` (never backwards) and let the discipline catch up."""
        if self._clock is None:
            self._clock = now
        elif now > self._clock:
            self.busy_core_seconds += self._discipline.busy_cores * (now - self._clock)
            self._clock = now
        self._discipline.move_to(self._clock)

    def _on_start(self, job: _Job) -> None:
        if self.mode == "queue":
            assert job.started_s is not None
            self._ema.update(job.started_s - job.submitted_s)

    def _on_finish(self, job: _Job, t: float) -> ToolCompletion:
        del self._inflight[job.job_id]
        self.completed += 1
        assert job.started_s is not None
        if self.mode == "timeshare":
            self._ema.update(max(0.0, t - job.submitted_s - job.work_s))
        if self.order is not None:
            self.order.on_tool_end(job.request, t - job.started_s, t)
        return ToolCompletion(
            job_id=job.job_id,
            cores=job.requested_cores,
            cpu_seconds=job.cpu_seconds,
            submitted_s=job.submitted_s,
            started_s=job.started_s,
            finished_s=t,
            wait_s=job.started_s - job.submitted_s,
        )
