"""The CPU tool pool model: hand-computed scenarios, properties, and the simpy wrapper it is made for."""

from __future__ import annotations

import math

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.tools import Ema, ToolCompletion, ToolPool, ToolPoolSignals

TOL = 1e-9


def run_all(pool: ToolPool, calls: list[tuple[str, float, float, int]]) -> dict[str, ToolCompletion]:
    """Submit (job_id, at, cpu_seconds, cores) calls in time order, advancing between them; drain."""
    done: list[ToolCompletion] = []
    for job_id, at, cpu, cores in sorted(calls, key=lambda c: c[1]):
        done += pool.advance(at)
        pool.submit(job_id, cpu, cores, at)
    while (t := pool.next_event_time()) is not None:
        done += pool.advance(t)
    return {c.job_id: c for c in done}


def run_all_list(pool: ToolPool, calls: list[tuple[str, float, float, int]]) -> list[ToolCompletion]:
    """Completions in the order `advance` reported them."""
    return list(run_all(pool, calls).values())


def finishes(done: dict[str, ToolCompletion]) -> dict[str, float]:
    return {job_id: c.finished_s for job_id, c in done.items()}


def assert_times(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=TOL), k


# ------------------------------------------------------------------------------------- queue mode
def test_queue_third_call_starts_when_first_ends():
    # 2 cores. A(3 s) and B(5 s) start at 0; C(2 s) arrives at 1, waits for A to end at 3, runs 3..5.
    done = run_all(ToolPool(2), [("A", 0, 3, 1), ("B", 0, 5, 1), ("C", 1, 2, 1)])
    assert_times({k: c.started_s for k, c in done.items()}, {"A": 0, "B": 0, "C": 3})
    assert_times(finishes(done), {"A": 3, "B": 5, "C": 5})
    assert_times({k: c.wait_s for k, c in done.items()}, {"A": 0, "B": 0, "C": 2})


def test_queue_is_head_of_line_fifo_no_overtaking():
    # 2 cores. A(1 core, 4 s) runs 0..4. B(2 cores, 1 s) at 0 waits: only 1 core free. C(1 core, 1 s)
    # at 0.5 would fit in the free core but must not overtake B: B runs 4..5, then C 5..6.
    pool = ToolPool(2)
    pool.submit("A", 4, 1, 0)
    pool.submit("B", 1, 2, 0)
    pool.submit("C", 1, 1, 0.5)
    s = pool.snapshot(0.5)
    assert (s.running, s.queued, s.inflight, s.busy_cores) == (1, 2, 3, 1.0)
    done = run_all(pool, [])
    assert_times({k: c.started_s for k, c in done.items()}, {"A": 0, "B": 4, "C": 5})
    assert_times(finishes(done), {"A": 4, "B": 5, "C": 6})
    assert_times({k: c.wait_s for k, c in done.items()}, {"A": 0, "B": 4, "C": 4.5})


def test_queue_wide_call_ending_starts_every_call_that_now_fits():
    # 2 cores. W(2 cores, 1 s) runs 0..1; B and C (1 core each) queue and both start at 1.
    done = run_all(ToolPool(2), [("W", 0, 1, 2), ("B", 0, 1, 1), ("C", 0, 1, 1)])
    assert_times({k: c.started_s for k, c in done.items()}, {"W": 0, "B": 1, "C": 1})


def test_queue_same_instant_completions_come_in_submission_order():
    pool = ToolPool(3)
    for job_id in "ZXY":
        pool.submit(job_id, 2, 1, 0)
    assert [c.job_id for c in pool.advance(2)] == ["Z", "X", "Y"]


