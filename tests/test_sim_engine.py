"""The simulated engine against vLLM V1 behaviour: budget, block conservation, prefix hits, preemption,
the roofline step times, FCFS order, fast-forward equivalence, determinism."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.policy.admission import AdmitAll
from harness.config import EngineSettings, RunConfig
from harness.engines.sim.core import SchedulerLimits
from harness.engines.sim.kv_cache import KVCache
from harness.policy import Policy, ScheduledStep
from harness.engines.sim.run import SimRun, simulate
from harness.engines.sim.testbed import SimSetup
from harness.engines.sim.testbed import build_profile, build_setup
from workloads.model import Session, ToolCall, Turn
from workloads.synthetic import customize, generate, get_preset


class Auditor(Policy):
    """vLLM FCFS, checking the engine's books after every step."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.core = None
        self.steps = 0
        self.preempted: list[str] = []

    def on_scheduled(self, step: ScheduledStep) -> None:
        self.steps += 1
        assert sum(n for _, n in step.scheduled) <= self.budget
        assert len({id(r) for r, _ in step.scheduled}) == len(step.scheduled)
        assert self.core is not None
        self.core.kv.check()
        held = sum(len(r.blocks) for r in self.core.running) + sum(len(r.blocks) for r in self.core.waiting) \
            + sum(len(p.blocks) for p in self.core.pins.values())
        assert held >= self.core.kv.num_used_blocks  # shared prefix blocks are counted once per holder

    def on_preempted(self, req, now: float) -> None:
        self.preempted.append(req.request_id)


def setup_for(num_blocks: int | None = None, budget: int = 8192, max_seqs: int = 256, fast_forward: bool = True,
              **config: object) -> SimSetup:
    cfg = RunConfig(engine_args=EngineSettings(max_num_batched_tokens=budget, max_num_seqs=max_seqs,
                                               num_gpu_blocks=num_blocks, fast_forward=fast_forward), **config)
    return build_setup(cfg)


def audited(sessions: list[Session], setup: SimSetup) -> tuple[pd.DataFrame, pd.DataFrame, Auditor]:
    policy = Auditor(setup.limits.max_num_batched_tokens)
    run = SimRun(sessions, policy, AdmitAll(), setup)
    policy.core = run.core
    out = run.run()
    return out.calls, out.sessions, policy


def one_turn(sid: str, arrival: float, prompt: int, output: int, prefix: tuple[str, int] | None = None) -> Session:
    pid, ptok = prefix if prefix else (None, 0)
    return Session(id=sid, arrival_s=arrival, prefix_id=pid, prefix_tokens=ptok,
                   turns=(Turn(new_tokens=prompt, output_tokens=output),))


def test_budget_and_block_books_hold_on_a_loaded_run() -> None:
    sessions = list(generate(customize(get_preset("swe"), ["sessions=25", "rps=2", "seed=3"])))
    calls, sess, auditor = audited(sessions, setup_for(num_blocks=4000, budget=2048))
    assert sess["completed"].all() and auditor.steps > 1000
    assert auditor.preempted  # the small cache forces preemption, so the books were checked under it


def test_prefix_hits_on_next_turn_equal_previous_context_in_full_blocks() -> None:
    turns = (
        Turn(new_tokens=1000, output_tokens=50, tool=ToolCall(name="grep", cpu_seconds=0.5)),
        Turn(new_tokens=300, output_tokens=20, tool=ToolCall(name="grep", cpu_seconds=0.5)),
        Turn(new_tokens=77, output_tokens=9),
    )
    s = Session(id="s", arrival_s=0, turns=turns)
    calls, _, _ = audited([s], setup_for())
    calls = calls.sort_values("turn")
    assert calls["cached_tokens"].tolist()[0] == 0
    # A finished call has computed prompt + output - 1 tokens (the last sampled token's KV is never
    # computed), and only full 16-token blocks are cached.
    assert calls["cached_tokens"].tolist()[1] == (1000 + 50 - 1) // 16 * 16
    assert calls["cached_tokens"].tolist()[2] == (1000 + 50 + 300 + 20 - 1) // 16 * 16


