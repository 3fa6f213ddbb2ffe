"""CONCUR (baselines/concur.py): the AIMD window on KV-cache signals, hand-driven; whole sessions in arrival
order; no deadlock; settings through the run config; simulated runs that complete every session."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from baselines.concur import ConcurAdmission, ConcurSettings
from harness.backends import BACKENDS, get_backend
from harness.config import RunConfig
from harness.experiment import run_experiment
from harness.policy.admission import AdmissionController
from harness.policy.signals import EngineSignals, Signals, ToolSignals
from workloads.model import Session, Turn


class Engine:
    """Cumulative engine counters, advanced by hand between control steps."""

    def __init__(self) -> None:
        self.preemptions = 0
        self.queries = 0
        self.hits = 0
        self.t = 0.0

    def step(self, kv: float = 0.5, preempt: int = 0, queried: int = 0, hit: int = 0,
             tools_inflight: int = 0, tool_wait: float = 0.0, now: float = 0.0) -> Signals:
        self.preemptions += preempt
        self.queries += queried
        self.hits += hit
        eng = EngineSignals(kv_usage=kv, free_blocks=int(10_000 * (1 - kv)), total_blocks=10_000, block_size=16,
                            running=0, waiting=0, preemptions=self.preemptions, prefix_query_tokens=self.queries,
                            prefix_hit_tokens=self.hits)
        return Signals(time_s=now, engine=eng, engine_age_s=0.0,
                       tools=ToolSignals(workers=8, inflight=tools_inflight, ema_wait_s=tool_wait))


def sess(sid: str, arrival: float = 0.0, tokens: int = 1000) -> Session:
    return Session(id=sid, arrival_s=arrival, turns=(Turn(new_tokens=tokens, output_tokens=1),))


def backlog(n: int, start: int = 0) -> list[Session]:
    return [sess(f"s{k}", arrival=float(k)) for k in range(start, start + n)]


def ids(sessions: Sequence[Session]) -> list[str]:
    return [s.id for s in sessions]


_BUSY = itertools.count()


def busy(ctl: ConcurAdmission) -> None:
    """Make the window bind: admit up to the window from a long backlog (so growth is allowed)."""
    while ctl.active < ctl.window:
        ctl._active.add(f"busy{next(_BUSY)}")  # noqa: SLF001


def control(ctl: ConcurAdmission, engine: Engine, steps: int, **step: object) -> list[int]:
    """The window after each of `steps` control intervals with the window binding and the given readings."""
    out = []
    for _ in range(steps):
        busy(ctl)
        engine.t += ctl.settings.control_interval_s
        ctl.admit([], engine.step(now=engine.t, **step), engine.t)  # type: ignore[arg-type]
        out.append(ctl.window)
    return out


def test_is_an_admission_controller_with_settings_defaults() -> None:
    ctl: AdmissionController = ConcurAdmission()
    assert ctl.name == "concur" and ctl.interval_s == 1.0
    s = ConcurSettings()
    assert (s.window_init, s.window_min, s.window_max, s.window_inc, s.window_dec) == (8, 1, 64, 1, 0.5)
    for bad in ({"window_min": 9}, {"kv_low": 0.95}, {"window_dec": 1.0}, {"nope": 1}):
        with pytest.raises(ValidationError):
            ConcurSettings(**bad)


def test_window_grows_additively_while_kv_is_healthy() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=4, window_inc=2)), Engine()
    assert control(ctl, engine, 5, kv=0.5, queried=10_000, hit=9_000) == [6, 8, 10, 12, 14]
    assert ctl.reason == "grow" and not ctl.congested


def test_window_is_capped_at_window_max() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=6, window_max=8)), Engine()
    assert control(ctl, engine, 4) == [7, 8, 8, 8]


@pytest.mark.parametrize("cause,reading", [
    ("kv_usage", {"kv": 0.95}),
    ("preemptions", {"preempt": 1}),
    ("hit_rate", {"queried": 10_000, "hit": 4_000}),
])
def test_window_shrinks_multiplicatively_on_each_congestion_signal(cause: str, reading: dict) -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=40)), Engine()
    control(ctl, engine, 1)  # first reading: the counters' baseline (grows to 41)
    assert control(ctl, engine, 3, **reading) == [20, 10, 5]
    assert ctl.congested and ctl.reason == cause
    assert control(ctl, engine, 5, preempt=1) == [2, 1, 1, 1, 1]  # never below window_min
    assert control(ctl, engine, 2) == [2, 3]  # and grows back additively once healthy


def test_between_kv_low_and_kv_high_the_window_holds() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=10)), Engine()
    assert control(ctl, engine, 3, kv=0.9) == [10, 10, 10]
    assert ctl.reason == "hold"


def test_hit_rate_is_judged_only_over_enough_queried_tokens_and_per_interval() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=10, hit_min_query_tokens=4096)), Engine()
    control(ctl, engine, 1, queried=100_000, hit=0)  # before any baseline: no interval rate yet
    assert control(ctl, engine, 1, queried=1_000, hit=0) == [12]  # too few tokens to judge: healthy
    assert control(ctl, engine, 1, queried=10_000, hit=9_000) == [13]  # this interval's rate (0.9), not the total
    assert control(ctl, engine, 1, queried=10_000, hit=1_000) == [6]


def test_tool_pool_pressure_does_not_move_the_window() -> None:
    """CONCUR reads KV-cache signals only; MARS's admission would shrink on this CPU backlog."""
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=10)), Engine()
    assert control(ctl, engine, 3, tools_inflight=64, tool_wait=30.0) == [11, 12, 13]


