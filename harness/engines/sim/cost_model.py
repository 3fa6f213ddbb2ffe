"""How long one engine step takes, and how many KV blocks fit: a roofline over a `Profile` of coefficients.

Kept apart from scheduling (as in Vidur): the sim engine decides *what* runs in a step and asks this
module only *how long* it takes, through aggregates of the batch (`StepShape`), never per-request lists,
because it is called once per engine step, tens of thousands of times per run.

Step time (all quantities per GPU; T = prefill + decode tokens in the step, S = sequences in it)::

    compute = (flops_per_token * T                    2 x active matmul params (not the LM head)
               + flops_per_logit_row * S              LM head, once per sequence (vLLM samples 1 row)
               + flops_per_attention_pair * pairs)    4 x layers x q_heads x head_dim (QK^T and PV)
              / flops_per_s
    memory  = (dense_weight_bytes                     every non-expert weight, read once per step
               + expert_weight_bytes * E_distinct(T)  MoE: only the experts the batch routes to
               + kv_bytes_per_token * (kv_read + T))  KV of the context read, KV of new tokens written
              / hbm_bytes_per_s
    comm    = allreduces_per_step * (allreduce_latency_s + allreduce_bytes_per_token * T / allreduce_bytes_per_s)
    step    = max(compute, memory) + comm + step_overhead_s + layer_overhead_s * layers + seq_overhead_s * S

    E_distinct(T) = E * (1 - (1 - k/E)^T)   expected distinct experts per layer when T tokens each pick
                                            k of E uniformly (routing is near-uniform after load balancing)

where pairs = sum over sequences of new x (context_before + (new + 1) / 2) (query-key pairs under a
causal mask) and kv_read = sum of context_before. Compute and memory overlap (the roofline max); the
tensor-parallel all-reduces (two per layer, ring: each GPU sends 2(tp-1)/tp of the activations) and the
fixed costs do not. A step that starts after the engine sat idle for at least IDLE_WAKE_AFTER_S also pays
`idle_wake_s` (worker threads asleep and caches cold: about 2 ms on the CPU build; the sim engine adds it).
Not modelled: sliding-window attention (all layers are treated as full attention),
activation traffic, the input-embedding gather, kernel efficiency falling with small shapes beyond the
per-layer overhead. `mars-bench calibrate` refits the coefficients against a real engine.

KV capacity follows vLLM's memory profile: of `gpu_memory_bytes * gpu_memory_utilization`, the weights
and a reserve are taken and the rest is cut into blocks of `block_size` tokens. See `num_kv_blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.engines.sim.hardware import GiB, GpuSpec, ModelSpec, read_json_object
from harness.errors import BadInput
from workloads.model import format_validation_error

ACTIVATION_BYTES = 2  # bf16 activations and all-reduce payloads
IDLE_WAKE_AFTER_S = 0.02  # an idle gap at least this long makes the next step pay `idle_wake_s`

# Memory vLLM keeps outside the KV cache besides weights and the activation peak: CUDA context, cuBLAS
# and NCCL workspaces, CUDA graphs, sampler buffers. vLLM's own profile of Llama-3-8B on one H100 shows
# 1.79 GiB of non-torch memory (3.58 GiB at tp=2, NCCL) besides 1.26 GiB of activation peak
# (vllm-project/vllm#10511); we round the non-activation part up to 2 GiB to cover the sampler.
RESERVE_FIXED_BYTES = 2.0 * GiB
RESERVE_FIXED_BYTES_TP = 3.8 * GiB

# vLLM V1's default token budget for `vllm serve` on GPUs with >= 70 GiB; its profiling pass runs a
# forward of this many tokens, so the activation peak scales with it.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


# The physical range of a profile's rates and fixed costs: wide around every GPU there is, so a profile
# outside it is a typo or a failed fit (a tiny flops_per_s would make one step outlast what a float holds).
PHYSICAL_RANGES: dict[str, tuple[float, float]] = {
    "flops_per_s": (1e9, 1e21), "hbm_bytes_per_s": (1e8, 1e18), "allreduce_bytes_per_s": (1e6, 1e18),
    "step_overhead_s": (0.0, 60.0), "layer_overhead_s": (0.0, 60.0), "seq_overhead_s": (0.0, 60.0),
    "idle_wake_s": (0.0, 600.0), "allreduce_latency_s": (0.0, 60.0), "gpu_memory_bytes": (2**20, 1e15),
    "kv_bytes_per_token": (1.0, 1e9), "num_gpu_blocks": (1, 1e8), "block_size": (1, 2**16),
    "max_num_batched_tokens": (1, 1e8), "num_layers": (1, 1e5),
}
# The most KV blocks the simulated cache holds (its tables are per block): 1.6e9 tokens at 16 per block.
MAX_KV_BLOCKS = 10**8
# Any other number of a profile (work per token, bytes, counts) above this is not a real model's.
MAX_PROFILE_VALUE = 1e18


class Profile(BaseModel):
    """Every coefficient the cost model uses, for one GPU x model x tensor-parallel degree, per GPU.

    Built from specs by `from_specs`; saved and loaded as JSON so a calibration can replace any number
    (`with_overrides` for a partial update). The model- and tp-dependent numbers are computed once in
    `from_specs`: `gpu`, `model` and `tp` are labels, and changing `tp` here does not re-shard anything.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    gpu: str
    model: str
    tp: int = Field(default=1, ge=1)

    # Rates the hardware reaches (peak x efficiency).
    flops_per_s: float = Field(gt=0)
    hbm_bytes_per_s: float = Field(gt=0)
    # Fixed costs.
    step_overhead_s: float = Field(ge=0)
    layer_overhead_s: float = Field(ge=0)
    seq_overhead_s: float = Field(ge=0)
    idle_wake_s: float = Field(default=0.0, ge=0, description="extra time of the first step after the engine sat "
                               "idle (threads asleep, caches cold); measured by calibration, 0 = not modelled")
    # Tensor-parallel all-reduce.
    allreduces_per_step: int = Field(ge=0, description="2 per layer when tp > 1, else 0")
    allreduce_latency_s: float = Field(ge=0)
    allreduce_bytes_per_s: float = Field(gt=0)
    allreduce_bytes_per_token: float = Field(ge=0, description="bytes each GPU sends per token per all-reduce")
    # Work per unit of batch, per GPU.
    num_layers: int = Field(gt=0)
    flops_per_token: float = Field(ge=0, description="2 x active params a token passes through, LM head excluded")
    flops_per_logit_row: float = Field(ge=0, description="2 x LM-head params, once per sequence")
    flops_per_attention_pair: float = Field(ge=0, description="4 x layers x q_heads x head_dim")
    dense_weight_bytes: float = Field(ge=0, description="weights read every step (all but routed experts)")
    expert_weight_bytes: float = Field(ge=0, description="one routed expert summed over all MoE layers")
    num_experts: int = Field(ge=0)
    experts_per_token: int = Field(ge=0)
    kv_bytes_per_token: float = Field(gt=0)
    # Memory and KV blocks.
    gpu_memory_bytes: float = Field(gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    weight_bytes: float = Field(ge=0, description="weights stored per GPU")
    reserve_fixed_bytes: float = Field(ge=0)
    activation_bytes_per_token: float = Field(ge=0, description="activation peak per batched token")
    max_num_batched_tokens: int = Field(default=DEFAULT_MAX_NUM_BATCHED_TOKENS, gt=0)
    block_size: int = Field(default=16, gt=0)
    num_gpu_blocks: int | None = Field(default=None, gt=0, description="use this block count, as vLLM's override")

    @model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        """JSON's true/false is not a number (pydantic would read `true` as 1)."""
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, bool):
                    raise ValueError(f"{key}: must be a number, not true/false")
        return data

    @model_validator(mode="after")
    def _physical(self) -> Profile:
        for name, value in self.model_dump(exclude={"gpu", "model"}).items():
            if value is None:
                continue
            low, high = PHYSICAL_RANGES.get(name, (0.0, MAX_PROFILE_VALUE))
            if not low <= value <= high:
                raise ValueError(f"{name}: {value:g} is outside the physical range [{low:g}, {high:g}]")
        return self

    @classmethod
    def from_specs(cls, gpu: GpuSpec, model: ModelSpec, tp: int = 1) -> Profile:
        """The default profile of `model` on `tp` x `gpu`: spec-sheet peaks times the GPU's efficiencies."""
        _check_tp(model, tp)
        lm_head = model.vocab_params
        # A tied LM head is the embedding matrix itself; an untied model also stores an input embedding,
        # of which a step reads only the rows of its tokens (negligible).
        unread_embedding = 0 if model.tie_word_embeddings else model.vocab_params
        return cls(
            gpu=gpu.name,
            model=model.name,
            tp=tp,
            flops_per_s=gpu.peak_flops * gpu.compute_efficiency,
            hbm_bytes_per_s=gpu.hbm_bytes_per_s * gpu.bandwidth_efficiency,
            step_overhead_s=gpu.step_overhead_s,
            layer_overhead_s=gpu.layer_overhead_s,
            seq_overhead_s=gpu.seq_overhead_s,
            allreduces_per_step=2 * model.num_layers if tp > 1 else 0,
            allreduce_latency_s=gpu.allreduce_latency_s,
            allreduce_bytes_per_s=gpu.interconnect_bytes_per_s * gpu.bandwidth_efficiency,
            allreduce_bytes_per_token=2 * (tp - 1) / tp * model.hidden_size * ACTIVATION_BYTES,
            num_layers=model.num_layers,
            flops_per_token=2 * (model.active_params - model.embedding_params) / tp,
            flops_per_logit_row=2 * lm_head / tp,
            flops_per_attention_pair=4 * model.num_layers * model.num_attention_heads * model.head_dim / tp,
            dense_weight_bytes=(model.dense_params - unread_embedding) * model.weight_bytes_per_param / tp,
            expert_weight_bytes=(
                model.expert_params / model.num_experts * model.expert_bytes_per_param / tp if model.is_moe else 0.0
            ),
            num_experts=model.num_experts,
            experts_per_token=model.experts_per_token,
            kv_bytes_per_token=kv_bytes_per_token(model, tp),
            gpu_memory_bytes=gpu.hbm_bytes,
            weight_bytes=model.weight_bytes / tp,
            reserve_fixed_bytes=RESERVE_FIXED_BYTES if tp == 1 else RESERVE_FIXED_BYTES_TP,
            activation_bytes_per_token=activation_bytes_per_token(model, tp),
        )

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "profile override") -> Profile:
        """A copy with some coefficients replaced, validated; unknown or bad fields raise BadInput."""
        return _validate({**self.model_dump(), **overrides}, source)

    @classmethod
    def load(cls, path: str | Path, base: Profile | None = None) -> Profile:
        """A profile from JSON. With `base`, the file may hold only the fields it changes."""
        data = read_json_object(Path(path), f"profile {path}")
        return base.with_overrides(data, source=f"profile {path}") if base else _validate(data, f"profile {path}")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")


