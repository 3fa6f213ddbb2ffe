"""The scheduler plugin inside a real vLLM engine (the CPU build, a tiny model with dummy weights).

Every assertion reads vLLM-side evidence: the plugin's step log (what vLLM's scheduler actually scheduled,
with how many tokens, whom it preempted) and the engine's own outputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.config import RunConfig
from harness.engines.vllm.engine import VllmSetup, engine_args, prepare_environment

pytestmark = pytest.mark.engine

BLOCK = 32
PROMPT = 500  # 16 blocks
OUTPUT = 160  # grows each call to 21 blocks; four of them need 84 blocks of the 40 there are


def run_engine(model_dir: Path, tmp: Path, backend: str, sets: dict[str, Any] | None = None,
               calls: int = 4, blocks: int = 40) -> tuple[list[dict], dict[str, list[int]], Any]:
    """Submit `calls` calls of different sessions at once, step vLLM to the end; return the step log,
    each call's output ids and the scheduler."""
    prepare_environment(str(tmp / "cache"))
    from vllm import EngineArgs, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.llm_engine import LLMEngine

    config = RunConfig(backend=backend, engine="vllm", **(sets or {}))
    log = tmp / f"steps-{backend}.jsonl"
    setup = VllmSetup(model=str(model_dir), max_model_len=1024, num_gpu_blocks=blocks, block_size=BLOCK,
                      max_num_batched_tokens=512, load_format="dummy",
                      # admit on the first chunk (vLLM < 0.32's rule): running prefills then meet full KV
                      scheduler_reserve_full_isl=False)
    llm = LLMEngine.from_engine_args(EngineArgs(**engine_args(
        setup, {"config": config.model_dump(mode="json"), "step_log": str(log)})))
    try:
        for i in range(calls):
            meta = {"call_id": f"s{i}#0", "session_id": f"s{i}", "turn": 0, "is_last_turn": False,
                    "tool_name": "grep", "session_arrival_s": 0.0}
            params = SamplingParams(max_tokens=OUTPUT, ignore_eos=True, output_kind=RequestOutputKind.DELTA,
                                    extra_args={"mars": meta})
            llm.add_request(f"s{i}#0", TokensPrompt(prompt_token_ids=[100 + i + (j % 7) for j in range(PROMPT)]),
                            params)
        outputs: dict[str, list[int]] = {f"s{i}#0": [] for i in range(calls)}
        while llm.has_unfinished_requests():
            for out in llm.step():
                outputs[out.request_id].extend(out.outputs[0].token_ids)
        sched = llm.engine_core.engine_core.scheduler
        steps = [json.loads(line) for line in log.read_text().splitlines()]
        return steps, outputs, sched
    finally:
        llm.engine_core.shutdown()


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("plugin")
    mars = {"mars": {"quanta": (256, 128, 64, 32)}}
    yield {
        "vllm": run_engine(tiny_model_dir, tmp, "vllm"),
        "mars": run_engine(tiny_model_dir, tmp, "mars", mars),
    }


def _prefills(steps: list[dict]) -> list[tuple[str, int]]:
    return [(cid, n) for s in steps for cid, n, phase, _ in s["scheduled"] if phase == "prefill"]


def test_every_call_finishes_with_its_output_length(runs: dict[str, Any]) -> None:
    for steps, outputs, _ in runs.values():
        assert {cid: len(ids) for cid, ids in outputs.items()} == {f"s{i}#0": OUTPUT for i in range(4)}


def test_session_metadata_reaches_the_scheduler(runs: dict[str, Any]) -> None:
    # vLLM renames requests (a random suffix): the ids in the log are the harness's, from extra_args
    for steps, _, _ in runs.values():
        assert {cid for s in steps for cid, *_ in s["scheduled"]} == {f"s{i}#0" for i in range(4)}


def test_mlfq_quanta_cap_prefill_chunks(runs: dict[str, Any]) -> None:
    vllm_chunks = [n for _, n in _prefills(runs["vllm"][0])]
    mars_chunks = [n for _, n in _prefills(runs["mars"][0])]
    assert max(vllm_chunks) == PROMPT  # vLLM takes a whole prompt in one step (budget 512)
    assert max(mars_chunks) <= 256  # MARS: at most the level-0 quantum while other calls compete
    assert any(s.get("capped") for s in runs["mars"][0])