@pytest.mark.parametrize("mode", ["queue", "timeshare"])
def test_too_wide_call_is_clamped_and_keeps_its_core_seconds(mode):
    # A 4-core, 3 s call on a 2-core pool holds both cores for 3 * 4 / 2 = 6 s.
    pool = ToolPool(2, mode=mode)
    pool.submit("wide", 3, 4, 0)
    assert pool.busy_cores == 2
    assert pool.next_event_time() == pytest.approx(6)
    (c,) = pool.advance(6)
    assert (c.cores, c.finished_s) == (4, pytest.approx(6))
    assert pool.busy_core_seconds == pytest.approx(12)  # 4 cores * 3 s
    assert pool.ema_wait_s == 0  # clamping is not contention


def test_queue_stress_cores_take_tool_cores():
    # 4 cores, 2 stressors: 2 tool cores. Three 2 s calls: two run 0..2, the third 2..4.
    pool = ToolPool(4, stress_cores=2)
    assert pool.workers == 2
    done = run_all(pool, [("A", 0, 2, 1), ("B", 0, 2, 1), ("C", 0, 2, 1)])
    assert_times(finishes(done), {"A": 2, "B": 2, "C": 4})


@pytest.mark.parametrize("stress", [2, 3])
def test_queue_stress_that_leaves_no_tool_core_is_rejected(stress):
    with pytest.raises(ValueError, match="leave none of the 2 tool cores"):
        ToolPool(2, stress_cores=stress)


def test_queue_ema_wait_by_hand():
    # 1 core. A(2 s) at 0 starts at once: wait 0 -> EMA 0 (first sample initialises it).
    # B(1 s) at 0.5 starts at 2: wait 1.5 -> EMA 0.8 * 0 + 0.2 * 1.5 = 0.3.
    # C(1 s) at 1 starts at 3: wait 2 -> EMA 0.8 * 0.3 + 0.2 * 2 = 0.64.
    pool = ToolPool(1)
    pool.submit("A", 2, 1, 0)
    pool.submit("B", 1, 1, 0.5)
    pool.submit("C", 1, 1, 1)
    assert pool.ema_wait_s == 0
    assert pool.snapshot(1).backlog_per_core == 3
    pool.advance(2)
    assert pool.ema_wait_s == pytest.approx(0.3)
    pool.advance(3)
    assert pool.ema_wait_s == pytest.approx(0.64)
    pool.advance(4)
    assert pool.ema_wait_s == pytest.approx(0.64)  # finishing does not sample in queue mode


# --------------------------------------------------------------------------------- timeshare mode
def test_timeshare_four_calls_on_two_cores_take_twice_as_long():
    done = run_all_list(ToolPool(2, mode="timeshare"), [(k, 0, 3, 1) for k in "ABCD"])
    assert [c.job_id for c in done] == list("ABCD")
    for c in done:
        assert (c.started_s, c.wait_s) == (0, 0)
        assert c.finished_s == pytest.approx(6)


MIXED = [("A", 0, 4, 1), ("B", 0, 2, 1), ("C", 1, 3, 1), ("D", 2, 1, 2)]
# 2 cores, processor sharing. Remaining full-speed work in brackets.
# 0..1      A, B          demand 2, rate 1     -> at 1: A 3, B 1
# 1..2      A, B, C       demand 3, rate 2/3   -> at 2: A 7/3, B 1/3, C 7/3
# 2..17/6   A, B, C, D(2) demand 5, rate 2/5   -> B done after (1/3)/(2/5) = 5/6: A 2, C 2, D 2/3
# 17/6..25/6 A, C, D      demand 4, rate 1/2   -> D done after (2/3)/(1/2) = 4/3: A 4/3, C 4/3
# 25/6..11/2 A, C         demand 2, rate 1     -> both done after 4/3
MIXED_FINISH = {"B": 17 / 6, "D": 25 / 6, "A": 5.5, "C": 5.5}


def test_timeshare_rates_change_on_arrivals_and_departures():
    pool = ToolPool(2, mode="timeshare")
    done = run_all_list(pool, MIXED)
    assert [c.job_id for c in done] == ["B", "D", "A", "C"]
    assert_times({c.job_id: c.finished_s for c in done}, MIXED_FINISH)
    # Core-seconds: 4 + 2 + 3 + 2 * 1 = 11, the 2 cores fully busy 0..5.5.
    assert pool.busy_core_seconds == pytest.approx(11)
    assert pool.completed == 4


