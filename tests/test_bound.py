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
from harness.bound import (
    Piece,
    busy_time_jcts,
    call_floors,
    floor_jcts,
    floor_setup,
    gpu_pieces,
    lp_mean_busy_times,
    pool_jcts,
    session_floors,
    sum_relaxations,
    tool_core_seconds,
    tool_pieces,
    tool_seconds,
    warm_prefix,
)
from harness.config import RunConfig
from harness.engines.sim.cost_model import GpuLowerBounds, StepShape, step_time
from harness.engines.sim.testbed import build_profile, build_setup
from harness.errors import BadInput
from harness.experiment import run_experiment
from harness.metrics import summarize
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS, empty_frame
from harness.tools import ToolPool
from workloads.model import Session, ToolCall, Turn, save_sessions
from workloads.source import WorkloadRequest, resolve


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


def test_every_session_of_a_prefix_group_finds_the_prefix_cached_in_its_floor() -> None:
    # even the first to arrive: admission may hold it back while a later one computes the prefix
    sessions = [session("late", 5.0, [], "p"), session("early", 1.0, [], "p"), session("solo", 0.0, [], "q"),
                session("none", 0.0, [])]
    assert warm_prefix(sessions) == {"late", "early", "solo"}
    setup = build_setup(RunConfig(backend="vllm", workload="swe-smoke"))
    floors = call_floors(sessions, setup)
    assert floors["late"] == floors["early"]  # the same content, both warm
    # a warm first call skips the shared prefix's prefill; later calls are the same
    cold = session_floors(sessions[1], False, floor_setup(setup))
    assert floors["early"][0] < cold[0] and floors["early"][1:] == cold[1:]


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


# ---------------------------------------------------------------- mean-busy-time relaxations (tool pool, GPU)

def test_the_lp_schedule_runs_the_job_with_least_total_work_first_worked_by_hand() -> None:
    # a (4 s) and b (2 s) released at 0: b runs [0, 2] (mean 1), a [2, 6] (mean 4)
    assert lp_mean_busy_times([[Piece(0.0, 4.0, 0.0)], [Piece(0.0, 2.0, 0.0)]]) == [4.0, 1.0]
    # b (1 s) released at 1 preempts a: a [0, 1] + [2, 5] -> (0.5 x 1 + 3.5 x 3) / 4 = 2.75; b [1, 2] -> 1.5
    assert lp_mean_busy_times([[Piece(0.0, 4.0, 0.0)], [Piece(1.0, 1.0, 0.0)]]) == [2.75, 1.5]
    # a job's priority is its TOTAL work: a's second piece (released at 3) does not preempt b (3 s < 4 s)
    a = [Piece(0.0, 1.0, 0.0), Piece(3.0, 3.0, 0.0)]
    assert lp_mean_busy_times([a, [Piece(2.0, 3.0, 0.0)]]) == [(0.5 * 1 + 6.5 * 3) / 4, 3.5]


def test_the_tool_busy_time_bound_of_two_sessions_on_one_core_worked_by_hand() -> None:
    # the sessions of the first example: tools 4 s (a) and 2 s (b), calls of 1 s. Pieces: a's 4 s released at
    # 1, tail 1 (last call) + 4 / 2; b's 2 s at 1, tail 1 + 2 / 2. LP: b [1, 3] (mean 2), a [3, 7] (mean 5)
    sessions = [session("a", 0.0, [(4.0, 1)]), session("b", 0.0, [(2.0, 1)])]
    floors = {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    assert tool_pieces(sessions[0], floors["a"], workers=1) == [Piece(1.0, 4.0, 3.0)]
    terms = busy_time_jcts(sessions, {s.id: tool_pieces(s, floors[s.id], 1) for s in sessions},
                           floor_jcts(sessions, floors, 1))
    assert terms == {"a": 5.0 + 3.0, "b": 2.0 + 2.0}  # sum 12: the best schedule (b's tool first) reaches it
    # one 1-core tool of 4 s on 2 cores: the pool relaxation runs it at 2 cores' speed (JCT 4); the busy-time
    # bound knows it cannot run faster than alone: work 2 s at [1, 3] (mean 2) + tail 1 + 4 / 2 -> 5
    one = [session("c", 0.0, [(4.0, 1)])]
    assert pool_jcts(one, {"c": [1.0, 1.0]}, capacity=2) == {"c": 4.0}
    assert busy_time_jcts(one, {"c": tool_pieces(one[0], [1.0, 1.0], 2)}, {"c": 6.0}) == {"c": 5.0}


def test_the_gpu_pieces_of_one_call_worked_by_hand() -> None:
    # one call: 3 new tokens (positions 0-2, computed), 3 output tokens (decodes at positions 3 and 4)
    one = Session(id="x", arrival_s=2.0, turns=(Turn(new_tokens=3, output_tokens=3),))
    bounds = GpuLowerBounds(token_s=1.0, pair_s=0.5, kv_token_s=1.0, resident_token_s=0.5, step_s=1.0)
    # compute: prefill 3 x 1 + 0.5 x (1 + 2 + 3) = 6; decodes 1 + 0.5 x 4 = 3 and 1 + 0.5 x 5 = 3.5. Their
    # distances from the call's end: prefill 2.5 least steps, decodes 1.5 and 0.5 -> tail 21.25 / 12.5
    assert gpu_pieces(one, [9.0], 1, bounds, kv_tokens_held=False) == [Piece(2.0, 12.5, 21.25 / 12.5)]
    # memory: prefill reads and holds the prompt, 3 x 1 + 3 x 0.5; decode at p: (1 + 0.5) (p + 1) -> 6, 7.5
    assert gpu_pieces(one, [9.0], 1, bounds, kv_tokens_held=True) == [Piece(2.0, 18.0, 24.0 / 18.0)]
    # a second turn starts after the first call's floor and its tool; the first call's tail adds both
    two = Session(id="y", arrival_s=0.0, turns=(Turn(new_tokens=3, output_tokens=1, tool=ToolCall(name="t", cpu_seconds=4.0)),
                                                Turn(new_tokens=2, output_tokens=1)))
    first, second = gpu_pieces(two, [1.0, 2.0], 1, bounds, kv_tokens_held=False)
    assert first == Piece(0.0, 6.0, 4.0 + 2.0 + 0.5)  # tool alone + the last call's floor + half a step
    # the second call computes at least its 2 new tokens, at positions 4 and 5 (the 4 before: cached at best)
    assert second == Piece(5.0, 2.0 + 0.5 * (5 + 6), 0.5)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["h100", "h200", "a100-80g", "l40s"]),
       st.sampled_from([("qwen3-coder-30b-a3b", 1), ("llama-3.1-8b", 1), ("llama-3.1-70b", 4)]),
       st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 60000)), min_size=1, max_size=40))
