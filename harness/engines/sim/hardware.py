"""What the simulated engine runs on and what it serves: GPU and model specs, and a small catalog of both.

These are facts (spec sheets, HuggingFace configs) plus a few assumed efficiency factors; turning them
into step times is `cost_model`'s job, so a new GPU or model is one entry here and no formula changes.

Models are described by their HuggingFace `config.json`: the catalog entries below are the published
configs (the keys that matter), counted by `ModelSpec.from_hf_config`, so a catalog model and a local
model directory are described the same way and their parameter counts can be checked against the
published totals (tests/test_cost_model.py does).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness import inputs
from harness.errors import BadInput
from workloads.model import format_validation_error

GiB = 1024**3

# MXFP4 (OCP microscaling): 4-bit values plus one 8-bit shared scale per 32 values = 4.25 bits/param.
MXFP4_BYTES_PER_PARAM = 4.25 / 8

_DTYPE_BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0}
_QUANT_BYTES = {"mxfp4": MXFP4_BYTES_PER_PARAM, "fp8": 1.0}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GpuSpec(_Spec):
    """One GPU: spec-sheet peaks plus the fraction of them an inference engine reaches in practice.

    The efficiency factors and overheads are assumptions (stated per entry), not measurements; the
    `mars-bench calibrate` command fits them to a real engine and saves the result as a profile.
    """

    name: str = Field(min_length=1)
    peak_flops: float = Field(gt=0, description="dense BF16 tensor-core FLOP/s (no sparsity)")
    hbm_bytes_per_s: float = Field(gt=0, description="memory bandwidth, bytes/s")
    hbm_bytes: float = Field(gt=0, description="device memory as CUDA reports it (what vLLM multiplies by utilisation)")
    compute_efficiency: float = Field(gt=0, le=1, description="fraction of peak FLOP/s large GEMMs reach")
    bandwidth_efficiency: float = Field(gt=0, le=1, description="fraction of peak bandwidth streaming kernels reach")
    # Host-side and launch costs of a vLLM V1 step with CUDA graphs: scheduler, input preparation and
    # sampling per step; bookkeeping per sequence; kernel tails and gaps (~10 kernels) per layer.
    step_overhead_s: float = Field(default=4e-4, ge=0)
    layer_overhead_s: float = Field(default=15e-6, ge=0)
    seq_overhead_s: float = Field(default=10e-6, ge=0)
    interconnect_bytes_per_s: float = Field(gt=0, description="GPU-to-GPU bandwidth, one direction")
    allreduce_latency_s: float = Field(ge=0, description="fixed cost of one small tensor-parallel all-reduce")


class ModelSpec(_Spec):
    """One model's architecture and weight storage, as far as step time and KV capacity depend on it.

    `total_params` counts every stored weight (embedding and LM head included, as HF and model cards
    do). `active_params` counts the weights one token passes through: for a MoE model only its
    `experts_per_token` of `num_experts` routed experts; for a dense model it equals `total_params`.
    Routed experts are assumed to be the only difference between the two, so the expert share is
    recovered from them (`expert_params`) without listing it separately.
    """

    name: str = Field(min_length=1)
    hf_id: str = ""
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0, description="MLP width; for MoE the width of one expert")
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    total_params: float = Field(gt=0)
    active_params: float = Field(gt=0)
    num_experts: int = Field(default=0, ge=0, description="routed experts per MoE layer; 0 for dense")
    experts_per_token: int = Field(default=0, ge=0)
    weight_bytes_per_param: float = Field(default=2.0, gt=0, description="non-expert weights (bf16 = 2)")
    expert_weight_bytes_per_param: float | None = Field(
        default=None, gt=0, description="routed-expert weights, when quantised differently (MXFP4 ~0.53)"
    )
    kv_bytes: float = Field(default=2.0, gt=0, description="bytes per KV-cache element (bf16 = 2, fp8 = 1)")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if (self.num_experts == 0) != (self.experts_per_token == 0):
            raise ValueError("num_experts and experts_per_token must both be 0 (dense) or both > 0 (MoE)")
        if self.num_experts and self.experts_per_token >= self.num_experts:
            raise ValueError("experts_per_token must be smaller than num_experts")
        if self.active_params > self.total_params:
            raise ValueError("active_params must not exceed total_params")
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_kv_heads")
        return self

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def vocab_params(self) -> int:
        """One vocabulary matrix (the input embedding, or the LM head)."""
        return self.vocab_size * self.hidden_size

    @property
    def embedding_params(self) -> int:
        """Stored vocabulary matrices: one when the LM head reuses the embedding, else two."""
        return self.vocab_params * (1 if self.tie_word_embeddings else 2)

    @property
    def expert_params(self) -> float:
        """All routed-expert weights: a token skips (E - k) / E of them, which is total - active."""
        if not self.is_moe:
            return 0.0
        skipped_fraction = (self.num_experts - self.experts_per_token) / self.num_experts
        return (self.total_params - self.active_params) / skipped_fraction

    @property
    def dense_params(self) -> float:
        """Everything that is not a routed expert: attention, norms, routers, embeddings."""
        return self.total_params - self.expert_params

    @property
    def expert_bytes_per_param(self) -> float:
        return self.expert_weight_bytes_per_param or self.weight_bytes_per_param

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights as stored on the GPU(s)."""
        return self.dense_params * self.weight_bytes_per_param + self.expert_params * self.expert_bytes_per_param

    @classmethod
    def from_hf_config(
        cls, source: str | Path | Mapping[str, Any], name: str | None = None, hf_id: str = ""
    ) -> ModelSpec:
        """Describe a model from its HuggingFace config.json (a dict, the file, or the model directory).

        Understands llama / qwen2 / qwen3 / qwen3_moe / qwen2_moe / mixtral / gpt_oss style keys.
        Parameter counts are computed from the shapes (see `_count_params`); weight bytes follow
        `torch_dtype` and, for MXFP4 or FP8 checkpoints, `quantization_config.quant_method`.
        """
        config, where, default_name = _read_config(source)
        return _spec_from_config(config, where, name or default_name, hf_id)


