"""`retention=warm`: bounded pinning for warm tool returns - TTL from the tool's recent durations, value
= re-prefill + the wait a cold resume was seen to suffer, and a budget of pinned blocks."""

from __future__ import annotations

from dataclasses import dataclass

from harness.config import EngineSettings, RunConfig
from harness.engines.sim.run import simulate
from harness.engines.sim.testbed import build_setup
from harness.policy import FREE, Retention, ScheduledStep
from mars_impl.mars import MarsPolicy, MarsSettings
from mars_impl.retention import RetentionPolicy, RetentionSettings
from tests.fakes import Engine, Req
from workloads.synthetic import customize, generate, get_preset


@dataclass
class Pin:
    session_id: str
    num_blocks: int
    deadline_s: float = 10.0
    computed_tokens: int = 0
    since_s: float = 0.0


def warm(**settings: object) -> RetentionPolicy:
    return RetentionPolicy(RetentionSettings(retention="warm", **settings))  # type: ignore[arg-type]


def finished(tool: str = "grep", session: str = "s", blocks: int = 1250) -> Req:
    # 20,000-token context; re-prefill 0.2 s on the fake engine (1e-5 s/token)
    return Req(f"{session}#0", session_id=session, num_prompt_tokens=19_950, num_computed_tokens=19_999,
               num_output_tokens=50, num_blocks=blocks, tool_name=tool)


def test_without_pressure_the_ttl_covers_the_recent_durations() -> None:
    policy = warm()
    for d in (0.1, 0.2, 3.0):
        for _ in range(10):
            policy.on_tool_end("x", "grep", d)
    assert policy.decide(finished(), Engine(kv_usage=0.5, num_free_blocks=6000, num_total_blocks=8000), 0.0) \
        == Retention.keep(3.0)
    # `benefit` keeps for the p90 of the same sample, which is also 3.0 here: the modes differ below


def test_the_ttl_follows_the_recent_queue_wait_not_the_whole_history() -> None:
    warm_policy, benefit = warm(warm_window=20), RetentionPolicy(RetentionSettings(retention="benefit"))
    for policy in (warm_policy, benefit):
        for _ in range(200):  # a quiet pool: grep returns in 0.1 s
            policy.on_tool_end("x", "grep", 0.1)
        for _ in range(20):  # now the pool queues: 4 s
            policy.on_tool_end("x", "grep", 4.0)
    engine = Engine(kv_usage=0.5, num_free_blocks=6000, num_total_blocks=8000)
    assert warm_policy.decide(finished(), engine, 0.0) == Retention.keep(4.0)
    assert benefit.decide(finished(), engine, 0.0) == Retention.keep(0.1)  # p90 of all 220 samples


def test_under_pressure_a_long_tool_is_freed_and_a_short_one_kept() -> None:
    policy = warm()
    for _ in range(20):
        policy.on_tool_end("x", "grep", 0.1)
        policy.on_tool_end("x", "run_tests", 60.0)
    engine = Engine(kv_usage=0.95, num_free_blocks=4000, num_total_blocks=8000)
    # value 0.2 s; holding 1250/8000 of the cache costs 0.156 s per second held
    assert policy.decide(finished("grep"), engine, 0.0) == Retention.keep(0.1)
    assert policy.decide(finished("run_tests"), engine, 0.0) == FREE