def test_window_does_not_grow_while_it_does_not_bind() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=10)), Engine()
    for k in range(3):
        ctl.admit(backlog(3, start=3 * k), engine.step(now=float(k)), float(k))
    assert ctl.window == 10 and ctl.reason == "idle" and ctl.active == 9


def test_slow_start_doubles_until_the_first_congestion() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=2, slow_start=True)), Engine()
    assert control(ctl, engine, 4) == [4, 8, 16, 32]
    assert control(ctl, engine, 1, preempt=1) == [16]
    assert ctl.ssthresh == 16
    assert control(ctl, engine, 2) == [17, 18]  # congestion avoidance after it


def test_missing_kv_signal_counts_as_healthy() -> None:
    ctl = ConcurAdmission(ConcurSettings(window_init=3))
    no_kv = Signals(time_s=0.0, engine=None, engine_age_s=None, tools=ToolSignals(workers=8, inflight=0, ema_wait_s=0))
    busy(ctl)
    ctl.admit([], no_kv, 0.0)
    assert ctl.window == 4 and not ctl.congested


def test_admits_whole_sessions_in_arrival_order_up_to_the_window() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=3, control_interval_s=100)), Engine()
    queue = [sess("late", arrival=5.0, tokens=100), sess("big", arrival=1.0, tokens=90_000), sess("c", arrival=2.0)]
    queue = sorted(queue, key=lambda s: s.arrival_s) + [sess("d", arrival=9.0, tokens=10)]
    first = ctl.admit(queue, engine.step(), 0.0)
    assert ids(first) == ["big", "c", "late"]  # arrival order, whatever their size: no reordering, no budget
    assert ctl.admit(queue[3:], engine.step(), 1.0) == []  # window full: the rest waits
    ctl.on_session_end(first[1], 2.0)
    assert ids(ctl.admit(queue[3:], engine.step(), 2.0)) == ["d"]  # a slot frees, the next in line goes
    assert ctl.active == 3


def test_never_deadlocks_one_session_starts_when_none_is_active() -> None:
    ctl, engine = ConcurAdmission(ConcurSettings(window_init=1, window_min=1)), Engine()
    for k in range(10):  # congestion on every reading
        ctl.admit([], engine.step(kv=1.0, preempt=5, now=float(k)), float(k))
    assert ctl.window == 1
    queue = backlog(3)
    assert ids(ctl.admit(queue, engine.step(kv=1.0, preempt=5, now=10.0), 10.0)) == ["s0"]
    ctl.window = 0  # even a window forced to 0 leaves the invariant
    ctl.on_session_end(queue[0], 11.0)
    assert ids(ctl.admit(queue[1:], engine.step(kv=1.0, now=11.0), 11.0)) == ["s1"]


def test_registered_on_every_engine_with_kv_signals_and_settings_reach_it_via_run_config() -> None:
    backend = get_backend("concur", "http")
    assert set(backend.engines) == {"sim", "vllm", "http", "sglang"}
    assert backend.settings is not None and backend.settings[0] == "concur"
    cfg = RunConfig(backend="concur", concur={"window_init": 5, "window_dec": 0.25, "slow_start": True})
    ctl = backend.make_admission(cfg)
    assert isinstance(ctl, ConcurAdmission)
    assert ctl.window == 5 and ctl.settings.window_dec == 0.25 and ctl.settings.slow_start
    assert type(backend.make_policy(cfg)).__name__ == "FcfsPolicy"  # an unmodified vLLM-FCFS engine policy
    assert "concur" in BACKENDS
    with pytest.raises(ValidationError):
        RunConfig(backend="concur", concur={"window_int": 5})


@pytest.mark.parametrize("workload,extra", [("swe-smoke", {}), ("paper", {"sessions": 24, "rps": 0.2})])
def test_simulated_run_completes_every_session(tmp_path, workload: str, extra: dict) -> None:
    config = RunConfig(backend="concur", workload=workload, seed=3, **extra)
    result = run_experiment(config, tmp_path)
    assert result.summary.num_sessions > 0
    assert result.summary.completed_sessions == result.summary.num_sessions


def test_a_tight_window_throttles_admission_in_a_simulated_run(tmp_path) -> None:
    """With the window pinned at 1 (min = init = max) sessions queue in the backlog: the controller is live."""
    loose = run_experiment(RunConfig(backend="concur", workload="swe-smoke", seed=3), tmp_path / "a").summary
    tight = run_experiment(RunConfig(backend="concur", workload="swe-smoke", seed=3,
                                     concur={"window_init": 1, "window_min": 1, "window_max": 1}), tmp_path / "b").summary
    assert tight.completed_sessions == tight.num_sessions
    assert tight.mean_jct_s > loose.mean_jct_s