def test_no_step_is_cheaper_than_its_least_costs(gpu: str, model: tuple[str, int], chunks: list) -> None:
    try:
        setup = build_setup(RunConfig(backend="vllm", workload="swe-smoke", gpu=gpu, model=model[0], tp=model[1]))
    except BadInput:  # the model does not fit that GPU
        return
    profile = build_profile(RunConfig(backend="vllm", workload="swe-smoke", gpu=gpu, model=model[0], tp=model[1]))
    b = setup.gpu_bounds
    assert b is not None and b == GpuLowerBounds.of(profile)
    held = setup.num_blocks * setup.block_size
    while sum(n + c for n, c in chunks) > held:  # what a step holds fits the KV cache
        chunks = chunks[:-1] if len(chunks) > 1 else [(1, 0)]
    took = step_time(profile, StepShape.from_chunks(chunks))
    compute = sum(b.token_s * n + b.pair_s * (n * (c + 1) + n * (n - 1) / 2) for n, c in chunks)
    memory = sum(b.kv_token_s * (c + n) + b.resident_token_s * (c + n) for n, c in chunks)
    assert took >= compute * (1 - 1e-9)
    assert took >= memory * (1 - 1e-9)
    assert took >= b.step_s * (1 - 1e-9)


def list_schedule_jcts(sessions: list[Session], floors: dict[str, list[float]], cores: int, key) -> dict[str, float]:
    """Another schedule a backend could run: every call at its floor, the tool pool non-preemptive, starting
    whenever cores are free the waiting call with the least key(session, turn) that fits (backfilling)."""
    by_id = {s.id: s for s in sessions}
    turn = {s.id: 0 for s in sessions}
    events = [(s.arrival_s + floors[s.id][0], 0, s.id) for s in sessions]  # (time, kind 0 call end / 1 tool end, id)
    heapq.heapify(events)
    free, waiting, jct = cores, [], {}
    while events:
        t, kind, sid = heapq.heappop(events)
        s = by_id[sid]
        if kind == 1:
            free += min(s.turns[turn[sid]].tool.cores, cores)
            turn[sid] += 1
            heapq.heappush(events, (t + floors[sid][turn[sid]], 0, sid))
        elif s.turns[turn[sid]].tool is None:
            jct[sid] = t - s.arrival_s
        else:
            waiting.append(sid)
        waiting.sort(key=lambda i: key(by_id[i], turn[i]))
        for i in list(waiting):
            tool = by_id[i].turns[turn[i]].tool
            if min(tool.cores, cores) <= free:
                free -= min(tool.cores, cores)
                waiting.remove(i)
                heapq.heappush(events, (t + tool_seconds(tool, cores), 1, i))
    return jct


def remaining_tool_work(s: Session, k: int) -> float:
    return sum(tool_core_seconds(t) for t in s.turns[k:])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 20), st.lists(st.tuples(st.floats(0, 10), st.integers(1, 3)), max_size=4),
                          st.floats(0.01, 3)), min_size=1, max_size=8),
       st.integers(1, 4))