def _read_config(source: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str, str]:
    """(config dict, where it came from for error messages, a default model name)."""
    if isinstance(source, Mapping):
        return source, "HF config", str(source.get("_name_or_path") or source.get("model_type") or "custom")
    path = Path(source)
    file = path / "config.json" if path.is_dir() else path
    return read_json_object(file, str(file)), str(file), (path if path.is_dir() else path.parent).name or "custom"


def read_json_object(path: Path, label: str) -> dict[str, Any]:
    """A JSON object from a file; anything else is a one-line BadInput starting with `label`."""
    return inputs.read_json_object(path, label)


class _Config:
    """Typed reads from a HF config dict; a missing or mistyped key is a BadInput naming the source."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def integer(self, *keys: str, default: int | None = None, minimum: int = 0, maximum: int = 10**9) -> int:
        """The first of `keys` present (and not null); the alternatives cover model-family spellings. A value
        below `minimum` (1 for what a shape is divided by or multiplied into) is a BadInput."""
        for key in keys:
            value = self.data.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
                raise BadInput(f"{self.where}: {key} must be an integer in [{minimum}, {maximum:,}], got {value!r}")
            return value
        if default is None:
            raise BadInput(f"{self.where}: missing {keys[0]}")
        return default


def _storage_bytes(cfg: _Config) -> tuple[float, float, float | None]:
    """(bytes per activation/KV element, per non-expert param, per expert param or None when the same).

    vLLM's default kv_cache_dtype ("auto") is the model dtype, also for weight-quantised checkpoints.
    """
    dtype = cfg.data.get("torch_dtype") or cfg.data.get("dtype") or "bfloat16"
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        raise BadInput(f"{cfg.where}: unsupported torch_dtype {dtype!r} (known: {', '.join(_DTYPE_BYTES)})")
    element = _DTYPE_BYTES[dtype]
    quantization = cfg.data.get("quantization_config") or {}
    quant = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
    if quant is None:
        return element, element, None
    if not isinstance(quant, str) or quant not in _QUANT_BYTES:
        raise BadInput(f"{cfg.where}: unsupported quantization {quant!r} (known: {', '.join(_QUANT_BYTES)})")
    if quant == "mxfp4":  # gpt-oss: only the MoE experts are MXFP4; attention, router, embeddings stay bf16
        return element, element, _QUANT_BYTES[quant]
    return element, _QUANT_BYTES[quant], None


def _count_params(cfg: _Config) -> tuple[int, int, dict[str, int]]:
    """(total, active, shapes) from a HF config. Counted: attention projections (+ biases when
    `attention_bias`), two norms per layer, the MLP (gate, up, down), MoE routers and experts, an
    optional shared expert, the embedding, the LM head unless tied, and the final norm. Not counted:
    per-head q/k norms, attention sinks and expert biases (each < 0.1% of the total)."""
    hidden = cfg.integer("hidden_size", minimum=1)
    layers = cfg.integer("num_hidden_layers", minimum=1, maximum=100_000)
    heads = cfg.integer("num_attention_heads", minimum=1)
    kv_heads = cfg.integer("num_key_value_heads", default=heads, minimum=1)
    head_dim = cfg.integer("head_dim", default=max(hidden // heads, 1), minimum=1)
    experts = cfg.integer("num_experts", "num_local_experts", default=0)
    top_k = cfg.integer("num_experts_per_tok", "experts_per_token", default=0) if experts else 0
    dense_width = cfg.integer("intermediate_size", default=0)
    expert_width = cfg.integer("moe_intermediate_size", default=dense_width) if experts else 0
    shared_width = cfg.integer("shared_expert_intermediate_size", default=0) if experts else 0
    vocab = cfg.integer("vocab_size", minimum=1)
    if not dense_width and not expert_width:
        raise BadInput(f"{cfg.where}: missing intermediate_size")

    qkv_width = (heads + 2 * kv_heads) * head_dim
    attention = hidden * qkv_width + heads * head_dim * hidden + 2 * hidden
    if cfg.data.get("attention_bias"):
        attention += qkv_width + hidden
    dense_mlp = 3 * hidden * dense_width
    expert = 3 * hidden * expert_width
    shared = 3 * hidden * shared_width + (hidden if shared_width else 0)  # qwen2_moe: expert + its gate
    moe_shared = hidden * experts + shared  # router + shared expert: every token passes through them

    sparse_step = cfg.integer("decoder_sparse_step", default=1) or 1
    mlp_only_layers = cfg.data.get("mlp_only_layers") or []
    if not isinstance(mlp_only_layers, list):
        raise BadInput(f"{cfg.where}: mlp_only_layers must be a list of layer indices")
    mlp_only = {i for i in mlp_only_layers if isinstance(i, int)}
    moe_layers = sum(1 for i in range(layers) if experts and i not in mlp_only and (i + 1) % sparse_step == 0)
    dense_layers = layers - moe_layers

    embeddings = vocab * hidden * (1 if cfg.data.get("tie_word_embeddings", False) else 2)
    common = layers * attention + dense_layers * dense_mlp + moe_layers * moe_shared + embeddings + hidden
    total = common + moe_layers * experts * expert
    active = common + moe_layers * top_k * expert
    shapes = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  experts=experts, top_k=top_k, width=expert_width or dense_width, vocab=vocab)
    return total, active, shapes


def _spec_from_config(data: Mapping[str, Any], where: str, name: str, hf_id: str) -> ModelSpec:
    cfg = _Config(data, where)
    total, active, s = _count_params(cfg)
    element_bytes, dense_bytes, expert_bytes = _storage_bytes(cfg)
    try:
        return ModelSpec(
            name=name, hf_id=hf_id, num_layers=s["layers"], hidden_size=s["hidden"],
            num_attention_heads=s["heads"], num_kv_heads=s["kv_heads"], head_dim=s["head_dim"],
            intermediate_size=s["width"], vocab_size=s["vocab"],
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            total_params=total, active_params=active, num_experts=s["experts"], experts_per_token=s["top_k"],
            weight_bytes_per_param=dense_bytes, expert_weight_bytes_per_param=expert_bytes,
            kv_bytes=element_bytes,
        )
    except ValidationError as e:
        raise BadInput(f"{where}: {format_validation_error(e)}") from None


# ---------------------------------------------------------------------------------------------------
# Catalog

# Spec-sheet peaks: NVIDIA datasheets (BF16 tensor-core figures are quoted "with sparsity"; dense is
# half). `hbm_bytes` is what CUDA reports, which is what vLLM's "total_gpu_memory" shows: 79.22 GiB on an
# H100 80GB (vLLM's memory-profile log in vllm-project/vllm#10511); the others are from nvidia-smi
# totals less the same ~0.4 GiB. Efficiencies are assumptions to be calibrated: large BF16 GEMMs reach
# ~60-70% of peak on Hopper (power-limited) and ~70% on A100; streaming kernels ~80-85% of bandwidth.
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        # H100 SXM5 80GB: 1,979 TFLOPS BF16 sparse, 3.35 TB/s HBM3, NVLink 4 900 GB/s (450 per direction).
        GpuSpec(name="h100", peak_flops=989.4e12, hbm_bytes_per_s=3.35e12, hbm_bytes=79.22 * GiB,
                compute_efficiency=0.6, bandwidth_efficiency=0.8,
                interconnect_bytes_per_s=450e9, allreduce_latency_s=8e-6),
        # H200 SXM 141GB: same compute as H100, 4.8 TB/s HBM3e, NVLink 4; nvidia-smi 143,771 MiB.
        GpuSpec(name="h200", peak_flops=989.4e12, hbm_bytes_per_s=4.8e12, hbm_bytes=139.8 * GiB,
                compute_efficiency=0.6, bandwidth_efficiency=0.8,
                interconnect_bytes_per_s=450e9, allreduce_latency_s=8e-6),
        # A100 SXM4 80GB: 312 TFLOPS BF16 dense, 2,039 GB/s HBM2e, NVLink 3 600 GB/s (300 per direction).
        GpuSpec(name="a100-80g", peak_flops=312e12, hbm_bytes_per_s=2.039e12, hbm_bytes=79.15 * GiB,
                compute_efficiency=0.7, bandwidth_efficiency=0.85,
                interconnect_bytes_per_s=300e9, allreduce_latency_s=10e-6),
        # L40S 48GB: 362.05 TFLOPS BF16 dense (733 sparse), 864 GB/s GDDR6, no NVLink: PCIe 4.0 x16 at
        # 32 GB/s per direction; nvidia-smi 46,068 MiB.
        GpuSpec(name="l40s", peak_flops=362.05e12, hbm_bytes_per_s=864e9, hbm_bytes=44.5 * GiB,
                compute_efficiency=0.55, bandwidth_efficiency=0.8,
                interconnect_bytes_per_s=32e9, allreduce_latency_s=25e-6),
    )
}

# The keys of each model's config.json on the HuggingFace Hub that the counts depend on.
_MODEL_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # Published: 30.5B total, 3.3B activated.
    "qwen3-coder-30b-a3b": ("Qwen/Qwen3-Coder-30B-A3B-Instruct", dict(
        model_type="qwen3_moe", num_hidden_layers=48, hidden_size=2048, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768,
        num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[],
        vocab_size=151936, tie_word_embeddings=False, torch_dtype="bfloat16")),
    # Published: 8.03B.
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", dict(
        model_type="llama", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
        torch_dtype="bfloat16")),
    # Published: 70.6B; 131 GiB of bf16 weights, so it needs tp >= 2 on 80 GB GPUs (tp=4 is usual).
    "llama-3.1-70b": ("meta-llama/Llama-3.1-70B-Instruct", dict(
        model_type="llama", num_hidden_layers=80, hidden_size=8192, num_attention_heads=64,
        num_key_value_heads=8, intermediate_size=28672, vocab_size=128256, tie_word_embeddings=False,
        torch_dtype="bfloat16")),
    # Published: 32.8B (Qwen3 technical report); CONCUR's model (benchmarks/reproduction.py).
    "qwen3-32b": ("Qwen/Qwen3-32B", dict(
        model_type="qwen3", num_hidden_layers=64, hidden_size=5120, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, intermediate_size=25600, vocab_size=151936,
        tie_word_embeddings=False, torch_dtype="bfloat16")),
    # Published: 6.05B; InferCept's model (benchmarks/reproduction.py). GPT-J's shapes in llama form: 28
    # layers, 16 full-attention heads of 256 (no GQA: 448 KiB of KV per token), fp16. Its MLP has two
    # 4096x16384 matrices (GELU); a llama MLP has three, so intermediate 10923 gives the same parameters.
    "gpt-j-6b": ("EleutherAI/gpt-j-6b", dict(
        model_type="llama", num_hidden_layers=28, hidden_size=4096, num_attention_heads=16,
        num_key_value_heads=16, head_dim=256, intermediate_size=10923, vocab_size=50400,
        tie_word_embeddings=False, torch_dtype="float16")),
    # Published (OpenAI model card): 116.83B total, 5.13B active. OpenAI's active count leaves out the
    # input embedding (0.58B); ours includes it, as Qwen's and Meta's do, so it reads 5.7B. Experts are
    # MXFP4, the rest bf16: ~65 GB of weights, one 80 GB GPU. Half the layers use a 128-token sliding
    # window; the cost model treats all as full attention (over-estimates KV use for long contexts).
    "gpt-oss-120b": ("openai/gpt-oss-120b", dict(
        model_type="gpt_oss", num_hidden_layers=36, hidden_size=2880, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, intermediate_size=2880, num_local_experts=128,
        num_experts_per_tok=4, vocab_size=201088, tie_word_embeddings=False, attention_bias=True,
        torch_dtype="bfloat16", quantization_config={"quant_method": "mxfp4"})),
}

MODELS: dict[str, ModelSpec] = {
    name: ModelSpec.from_hf_config(config, name=name, hf_id=hf_id)
    for name, (hf_id, config) in _MODEL_CONFIGS.items()
}


def get_gpu(name: str) -> GpuSpec:
    """The catalog GPU called `name`; BadInput listing the known names otherwise."""
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise BadInput(f"unknown GPU {name!r} (known: {', '.join(GPUS)})") from None


def get_model(name: str) -> ModelSpec:
    """The catalog model called `name`, or a model directory / config.json described by its HF config."""
    if name.lower() in MODELS:
        return MODELS[name.lower()]
    if Path(name).exists():
        return ModelSpec.from_hf_config(name)
    raise BadInput(f"unknown model {name!r} (known: {', '.join(MODELS)}; or a directory with a config.json)")