def test_the_cold_resume_wait_raises_the_value_of_a_pin() -> None:
    policy = warm()
    for _ in range(20):
        policy.on_tool_end("x", "build", 2.0)
    engine = Engine(kv_usage=0.95, num_free_blocks=4000, num_total_blocks=8000)
    assert policy.decide(finished("build"), engine, 0.0) == FREE  # 0.2 s < 2 s x 0.156 = 0.31 s
    cold = Req("t#3", session_id="t", turn=3, arrival_s=10.0)  # resumed, holds nothing: found no pin
    policy.on_arrival(cold)
    policy.on_scheduled(ScheduledStep(start_s=11.0, duration_s=0.05, scheduled=[(cold, 512)], preempted=[]))
    assert policy.cold_wait.mean(0.0) == 1.0
    assert policy.decide(finished("build"), engine, 0.0) == Retention.keep(2.0)  # 1.2 s > 0.31 s
    warm_resume = Req("u#3", session_id="u", turn=3, arrival_s=10.0, num_computed_tokens=20_000, num_blocks=1250)
    policy.on_arrival(warm_resume)  # adopted its pin: not a cold resume
    policy.on_scheduled(ScheduledStep(start_s=30.0, duration_s=0.05, scheduled=[(warm_resume, 1)], preempted=[]))
    assert len(policy.cold_wait) == 1


def test_pins_stay_within_their_budget_of_the_headroom() -> None:
    policy = warm(pin_budget_share=0.5)
    for _ in range(20):
        policy.on_tool_end("x", "grep", 0.1)
    # 2,000 free + 2,000 pinned blocks: the budget is 2,000, all taken -> a further pin is refused
    full = Engine(kv_usage=0.5, num_free_blocks=2000, num_total_blocks=8000, pins={"a": Pin("a", 2000)})
    assert policy.pin_budget(full) == 2000
    assert policy.decide(finished(blocks=100), full, 0.0) == FREE
    # 4,000 free + 1,000 pinned: budget 2,500, room for 1,250 more
    roomy = Engine(kv_usage=0.5, num_free_blocks=4000, num_total_blocks=8000, pins={"a": Pin("a", 1000)})
    assert policy.decide(finished(blocks=1250), roomy, 0.0) == Retention.keep(0.1)
    assert policy.decide(finished(blocks=1600), roomy, 0.0) == FREE
    assert warm(pin_budget_share=0.0).decide(finished(blocks=1), roomy, 0.0) == FREE


def test_released_lowest_value_per_block_first() -> None:
    policy = warm()
    engine = Engine(kv_usage=0.5, num_free_blocks=6000, num_total_blocks=8000)
    assert policy.decide(finished(session="big", blocks=2500), engine, 0.0).action == "keep"
    assert policy.decide(finished(session="small", blocks=500), engine, 0.0).action == "keep"
    pins = {"big": Pin("big", 2500, deadline_s=1.0), "small": Pin("small", 500, deadline_s=5.0)}
    assert policy.pin_to_release(pins) == "big"  # same value, five times the blocks


def test_benefit_stays_the_default_and_ignores_the_warm_settings() -> None:
    assert MarsSettings().retention == "benefit"
    plain = RetentionPolicy(RetentionSettings(retention="benefit"))
    tight = RetentionPolicy(RetentionSettings(retention="benefit", pin_budget_share=0.0, warm_window=1))
    engine = Engine(kv_usage=0.5, num_free_blocks=100, num_total_blocks=8000, pins={"a": Pin("a", 5000)})
    for policy in (plain, tight):
        for d in (0.1, 0.2, 3.0, 9.0):
            policy.on_tool_end("x", "grep", d)
    assert plain.decide(finished(), engine, 0.0) == tight.decide(finished(), engine, 0.0)
    assert plain.decide(finished(), engine, 0.0).action == "keep"  # no budget in `benefit`


def test_on_the_engine_warm_pins_and_resumes_onto_them() -> None:
    sessions = list(generate(customize(get_preset("swe"), ["sessions=12", "rps=0.5", "seed=1"])))
    setup = build_setup(RunConfig(engine_args=EngineSettings(num_gpu_blocks=3000)))
    kept = simulate(sessions, MarsPolicy(MarsSettings(retention="warm")), setup)
    none = simulate(sessions, MarsPolicy(MarsSettings(retention="warm", pin_budget_share=0.0)), setup)
    assert kept.sessions["completed"].all() and none.sessions["completed"].all()
    assert kept.stats["pins_made"] > 10 and kept.stats["pins_used"] > 5
    assert none.stats["pins_made"] == 0
