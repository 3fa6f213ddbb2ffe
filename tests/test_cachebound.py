"""The cache and capacity bounds (harness.cachebound): each on a workload small enough to work out by hand;
Bélády equal to an exhaustive search over every eviction choice on tiny random traces, never above the
infinite cache and never below LRU on the same order (hypothesis); and a simulated run's measured hits never
above the Bélády walk of its own call order."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cachebound import (Hits, belady_hits, call_blocks, capacity, ideal_hits, lru_hits, peak_token_rate,
                                walk)
from workloads.model import Session, ToolCall, Turn


def make(sid: str, arrival: float, turns: list[tuple[int, int]], prefix: str | None = None, prefix_tokens: int = 0,
         tool: tuple[float, int] | None = None) -> Session:
    """A session of (new tokens, output tokens) turns; every turn but the last calls `tool` (cpu s, cores)."""
    made = [Turn(new_tokens=n, output_tokens=o,
                 tool=None if tool is None or k == len(turns) - 1 else ToolCall(name="t", cpu_seconds=tool[0], cores=tool[1]))
            for k, (n, o) in enumerate(turns)]
    return Session(id=sid, arrival_s=arrival, turns=tuple(made), prefix_id=prefix, prefix_tokens=prefix_tokens)


# Two sessions sharing an 8-token prefix (2 blocks of 4). A0: prompt 12, can hit 11 // 4 = 2 blocks, leaves
# (12 + 4 - 1) // 4 = 3; A1: prompt 20, can hit 4, leaves 5; B0: prompt 10, can hit 2, leaves 3.
A = make("A", 0.0, [(4, 4), (4, 1)], prefix="sys", prefix_tokens=8)
B = make("B", 1.0, [(2, 3)], prefix="sys", prefix_tokens=8)


def test_calls_in_blocks_as_the_sim_caches_them():
    blocks = call_blocks([A, B], 4)
    assert [(c.session, c.prefix_blocks, c.readable, c.written, c.prompt_tokens) for c in blocks] == [
        ("A", 2, 2, 3, 12), ("A", 2, 4, 5, 20), ("B", 2, 2, 3, 10)]


def test_ideal_hit_rate_by_hand():
    # A0 hits nothing; A1 hits the prefix (2 blocks) and A0's own block (1): 12 tokens; B0 the prefix: 8
    assert ideal_hits([A, B], 4) == Hits(20, 42)
    assert ideal_hits([A, B], 4).rate == pytest.approx(20 / 42)


def test_belady_with_three_blocks_by_hand():
    # order A0, B0, A1 with room for 3 blocks: B0 hits the prefix (8) and must evict A's own block to hold
    # its own; A1 then hits the prefix only (8)
    order = [("A", 0), ("B", 0), ("A", 1)]
    assert belady_hits([A, B], 4, 3, order) == Hits(16, 42)
    assert walk(call_blocks([A, B], 4, order), 4, None) == Hits(20, 42)  # infinite: A1 keeps its own block too


def test_belady_beats_lru_on_a_cyclic_order():
    # three sessions of one 10-token block each, room for two, visited cyclically: LRU always evicts the
    # block needed next (0 hits); Bélády keeps one of the two it will need (3 hits of 10 tokens)
    sessions = [make(s, 0.0, [(10, 1), (0, 1), (0, 1)]) for s in "XYZ"]
    order = [(s, k) for k in range(3) for s in "XYZ"]
    assert lru_hits(sessions, 10, 2, order) == Hits(0, 99)
    assert belady_hits(sessions, 10, 2, order) == Hits(30, 99)
    assert ideal_hits(sessions, 10) == Hits(60, 99)


def test_a_call_outside_the_workload_is_refused():
    with pytest.raises(ValueError, match="not in the workload"):
        call_blocks([A], 4, [("A", 5)])


def test_capacity_by_hand():
    # 2 sessions, 3 calls: prompt 42 tokens, 20 hit at best, 8 output tokens -> 30 tokens each 15; a GPU of
    # 150 tokens/s sustains 10 sessions/s. Tools: A's first turn 3 s x 2 cores = 6 core-s, B none -> 3 a
    # session; 6 cores sustain 2 sessions/s, the bound; at 1 session/s the pool is offered 3 busy cores of 6.
    a = make("A", 0.0, [(4, 4), (4, 1)], prefix="sys", prefix_tokens=8, tool=(3.0, 2))
    cap = capacity([a, B], 4, token_rate=150.0, workers=6, offered_rps=1.0)
    assert cap.gpu_sessions_per_s == pytest.approx(10.0)
    assert cap.tool_sessions_per_s == pytest.approx(2.0)
    assert cap.sessions_per_s == pytest.approx(2.0)
    assert cap.offered_cores == pytest.approx(3.0) and cap.tool_load == pytest.approx(0.5)
    assert capacity([B], 4, 150.0, 6).tool_sessions_per_s == math.inf


def test_peak_token_rate_takes_the_cheapest_token():
    # 1 ms a step plus 1 us a token: the full 1000-token budget is the cheapest, 1000 / 2 ms
    assert peak_token_rate(lambda n: 1e-3 + 1e-6 * n, 1000) == pytest.approx(1000 / 2e-3)


# ----------------------------------------------------------------------------------- exhaustive search
def best_hits(sessions: list[Session], block_size: int, capacity_blocks: int, order: list[tuple[str, int]]) -> int:
    """The most hit tokens over EVERY eviction choice (block by block, any subset), hits counted as the sim
    does: the leading run of cached blocks of the call's context, the shared prefix's blocks first."""
    calls = call_blocks(sessions, block_size, order)

    def context(c):  # the call's blocks in context order
        return [("p", c.prefix, i) for i in range(c.prefix_blocks)] + \
               [("s", c.session, i) for i in range(c.prefix_blocks, c.written)]

    def search(i: int, cache: frozenset) -> int:
        if i == len(calls):
            return 0
        c = calls[i]
        blocks = context(c)
        hit = 0
        for block in blocks[:c.readable]:
            if block not in cache:
                break
            hit += 1
        need = set(blocks[:capacity_blocks])
        others = sorted(cache - need)
        room = capacity_blocks - len(need)
        best = -1
        for keep in itertools.combinations(others, min(room, len(others))):
            best = max(best, search(i + 1, frozenset(need | set(keep))))
        return hit * block_size + best

    return search(0, frozenset())


tiny_session = st.tuples(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3)), min_size=1, max_size=3),
                         st.booleans())


@st.composite
def traces(draw):
    specs = draw(st.lists(tiny_session, min_size=1, max_size=3))
    sessions = [make(f"s{i}", float(i), turns, "sys" if shared else None, 3 if shared else 0)
                for i, (turns, shared) in enumerate(specs)]
    calls = [[(s.id, k) for k in range(len(s.turns))] for s in sessions]
    order: list[tuple[str, int]] = []
    while any(calls):  # an interleaving that keeps each session's turns in order
        pick = draw(st.sampled_from([q for q in calls if q]))
        order.append(pick.pop(0))
    return sessions, order, draw(st.integers(1, 4))


@settings(max_examples=60, deadline=None)
@given(traces())
def test_belady_is_the_best_any_eviction_does(trace):
    sessions, order, room = trace
    assert belady_hits(sessions, 2, room, order).hit_tokens == best_hits(sessions, 2, room, order)


@settings(max_examples=150, deadline=None)
@given(traces(), st.integers(1, 12))
def test_belady_between_lru_and_the_infinite_cache(trace, room):
    sessions, order, _ = trace
    belady = belady_hits(sessions, 2, room, order)
    assert lru_hits(sessions, 2, room, order).hit_tokens <= belady.hit_tokens <= ideal_hits(sessions, 2).hit_tokens
    assert belady.prompt_tokens == ideal_hits(sessions, 2).prompt_tokens


# ------------------------------------------------------------------------------------------ against a run
def test_a_simulated_run_never_hits_more_than_belady_on_its_own_order():
    """vLLM's LRU in the sim, on a KV cache small enough to evict: what it measured is one eviction policy
    on the order it ran the calls in, so never above Bélády's walk of that order, and never above the ideal."""
    from harness.config import make_config
    from harness.engines.sim.run import simulate
    from harness.engines.sim.testbed import build_setup
    from harness.policy import Policy

    sessions = [make(f"s{i}", 0.5 * i, [(300, 40), (120, 30), (80, 20), (60, 10)], prefix="sys", prefix_tokens=160,
                     tool=(0.5, 1)) for i in range(12)]
    setup = build_setup(make_config(("engine_args.num_gpu_blocks=120",), backend="vllm", engine="sim"))
    calls = simulate(sessions, Policy(), setup).calls
    ran = calls[calls["first_scheduled_s"].notna()].sort_values(["first_scheduled_s", "arrival_s"])
    order = list(zip(ran["session_id"], ran["turn"].astype(int)))
    measured = int(ran["cached_tokens"].sum())
    belady = belady_hits(sessions, setup.block_size, setup.num_blocks, order)
    assert belady.prompt_tokens == int(ran["prompt_tokens"].sum())
    assert 0 < measured <= belady.hit_tokens <= ideal_hits(sessions, setup.block_size).hit_tokens
    assert measured < ideal_hits(sessions, setup.block_size).hit_tokens  # the cache was small enough to evict