def test_decodes_are_never_starved_by_prefills(runs: dict[str, Any]) -> None:
    """Every running decode gets its token in any step that gives a prefill chunk tokens."""
    for steps in (runs["mars"][0],):
        checked = 0
        for s in steps:
            scheduled = {cid for cid, *_ in s["scheduled"]}
            preempted = set(s["preempted"])
            if any(phase == "prefill" for _, _, phase, _ in s["scheduled"]):
                decodes = {cid for cid, phase in s["running_before"] if phase == "decode"} - preempted
                assert decodes <= scheduled, s
                checked += bool(decodes)
        assert checked > 0


def test_chunks_shrink_before_anyone_is_preempted(runs: dict[str, Any]) -> None:
    steps = runs["mars"][0]
    assert any(s.get("shrunk") for s in steps)
    for s in steps:
        for v in s.get("victims", []):
            phases = dict(s["running_before"])
            if phases.get(v["for"]) == "prefill":  # a prefill chunk preempts only once shrunk to one block
                assert v["tokens"] <= BLOCK, v


def test_victims_follow_the_policy_and_vllm_preempts_them(runs: dict[str, Any]) -> None:
    for name in ("vllm", "mars"):
        steps = runs[name][0]
        victims = [v for s in steps for v in s.get("victims", [])]
        preempted = [cid for s in steps for cid in s["preempted"]]
        assert victims and preempted == [v["victim"] for v in victims], name
        for v in victims:
            candidates = v["running"]
            if name == "vllm":  # FCFS: the one that entered the running queue last
                assert v["victim"] == candidates[-1][0]
            else:  # MARS: decodes are evicted last (its full rule is unit-tested on the sim engine)
                chosen = next(c for c in candidates if c[0] == v["victim"])
                if any(c[1] == "prefill" for c in candidates):
                    assert chosen[1] == "prefill"


def test_a_pin_keeps_the_session_kv_for_its_next_call(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Continuum pins a call's KV across a short tool; the next call is admitted onto the pin (its
    prefix is a cache hit vLLM reports) and the pin's references are dropped."""
    prepare_environment(str(tmp_path / "cache"))
    from vllm import EngineArgs, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.llm_engine import LLMEngine

    config = RunConfig(backend="continuum", engine="vllm")
    setup = VllmSetup(model=str(tiny_model_dir), max_model_len=1024, num_gpu_blocks=40, block_size=BLOCK,
                      load_format="dummy")
    llm = LLMEngine.from_engine_args(EngineArgs(**engine_args(setup, {"config": config.model_dump(mode="json")})))
    sched = llm.engine_core.engine_core.scheduler
    try:
        def call(turn: int, prompt: list[int], prev_tool: dict | None) -> tuple[list[int], int]:
            meta = {"call_id": f"s#{turn}", "session_id": "s", "turn": turn, "is_last_turn": turn == 1,
                    "tool_name": "grep" if turn == 0 else None, "session_arrival_s": 0.0, "prev_tool": prev_tool}
            params = SamplingParams(max_tokens=8, ignore_eos=True, output_kind=RequestOutputKind.DELTA,
                                    extra_args={"mars": meta})
            llm.add_request(f"s#{turn}", TokensPrompt(prompt_token_ids=prompt), params)
            ids, cached = [], 0
            while llm.has_unfinished_requests():
                for out in llm.step():
                    ids.extend(out.outputs[0].token_ids)
                    cached = out.num_cached_tokens or cached
            return ids, cached

        first = [200 + (j % 11) for j in range(300)]
        out, _ = call(0, first, None)
        assert list(sched.pins) == ["s"] and sched.counters["pins_made"] == 1
        pinned = sched.pins["s"].computed_tokens
        assert pinned == 300 + 8 - 1  # the call's computed context (its last token's KV is never computed)
        held = -(-pinned // BLOCK)  # every block the call held, the partial last one too (as the sim's pin)
        assert sched.pins["s"].num_blocks == held
        assert sched.kv_cache_manager.block_pool.get_num_free_blocks() == 40 - 1 - held
        _, cached = call(1, first + out + [300 + j for j in range(50)], {"name": "grep", "duration_s": 0.5})
        assert cached >= pinned // BLOCK * BLOCK  # vLLM's own count: the pin's full blocks were prefix hits
        assert not sched.pins and sched.counters["pins_used"] == 1
        assert sched.mb_policy.tools.count("grep") == 1  # the tool's duration reached the policy
    finally:
        llm.engine_core.shutdown()
