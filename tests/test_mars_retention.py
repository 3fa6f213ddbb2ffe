"""Retain-or-evict at tool calls: the benefit test, its modes, and the release order under pressure."""

from __future__ import annotations

from harness.config import EngineSettings, RunConfig
from harness.policy import DISCARD, FREE, OFFLOAD, Retention
from harness.engines.sim.run import simulate
from harness.engines.sim.testbed import build_setup
from mars_impl.mars import MarsPolicy, MarsSettings
from mars_impl.retention import RetentionPolicy, RetentionSettings
from tests.fakes import Engine, Req
from workloads.synthetic import customize, generate, get_preset


def trained(mode: str = "benefit") -> RetentionPolicy:
    policy = RetentionPolicy(RetentionSettings(retention=mode))
    for _ in range(20):
        policy.on_tool_end("x", "grep", 0.1)
        policy.on_tool_end("x", "run_tests", 60.0)
    return policy


def finished(tool: str, session: str = "s") -> Req:
    # 20,000-token context in 1,250 blocks of an 8,000-block cache; re-prefill 0.2 s (fake: 1e-5 s/token)
    return Req(f"{session}#0", session_id=session, num_prompt_tokens=19_950, num_computed_tokens=19_999,
               num_output_tokens=50, num_blocks=1250, tool_name=tool)


def test_keeps_both_when_memory_is_free() -> None:
    policy, engine = trained(), Engine(kv_usage=0.5, num_total_blocks=8000)
    assert policy.decide(finished("grep"), engine, 0.0) == Retention.keep(0.1)
    assert policy.decide(finished("run_tests"), engine, 0.0) == Retention.keep(60.0)


def test_under_pressure_keeps_the_short_tool_and_frees_the_long_one() -> None:
    policy, engine = trained(), Engine(kv_usage=0.95, num_total_blocks=8000)
    # benefit 1.0 x 0.2 s; cost grep 1 x 0.1 s x 1250/8000 = 0.016 s; run_tests 60 s x 0.156 = 9.4 s
    assert policy.decide(finished("grep"), engine, 0.0).action == "keep"
    assert policy.decide(finished("run_tests"), engine, 0.0) == FREE


def test_pressure_is_linear_between_the_watermarks_and_full_when_work_waits() -> None:
    policy = RetentionPolicy()
    assert policy.pressure(Engine(kv_usage=0.80)) == 0.0
    assert abs(policy.pressure(Engine(kv_usage=0.875)) - 0.5) < 1e-9
    assert policy.pressure(Engine(kv_usage=0.93)) == 1.0
    starving = Engine(kv_usage=0.6, num_free_blocks=50, num_total_blocks=2000, waiting=[Req("w")])
    assert policy.pressure(starving) == 1.0


def test_unknown_tool_uses_every_tool_then_the_prior() -> None:
    fresh = RetentionPolicy(RetentionSettings(prior_tool_s=1.5))
    assert fresh.decide(finished("new_tool"), Engine(kv_usage=0.5), 0.0) == Retention.keep(1.5)
    policy = trained()
    decision = policy.decide(finished("new_tool"), Engine(kv_usage=0.5), 0.0)
    assert decision.action == "keep" and abs(decision.seconds - 60.0) < 1e-9  # p90 of all 40 durations


def test_with_a_host_tier_a_long_tool_under_pressure_is_offloaded() -> None:
    policy = trained()
    engine = Engine(kv_usage=0.95, num_total_blocks=8000, host_load_s_per_token=1e-6)  # load 0.02 s < 0.2 s
    assert policy.decide(finished("run_tests"), engine, 0.0) == OFFLOAD
    assert policy.decide(finished("grep"), engine, 0.0).action == "keep"  # 0.2 - 0.016 > 0.2 - 0.02
    slow_link = Engine(kv_usage=0.95, num_total_blocks=8000, host_load_s_per_token=2e-5)  # load 0.4 s > 0.2 s
    assert policy.decide(finished("run_tests"), slow_link, 0.0) == FREE


def test_modes_lru_and_off() -> None:
    engine = Engine(kv_usage=0.5)
    assert trained("lru").decide(finished("grep"), engine, 0.0) == FREE
    assert trained("off").decide(finished("grep"), engine, 0.0) == DISCARD


def test_pins_are_released_lowest_benefit_per_block_first() -> None:
    policy, engine = trained(), Engine(kv_usage=0.5, num_total_blocks=8000)
    # a: 1,050 tokens in 200 blocks -> 0.0105 s / 200 = 5.3e-5 s per block; b: 0.2 s / 1250 = 1.6e-4
    sparse = Req("a#0", session_id="a", num_prompt_tokens=1000, num_computed_tokens=1049, num_output_tokens=50,
                 num_blocks=200, tool_name="grep")
    assert policy.decide(sparse, engine, 0.0).action == "keep"
    assert policy.decide(finished("grep", session="b"), engine, 0.0).action == "keep"

    class Pin:
        def __init__(self, deadline: float) -> None:
            self.deadline_s = deadline

    assert policy.pin_to_release({"a": Pin(5.0), "b": Pin(1.0)}) == "a"  # lowest benefit per block, not deadline
    assert policy.pin_to_release({"b": Pin(1.0), "c": Pin(0.5)}) == "c"  # unknown benefit (0) goes first


def test_on_the_engine_benefit_retention_beats_dropping_the_context() -> None:
    sessions = list(generate(customize(get_preset("swe"), ["sessions=12", "rps=0.5", "seed=1"])))
    setup = build_setup(RunConfig(engine_args=EngineSettings(num_gpu_blocks=3000)))
    kept = simulate(sessions, MarsPolicy(MarsSettings()), setup)
    dropped = simulate(sessions, MarsPolicy(MarsSettings(retention="off")), setup)
    hit = lambda out: out.calls["cached_tokens"].sum() / out.calls["prompt_tokens"].sum()  # noqa: E731
    assert kept.sessions["completed"].all() and dropped.sessions["completed"].all()
    assert hit(kept) > hit(dropped) + 0.2
    assert kept.calls["finish_s"].sub(kept.calls["arrival_s"]).mean() < dropped.calls["finish_s"].sub(dropped.calls["arrival_s"]).mean()


def test_on_the_engine_offloaded_contexts_come_back_from_the_host_tier() -> None:
    sessions = list(generate(customize(get_preset("swe"), ["sessions=12", "rps=0.5", "seed=1"])))
    small = EngineSettings(num_gpu_blocks=2500)
    tiered = EngineSettings(num_gpu_blocks=2500, kv_offload_gib=64)
    without = simulate(sessions, MarsPolicy(MarsSettings()), build_setup(RunConfig(engine_args=small)))
    with_tier = simulate(sessions, MarsPolicy(MarsSettings()), build_setup(RunConfig(engine_args=tiered)))
    assert without.stats["host_offloads"] == 0
    assert with_tier.stats["host_offloads"] > 5 and with_tier.stats["host_loads"] > 5
    assert with_tier.sessions["completed"].all()
    hit = lambda out: out.calls["cached_tokens"].sum() / out.calls["prompt_tokens"].sum()  # noqa: E731
    assert hit(with_tier) > hit(without) + 0.1  # measured 0.62 vs 0.47