def _validate(data: Mapping[str, Any], source: str) -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        raise BadInput(f"{source}: {format_validation_error(e)}") from None


def _check_tp(model: ModelSpec, tp: int) -> None:
    """vLLM shards attention heads across GPUs, so tp must divide them."""
    if tp < 1 or model.num_attention_heads % tp:
        raise BadInput(
            f"tp={tp} must be a positive divisor of {model.name}'s {model.num_attention_heads} attention heads"
        )


def kv_heads_per_gpu(model: ModelSpec, tp: int = 1) -> int:
    """KV heads each GPU stores: split across GPUs, replicated when tp exceeds them (as vLLM does)."""
    return math.ceil(model.num_kv_heads / tp)


def kv_bytes_per_token(model: ModelSpec, tp: int = 1) -> int:
    """KV-cache bytes one token occupies on each GPU: K and V, every layer, every KV head."""
    return int(2 * model.num_layers * kv_heads_per_gpu(model, tp) * model.head_dim * model.kv_bytes)


def activation_bytes_per_token(model: ModelSpec, tp: int = 1) -> float:
    """Peak activation bytes per batched token in one layer, the buffers alive at once: four hidden-size
    vectors (residual, normed input, attention output, MLP output), the QKV projection, and the MLP's
    gate, up and activated intermediates (times k token copies for MoE, as vLLM's fused MoE kernel
    allocates them). For Llama-3-8B at 8192 tokens this gives 1.0 GiB; vLLM measures 1.26 GiB, the
    rest being the sampler's buffers, which the fixed reserve covers."""
    qkv = (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim / tp
    mlp = 3 * max(model.experts_per_token, 1) * model.intermediate_size / tp
    return ACTIVATION_BYTES * (4 * model.hidden_size + qkv + mlp)


def reserve_bytes(profile: Profile) -> float:
    """Memory inside the utilisation budget that is neither weights nor KV: a fixed part plus the
    activation peak of a forward pass of `max_num_batched_tokens` (vLLM measures this peak by running
    such a pass; we estimate it from the layer shapes)."""
    return profile.reserve_fixed_bytes + profile.activation_bytes_per_token * profile.max_num_batched_tokens


def num_kv_blocks(profile: Profile) -> int:
    """KV blocks per GPU: floor((memory x utilisation - weights - reserve) / (block_size x KV bytes/token)),
    or `num_gpu_blocks` when set. BadInput when the weights leave no room."""
    if profile.num_gpu_blocks is not None:
        return profile.num_gpu_blocks
    budget = profile.gpu_memory_bytes * profile.gpu_memory_utilization
    free = budget - profile.weight_bytes - reserve_bytes(profile)
    blocks = math.floor(free / (profile.block_size * profile.kv_bytes_per_token))
    if blocks > MAX_KV_BLOCKS:
        raise BadInput(f"{profile.model} on {profile.gpu}: {blocks:,} KV blocks is more than the simulator holds "
                       f"({MAX_KV_BLOCKS:,}); check the profile's gpu_memory_bytes and kv_bytes_per_token")
    if blocks < 1:
        raise BadInput(
            f"{profile.model} does not fit on {profile.gpu} at tp={profile.tp}: "
            f"{profile.weight_bytes / GiB:.1f} GiB of weights + {reserve_bytes(profile) / GiB:.1f} GiB reserve "
            f"per GPU, {budget / GiB:.1f} GiB usable at "
            f"gpu_memory_utilization {profile.gpu_memory_utilization} (raise tp or use a larger GPU)"
        )
    return blocks


@dataclass(frozen=True, slots=True)
class StepShape:
    """What the cost of one step depends on, aggregated over the sequences scheduled in it.

    `attention_pairs` = sum of new x (context_before + (new + 1) / 2): the query-key pairs computed
    under a causal mask (always an integer). `kv_tokens_read` = sum of context_before: cached tokens
    whose KV the step reads. A decode is a sequence with one new token and some context.
    """

    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    attention_pairs: int = 0
    kv_tokens_read: int = 0
    num_seqs: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[int, int]]) -> StepShape:
        """Aggregate (new_tokens, context_before) for each scheduled sequence."""
        prefill = decode = pairs = read = seqs = 0
        for new, context in chunks:
            if new < 1 or context < 0:
                raise ValueError(f"chunk (new={new}, context={context}): need new >= 1 and context >= 0")
            if new == 1 and context > 0:
                decode += 1
            else:
                prefill += new
            pairs += new * context + new * (new + 1) // 2
            read += context
            seqs += 1
        return cls(prefill, decode, pairs, read, seqs)