def test_shared_prefix_hits_across_sessions() -> None:
    a = one_turn("a", 0.0, 500, 5, prefix=("sys", 3000))
    b = one_turn("b", 5.0, 500, 5, prefix=("sys", 3000))
    calls, _, _ = audited([a, b], setup_for())
    assert calls.set_index("session_id")["cached_tokens"].to_dict() == {"a": 0, "b": 3000 // 16 * 16}


def test_preemption_when_blocks_run_out_and_output_is_unchanged() -> None:
    # 100 blocks x 16 = 1600 tokens: two 700-token prompts generating 200 tokens each cannot both finish.
    sessions = [one_turn("first", 0.0, 700, 200), one_turn("second", 0.0, 700, 200)]
    calls, sess, auditor = audited(sessions, setup_for(num_blocks=100))
    assert auditor.preempted == ["second#0"]  # FCFS preempts the request that entered running last
    by = calls.set_index("session_id")
    assert by.loc["second", "preemptions"] == 1 and by.loc["first", "preemptions"] == 0
    assert by["output_tokens"].tolist() == [200, 200]
    assert by.loc["second", "finish_s"] > by.loc["first", "finish_s"]
    assert by.loc["second", "recomputed_tokens"] > 0
    assert sess["completed"].all()


def test_a_call_larger_than_the_cache_fails_its_session_not_the_run() -> None:
    sessions = [one_turn("huge", 0.0, 5000, 10), one_turn("ok", 0.0, 100, 10)]
    _, sess, _ = audited(sessions, setup_for(num_blocks=100))
    assert sess.set_index("session_id")["completed"].to_dict() == {"huge": False, "ok": True}


def _roofline(p, new: int, context: int) -> float:
    """The cost model's formula written out by hand for one sequence on one GPU (tp=1, dense or MoE)."""
    pairs = new * context + new * (new + 1) // 2
    flops = p.flops_per_token * new + p.flops_per_logit_row * 1 + p.flops_per_attention_pair * pairs
    experts = p.num_experts * (1 - (1 - p.experts_per_token / p.num_experts) ** new) if p.num_experts else 0.0
    traffic = p.dense_weight_bytes + p.expert_weight_bytes * experts + p.kv_bytes_per_token * (context + new)
    return max(flops / p.flops_per_s, traffic / p.hbm_bytes_per_s) + p.step_overhead_s \
        + p.layer_overhead_s * p.num_layers + p.seq_overhead_s


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen3-coder-30b-a3b"])
def test_single_request_times_follow_the_roofline(model: str) -> None:
    config = RunConfig(model=model)
    profile = build_profile(config)
    calls, _, _ = audited([one_turn("x", 0.0, 1000, 4)], build_setup(config))
    call = calls.iloc[0]
    prefill = _roofline(profile, 1000, 0)
    decodes = [_roofline(profile, 1, 1000 + i) for i in range(3)]  # tokens 2..4; token 1 comes with the prefill
    assert call["first_token_s"] - call["arrival_s"] == pytest.approx(prefill, rel=1e-9)
    assert list(call["itl_s"]) == pytest.approx(decodes, rel=1e-9)
    assert call["finish_s"] == pytest.approx(prefill + sum(decodes), rel=1e-9)


def test_chunked_prefill_respects_the_budget() -> None:
    config = RunConfig(engine_args=EngineSettings(max_num_batched_tokens=512))
    profile = build_profile(config)
    calls, _, _ = audited([one_turn("x", 0.0, 1200, 2)], build_setup(config))
    expected = _roofline(profile, 512, 0) + _roofline(profile, 512, 512) + _roofline(profile, 176, 1024)
    assert calls.iloc[0]["first_token_s"] == pytest.approx(expected, rel=1e-9)


def test_fcfs_order_with_one_sequence_slot() -> None:
    sessions = [one_turn(f"s{i}", 0.001 * i, 200 + 50 * (5 - i), 8) for i in range(5)]
    calls, _, _ = audited(sessions, setup_for(max_seqs=1))
    ordered = calls.sort_values("first_scheduled_s")["session_id"].tolist()
    assert ordered == [f"s{i}" for i in range(5)]
    assert calls.sort_values("finish_s")["session_id"].tolist() == ordered


def test_fast_forward_gives_identical_results() -> None:
    sessions = list(generate(customize(get_preset("swe"), ["sessions=30", "rps=1", "seed=9"])))
    fast = simulate(sessions, Policy(), setup_for(num_blocks=4000, fast_forward=True))
    slow = simulate(sessions, Policy(), setup_for(num_blocks=4000, fast_forward=False))
    assert fast.stats["engine_steps"] == slow.stats["engine_steps"]
    assert fast.stats["preemptions"] == slow.stats["preemptions"] > 0
    pd.testing.assert_frame_equal(fast.calls, slow.calls)
    pd.testing.assert_frame_equal(fast.sessions, slow.sessions)


def test_kv_cache_lru_evicts_least_recently_freed_first() -> None:
    kv = KVCache(num_blocks=4, block_size=16)
    a = kv.allocate(2)
    b = kv.allocate(2)
    assert a is not None and b is not None and kv.allocate(1) is None
    for i, block in enumerate(a):
        kv.cache_block(block, ("a", i))
    for i, block in enumerate(b):
        kv.cache_block(block, ("b", i))
    kv.free(a)  # a's tail block is queued first, so it is evicted first
    kv.free(b)
    assert kv.check() == (0, 4, 0)
    kv.allocate(1)
    assert ("a", 1) not in kv.cached and ("a", 0) in kv.cached
    assert kv.match_prefix([("b", 0), ("b", 1), ("c", 2)]) == b
    assert kv.check() == (0, 1, 3)  # a[0] still cached and free; a[1] reused; b hit
    assert math.isclose(kv.usage, 3 / 4)


def test_scheduler_limits_default_to_vllm_online_serving() -> None:
    assert SchedulerLimits().max_num_batched_tokens == 8192 and SchedulerLimits().max_num_seqs == 256


def test_gpu_share_stretches_every_step_and_isolated_reference_ignores_it() -> None:
    setup = setup_for(gpu_share=0.5)
    session = one_turn("x", 0.0, 3000, 50)
    out = simulate([session], Policy(), setup, isolated={"x": 1.0})
    alone = simulate([session], Policy(), setup.idle())
    assert setup.idle().gpu_share == 1.0
    jct = out.sessions["finish_s"].iloc[0]
    assert jct == pytest.approx(2 * alone.sessions["finish_s"].iloc[0], rel=1e-12)


def test_cpu_stress_and_tool_mode_change_tool_waits() -> None:
    sessions = list(generate(customize(get_preset("cpu-heavy"), ["sessions=12", "rps=0.2", "seed=2"])))
    free = simulate(sessions, Policy(), setup_for(tool_cores=8))
    stressed = simulate(sessions, Policy(), setup_for(tool_cores=8, cpu_stress=6))
    shared = simulate(sessions, Policy(), setup_for(tool_cores=8, cpu_stress=6, tool_mode="timeshare"))
    assert stressed.sessions["tool_wait_s"].sum() > free.sessions["tool_wait_s"].sum()
    assert shared.sessions["tool_wait_s"].sum() == 0  # timeshare starts every call at once...
    assert shared.sessions["tool_s"].sum() > free.sessions["tool_s"].sum()  # ...and stretches them


def test_background_chat_shares_the_engine_but_is_not_measured() -> None:
    from workloads.synthetic import background_chat

    sessions = list(generate(customize(get_preset("swe"), ["sessions=6", "rps=0.5", "seed=4"])))
    background = background_chat(5.0, sessions[-1].arrival_s, seed=4)
    quiet = simulate(sessions, Policy(), setup_for())
    busy = simulate(sessions, Policy(), setup_for(), background=background)
    assert busy.stats["background_calls"] == len(background) > 20
    assert set(busy.calls["session_id"]) == {s.id for s in sessions}
    assert (busy.calls["finish_s"] - busy.calls["arrival_s"]).mean() > (quiet.calls["finish_s"] - quiet.calls["arrival_s"]).mean()


@pytest.mark.parametrize("reserve", [True, False])
def test_a_waiting_call_is_admitted_only_when_its_whole_prompt_fits_as_vllm_0_32(reserve: bool) -> None:
    # 200 blocks of 16; a (2,500 tokens) starts with a 512-token chunk and leaves 168 free blocks;
    # b needs 175 blocks for its whole prompt: vLLM 0.32 (reserve) keeps it waiting, older vLLM admits it.
    args = EngineSettings(num_gpu_blocks=200, max_num_batched_tokens=512, scheduler_reserve_full_isl=reserve)
    sessions = [Session(id="a", arrival_s=0.0, turns=(Turn(new_tokens=2500, output_tokens=4),)),
                Session(id="b", arrival_s=0.0, turns=(Turn(new_tokens=2800, output_tokens=4),))]
    out = simulate(sessions, Policy(), build_setup(RunConfig(engine_args=args))).calls.set_index("session_id")
    a_done = out.loc["a", "finish_s"]
    if reserve:
        assert out.loc["b", "first_scheduled_s"] >= out.loc["a", "first_token_s"]  # after a's prompt was in
    else:
        assert out.loc["b", "first_scheduled_s"] < out.loc["a", "first_token_s"] < a_done