def test_timeshare_ema_samples_extra_time_at_finish():
    # Extra = finish - submit - cpu_seconds, in finish order: B 17/6 - 2 = 5/6 (the first sample
    # initialises the EMA), D 25/6 - 2 - 1 = 7/6, A 5.5 - 4 = 1.5, C 5.5 - 1 - 3 = 1.5.
    pool = ToolPool(2, mode="timeshare")
    for job_id, at, cpu, cores in MIXED:
        pool.advance(at)
        pool.submit(job_id, cpu, cores, at)
    pool.advance(17 / 6)
    assert pool.ema_wait_s == pytest.approx(5 / 6)
    pool.advance(25 / 6)
    assert pool.ema_wait_s == pytest.approx(0.8 * 5 / 6 + 0.2 * 7 / 6)  # 0.9
    pool.advance(5.5)
    assert pool.ema_wait_s == pytest.approx(0.8 * (0.8 * 0.9 + 0.2 * 1.5) + 0.2 * 1.5)  # 1.02 -> 1.116


def test_timeshare_snapshot_mid_run():
    pool = ToolPool(2, mode="timeshare")
    for job_id, at, cpu, cores in MIXED:
        pool.advance(at)
        pool.submit(job_id, cpu, cores, at)
    s = pool.snapshot(2.5)
    assert s == ToolPoolSignals(
        time_s=2.5, inflight=4, running=4, queued=0, busy_cores=pytest.approx(2.0), workers=2,
        ema_wait_s=0.0, backlog_per_core=2.0,
    )


@pytest.mark.parametrize(
    "stress, finish",
    [
        (1, 3.0),  # demand 1 + 1 = 2 <= 2 cores: full speed
        (2, 4.5),  # demand 3: rate 2/3, 3 s of work takes 4.5 s
        (4, 7.5),  # stress beyond the pool is allowed in timeshare: rate 2/5
    ],
)
def test_timeshare_stress_cores_add_demand(stress, finish):
    pool = ToolPool(2, mode="timeshare", stress_cores=stress)
    assert pool.workers == 2
    pool.submit("A", 3, 1, 0)
    assert pool.busy_cores == pytest.approx(3 / finish)
    assert pool.next_event_time() == pytest.approx(finish)
    (c,) = pool.advance(finish)
    assert c.finished_s == pytest.approx(finish)


# ----------------------------------------------------------------------------- contract and misuse
def test_advance_below_next_event_finishes_nothing_and_tolerates_rounding():
    pool = ToolPool(1)
    pool.submit("A", 1.0, 1, 0.1)
    assert pool.advance(0.5) == []
    t = pool.next_event_time()
    assert t == pytest.approx(1.1)
    (c,) = pool.advance(t - 1e-12)  # simpy's now + (t - now) may land an ulp short
    assert c.finished_s == t
    assert pool.next_event_time() is None and pool.inflight == 0


def test_advance_over_several_events_reports_each_at_its_time():
    pool = ToolPool(1)
    pool.submit("A", 1, 1, 0)
    pool.submit("B", 1, 1, 0)
    done = pool.advance(10)
    assert [(c.job_id, c.started_s, c.finished_s) for c in done] == [("A", 0, 1), ("B", 1, 2)]


