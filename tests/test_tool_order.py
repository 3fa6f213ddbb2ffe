"""The CPU half of a policy (harness.policy.tools): both tool pools start waiting calls head-of-line in the
policy's order and report finished calls to it; MARS's order (mars_impl/tools.py) learns expected run times
per tool and puts the shortest first; the ablation `mars.tool_order=fifo` is every other backend's FIFO."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
import simpy.rt

from harness.config import RunConfig
from harness.experiment import run_experiment
from harness.policy.tools import FifoTools, ToolRequest
from harness.real_tools import RealToolPool
from harness.tools import ToolPool
from mars_impl.tools import MarsToolOrder, ToolOrderSettings


class Reverse:
    """Newest first, and a log of what it was asked and told."""

    name = "reverse"

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.ended: list[tuple[str, float]] = []

    def order(self, waiting: Sequence[ToolRequest], now: float) -> list[ToolRequest]:
        self.asked.append([r.tool for r in waiting])
        return list(reversed(waiting))

    def on_tool_end(self, call: ToolRequest, run_s: float, now: float) -> None:
        self.ended.append((call.tool, run_s))


def start_order(pool: ToolPool, calls: list[tuple[str, float, int]]) -> list[str]:
    """Submit every call at 0 (name, seconds, cores); the names in the order they started."""
    for name, seconds, cores in calls:
        pool.submit(name, seconds, cores, 0.0, session_id=f"s-{name}", tool=name)
    done = pool.advance(1e9)
    names = [name for name, _, _ in calls]
    return [c.job_id for c in sorted(done, key=lambda c: (c.started_s, names.index(c.job_id)))]


def test_the_pool_starts_waiting_calls_head_of_line_in_the_policy_order() -> None:
    policy = Reverse()
    pool = ToolPool(1, order=policy)
    # "a" starts at once (it was alone); then d, c, b: newest first
    assert start_order(pool, [("a", 1.0, 1), ("b", 1.0, 1), ("c", 1.0, 1), ("d", 1.0, 1)]) == ["a", "d", "c", "b"]
    # asked (in submission order) only when a core was free and two or more calls waited
    assert policy.asked == [["b", "c", "d"], ["b", "c"]]
    assert sorted(policy.ended) == [("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)]


def test_a_call_first_in_the_policy_order_that_does_not_fit_holds_the_rest() -> None:
    # two cores; "wide" (2 cores) is first in the policy order behind the running "a": nobody overtakes it
    pool = ToolPool(2, order=Reverse())
    order = start_order(pool, [("a", 1.0, 1), ("x", 1.0, 1), ("y", 5.0, 1), ("wide", 1.0, 2)])
    assert order[:2] == ["a", "x"]  # both fit at once
    assert order.index("wide") < order.index("y")


def test_fifo_and_no_policy_start_calls_alike() -> None:
    calls = [("a", 3.0, 2), ("b", 1.0, 1), ("c", 2.0, 1), ("d", 1.0, 3)]
    assert start_order(ToolPool(3), calls) == start_order(ToolPool(3, order=FifoTools()), calls) == ["a", "b", "c", "d"]


def test_an_order_that_loses_a_call_is_refused() -> None:
    class Lossy(Reverse):
        def order(self, waiting: Sequence[ToolRequest], now: float) -> list[ToolRequest]:
            return list(waiting)[1:]

    pool = ToolPool(1, order=Lossy())
    with pytest.raises(ValueError, match="permutation"):
        start_order(pool, [("a", 1.0, 1), ("b", 1.0, 1), ("c", 1.0, 1)])


def test_the_timeshare_pool_never_asks() -> None:
    policy = Reverse()
    start_order(ToolPool(1, "timeshare", order=policy), [("a", 1.0, 1), ("b", 1.0, 1), ("c", 1.0, 1)])
    assert policy.asked == [] and len(policy.ended) == 3


def request(tool: str, seq: int, cores: int = 1, submitted: float = 0.0) -> ToolRequest:
    return ToolRequest((tool, seq), f"s{seq}", tool, cores, submitted, seq)


def test_mars_learns_each_tool_and_puts_the_shortest_expected_work_first() -> None:
    order = MarsToolOrder()
    tests, grep, new = request("pytest", 0), request("grep", 1), request("build", 2)
    # nothing learned: the prior for every tool, submission order
    assert order.order([tests, grep, new], 0.0) == [tests, grep, new]
    for seconds in (30.0, 50.0):
        order.on_tool_end(request("pytest", 9), seconds, 0.0)
    order.on_tool_end(request("grep", 9), 0.01, 0.0)
    assert order.expected_s("pytest") == 40.0 and order.expected_s("grep") == 0.01
    assert order.expected_s("build") == pytest.approx((30 + 50 + 0.01) / 3)  # unseen: the mean of all tools
    assert order.order([tests, grep, new], 5.0) == [grep, new, tests]
    # core-seconds: a 4-core call of an 8 s tool waits behind a 1-core 20 s one
    order.on_tool_end(request("lint", 9), 8.0, 0.0)
    order.on_tool_end(request("mypy", 9), 20.0, 0.0)
    wide, narrow = request("lint", 3, cores=4), request("mypy", 4)
    assert order.order([wide, narrow], 5.0) == [narrow, wide]


def test_mars_hrrn_ages_a_long_call_past_new_short_ones() -> None:
    order = MarsToolOrder(ToolOrderSettings(tool_order="hrrn"))
    order.on_tool_end(request("pytest", 9), 10.0, 0.0)
    order.on_tool_end(request("grep", 9), 1.0, 0.0)
    old_tests, fresh_grep = request("pytest", 0, submitted=0.0), request("grep", 1, submitted=30.0)
    # at 30 s the test run has waited 3x its expected time: ratio 4 against the fresh grep's 1
    assert order.order([old_tests, fresh_grep], 30.0) == [old_tests, fresh_grep]
    # "shortest" would still put the grep first; "fifo" keeps submission order
    assert MarsToolOrder(ToolOrderSettings(tool_order="fifo")).order([fresh_grep, old_tests], 30.0) == [fresh_grep, old_tests]


def test_the_real_pool_starts_calls_in_the_policy_order() -> None:
    env = simpy.rt.RealtimeEnvironment(strict=False)
    policy = Reverse()
    pool = RealToolPool(env, 1, "queue", cpus=sorted(os.sched_getaffinity(0))[-1:], order=policy)
    try:
        events = [pool.run(i, 0.05, 1, None, f"s{i}", f"t{i}") for i in range(4)]
        env.run(env.all_of(events))
    finally:
        pool.close()
    started = [e.value.job_id for e in sorted(events, key=lambda e: e.value.started_s)]
    assert started == [0, 3, 2, 1]
    assert sorted(tool for tool, _ in policy.ended) == ["t0", "t1", "t2", "t3"]


def test_the_ablation_runs_fifo_and_the_order_shortens_a_contended_run(tmp_path) -> None:
    # swe-smoke on one tool core at 4 sessions/s: tool calls queue, and their order shows in the JCTs
    def mean_jct(tool_order: str) -> float:
        config = RunConfig(backend="mars", workload="swe-smoke", tool_cores=1, rps=4.0, seed=3,
                           mars={"tool_order": tool_order})
        return run_experiment(config, tmp_path).summary.mean_jct_s

    fifo, shortest = mean_jct("fifo"), mean_jct("shortest")
    assert shortest < fifo
    vllm = run_experiment(RunConfig(backend="vllm", workload="swe-smoke", tool_cores=1, rps=4.0, seed=3), tmp_path)
    assert vllm.summary.num_sessions == 8
