"""The SGLang baseline: radix cache (LRU leaves, locked paths, books), LPM order with its FCFS fallback,
the PrefillAdder budget, retract order, and the `sglang` backend end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baselines.lpm import LpmSettings, SglangPolicy
from harness.policy.admission import AdmitAll
from harness.config import EngineSettings, RunConfig
from harness.engines.sim.core import EngineCore, SchedulerLimits
from harness.engines.sim.radix_cache import RadixCache
from harness.engines.sim.request import SimRequest
from harness.policy import Policy, ScheduledStep
from harness.engines.sim.run import SimRun, simulate
from harness.engines.sim.testbed import build_setup
from tests.fakes import Req
from workloads.synthetic import customize, generate, get_preset

BS = 16


def call(session: str, turn: int, prompt: int, output: int, prefix: tuple[str, int] | None = None) -> SimRequest:
    pid, ptok = prefix if prefix else (None, 0)
    return SimRequest(request_id=f"{session}#{turn}", session_id=session, turn=turn, is_last_turn=False, tool_name="grep",
                      session_arrival_s=0.0, arrival_s=0.0, num_prompt_tokens=prompt, max_tokens=output,
                      prefix_id=pid, prefix_tokens=ptok)


def engine(policy: Policy, num_blocks: int = 200, budget: int = 4096, max_seqs: int = 256) -> EngineCore:
    return EngineCore(RadixCache(num_blocks, BS), SchedulerLimits(budget, max_seqs), policy)  # type: ignore[arg-type]


def drive(core: EngineCore, t: float = 0.0, until=None) -> float:
    """Plan and apply steps of 10 ms until `until()` (default: no work left); check the books each step."""
    while not (until() if until else not core.has_work):
        plan = core.schedule(t)
        assert plan.scheduled, "the engine stalled"
        t += 0.01
        core.complete(plan, t)
        core.kv.check()
    return t


# ------------------------------------------------------------------------------------- radix cache
def chain(kv: RadixCache, keys: list[tuple[str, str, int]], held: list[int] | None = None) -> list[int]:
    """Allocate and insert blocks for `keys` after the (taken) blocks `held`, as a request computing them."""
    blocks = (held or []) + kv.allocate(len(keys))  # type: ignore[operator]
    for block, key in zip(blocks[len(held or []):], keys):
        kv.cache_block(block, key)
    return blocks


def two_sessions_on_a_prefix(num_blocks: int = 8) -> tuple[RadixCache, list[int], list[int]]:
    """Shared prefix p0 p1, session a's blocks 2 3 and session b's blocks 2 3 under it (a inserted first)."""
    kv = RadixCache(num_blocks, BS)
    for s in ("a", "b"):
        kv.link_chain(("s", s, 2), ("p", "sys", 1))
    a = chain(kv, [("p", "sys", 0), ("p", "sys", 1), ("s", "a", 2), ("s", "a", 3)])
    b = chain(kv, [("s", "b", 2), ("s", "b", 3)], held=kv.take([("p", "sys", 0), ("p", "sys", 1)]))
    kv.check()
    return kv, a, b


def test_radix_cache_evicts_least_recently_used_leaves_tail_first_and_parents_only_once_leaves() -> None:
    kv, a, b = two_sessions_on_a_prefix()
    kv.free(a)  # a's context ends first: its leaf is the least recently used
    kv.free(b)  # freeing b touches the prefix node before b's leaf: the prefix is older than b's leaf
    assert kv.check() == (2, 6, 0) and kv.num_free_blocks == 8 and kv.run_length("s", "b", 2) == 2
    kv.allocate(3)  # 2 free blocks + 1 evicted: a's tail block
    assert ("s", "a", 3) not in kv.cached and ("s", "a", 2) in kv.cached
    kv.allocate(2)  # the rest of a, then b's tail: the older prefix is not a leaf while b hangs below it
    assert [k for k in (("s", "a", 2), ("s", "b", 3), ("s", "b", 2)) if k in kv.cached] == [("s", "b", 2)]
    assert kv.run_length("p", "sys", 0) == 2
    kv.allocate(2)  # b's last block goes, the prefix becomes a leaf and loses its tail
    assert list(kv.cached) == [("p", "sys", 0)] and kv.evictions == 5
    assert kv.check() == (0, 1, 7)


def test_a_referenced_path_is_never_evicted_so_its_shared_prefix_stays_cached() -> None:
    kv, a, b = two_sessions_on_a_prefix()
    kv.free(b)  # a still runs: its path (prefix included) is locked
    assert kv.num_free_blocks == 2 + 2  # free blocks + b's own two
    assert kv.allocate(4) is not None and kv.allocate(1) is None
    assert set(kv.cached) == {("p", "sys", 0), ("p", "sys", 1), ("s", "a", 2), ("s", "a", 3)}
    kv.free(a)
    assert kv.check() == (0, 4, 4)


def test_radix_cache_drop_in_behaviour_matches_the_block_cache_on_a_chain() -> None:
    kv = RadixCache(6, BS)
    blocks = chain(kv, [("s", "x", 0), ("s", "x", 1), ("s", "x", 2)])
    assert kv.run_length("s", "x", 0) == 3 and kv.run_length("s", "x", 1) == 2 and kv.run_length("s", "y", 0) == 0
    kv.free(blocks)
    assert kv.match_prefix([("s", "x", 0), ("s", "x", 1), ("s", "z", 2)]) == blocks[:2]
    assert kv.usage == pytest.approx(2 / 6) and kv.check() == (3, 1, 2)
    kv.free(blocks[:2])
    kv.forget(blocks[1:2])  # drops block 1 and everything below it
    assert list(kv.cached) == [("s", "x", 0)] and kv.check() == (5, 1, 0)


def test_concurrent_prefills_of_one_prefix_share_the_tree_copy_and_keep_it_locked() -> None:
    core = engine(SglangPolicy(), num_blocks=40)
    first, second = call("a", 0, 120, 2, prefix=("sys", 64)), call("b", 0, 120, 20, prefix=("sys", 64))
    core.add(first, 0.0)
    core.add(second, 0.0)
    plan = core.schedule(0.0)
    assert len(plan.scheduled) == 2  # both compute the prefix: b's copy duplicates a's cached blocks
    core.complete(plan, 0.01)
    kv: RadixCache = core.kv  # type: ignore[assignment]
    assert len(kv.duplicate_of) == 4 and kv.run_length("s", "b", 4) == 3  # b's context hangs under a's prefix
    drive(core, 0.01, until=lambda: first.finished)
    assert all(not kv.is_evictable(("p", "sys", i)) for i in range(4))  # b still holds them through its copies
    drive(core, 0.02)
    assert not kv.duplicate_of and kv.num_free_blocks == 40


# --------------------------------------------------------------------------------- LPM and FCFS
def warm_then_two_waiting(policy: SglangPolicy) -> tuple[EngineCore, SimRequest, SimRequest, float]:
    """Session `warm` ran one call; then a cold session's call and warm's next call wait, cold queued first."""
    core = engine(policy, max_seqs=1)
    core.add(call("warm", 0, 1000, 2), 0.0)
    t = drive(core)
    cold, warm = call("cold", 0, 500, 2), call("warm", 1, 1200, 2)
    core.add(cold, t)
    core.add(warm, t)
    return core, cold, warm, t


def test_lpm_admits_the_request_with_the_longest_cached_prefix_first() -> None:
    core, cold, warm, t = warm_then_two_waiting(SglangPolicy())
    assert (core.cached_prefix_tokens(warm), core.cached_prefix_tokens(cold)) == (1001 // BS * BS, 0)
    plan = core.schedule(t)
    assert [r for r, _ in plan.scheduled] == [warm] and warm.cached_tokens == 992


@pytest.mark.parametrize("settings", [LpmSettings(lpm_fallback_queue_len=1), LpmSettings(schedule_policy="fcfs")])
def test_fcfs_when_the_queue_is_longer_than_the_fallback_length_or_lpm_is_off(settings: LpmSettings) -> None:
    core, cold, warm, t = warm_then_two_waiting(SglangPolicy(settings))
    plan = core.schedule(t)
    assert [r for r, _ in plan.scheduled] == [cold]


def test_a_retracted_request_queues_again_behind_the_waiting_ones() -> None:
    policy = SglangPolicy(LpmSettings(schedule_policy="fcfs"))
    first, second, third = Req("r1"), Req("r2"), Req("r3")
    for r in (first, second, third):
        policy.on_arrival(r, 0.0)  # type: ignore[arg-type]
    policy.on_preempted(first, 1.0)  # type: ignore[arg-type]
    assert policy.order_waiting([first, second, third], 1.0) == [second, third, first]


def test_victim_is_the_fewest_output_tokens_then_longest_prompt_then_latest() -> None:
    running = [Req("a", num_output_tokens=9, num_prompt_tokens=100), Req("b", num_output_tokens=2, num_prompt_tokens=50),
               Req("c", num_output_tokens=2, num_prompt_tokens=80), Req("d", num_output_tokens=2, num_prompt_tokens=80),
               Req("e", num_output_tokens=3, num_prompt_tokens=900)]
    assert SglangPolicy().choose_victim(running, 0.0).request_id == "d"  # type: ignore[arg-type]


def test_chunks_are_capped_at_chunked_prefill_size() -> None:
    core = engine(SglangPolicy(LpmSettings(chunked_prefill_size=512)))
    core.add(call("x", 0, 2000, 2), 0.0)
    assert core.schedule(0.0).scheduled[0][1] == 512


# ------------------------------------------------------------------------------------ PrefillAdder
def test_prefill_budget_keeps_a_request_out_while_running_outputs_are_expected_to_need_the_room() -> None:
    def running_long_decode(policy: Policy) -> tuple[EngineCore, SimRequest, SimRequest, float]:
        core = engine(policy, num_blocks=100)  # 1600 tokens
        long = call("long", 0, 160, 1000)
        core.add(long, 0.0)
        t = drive(core, until=lambda: long.num_output_tokens >= 5)
        late = call("late", 0, 560, 200)
        core.add(late, t)
        return core, long, late, t

    vllm_core, _, vllm_late, t = running_long_decode(Policy())
    assert vllm_late in [r for r, _ in vllm_core.schedule(t).scheduled]  # vLLM admits while blocks last

    policy = SglangPolicy()
    core, long, late, t = running_long_decode(policy)
    need = 560 + 200 + BS  # its input, its max_new_tokens and a page
    refused = 0
    while not late.blocks:
        reserve = policy.new_token_ratio * (1000 - long.num_output_tokens)  # the running call's expected output
        plan = core.schedule(t)
        free = (core.kv.num_free_blocks + len(late.blocks)) * BS  # free + evictable when the gate was made
        assert (late in [r for r, _ in plan.scheduled]) == (need < free - reserve)
        assert need < free  # the blocks alone would have let it in
        refused += not late.blocks
        t += 0.01
        core.complete(plan, t)
        core.kv.check()
    assert refused > 10 and not long.finished  # admitted once the expected output shrank (ratio decay, progress)

def test_new_token_ratio_decays_per_decode_step_resets_when_idle_and_jumps_after_retraction() -> None:
    policy = SglangPolicy()
    assert (policy.init_new_token_ratio, policy.min_new_token_ratio) == pytest.approx((0.7, 0.098))
    core = engine(policy)
    req = call("x", 0, 100, 50)
    core.add(req, 0.0)
    drive(core, until=lambda: req.num_output_tokens >= 11)
    assert policy.new_token_ratio == pytest.approx(0.7 - 10 * policy.new_token_ratio_decay)
    drive(core)
    assert policy.new_token_ratio == policy.init_new_token_ratio
    other = call("y", 0, 100, 80)
    core.running = [other]
    other.num_output_tokens = 40
    policy.on_scheduled(ScheduledStep(0.0, 0.01, [], [req]))
    assert policy.new_token_ratio == pytest.approx((40 + 20) / (80 + 1))


# ---------------------------------------------------------------------------------------- loaded run
class AuditedSglang(SglangPolicy):
    """SGLang's policy, checking the radix cache's books after every step."""

    core: EngineCore | None = None
    steps = 0

    def on_scheduled(self, step: ScheduledStep) -> None:
        super().on_scheduled(step)
        assert self.core is not None
        self.core.kv.check()
        self.steps += 1


def test_radix_cache_books_balance_after_every_step_of_a_loaded_run() -> None:
    sessions = list(generate(customize(get_preset("swe"), [
        "sessions=20", "rps=5", "seed=3", "turns.median=4", "output_tokens.median=400", "task_tokens.median=800",
        "prefix_tokens.median=1000", "prefix_tokens.low=500"])))
    setup = build_setup(RunConfig(backend="sglang", engine_args=EngineSettings(max_num_batched_tokens=2048,
                                                                               num_gpu_blocks=1000)))
    assert setup.prefix_cache == "radix"
    policy = AuditedSglang()
    run = SimRun(sessions, policy, AdmitAll(), setup)
    policy.core = run.core
    out = run.run()
    assert out.sessions["completed"].all() and policy.steps > 1000
    assert out.stats["kv_evictions"] > 1000 and out.stats["preemptions"] >= 1  # the cache was under pressure
    assert isinstance(run.kv, RadixCache) and run.kv.check()[2] == 0


def test_sglang_results_are_the_same_with_and_without_fast_forward() -> None:
    sessions = list(generate(customize(get_preset("swe"), ["sessions=12", "rps=1", "seed=5"])))
    outs = [simulate(sessions, SglangPolicy(), build_setup(RunConfig(
        backend="sglang", engine_args=EngineSettings(num_gpu_blocks=2000, fast_forward=ff)))) for ff in (True, False)]
    assert outs[0].calls.equals(outs[1].calls) and outs[0].end_s == outs[1].end_s


def test_prefix_cache_follows_the_backend_unless_set() -> None:
    assert build_setup(RunConfig(backend="vllm")).prefix_cache == "block"
    assert build_setup(RunConfig(backend="sglang")).prefix_cache == "radix"
    forced = RunConfig(backend="sglang", engine_args=EngineSettings(prefix_cache="block"))
    assert build_setup(forced).prefix_cache == "block"
    assert build_setup(forced).fingerprint == build_setup(RunConfig(backend="vllm")).fingerprint


def test_run_backend_sglang_end_to_end(run_cli, tmp_path: Path) -> None:
    result = run_cli("run", "--backend", "sglang", "--workload", "swe-smoke", "--results-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["config"]["backend"] == "sglang" and out["completed_sessions"] == out["num_sessions"] > 0
    run_json = json.loads((Path(out["run_dir"]) / "run.json").read_text())
    assert run_json["config"]["sglang"]["lpm_fallback_queue_len"] == 128