def test_no_list_schedule_beats_the_tool_busy_time_bound(spec: list, cores: int) -> None:
    sessions = [session(f"s{i}", arrival, tools) for i, (arrival, tools, _) in enumerate(spec)]
    floors = {f"s{i}": [llm] * (len(tools) + 1) for i, (_, tools, llm) in enumerate(spec)}
    floor = floor_jcts(sessions, floors, cores)
    busy = busy_time_jcts(sessions, {s.id: tool_pieces(s, floors[s.id], cores) for s in sessions}, floor)
    for key in (lambda s, k: remaining_tool_work(s, k), lambda s, k: -remaining_tool_work(s, k),
                lambda s, k: s.arrival_s, lambda s, k: tool_seconds(s.turns[k].tool, cores)):
        assert sum(busy.values()) <= sum(list_schedule_jcts(sessions, floors, cores, key).values()) + 1e-6
    assert sum(busy.values()) <= sum(fifo_jcts(sessions, floors, ToolPool(cores)).values()) + 1e-6


def gpu_bound_workload(path, n: int = 16) -> None:
    """Sessions that load the GPU more than the tool pool: long contexts, long outputs, short tools, all at once."""
    sessions = [Session(id=f"g{i}", arrival_s=0.2 * i, prefix_id="sys", prefix_tokens=512,
                        turns=(Turn(new_tokens=6000 + 500 * (i % 5), output_tokens=300,
                                    tool=ToolCall(name="t", cpu_seconds=0.2)),
                               Turn(new_tokens=800, output_tokens=200 + 40 * (i % 3))))
                for i in range(n)]
    save_sessions(sessions, path)


@pytest.mark.parametrize("workload,cores,rps,blocks", [
    ("swe-smoke", 1, 8.0, None),  # the tool pool saturated: the busy-time bound binds
    ("swe-smoke", 4, 16.0, 1000),  # everything at once on a small KV cache (the longest session: 712 blocks)
    ("gpu", 8, None, 1200),  # GPU-bound: long contexts on a small KV cache
])
def test_no_backend_beats_any_relaxation(tmp_path, workload: str, cores: int, rps: float | None, blocks) -> None:
    if workload == "gpu":
        workload = str(tmp_path / "gpu.jsonl")
        gpu_bound_workload(workload)
    engine_args = {"num_gpu_blocks": blocks} if blocks else {}
    config = RunConfig(backend="vllm", workload=workload, seed=3, tool_cores=cores, rps=rps, engine_args=engine_args)
    _, sessions = resolve(WorkloadRequest(source=config.workload, sessions=None, rps=rps, arrival=None, cv=None,
                                          burstiness=None, seed=3, sets=(), force=False))
    setup = build_setup(config)
    floors = call_floors(sessions, setup)
    relaxations = sum_relaxations(sessions, floors, floor_jcts(sessions, floors, cores), cores, setup.gpu_bounds)
    assert set(relaxations) == {"pool", "tool busy time", "gpu compute", "gpu memory"}
    means = {name: sum(terms.values()) / len(sessions) for name, terms in relaxations.items()}
    floor = sum(floor_jcts(sessions, floors, cores).values()) / len(sessions)
    for backend in BACKENDS:
        summary = run_experiment(config.model_copy(update={"backend": backend}), tmp_path).summary
        assert summary.completed_sessions == summary.num_sessions, backend
        for name, bound in means.items():
            assert summary.mean_jct_s >= bound * (1 - 1e-9), (backend, name, summary.mean_jct_s, bound)
        assert summary.bound_mean_jct_s == pytest.approx(max(floor, *means.values()))


@settings(max_examples=4, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(500, 6000), st.integers(1, 200),
                          st.lists(st.tuples(st.floats(0.05, 4), st.integers(1, 3), st.integers(0, 2000)), max_size=3)),
                min_size=3, max_size=10),
       st.integers(1, 4), st.integers(800, 3000))
def test_no_backend_beats_the_bound_on_random_workloads(tmp_path_factory, spec: list, cores: int, blocks: int) -> None:
    sessions = []
    for i, (arrival, first, out, tools) in enumerate(spec):
        turns = [Turn(new_tokens=first if k == 0 else new, output_tokens=out, tool=ToolCall(name="t", cpu_seconds=s, cores=c))
                 for k, (s, c, new) in enumerate(tools)]
        turns.append(Turn(new_tokens=100, output_tokens=out))
        if not tools:
            turns = [Turn(new_tokens=first, output_tokens=out)]
        sessions.append(Session(id=f"r{i}", arrival_s=arrival, turns=tuple(turns), prefix_id="sys", prefix_tokens=256))
    tmp = tmp_path_factory.mktemp("random")
    save_sessions(sessions, tmp / "w.jsonl")
    config = RunConfig(backend="vllm", workload=str(tmp / "w.jsonl"), tool_cores=cores,
                       engine_args={"num_gpu_blocks": blocks})
    for backend in BACKENDS:
        summary = run_experiment(config.model_copy(update={"backend": backend}), tmp).summary
        if summary.completed_sessions < summary.num_sessions:
            continue  # a context past the cache: no whole-run bound
        assert summary.mean_jct_s >= summary.bound_mean_jct_s * (1 - 1e-9), backend
