"""MARS's external control plane: one hand-computed scenario per rule of reference section 2, each able to
fail if the rule breaks, and a property test over random signals and backlogs."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harness.policy.admission import AdmissionController
from harness.config import EngineSettings, RunConfig
from harness.policy import Policy
from harness.engines.sim.run import simulate
from harness.engines.sim.testbed import build_setup
from mars_impl.admission import (
    ArrivalRate,
    MarsAdmission,
    MarsAdmissionSettings,
    budget_blocks,
    cpu_cap,
    kv_cap,
    long_wait_threshold,
)
from harness.policy.signals import EngineSignals, Signals, ToolSignals
from workloads.model import Session, ToolCall, Turn

DEFAULTS = MarsAdmissionSettings()
LONG = 60_000  # first-turn tokens of a long session (> 50k): 3750 blocks of 16
SHORT = 1_000

HEALTHY_KV = dict(kv=0.5, free=100_000, total=200_000)  # budget 80k blocks: never the limit
CPU_OVERLOADED = dict(inflight=32)  # 32 inflight / 8 cores = 4.0 = HIGH
KV_OVERLOADED = dict(kv=0.90)


def sig(kv: float = 0.5, free: int = 100_000, total: int = 200_000, block: int = 16, inflight: int = 0,
        workers: int = 8, wait: float = 0.0, engine: bool = True, now: float = 0.0) -> Signals:
    """A hand-built snapshot; `engine=False` is a missing KV signal."""
    eng = EngineSignals(kv_usage=kv, free_blocks=free, total_blocks=total, block_size=block, running=0, waiting=0)
    return Signals(time_s=now, engine=eng if engine else None, engine_age_s=0.0 if engine else None,
                   tools=ToolSignals(workers=workers, inflight=inflight, ema_wait_s=wait))


def sess(sid: str, tokens: int = SHORT, arrival: float = 0.0) -> Session:
    return Session(id=sid, arrival_s=arrival, turns=(Turn(new_tokens=tokens, output_tokens=1),))


def mars(rps: float | None = None, **settings_: object) -> MarsAdmission:
    return MarsAdmission(MarsAdmissionSettings(**settings_), rps=rps)


def ids(sessions: Sequence[Session]) -> list[str]:
    return [s.id for s in sessions]


def windows(ctl: MarsAdmission, signals: Signals, steps: int) -> list[int]:
    """The window after each of `steps` admit calls, one control interval apart, on an empty backlog."""
    out = []
    for k in range(steps):
        ctl.admit([], signals, now=k * ctl.settings.control_interval_s)
        out.append(ctl.window)
    return out


# ----------------------------------------------------------------------------------- settings, protocol
def test_settings_defaults_are_the_reference_table() -> None:
    assert DEFAULTS.model_dump() == {
        "pool_size": 30, "window_init": 30, "window_min": 4, "window_inc": 1, "window_dec": 0.7,
        "control_interval_s": 0.2, "kv_high": 0.90, "kv_low": 0.85, "cpu_backlog_high": 4.0,
        "cpu_backlog_low": 1.0, "cpu_wait_high_s": 5.0, "cpu_wait_low_s": 2.0, "long_prefill_tokens": 50000,
        "max_long_running": 2, "long_wait_min_s": 0.2, "long_wait_max_s": 5.0, "tail_fit_fraction": 0.95,
        "long_lane": 1,  # ours, not the reference's (module docstring, step 5); 0 is the reference
    }


@pytest.mark.parametrize("bad", [{"block_size": 16}, {"window_min": 8, "window_init": 6},
                                 {"kv_low": 0.9, "kv_high": 0.9}, {"cpu_backlog_low": 5.0}, {"window_dec": 1.0}])
def test_settings_reject_unknown_or_inconsistent_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MarsAdmissionSettings(**bad)


def test_is_an_admission_controller_ticking_at_the_control_interval() -> None:
    ctl: AdmissionController = MarsAdmission(MarsAdmissionSettings(control_interval_s=0.5))
    assert ctl.name == "mars" and ctl.interval_s == 0.5
    assert {"window", "active_limit", "active", "cpu_overloaded", "kv_overloaded", "cpu_cap", "kv_cap",
            "budget_blocks", "long_running", "tail_mode"} <= ctl.state().keys()


# ----------------------------------------------------------------------------------- AIMD window
@pytest.mark.parametrize("pressure", [CPU_OVERLOADED, dict(wait=5.0), KV_OVERLOADED],
                         ids=["cpu-backlog", "cpu-wait", "kv"])
def test_window_shrinks_by_0_7_floored_at_window_min_when_a_resource_is_overloaded(pressure: dict) -> None:
    assert windows(mars(), sig(**pressure), 7) == [21, 14, 9, 6, 4, 4, 4]


def test_window_grows_by_exactly_one_when_cpu_and_kv_are_healthy_capped_at_pool_size() -> None:
    assert windows(mars(window_init=10), sig(), 3) == [11, 12, 13]
    assert windows(mars(window_init=29), sig(), 3) == [30, 30, 30]


@pytest.mark.parametrize("busy", [
    dict(inflight=16),  # 2 tools per core: between LOW and HIGH, busy but not overloaded
    dict(wait=3.0),  # EMA wait between 2 s and 5 s
    dict(kv=0.87, free=26_000, total=200_000),  # usage in the hysteresis band, not overloaded
    dict(kv=0.5, free=20_000, total=200_000),  # budget = 20000 - 20000 = 0
], ids=["cpu-backlog-between-marks", "cpu-wait-between-marks", "kv-between-marks", "no-block-budget"])
def test_window_holds_when_a_resource_is_busy_but_not_overloaded(busy: dict) -> None:
    ctl = mars(window_init=10)
    assert windows(ctl, sig(**busy), 3) == [10, 10, 10]
    assert not ctl.cpu_overloaded and not ctl.kv_overloaded


def test_window_changes_at_most_once_per_control_interval() -> None:
    ctl = mars()
    for now, want in [(0.0, 21), (0.1, 21), (0.19, 21), (0.2, 14), (0.3, 14), (0.45, 9)]:
        ctl.admit([], sig(**KV_OVERLOADED), now)
        assert ctl.window == want, now


def test_window_updates_on_every_tick_despite_float_drift() -> None:
    """0.2 + 0.2 + 0.2 is 0.6000000000000001 and later gaps come out as 0.19999999999999996."""
    ctl, now = mars(window_init=4), 0.0
    for _ in range(20):
        ctl.admit([], sig(), now)
        now += 0.2
    assert ctl.window == 24


# ----------------------------------------------------------------------------------- hysteresis
def test_kv_hysteresis_sets_at_high_and_clears_only_at_low() -> None:
    ctl = mars()
    seen = []
    for usage in [0.88, 0.91, 0.87, 0.86, 0.84, 0.88, 0.89]:
        ctl.admit([], sig(kv=usage), 0.0)
        seen.append(ctl.kv_overloaded)
    assert seen == [False, True, True, True, False, False, False]


@pytest.mark.parametrize("trace", [
    [(16, 0.0, False), (32, 0.0, True), (16, 0.0, True), (9, 0.0, True), (8, 0.0, False), (24, 0.0, False)],
    [(0, 4.9, False), (0, 5.0, True), (0, 3.0, True), (0, 2.1, True), (0, 2.0, False), (0, 4.0, False)],
    [(32, 0.0, True), (0, 2.5, True), (8, 2.0, False)],
], ids=["backlog", "wait", "both-must-be-low"])
def test_cpu_hysteresis_sets_at_either_high_mark_and_clears_only_when_both_are_low(trace: list) -> None:
    ctl = mars()
    for inflight, wait, want in trace:
        ctl.admit([], sig(inflight=inflight, wait=wait), 0.0)
        assert ctl.cpu_overloaded is want, (inflight, wait)


# ----------------------------------------------------------------------------------- caps and budget
def test_cpu_cap_is_cores_times_mid_band_clamped_to_the_window_range() -> None:
    assert cpu_cap(8, DEFAULTS) == 20  # ceil(8 * (1 + 4) / 2)
    assert cpu_cap(3, DEFAULTS) == 8  # ceil(7.5)
    assert cpu_cap(1, DEFAULTS) == 4  # 3 -> window_min
    assert cpu_cap(64, DEFAULTS) == 30  # 160 -> pool_size


def test_kv_cap_is_linear_between_the_marks() -> None:
    assert [kv_cap(u, DEFAULTS) for u in (0.5, 0.85, 0.875, 0.9, 0.99)] == [30, 30, 17, 4, 4]


def test_floors_and_ceilings_ignore_float_noise() -> None:
    """Each of these is off by one ulp in floats: 16.999999999999993, 62.99999999999999, 100.00000000000009."""
    assert kv_cap(0.8, MarsAdmissionSettings(kv_low=0.7)) == 17
    assert windows(mars(pool_size=100, window_init=90), sig(**KV_OVERLOADED), 1) == [63]
    engine = sig(free=1000, total=2000).engine
    assert engine is not None and budget_blocks(engine, MarsAdmissionSettings(kv_high=0.95, kv_low=0.85)) == 900


def test_budget_blocks_keeps_the_high_mark_in_reserve() -> None:
    engine = sig(free=1000, total=2000).engine
    assert engine is not None and budget_blocks(engine, DEFAULTS) == 800


def test_active_limit_is_the_smallest_cap_and_sets_the_free_slots() -> None:
    ctl = mars()
    backlog = [sess(f"s{i}") for i in range(40)]
    first = ctl.admit(backlog, sig(kv=0.875), 0.0)  # window 30, cpu_cap 20, kv_cap 17
    assert len(first) == 17 and ctl.state()["active_limit"] == 17
    again = ctl.admit(backlog[17:], sig(kv=0.875), 0.05)
    assert again == [] and ctl.state()["free_slots"] == 0
    ctl.on_session_end(first[0], 0.1)
    assert len(ctl.admit(backlog[17:], sig(kv=0.875), 0.1)) == 1


# ----------------------------------------------------------------------------------- order
MIXED = [sess("a", 3000), sess("b", 1000), sess("c", 2000)]


@pytest.mark.parametrize("settings_, signals, order, want", [
    ({}, {}, "arrival", ["a", "b", "c"]),  # no pressure, everything fits
    ({"pool_size": 2, "window_init": 2, "window_min": 1}, {}, "shortest", ["b", "c"]),  # backlog > free slots
    ({}, KV_OVERLOADED, "shortest", ["b", "c", "a"]),  # KV overloaded, CPU fine
    ({}, CPU_OVERLOADED, "longest", ["a", "c", "b"]),  # CPU overloaded
], ids=["arrival", "shortest-when-backlog-exceeds-slots", "shortest-when-kv-overloaded", "longest-when-cpu-overloaded"])
def test_admission_order_follows_pressure(settings_: dict, signals: dict, order: str, want: list[str]) -> None:
    ctl = mars(**settings_)
    assert ids(ctl.admit(MIXED, sig(**signals), 0.0)) == want
    assert ctl.state()["order"] == order


def test_a_session_over_the_remaining_budget_is_skipped_and_admitted_ones_are_charged() -> None:
    ctl = mars()
    backlog = [sess("a", 3200), sess("b", 3200), sess("c", 1600)]  # 200, 200 and 100 blocks
    chosen = ctl.admit(backlog, sig(free=400, total=1000), 0.0)  # budget 400 - 100 = 300
    assert ids(chosen) == ["a", "c"] and ctl.state()["budget_blocks"] == 300


# ----------------------------------------------------------------------------------- long sessions
def test_long_wait_threshold_is_one_arrival_gap_within_bounds() -> None:
    assert [long_wait_threshold(r, DEFAULTS) for r in (1.0, 0.01, 100.0, None)] == [1.0, 5.0, 0.2, 5.0]


def test_arrival_rate_is_estimated_from_observed_arrivals_when_rps_is_not_given() -> None:
    rate = ArrivalRate()
    rate.observe(0.0)
    assert rate.rate is None
    for t in (2.0, 4.0):
        rate.observe(t)
    assert rate.rate == 0.5
    ctl = mars()
    for k, t in enumerate((0.0, 2.0, 4.0)):
        ctl.on_arrival(sess(f"s{k}", arrival=t), t)
    assert ctl.arrival_rate == 0.5 and mars(rps=0.2).arrival_rate == 0.2


def test_a_long_session_never_starts_while_a_short_one_has_waited_past_the_threshold() -> None:
    """One slot and an overloaded CPU (longest first): the long session would take the slot, unless the
    short one has waited 1 / rps = 1 s."""
    backlog = [sess("short", SHORT), sess("long", LONG)]
    one_slot = dict(pool_size=1, window_init=1, window_min=1, long_lane=0)
    assert ids(mars(rps=1.0, **one_slot).admit(backlog, sig(**CPU_OVERLOADED), 0.5)) == ["long"]
    ctl = mars(rps=1.0, **one_slot)
    assert ids(ctl.admit(backlog, sig(**CPU_OVERLOADED), 1.0)) == ["short"]
    assert ctl.state()["long_gate"] == "short_waiting" and ctl.state()["long_wait_s"] == 1.0


def test_wait_counts_from_on_arrival() -> None:
    ctl = mars(rps=1.0, pool_size=1, window_init=1, window_min=1, long_lane=0)
    short, long = sess("short", SHORT, arrival=0.0), sess("long", LONG, arrival=0.0)
    ctl.on_arrival(short, 3.0)  # e.g. a real run whose clock started later than the workload's zero
    assert ids(ctl.admit([short, long], sig(**CPU_OVERLOADED), 3.5)) == ["long"]


def test_at_most_max_long_running_long_sessions_are_active() -> None:
    ctl = mars()
    longs = [sess(f"L{i}", LONG) for i in range(4)]
    first = ctl.admit(longs, sig(), 0.0)
    assert ids(first) == ["L0", "L1"] and ctl.state()["long_gate"] == "max_long_running"
    assert ctl.admit(longs[2:], sig(), 0.1) == []
    ctl.on_session_end(first[0], 0.2)
    assert ids(ctl.admit(longs[2:], sig(), 0.2)) == ["L2"] and ctl.long_running == 2


def test_long_sessions_wait_while_kv_is_overloaded_but_short_ones_do_not() -> None:
    ctl = mars()
    chosen = ctl.admit([sess("L", LONG), sess("s", SHORT)], sig(**KV_OVERLOADED), 0.0)
    assert ids(chosen) == ["s"] and ctl.state()["long_gate"] == "kv_overloaded"


# ----------------------------------------------------------------------------------- tail mode
TAIL_KV = dict(kv=0.1, free=20_000, total=24_000)  # 0.95 * 20000 = 19000 blocks: five 3750-block sessions


def test_tail_mode_packs_long_sessions_while_they_fit_beyond_max_long_running() -> None:
    longs = [sess(f"L{i}", LONG) for i in range(6)]
    ctl = mars()
    assert len(ctl.admit(longs, sig(**TAIL_KV), 0.0)) == 2  # arrivals still going: normal gates
    ctl = mars()
    ctl.on_arrivals_done(0.0)
    assert ids(ctl.admit(longs, sig(**TAIL_KV), 0.0)) == ["L0", "L1", "L2", "L3", "L4"]
    assert ctl.state()["tail_mode"] and ctl.long_running == 5


def test_tail_mode_skips_a_long_session_that_does_not_fit_for_one_that_does() -> None:
    ctl = mars()
    ctl.on_arrivals_done(0.0)
    backlog = [sess("big", 400_000), sess("L", LONG)]  # 25000 blocks > 19000
    assert ids(ctl.admit(backlog, sig(**TAIL_KV), 0.0)) == ["L"]
    assert ctl.admit(backlog[:1], sig(**TAIL_KV), 0.1) == []  # L is active: wait for it


def test_tail_mode_admits_the_oldest_session_when_nothing_is_active_even_if_it_does_not_fit() -> None:
    ctl = mars()
    ctl.on_arrivals_done(0.0)
    backlog = [sess("big", 400_000), sess("bigger", 500_000)]
    assert ids(ctl.admit(backlog, sig(**TAIL_KV), 0.0)) == ["big"] and ctl.state()["no_deadlock"]


def test_no_deadlock_rule_also_frees_an_oversized_short_session_once_arrivals_are_over() -> None:
    huge_short = sess("s", 40_000)  # 2500 blocks, over the 1800-block budget of an empty 2000-block engine
    ctl = mars()
    assert ctl.admit([huge_short], sig(kv=0.0, free=2000, total=2000), 0.0) == []
    ctl.on_arrivals_done(1.0)
    assert ids(ctl.admit([huge_short], sig(kv=0.0, free=2000, total=2000), 1.0)) == ["s"]


# ----------------------------------------------------------------------------------- the long lane
def test_the_long_lane_starts_one_long_session_past_the_short_wait_gate_outside_the_window() -> None:
    """One slot, a short session starving (waited past 1 / rps): without the lane the long sessions wait;
    with it the smallest long one that fits starts beside the short one, which keeps its slot."""
    one_slot = dict(pool_size=1, window_init=1, window_min=1)
    backlog = [sess("short", SHORT), sess("L-big", 70_000), sess("L-small", LONG), sess("short2", SHORT)]
    assert ids(mars(rps=1.0, long_lane=0, **one_slot).admit(backlog, sig(), 2.0)) == ["short"]
    ctl = mars(rps=1.0, **one_slot)
    assert ids(ctl.admit(backlog, sig(), 2.0)) == ["L-small", "short"]
    state = ctl.state()
    assert state["lane_admitted"] and state["lane_running"] == 1 and state["long_gate"] == "short_waiting"
    assert state["active"] == 2 and state["active_limit"] == 1  # the lane is outside the window


def test_the_long_lane_holds_one_session_at_a_time_and_reopens_when_it_ends() -> None:
    ctl = mars(rps=1.0, pool_size=1, window_init=1, window_min=1)
    backlog = [sess("short", SHORT), sess("L0", LONG), sess("L1", LONG)]
    assert ids(ctl.admit(backlog, sig(), 2.0)) == ["L0", "short"]
    waiting = [sess("short2", SHORT, arrival=2.0), backlog[2]]
    assert ctl.admit(waiting, sig(), 5.0) == []  # the slot and the lane are taken
    ctl.on_session_end(backlog[1], 6.0)
    assert ids(ctl.admit(waiting, sig(), 6.0)) == ["L1"] and ctl.lane_running == 1


def test_the_long_lane_reserves_blocks_only_when_the_first_turn_fits_and_kv_is_not_overloaded() -> None:
    backlog = [sess("short", SHORT), sess("L", LONG)]  # 3750 blocks
    tight = dict(kv=0.5, free=3000 + 375, total=3750)  # budget 3000 blocks: the long one does not fit
    assert ids(mars(rps=1.0).admit(backlog, sig(**tight), 2.0)) == ["short"]
    assert ids(mars(rps=1.0).admit(backlog, sig(**KV_OVERLOADED), 2.0)) == ["short"]
    assert ids(mars(rps=1.0).admit(backlog, sig(engine=False), 2.0)) == ["short"]  # nothing to reserve against
    ctl = mars(rps=1.0)
    roomy = dict(kv=0.1, free=3750 + 40 + 400, total=4000)  # budget 3790: the long one, then 2 blocks left
    assert ids(ctl.admit([sess("L", LONG), sess("s", 1000), sess("s2", 16)], sig(**roomy), 2.0)) == ["L", "s2"]


def test_the_long_lane_is_closed_in_tail_mode_where_packing_takes_over() -> None:
    ctl = mars()
    ctl.on_arrivals_done(0.0)
    longs = [sess(f"L{i}", LONG) for i in range(6)]
    assert len(ctl.admit(longs, sig(**TAIL_KV), 0.0)) == 5 and ctl.lane_running == 0


def test_the_long_lane_ends_the_long_sessions_tail_on_the_sim_testbed() -> None:
    """Scripted: a steady stream of short sessions whose tool calls keep the one tool core busy (so a short
    session always waits past the gate's threshold) and two long ones that arrive once short ones queue. Without the lane
    both long sessions are held until the last short arrival and run after it; with it they finish while
    short sessions still arrive, and the run's span is shorter."""
    def short(i: int) -> Session:
        first = Turn(new_tokens=800, output_tokens=10, tool=ToolCall(name="pytest", cpu_seconds=1.5))
        return Session(id=f"s{i}", arrival_s=0.5 * i, turns=(first, Turn(new_tokens=50, output_tokens=5)))

    def long(i: int, t: float) -> Session:
        return Session(id=f"L{i}", arrival_s=t, turns=(Turn(new_tokens=LONG, output_tokens=20),))

    sessions = sorted([short(i) for i in range(40)] + [long(0, 5.25), long(1, 6.25)], key=lambda x: x.arrival_s)
    setup = build_setup(RunConfig(tool_cores=1, engine_args=EngineSettings(num_gpu_blocks=6000, block_size=16)))
    finish = {}
    for lane in (0, 1):
        ctl = MarsAdmission(MarsAdmissionSettings(long_lane=lane), tool_cores=1, rps=2.0)
        out = simulate(sessions, Policy(), setup, ctl, sink=_Events()).sessions.set_index("session_id")
        assert out["finish_s"].notna().all()
        finish[lane] = out["finish_s"]
    last_arrival = max(x.arrival_s for x in sessions)
    assert (finish[0][["L0", "L1"]] > last_arrival).all()  # the gate held them to the tail
    assert (finish[1][["L0", "L1"]] < last_arrival).all()  # the lane ran them during arrivals
    assert finish[1].max() < finish[0].max()


# ----------------------------------------------------------------------------------- KV signal missing
def test_without_the_kv_signal_kv_counts_as_healthy_and_cpu_rules_still_apply() -> None:
    ctl = mars(window_init=10)
    ctl.admit([], sig(**KV_OVERLOADED), 0.0)
    assert ctl.kv_overloaded and ctl.window == 7
    backlog = [sess("huge", 10_000_000), sess("L1", LONG), sess("L2", LONG), sess("L3", LONG)]
    chosen = ctl.admit(backlog, sig(engine=False), 0.2)
    state = ctl.state()
    assert not ctl.kv_overloaded and ctl.window == 8  # grows on the CPU rule alone
    assert (state["kv_cap"], state["budget_blocks"], state["kv_usage"]) == (30, None, None)
    assert ids(chosen) == ["huge", "L1"]  # no block budget; still at most two long sessions
    ctl.admit([], sig(engine=False, **CPU_OVERLOADED), 0.4)
    assert ctl.cpu_overloaded and ctl.window == 5


def test_without_the_kv_signal_tail_mode_is_off() -> None:
    ctl = mars()
    ctl.on_arrivals_done(0.0)
    longs = [sess(f"L{i}", LONG) for i in range(4)]
    assert len(ctl.admit(longs, sig(engine=False), 0.0)) == 2 and not ctl.state()["tail_mode"]


# ----------------------------------------------------------------------------------- property
@st.composite
def signals_st(draw: st.DrawFn) -> Signals:
    total = draw(st.integers(1, 5000))
    return sig(kv=draw(st.floats(0, 1)), free=draw(st.integers(0, total)), total=total,
               block=draw(st.sampled_from([1, 16, 256])), inflight=draw(st.integers(0, 64)),
               workers=draw(st.integers(1, 16)), wait=draw(st.floats(0, 10)), engine=draw(st.booleans()))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_admission_respects_its_limit_and_window_range_for_any_signals(data: st.DataObject) -> None:
    """active + admitted <= active_limit whenever anyone is admitted, the long lane's sessions (at most
    long_lane) apart. The no-deadlock rule is no exception: it admits one session when nothing is active,
    and active_limit >= window_min >= 1."""
    window_min = data.draw(st.integers(1, 5))
    pool = data.draw(st.integers(window_min, 12))
    s = MarsAdmissionSettings(pool_size=pool, window_min=window_min, window_init=data.draw(st.integers(window_min, pool)),
                              max_long_running=data.draw(st.integers(0, 3)), long_lane=data.draw(st.integers(0, 2)))
    ctl = MarsAdmission(s, rps=data.draw(st.none() | st.floats(0.01, 10)))
    backlog: list[Session] = []
    active: list[Session] = []
    now, made = 0.0, 0
    for _ in range(data.draw(st.integers(1, 25))):
        now += data.draw(st.floats(0, 1))
        for _ in range(data.draw(st.integers(0, 3))):
            made += 1
            backlog.append(sess(f"s{made}", data.draw(st.integers(1, 120_000)), arrival=now))
            ctl.on_arrival(backlog[-1], now)
        if not ctl.arrivals_done and data.draw(st.booleans()):
            ctl.on_arrivals_done(now)
        for done in data.draw(st.lists(st.sampled_from(active), unique=True)) if active else []:
            active.remove(done)
            ctl.on_session_end(done, now)
        before, lane_before = ctl.active, ctl.lane_running
        chosen = ctl.admit(list(backlog), data.draw(signals_st()), now)
        state = ctl.state()
        assert len(set(ids(chosen))) == len(chosen) and set(ids(chosen)) <= set(ids(backlog))
        lane = int(state["lane_admitted"])  # the long lane's session takes no slot
        assert ctl.lane_running == lane_before + lane <= s.long_lane
        if chosen:
            assert (before - lane_before) + (len(chosen) - lane) <= state["active_limit"]
        if state["no_deadlock"]:
            assert before == 0 and ctl.arrivals_done and ids(chosen) == [backlog[0].id]
        assert s.window_min <= ctl.window <= s.pool_size
        backlog = [x for x in backlog if x not in chosen]
        active += chosen
        assert ctl.active == len(active)


# ----------------------------------------------------------------------------------- on the sim testbed
class _Events:
    """A results sink that keeps the admission events."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def event(self, kind: str, t: float, **fields: object) -> None:
        if kind == "admission":
            self.states.append(fields)

    def call(self, t: float, row: dict) -> None:
        pass

    def session(self, t: float, row: dict) -> None:
        pass


def test_on_the_sim_testbed_every_session_finishes_within_the_limit() -> None:
    """Two tool cores and a small KV cache: the CPU cap binds, and a 49k-token first turn (over the
    budget even of an empty engine, but within its KV) gets in through the no-deadlock rule at the end."""
    def agent(i: int, tokens: int) -> Session:
        first = Turn(new_tokens=tokens, output_tokens=20, tool=ToolCall(name="pytest", cpu_seconds=2.0))
        return Session(id=f"s{i}", arrival_s=0.3 * i, turns=(first, Turn(new_tokens=100, output_tokens=10)))

    setup = build_setup(RunConfig(tool_cores=2, engine_args=EngineSettings(num_gpu_blocks=3300, block_size=16)))
    sessions = [agent(0, 49_000)] + [agent(i, 1000 + 100 * i) for i in range(1, 30)]
    ctl, events = MarsAdmission(tool_cores=2), _Events()
    outcome = simulate(sessions, Policy(), setup, ctl, sink=events)
    assert outcome.sessions["finish_s"].notna().all() and ctl.active == 0
    assert all(e["active"] <= e["active_limit"] for e in events.states if e["admitted"])
    assert max(e["active"] for e in events.states) == 5 == cpu_cap(2, DEFAULTS)
    assert any(e["no_deadlock"] for e in events.states)