def test_run_keeps_and_prints_the_bounds_beside_what_it_measured(tmp_path) -> None:
    """`run` on the sim: summary.json holds the bounds, the measured hit rate is under both cache bounds and
    the throughput under the throughput bound (every session done), and the summary prints them."""
    import contextlib
    import io
    import json

    from harness.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", "-b", "vllm", "-w", "swe-smoke", "--results-dir", str(tmp_path)]) == 0
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["completed_sessions"] == summary["num_sessions"]
    assert summary["prefix_cache_hit_rate"] <= summary["belady_prefix_hit_rate"] <= summary["ideal_prefix_hit_rate"]
    assert summary["session_throughput"] <= summary["throughput_bound"]
    assert summary["throughput_bound"] == min(summary["gpu_capacity"], summary["tool_capacity"])
    text = printed.getvalue()
    for label in ("bound: Bélády, this call order (%):", "bound: infinite cache (%):",
                  "bound: GPU or tool pool (sessions/s):", "tool pool: busy cores offered / cores:"):
        assert label in text
    assert f"{100 * summary['ideal_prefix_hit_rate']:.2f}" in text


def test_report_works_out_the_bounds_of_runs_that_did_not_keep_them(tmp_path) -> None:
    """A run written before the bounds were kept: the report rebuilds its workload and finds the same."""
    import json

    from harness.config import RunConfig
    from harness.experiment import run_experiment
    from harness.report.bounds import bounds_text, with_bounds
    from harness.report.load import load_results
    from harness.runbounds import BOUND_KEYS

    run_experiment(RunConfig(backend="mars", workload="swe-smoke", rps=1.0, seed=3), tmp_path)
    path = next(tmp_path.glob("*/summary.json"))
    kept = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in kept.items() if k not in BOUND_KEYS}))
    run = with_bounds(load_results([tmp_path])).included[0]
    for key in BOUND_KEYS:
        assert run.summary[key] == pytest.approx(kept[key]), key
    line = bounds_text([run]).text
    assert f"ideal prefix-cache hit rate {kept['ideal_prefix_hit_rate']:.1%}" in line
    assert f"throughput bound {kept['throughput_bound']:.3g} sessions/s" in line
