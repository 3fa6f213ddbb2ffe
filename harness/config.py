"""The validated configuration of one run: everything needed to reproduce it from run.json and a seed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.tools import ToolMode
from baselines.autellix import AutellixSettings
from baselines.continuum import ContinuumDynamicSettings, ContinuumSettings
from baselines.infercept import InferCeptSettings
from baselines.lpm import LpmSettings
from mars_impl.mars import MarsSettings
from workloads.arrivals import ArrivalProcess


class EngineSettings(BaseModel):
    """Engine limits, named as vLLM's engine arguments."""

    model_config = ConfigDict(extra="forbid")

    max_num_batched_tokens: int = Field(default=8192, ge=1, description="token budget of one step")
    max_num_seqs: int = Field(default=256, ge=1, description="most requests in one batch")
    long_prefill_token_threshold: int = Field(default=0, ge=0, description="cap on a prefill chunk; 0 = off")
    scheduler_reserve_full_isl: bool = Field(
        default=True, description="admit a waiting request only if its whole context fits in free KV blocks "
                                  "(vLLM 0.32's default; false = only its first chunk, as older vLLM)")
    # None = the cost profile's value (16 tokens, 0.9, computed from memory).
    block_size: int | None = Field(default=None, ge=1, description="tokens per KV block")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    num_gpu_blocks: int | None = Field(default=None, ge=1, description="override the KV block count")
    enable_prefix_caching: bool = True
    fast_forward: bool = Field(default=True, description="sim: skip over repeated all-decode steps")
    kv_offload_gib: float = Field(default=0.0, ge=0, description="host-memory KV tier for offloading; 0 = none")
    host_link_gbps: float = Field(default=25.0, gt=0, description="effective host<->GPU copy bandwidth, GB/s")
    prefix_cache: Literal["auto", "block", "radix"] = Field(
        default="auto", description="sim prefix cache: block (vLLM: hashed blocks, LRU), radix (SGLang: radix "
                                    "tree, LRU leaves); auto = the backend's (radix for sglang, else block)")


class RunConfig(BaseModel):
    """One run. `--set key=value` reaches every field (e.g. `--set engine_args.max_num_seqs=128`)."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "vllm"
    engine: Literal["sim", "vllm", "http", "sglang"] = "sim"
    vllm_mode: Literal["in-process", "server"] = Field(
        default="in-process", description="--engine vllm: the engine in this process, or vLLM's OpenAI server")
    base_url: str | None = Field(default=None, description="--engine http: the OpenAI-compatible server's URL")
    api_key_env: str | None = Field(default=None, description="--engine http: environment variable with the API key")
    served_model: str | None = Field(default=None, description="--engine http: model name to request "
                                                               "(default: the first the server lists)")
    tokenizer: str | None = Field(default=None, description="--engine http: tokenizer directory, for servers "
                                                            "that take text prompts only")
    workload: str = "swe-smoke"
    sessions: int | None = Field(default=None, ge=1)
    rps: float | None = Field(default=None, gt=0)
    arrival: ArrivalProcess | None = None
    cv: float | None = Field(default=None, gt=0)
    seed: int = 0
    workload_sets: tuple[str, ...] = ()
    gpu: str = "h100"
    model: str = Field(default="qwen3-coder-30b-a3b",
                       description="sim: a catalog name or HF config directory; vllm: a model directory or hub id")
    tp: int = Field(default=1, ge=1)
    profile: str | None = None
    tool_cores: int = Field(default=8, ge=1)
    tool_mode: ToolMode = "queue"
    tools: Literal["timed", "real"] = Field(
        default="timed", description="timed: tool calls take their modelled time; real: pinned processes doing "
                                     "the CPU work (real engine only)")
    allow_commands: bool = Field(default=False, description="--tools real: run a workload's recorded commands")
    cpu_stress: int = Field(default=0, ge=0, description="cores taken by background CPU stressors")
    gpu_share: float = Field(default=1.0, gt=0, le=1, description="share of the GPU left by a co-tenant")
    chat_rps: float = Field(default=0.0, ge=0, description="background chat requests/s sharing the engine")
    alpha: float = Field(default=3.0, gt=1, description="goodput: slowdown bound")
    goodput: tuple[str, ...] = Field(default=(), description="vLLM-style SLOs, e.g. ttft:500 tpot:50")
    timeline_interval_s: float = Field(default=1.0, gt=0)
    engine_args: EngineSettings = EngineSettings()
    mars: MarsSettings = MarsSettings()
    continuum: ContinuumSettings = ContinuumSettings()
    continuum_dy: ContinuumDynamicSettings = ContinuumDynamicSettings()
    autellix: AutellixSettings = AutellixSettings()
    infercept: InferCeptSettings = InferCeptSettings()
    sglang: LpmSettings = LpmSettings()