def test_misuse_is_rejected():
    pool = ToolPool(2)
    pool.submit("A", 1, 1, 5)
    with pytest.raises(ValueError, match="already in the pool"):
        pool.submit("A", 1, 1, 5)
    with pytest.raises(ValueError, match="backwards"):
        pool.submit("B", 1, 1, 4)
    with pytest.raises(ValueError, match="advance"):
        pool.submit("B", 1, 1, 7)  # A finished at 6 and nobody was told
    with pytest.raises(ValueError, match="advance"):
        pool.snapshot(7)
    with pytest.raises(ValueError, match="cpu_seconds"):
        pool.submit("B", -1, 1, 5)
    with pytest.raises(ValueError, match="cores"):
        pool.submit("B", 1, 0, 5)
    with pytest.raises(ValueError, match="tool mode"):
        ToolPool(2, mode="fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        ToolPool(2, ema_alpha=0)


def test_ema_first_sample_initialises():
    ema = Ema(0.2)
    assert ema.value is None
    assert ema.update(10) == 10
    assert ema.update(0) == pytest.approx(8)


# ------------------------------------------------------------------------------------- properties
calls_strategy = st.lists(
    st.tuples(
        st.floats(0, 5, allow_nan=False),  # gap since the previous arrival
        st.floats(0, 20, allow_nan=False),  # cpu_seconds
        st.integers(1, 6),  # cores (some wider than the pool)
    ),
    min_size=1,
    max_size=25,
)


def simulate(pool: ToolPool, calls) -> tuple[dict[int, ToolCompletion], list[tuple[float, int]]]:
    """Event by event (next arrival or next completion, whichever is first); records (busy cores, queued)
    after each."""
    arrivals, t = [], 0.0
    for gap, cpu, cores in calls:
        t += gap
        arrivals.append((t, cpu, cores))
    done: dict[int, ToolCompletion] = {}
    trace: list[tuple[float, int]] = []
    i = 0
    while i < len(arrivals) or pool.next_event_time() is not None:
        nxt = pool.next_event_time()
        if i < len(arrivals) and (nxt is None or arrivals[i][0] <= nxt):
            at, cpu, cores = arrivals[i]
            done.update((c.job_id, c) for c in pool.advance(at))
            pool.submit(i, cpu, cores, at)
            i += 1
        else:
            done.update((c.job_id, c) for c in pool.advance(nxt))
        trace.append((pool.busy_cores, pool.queued))
    return done, trace


def mode_and_pool():
    return st.one_of(
        st.integers(1, 4).flatmap(lambda n: st.tuples(st.just(n), st.just("queue"), st.integers(0, n - 1))),
        st.integers(1, 4).flatmap(lambda n: st.tuples(st.just(n), st.just("timeshare"), st.integers(0, 5))),
    )


@settings(max_examples=150, deadline=None)
@given(pool_args=mode_and_pool(), calls=calls_strategy)
def test_every_call_completes_and_core_seconds_are_conserved(pool_args, calls):
    cores, mode, stress = pool_args
    pool = ToolPool(cores, mode=mode, stress_cores=stress)
    done, trace = simulate(pool, calls)
    assert sorted(done) == list(range(len(calls)))
    assert pool.completed == len(calls) and pool.inflight == 0
    submitted = sum(cpu * c for _, cpu, c in calls)
    assert pool.busy_core_seconds == pytest.approx(submitted, rel=1e-9, abs=1e-6)
    for c in done.values():
        assert c.started_s >= c.submitted_s
        assert c.finished_s >= c.started_s
        assert c.finished_s >= c.submitted_s + c.cpu_seconds - TOL
        assert c.wait_s == c.started_s - c.submitted_s
        if mode == "timeshare":
            assert c.wait_s == 0
    for b, _ in trace:
        assert -TOL <= b <= pool.workers + TOL


@settings(max_examples=100, deadline=None)
@given(cores=st.integers(1, 4), stress=st.integers(0, 3), calls=calls_strategy)
def test_queue_never_exceeds_capacity_and_starts_in_submission_order(cores, stress, calls):
    pool = ToolPool(cores + stress, mode="queue", stress_cores=stress)
    done, trace = simulate(pool, calls)
    assert all(b <= cores for b, _ in trace)
    starts = [done[i].started_s for i in range(len(calls))]
    assert starts == sorted(starts)  # head-of-line FIFO


@settings(max_examples=100, deadline=None)
@given(cores=st.integers(1, 4), calls=calls_strategy)
def test_queue_of_one_core_calls_never_idles_a_core_while_a_call_waits(cores, calls):
    pool = ToolPool(cores)
    _, trace = simulate(pool, [(gap, cpu, 1) for gap, cpu, _ in calls])
    assert all(b == cores for b, queued in trace if queued)


@settings(max_examples=100, deadline=None)
@given(cores=st.integers(1, 8), calls=calls_strategy, stress=st.integers(0, 3))
def test_timeshare_without_overload_runs_every_call_at_full_speed(cores, calls, stress):
    # Keep total demand (all calls at once + stress) within the pool: no call is ever slowed.
    calls = [(gap, cpu, 1) for gap, cpu, _ in calls][: max(0, cores - stress)]
    pool = ToolPool(cores, mode="timeshare", stress_cores=stress)
    done, _ = simulate(pool, calls)
    for c in done.values():
        assert c.finished_s == pytest.approx(c.submitted_s + c.cpu_seconds, abs=TOL)
    assert pool.ema_wait_s == pytest.approx(0, abs=TOL)


@settings(max_examples=30, deadline=None)
@given(pool_args=mode_and_pool(), calls=calls_strategy)
def test_same_input_same_output(pool_args, calls):
    cores, mode, stress = pool_args
    first, _ = simulate(ToolPool(cores, mode=mode, stress_cores=stress), calls)
    second, _ = simulate(ToolPool(cores, mode=mode, stress_cores=stress), calls)
    assert list(first.values()) == list(second.values())


# ---------------------------------------------------------------------------------- simpy driver
class SimpyToolPool:
    """How the simulator wraps the pool: one process sleeps until the next completion or a new call."""

    def __init__(self, env: simpy.Environment, pool: ToolPool) -> None:
        self.env, self.pool = env, pool
        self._pending: dict[object, simpy.Event] = {}
        self._wakeup = env.event()
        env.process(self._run())

    def run_tool(self, job_id, cpu_seconds: float, cores: int) -> simpy.Event:
        """An event that fires with the ToolCompletion; `yield` it from an agent process."""
        self._pending[job_id] = done = self.env.event()
        self.pool.submit(job_id, cpu_seconds, cores, self.env.now)
        if not self._wakeup.triggered:
            self._wakeup.succeed()
        return done

    def _run(self):
        while True:
            t = self.pool.next_event_time()
            events = [self._wakeup] if t is None else [self._wakeup, self.env.timeout(max(0.0, t - self.env.now))]
            yield self.env.any_of(events)
            if self._wakeup.triggered:
                self._wakeup = self.env.event()
            for c in self.pool.advance(self.env.now):
                self._pending.pop(c.job_id).succeed(c)


@pytest.mark.parametrize("mode, expected", [("timeshare", MIXED_FINISH), ("queue", {"A": 4, "B": 2, "C": 5, "D": 6})])
def test_simpy_driver_reproduces_hand_computed_times(mode, expected):
    # Queue mode by hand, 2 cores: A 0..4, B 0..2, C (3 s, at 1) 2..5 (waits 1); D (2 cores, at 2)
    # finds 1 core free at 4 (C still runs) and starts when C ends: 5..6 (waits 3).
    env = simpy.Environment()
    tools = SimpyToolPool(env, ToolPool(2, mode=mode))
    got: dict[str, float] = {}

    def agent(job_id, at, cpu, cores):
        yield env.timeout(at)
        c = yield tools.run_tool(job_id, cpu, cores)
        assert c.finished_s == pytest.approx(env.now, abs=TOL)
        got[job_id] = env.now

    for call in MIXED:
        env.process(agent(*call))
    env.run()
    assert_times(got, expected)
    assert math.isclose(tools.pool.busy_core_seconds, 11)