def expected_distinct_experts(profile: Profile, tokens: int) -> float:
    """Experts per MoE layer that at least one of `tokens` routes to, for uniform top-k routing."""
    if profile.num_experts == 0:
        return 0.0
    e = profile.num_experts
    return e * (1.0 - (1.0 - profile.experts_per_token / e) ** tokens)


def step_time(profile: Profile, shape: StepShape) -> float:
    """Seconds one engine step takes (formula in the module docstring). An empty step takes 0."""
    p, tokens = profile, shape.num_prefill_tokens + shape.num_decode_tokens
    if tokens == 0:
        return 0.0
    flops = (
        p.flops_per_token * tokens
        + p.flops_per_logit_row * shape.num_seqs
        + p.flops_per_attention_pair * shape.attention_pairs
    )
    traffic = (
        p.dense_weight_bytes
        + p.expert_weight_bytes * expected_distinct_experts(p, tokens)
        + p.kv_bytes_per_token * (shape.kv_tokens_read + tokens)
    )
    comm = 0.0
    if p.allreduces_per_step:
        per_allreduce = p.allreduce_latency_s + p.allreduce_bytes_per_token * tokens / p.allreduce_bytes_per_s
        comm = p.allreduces_per_step * per_allreduce
    return (
        max(flops / p.flops_per_s, traffic / p.hbm_bytes_per_s)
        + comm
        + p.step_overhead_s
        + p.layer_overhead_s * p.num_layers
        + p.seq_overhead_s * shape.num_seqs
    )


