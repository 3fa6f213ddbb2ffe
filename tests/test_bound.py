"""The physical bound (harness.bound): hand-checked on workloads small enough to work out, never beaten by
any backend on many small ones, and a valid relaxation of the tool pool on random ones (hypothesis)."""

from __future__ import annotations

import heapq
import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.backends import BACKENDS
from harness.bound import call_floors, floor_jcts, pool_jcts, tool_seconds, warm_prefix
from harness.config import RunConfig
from harness.engines.sim.testbed import build_setup
from harness.experiment import run_experiment
from harness.metrics import summarize
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS, empty_frame
from harness.tools import ToolPool
from workloads.model import Session, ToolCall, Turn


def session(sid: str, arrival: float, tools: list[tuple[float, int]], prefix: str | None = None) -> Session:
    turns = [Turn(new_tokens=64, output_tokens=8, tool=ToolCall(name="t", cpu_seconds=s, cores=c)) for s, c in tools]
    turns.append(Turn(new_tokens=64, output_tokens=8))
    return Session(id=sid, arrival_s=arrival, turns=tuple(turns), prefix_id=prefix, prefix_tokens=256 if prefix else 0)


def fifo_jcts(sessions: list[Session], floors: dict[str, list[float]], pool: ToolPool) -> dict[str, float]:
    """A schedule a backend could run: every call at its floor, tool calls through `pool` (FIFO in queue
    mode) - an upper reference for the relaxations, which must never exceed it."""
    turn = {s.id: 0 for s in sessions}
    by_id = {s.id: s for s in sessions}
    calls = [(s.arrival_s + floors[s.id][0], i, s.id) for i, s in enumerate(sessions)]
    heapq.heapify(calls)
    order = {s.id: i for i, s in enumerate(sessions)}
    jct: dict[str, float] = {}
    while calls or pool.inflight:
        t_tool = pool.next_event_time()
        if t_tool is not None and (not calls or t_tool <= calls[0][0]):
            for done in pool.advance(t_tool):
                turn[done.job_id] += 1
                heapq.heappush(calls, (done.finished_s + floors[done.job_id][turn[done.job_id]], order[done.job_id],
                                       done.job_id))
            continue
        t, _, sid = heapq.heappop(calls)
        tool = by_id[sid].turns[turn[sid]].tool
        if tool is None:
            jct[sid] = t - by_id[sid].arrival_s
        else:
            pool.advance(t)
            pool.submit(sid, tool.cpu_seconds, tool.cores, t)
    return jct


def test_the_bound_of_two_sessions_on_one_core_worked_by_hand() -> None:
    # both arrive at 0, first calls end at 1; tools 4 s (a) and 2 s (b) on one core; last calls take 1 s
    sessions = [session("a", 0.0, [(4.0, 1)]), session("b", 0.0, [(2.0, 1)])]
    floors = {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    # nothing shared: a = 1 + 4 + 1, b = 1 + 2 + 1
    assert floor_jcts(sessions, floors, workers=1) == {"a": 6.0, "b": 4.0}
    # the pool relaxation runs b's 2 s first (shortest work): b ends 3 + 1, a 7 + 1 -> mean 6 > floor mean 5
    assert pool_jcts(sessions, floors, capacity=1) == {"a": 8.0, "b": 4.0}
    # FIFO (a first) gives a 6, b 1 + 4 wait + 2 + 1 = 8: mean 7, above the bound of 6
    assert fifo_jcts(sessions, floors, ToolPool(1)) == {"a": 6.0, "b": 8.0}


def test_the_pool_relaxation_preempts_for_shorter_work_released_later() -> None:
    # a's 10 s of work is released at 1, b's 2 s at 3: b preempts a and ends at 5, a at 13
    sessions = [session("a", 0.0, [(10.0, 1)]), session("b", 2.0, [(2.0, 1)])]
    floors = {"a": [1.0, 0.5], "b": [1.0, 0.5]}
    assert pool_jcts(sessions, floors, capacity=1) == {"a": 13.5, "b": 3.5}
    # two cores: the work of a 2-core call counts twice, the machine is twice as fast
    two = [session("a", 0.0, [(3.0, 2)])]
    assert pool_jcts(two, {"a": [1.0, 1.0]}, capacity=2) == {"a": 5.0}
    # a session without tool calls ends at its floor
    assert pool_jcts([session("c", 5.0, [])], {"c": [2.0]}, capacity=1) == {"c": 2.0}


def test_a_tool_call_wanting_more_cores_than_the_pool_runs_longer_alone() -> None:
    assert tool_seconds(ToolCall(name="t", cpu_seconds=3.0, cores=4), workers=2) == 6.0
    assert tool_seconds(ToolCall(name="t", cpu_seconds=3.0, cores=1), workers=2) == 3.0


def test_only_the_first_session_of_a_prefix_group_to_arrive_computes_the_prefix() -> None:
    sessions = [session("late", 5.0, [], "p"), session("early", 1.0, [], "p"), session("solo", 0.0, [], "q"),
                session("none", 0.0, [])]
    assert warm_prefix(sessions) == {"late"}
    setup = build_setup(RunConfig(backend="vllm", workload="swe-smoke"))
    floors = call_floors(sessions, setup)
    # the same content: the warm session's first call skips the shared prefix's prefill; later calls equal
    assert floors["late"][0] < floors["early"][0]
    assert floors["late"][1:] == floors["early"][1:]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 20), st.lists(st.tuples(st.floats(0, 10), st.integers(1, 3)), max_size=3),
                          st.floats(0.01, 3)), min_size=1, max_size=6),
       st.integers(1, 4))
