"""The roofline step-time model and the GPU / model catalog: hand-computed values, published behaviour,
monotonicity, profile files and their errors.

Expected values are written out as arithmetic on literals, never obtained from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.engines.sim.cost_model import (
    Profile,
    StepShape,
    describe,
    kv_bytes_per_token,
    num_kv_blocks,
    step_time,
)
from harness.engines.sim.hardware import GPUS, MODELS, ModelSpec, get_gpu, get_model
from harness.errors import BadInput

GiB = 2**30


def profile(gpu: str = "h100", model: str = "llama-3.1-8b", tp: int = 1) -> Profile:
    return Profile.from_specs(get_gpu(gpu), get_model(model), tp)


def decode(batch: int, context: int) -> StepShape:
    return StepShape.from_chunks([(1, context)] * batch)


def prefill(tokens: int) -> StepShape:
    return StepShape.from_chunks([(tokens, 0)])


def assert_one_line(err: pytest.ExceptionInfo[BadInput], *fragments: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text


# Round coefficients, so the expected step times below can be computed on paper.
ROUND = dict(
    flops_per_s=1e14, hbm_bytes_per_s=1e12, step_overhead_s=1e-3, layer_overhead_s=1e-5, num_layers=32,
    seq_overhead_s=1e-5, flops_per_token=1.6e10, flops_per_logit_row=1e9, flops_per_attention_pair=5e5,
    dense_weight_bytes=1.6e10, kv_bytes_per_token=1e5,
)

# Qwen/Qwen3-30B-A3B config.json (the keys that matter; same architecture as Qwen3-Coder-30B-A3B).
QWEN3_30B_A3B_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
    "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "max_position_embeddings": 40960,
}


# --- KV capacity --------------------------------------------------------------------------------------


def test_kv_bytes_per_token_is_k_and_v_for_every_layer_and_kv_head() -> None:
    assert kv_bytes_per_token(get_model("llama-3.1-8b")) == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token(get_model("qwen3-coder-30b-a3b")) == 2 * 48 * 4 * 128 * 2 == 98304
    assert kv_bytes_per_token(get_model("llama-3.1-70b"), tp=4) == 2 * 80 * (8 // 4) * 128 * 2


def test_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    # gpt-oss-120b has 8 KV heads: at tp=16 each GPU still holds one.
    assert kv_bytes_per_token(get_model("gpt-oss-120b"), tp=16) == 2 * 36 * 1 * 64 * 2


def test_block_count_by_hand_on_round_numbers() -> None:
    p = profile().with_overrides(dict(
        gpu_memory_bytes=80e9, gpu_memory_utilization=0.9, weight_bytes=16e9, reserve_fixed_bytes=2e9,
        activation_bytes_per_token=100_000, max_num_batched_tokens=8192, block_size=16, kv_bytes_per_token=131072,
    ))
    # (72e9 - 16e9 - 2e9 - 8192 * 1e5) / (16 * 131072) = 53.1808e9 / 2097152 = 25358.58
    assert num_kv_blocks(p) == 25358


def test_block_count_of_llama_8b_on_h100_by_hand() -> None:
    # 79.22 GiB visible x 0.9, minus 2 GiB fixed reserve, minus the activation peak of 8192 tokens at
    # 2 * (4*4096 + (32+16)*128 + 3*14336) = 131072 bytes each = 1 GiB, minus 8.03B bf16 weights.
    # vLLM reports 53.29 GiB of KV memory for this setup; this leaves 53.34 GiB.
    expected = ((79.22 * 0.9 - 2 - 1) * GiB - 8_030_261_248 * 2) // (16 * 131072)
    assert num_kv_blocks(profile()) == expected == 27310


def test_num_gpu_blocks_override_wins() -> None:
    assert num_kv_blocks(profile().with_overrides({"num_gpu_blocks": 1234})) == 1234


def test_larger_blocks_mean_fewer_blocks_for_the_same_memory() -> None:
    base, doubled = profile(), profile().with_overrides({"block_size": 32})
    assert num_kv_blocks(doubled) == num_kv_blocks(base) // 2


def test_a_model_that_does_not_fit_is_bad_input() -> None:
    with pytest.raises(BadInput) as err:
        num_kv_blocks(profile(model="llama-3.1-70b", tp=1))
    assert_one_line(err, "llama-3.1-70b", "h100", "raise tp")
    assert num_kv_blocks(profile(model="llama-3.1-70b", tp=4)) > 0


def test_tp_must_divide_attention_heads() -> None:
    with pytest.raises(BadInput) as err:
        profile(model="llama-3.1-70b", tp=3)
    assert_one_line(err, "tp=3", "64")


# --- step time by hand --------------------------------------------------------------------------------


def test_pure_decode_matches_the_formula_by_hand() -> None:
    p = profile().with_overrides(ROUND)
    # 4 sequences, 1000 tokens of context each: T=4, S=4, pairs = 4 * (1000 + 1), KV read 4000.
    compute = (1.6e10 * 4 + 1e9 * 4 + 5e5 * 4004) / 1e14  # 0.70 ms: decode is memory-bound
    memory = (1.6e10 + 1e5 * (4000 + 4)) / 1e12  # 16.4 ms
    assert compute < memory
    assert step_time(p, decode(4, 1000)) == pytest.approx(memory + 1e-3 + 32 * 1e-5 + 4 * 1e-5, rel=1e-12)
    assert step_time(p, decode(4, 1000)) == pytest.approx(0.0177604, rel=1e-12)


def test_pure_prefill_matches_the_formula_by_hand() -> None:
    p = profile().with_overrides(ROUND)
    # 2048 new tokens, no context: pairs = 2048 * 2049 / 2 = 2098176.
    compute = (1.6e10 * 2048 + 1e9 * 1 + 5e5 * 2098176) / 1e14  # 338 ms: prefill is compute-bound
    memory = (1.6e10 + 1e5 * 2048) / 1e12
    assert compute > memory
    assert step_time(p, prefill(2048)) == pytest.approx(compute + 1e-3 + 32 * 1e-5 + 1e-5, rel=1e-12)
    assert step_time(p, prefill(2048)) == pytest.approx(0.33951088, rel=1e-12)


def test_moe_reads_only_the_experts_the_batch_routes_to() -> None:
    p = profile(model="qwen3-coder-30b-a3b").with_overrides(dict(
        ROUND, flops_per_s=1e18, step_overhead_s=0, layer_overhead_s=0, seq_overhead_s=0,
        dense_weight_bytes=1e9, expert_weight_bytes=1e8, num_experts=128, experts_per_token=8,
    ))
    # One token touches exactly its 8 experts; two touch 128 * (1 - (120/128)^2) = 15.5 on average.
    assert step_time(p, decode(1, 10)) == pytest.approx((1e9 + 1e8 * 8 + 1e5 * (10 + 1)) / 1e12, rel=1e-9)
    assert step_time(p, decode(2, 10)) == pytest.approx((1e9 + 1e8 * 15.5 + 1e5 * (20 + 2)) / 1e12, rel=1e-9)


def test_tensor_parallel_adds_two_all_reduces_per_layer() -> None:
    p = profile(model="llama-3.1-70b", tp=4)
    # Ring all-reduce of one token's 8192 bf16 activations: each GPU sends 2 * 3/4 of them.
    assert p.allreduces_per_step == 2 * 80
    assert p.allreduce_bytes_per_token == 2 * 3 / 4 * 8192 * 2
    p = p.with_overrides(dict(allreduce_latency_s=1e-5, allreduce_bytes_per_s=3e11))
    without = p.with_overrides({"allreduces_per_step": 0})
    comm = 160 * (1e-5 + 24576 * 1 / 3e11)
    assert step_time(p, decode(1, 100)) - step_time(without, decode(1, 100)) == pytest.approx(comm, rel=1e-9)


def test_an_empty_step_takes_no_time() -> None:
    assert step_time(profile(), StepShape()) == 0.0


def test_step_shape_aggregates_chunks() -> None:
    shape = StepShape.from_chunks([(1, 100), (10, 5)])
    # decode: 1 * (100 + 1) pairs; prefill chunk: 10 * 5 + 10 * 11 / 2 pairs.
    assert shape == StepShape(num_prefill_tokens=10, num_decode_tokens=1, attention_pairs=101 + 105,
                              kv_tokens_read=105, num_seqs=2)


# --- published behaviour ------------------------------------------------------------------------------


def test_llama_8b_batch_1_decode_on_h100_takes_a_few_ms() -> None:
    # vLLM serves Llama-3.1-8B bf16 at ~6-8 ms per output token at batch 1 on an H100: 16 GB of weights
    # at ~2.7 TB/s plus step overheads. Hard bound: within 2x.
    ms = step_time(profile(), decode(1, 128)) * 1e3
    assert 3 <= ms <= 16
    assert 6 <= ms <= 8


def test_llama_8b_prefill_2048_on_h100_is_compute_bound_and_tens_of_ms() -> None:
    p = profile()
    ms = step_time(p, prefill(2048)) * 1e3
    assert 40 <= ms <= 120
    # Compute-bound: more bandwidth barely helps, half the FLOP/s nearly doubles the time.
    faster_memory = step_time(p.with_overrides({"hbm_bytes_per_s": 2 * p.hbm_bytes_per_s}), prefill(2048)) * 1e3
    slower_compute = step_time(p.with_overrides({"flops_per_s": p.flops_per_s / 2}), prefill(2048)) * 1e3
    assert faster_memory == pytest.approx(ms)
    assert slower_compute > 1.9 * ms - 2  # minus the fixed overheads, which do not double


def test_qwen3_coder_on_one_h100_holds_about_100k_tokens_of_kv() -> None:
    p = profile(model="qwen3-coder-30b-a3b")
    # ~61 GB of bf16 weights in 71.3 GiB usable leaves ~12 GiB: at 98304 bytes/token, ~130k tokens.
    assert 60.5e9 <= p.weight_bytes <= 61.5e9
    assert 100_000 <= num_kv_blocks(p) * 16 <= 160_000


def test_decode_gets_cheaper_per_token_with_batching() -> None:
    p = profile()
    assert step_time(p, decode(64, 1000)) / 64 < step_time(p, decode(1, 1000)) / 4


# --- catalog and HF configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "total", "active"),
    [
        ("llama-3.1-8b", 8.03e9, 8.03e9),
        ("llama-3.1-70b", 70.6e9, 70.6e9),
        ("qwen3-coder-30b-a3b", 30.5e9, 3.3e9),
        # OpenAI counts 5.13B active without the input embedding (201088 x 2880); we count it.
        ("gpt-oss-120b", 116.83e9, 5.13e9 + 201088 * 2880),
    ],
)
def test_catalog_models_match_published_parameter_counts(name: str, total: float, active: float) -> None:
    model = get_model(name)
    assert model.total_params == pytest.approx(total, rel=0.02)
    assert model.active_params == pytest.approx(active, rel=0.02)


def test_gpt_oss_120b_mxfp4_weights_fit_one_80gb_gpu() -> None:
    # 114.7B expert params at 4.25 bits + 2.1B bf16 others: the ~65 GB checkpoint.
    assert 60e9 <= get_model("gpt-oss-120b").weight_bytes <= 70e9
    assert num_kv_blocks(profile(model="gpt-oss-120b")) > 0


def test_qwen3_30b_a3b_config_counts_30_5b_total_3_3b_active() -> None:
    spec = ModelSpec.from_hf_config(QWEN3_30B_A3B_CONFIG, name="qwen3-30b-a3b")
    assert abs(spec.total_params / 30.5e9 - 1) < 0.03
    assert abs(spec.active_params / 3.3e9 - 1) < 0.03
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.num_experts, spec.experts_per_token) == (
        48, 4, 128, 128, 8)


def test_head_dim_defaults_to_hidden_over_heads(tmp_path: Path) -> None:
    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
              "vocab_size": 1000, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = get_model(str(tmp_path))  # a model directory describes itself
    assert (spec.head_dim, spec.num_kv_heads, spec.name) == (16, 4, tmp_path.name)
    # 2 layers x (4 * 64*64 attention + 2*64 norms + 3 * 64*128 MLP) + 1000*64 tied embedding + 64 norm
    assert spec.total_params == 2 * (4 * 64 * 64 + 2 * 64 + 3 * 64 * 128) + 1000 * 64 + 64


def test_a_config_missing_a_key_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(BadInput) as err:
        ModelSpec.from_hf_config(tmp_path)
    assert_one_line(err, "config.json", "num_hidden_layers")


def test_unknown_gpu_names_the_known_ones() -> None:
    with pytest.raises(BadInput) as err:
        get_gpu("b200")
    assert_one_line(err, "b200", *GPUS)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(BadInput) as err:
        get_model("llama-9")
    assert_one_line(err, "llama-9", *MODELS)


def test_catalog_has_the_documented_entries() -> None:
    assert {"h100", "h200", "a100-80g", "l40s"} <= set(GPUS)
    assert {"qwen3-coder-30b-a3b", "llama-3.1-8b", "llama-3.1-70b", "gpt-oss-120b"} <= set(MODELS)


# --- monotonicity -------------------------------------------------------------------------------------

chunks = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 100_000)), min_size=1, max_size=32)
PROFILES = [profile(), profile(model="qwen3-coder-30b-a3b"), profile(model="llama-3.1-70b", tp=4)]


@settings(max_examples=60, deadline=None)
@given(chunks, st.integers(0, 2), st.integers(0, 31), st.integers(1, 2048), st.integers(1, 50_000))
def test_more_tokens_or_context_never_make_a_step_faster(
    batch: list[tuple[int, int]], which: int, index: int, more_new: int, more_context: int
) -> None:
    p = PROFILES[which]
    base = step_time(p, StepShape.from_chunks(batch))
    i = index % len(batch)
    new, context = batch[i]
    grown = [
        batch + [(more_new, more_context)],  # one more sequence
        batch[:i] + [(new + more_new, context)] + batch[i + 1 :],  # more new tokens
        batch[:i] + [(new, context + more_context)] + batch[i + 1 :],  # longer context
    ]
    for bigger in grown:
        assert step_time(p, StepShape.from_chunks(bigger)) >= base


# --- profile files ------------------------------------------------------------------------------------


def test_profile_json_round_trip(tmp_path: Path) -> None:
    p = profile(model="qwen3-coder-30b-a3b")
    p.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == p


def test_a_partial_profile_file_overrides_only_its_fields(tmp_path: Path) -> None:
    base = profile()
    (tmp_path / "fit.json").write_text(json.dumps({"flops_per_s": 5e14, "step_overhead_s": 0.002}))
    fitted = Profile.load(tmp_path / "fit.json", base=base)
    assert (fitted.flops_per_s, fitted.step_overhead_s) == (5e14, 0.002)
    assert fitted.model_dump(exclude={"flops_per_s", "step_overhead_s"}) == base.model_dump(
        exclude={"flops_per_s", "step_overhead_s"})
    assert step_time(fitted, decode(1, 100)) == pytest.approx(step_time(base, decode(1, 100)) + 0.002 - 0.0004)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["no such file"]),
        ("{not json", ["invalid JSON", "line 1"]),
        ("[1, 2]", ["expected a JSON object"]),
        ('{"flops_per_s": -1}', ["flops_per_s", "must be > 0"]),
        ('{"flops_per_sec": 1e15}', ["flops_per_sec", "unknown field"]),
    ],
)
def test_a_bad_profile_file_is_one_line_naming_file_and_field(
    tmp_path: Path, content: str | None, fragments: list[str]
) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInput) as err:
        Profile.load(path, base=profile())
    assert_one_line(err, str(path), *fragments)


def test_a_partial_file_without_a_base_names_a_missing_field(tmp_path: Path) -> None:
    (tmp_path / "part.json").write_text('{"flops_per_s": 5e14}')
    with pytest.raises(BadInput) as err:
        Profile.load(tmp_path / "part.json")
    assert_one_line(err, "part.json", "missing required field")


def test_a_bad_override_is_bad_input() -> None:
    with pytest.raises(BadInput) as err:
        profile().with_overrides({"gpu_memory_utilization": 1.5})
    assert_one_line(err, "gpu_memory_utilization", "<= 1")


# --- describe -----------------------------------------------------------------------------------------


def test_describe_summarises_capacity_and_example_steps() -> None:
    p = profile()
    d = describe(p)
    assert d["kv_bytes_per_token"] == 131072
    assert d["num_kv_blocks"] == 27310 and d["kv_capacity_tokens"] == 27310 * 16
    assert d["weight_bytes_per_gpu"] == 8_030_261_248 * 2
    assert d["decode_bs1_ctx8k_ms"] < d["decode_bs64_ctx8k_ms"]
    assert d["prefill_2048_ms"] == pytest.approx(step_time(p, prefill(2048)) * 1e3, abs=1e-3)
    json.dumps(d)  # printable with --json