def least_step_time(profile: Profile, tokens: int) -> float:
    """A lower bound on the time of ANY step of `tokens` tokens (whatever its sequences and contexts): the
    formula of `step_time` with one sequence, no context read and `tokens` query-key pairs. Every real shape
    has at least one sequence, pairs >= tokens (a new token attends at least to itself) and reads >= 0 KV
    tokens, and `step_time` grows with each of them."""
    if tokens <= 0:
        return 0.0
    return step_time(profile, StepShape(num_prefill_tokens=tokens, attention_pairs=tokens, num_seqs=1))


@dataclass(frozen=True, slots=True)
class GpuLowerBounds:
    """Per-token and per-step costs that no step can undercut, for harness.bound's GPU relaxations.

    Any step of the cost model above (T tokens, S >= 1 sequences, token i at position p_i, sequence j
    with context c_j and n_j new tokens, at most `kv_tokens` tokens of KV resident) takes at least

    * compute machine: sum_i (token_s + pair_s * (p_i + 1)) — step >= compute + fixed, compute >=
      (flops_per_token * T + attention pairs) / flops_per_s, pairs = sum_i (p_i + 1) exactly, and
      token_s = flops_per_token / flops_per_s + the all-reduce bytes per token (the limit of the
      per-token cost at an unbounded batch, below every finite batch's);
    * memory machine: sum_j (kv_token_s * (c_j + n_j) + resident_token_s * r_j), r_j the sequence's
      resident tokens that no other sequence shares (sum_j r_j <= kv_tokens) — step >= traffic /
      hbm_bytes_per_s + fixed, traffic >= weights at one routed token + KV read and written, and
      resident_token_s = (that weight read + the fixed costs of a one-token step) / kv_tokens;
    * step_s: every step lasts at least a one-token step (least_step_time(1)).
    """

    token_s: float
    pair_s: float
    kv_token_s: float
    resident_token_s: float
    step_s: float

    @classmethod
    def of(cls, profile: Profile) -> GpuLowerBounds:
        p = profile
        kv_tokens = num_kv_blocks(p) * p.block_size
        comm_per_token = p.allreduces_per_step * p.allreduce_bytes_per_token / p.allreduce_bytes_per_s
        fixed_one = (p.allreduces_per_step * (p.allreduce_latency_s + p.allreduce_bytes_per_token / p.allreduce_bytes_per_s)
                     + p.step_overhead_s + p.layer_overhead_s * p.num_layers + p.seq_overhead_s)
        weights_one = (p.dense_weight_bytes + p.expert_weight_bytes * expected_distinct_experts(p, 1)) / p.hbm_bytes_per_s
        return cls(
            token_s=p.flops_per_token / p.flops_per_s + comm_per_token,
            pair_s=p.flops_per_attention_pair / p.flops_per_s,
            kv_token_s=p.kv_bytes_per_token / p.hbm_bytes_per_s,
            resident_token_s=(weights_one + fixed_one) / kv_tokens,
            step_s=least_step_time(p, 1),
        )


# Example steps `describe` reports: (label, chunks).
_EXAMPLES: tuple[tuple[str, list[tuple[int, int]]], ...] = (
    ("decode_bs1_ctx8k_ms", [(1, 8192)]),
    ("decode_bs64_ctx8k_ms", [(1, 8192)] * 64),
    ("prefill_2048_ms", [(2048, 0)]),
)


def describe(profile: Profile) -> dict[str, Any]:
    """A summary for `mars-bench backends`: KV capacity, weights per GPU and example step times."""
    blocks = num_kv_blocks(profile)
    summary: dict[str, Any] = {
        "gpu": profile.gpu,
        "model": profile.model,
        "tp": profile.tp,
        "weight_bytes_per_gpu": profile.weight_bytes,
        "kv_bytes_per_token": profile.kv_bytes_per_token,
        "block_size": profile.block_size,
        "num_kv_blocks": blocks,
        "kv_capacity_tokens": blocks * profile.block_size,
    }
    for label, chunks in _EXAMPLES:
        summary[label] = round(step_time(profile, StepShape.from_chunks(chunks)) * 1e3, 3)
    return summary