def test_no_fifo_schedule_beats_the_relaxations(spec: list, cores: int) -> None:
    sessions = [session(f"s{i}", arrival, tools) for i, (arrival, tools, _) in enumerate(spec)]
    floors = {f"s{i}": [llm] * (len(tools) + 1) for i, (_, tools, llm) in enumerate(spec)}
    fifo = fifo_jcts(sessions, floors, ToolPool(cores))
    floor = floor_jcts(sessions, floors, cores)
    pool = pool_jcts(sessions, floors, cores)
    for s in sessions:
        assert floor[s.id] <= fifo[s.id] + 1e-9
    assert sum(pool.values()) <= sum(fifo.values()) + 1e-6


@pytest.mark.parametrize("seed,cores,rps", [(0, 1, 2.0), (1, 2, 4.0), (2, 8, 1.0)])
def test_no_backend_beats_the_bound(tmp_path, seed: int, cores: int, rps: float) -> None:
    for backend in BACKENDS:
        config = RunConfig(backend=backend, workload="swe-smoke", seed=seed, tool_cores=cores, rps=rps)
        summary = run_experiment(config, tmp_path).summary
        assert summary.completed_sessions == summary.num_sessions
        assert summary.bound_mean_jct_s is not None and summary.x_of_bound is not None
        assert summary.mean_jct_s >= summary.bound_mean_jct_s * (1 - 1e-9), backend
        assert summary.x_of_bound >= 1 - 1e-9


def test_the_summary_bound_holds_per_session_when_some_did_not_complete() -> None:
    rows = []
    for i, (finish, floor, pool) in enumerate([(10.0, 5.0, 20.0), (math.nan, 5.0, 1.0), (8.0, 4.0, 4.0)]):
        rows.append({"session_id": f"s{i}", "arrival_s": 0.0, "admitted_s": 0.0, "finish_s": finish,
                     "completed": not math.isnan(finish), "num_turns": 1, "turns_done": 1, "prompt_tokens": 1,
                     "output_tokens": 1, "llm_s": 1.0, "tool_s": 0.0, "tool_wait_s": 0.0, "isolated_jct_s": 5.0,
                     "floor_jct_s": floor, "pool_jct_s": pool})
    sessions = pd.DataFrame(rows, columns=list(SESSION_COLUMNS))
    calls = empty_frame(CALL_COLUMNS)
    partial = summarize(calls, sessions)
    assert partial.bound_mean_jct_s == 4.5 and partial.x_of_bound == 9.0 / 4.5  # floors of the completed two
    whole = summarize(calls, sessions.iloc[[0, 2]])
    assert whole.bound_mean_jct_s == 12.0  # max(mean floor 4.5, mean pool 12)
    old = summarize(calls, sessions.drop(columns=["floor_jct_s", "pool_jct_s"]))
    assert old.bound_mean_jct_s is None and old.x_of_bound is None


def test_a_floor_has_unlimited_kv() -> None:
    # a 300-block cache (4,800 tokens) cannot hold this session's ~9k-token context: its floor still exists,
    # and equals the floor on the full-size cache
    big = Session(id="big", arrival_s=0.0, turns=(Turn(new_tokens=6000, output_tokens=8, tool=ToolCall(name="t", cpu_seconds=1.0)),
                                                 Turn(new_tokens=3000, output_tokens=8)))
    small = build_setup(RunConfig(backend="vllm", workload="swe-smoke", engine_args={"num_gpu_blocks": 300}))
    full = build_setup(RunConfig(backend="vllm", workload="swe-smoke"))
    assert small.num_blocks == 300 < full.num_blocks
    assert call_floors([big], small)["big"] == call_floors([big], full)["big"]
