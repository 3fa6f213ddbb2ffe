"""The simulated testbed of a run, built from its config: cost profile, KV blocks, limits, tool pool."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.backends import BACKENDS
from harness.config import RunConfig
from harness.engines.sim.core import SchedulerLimits
from harness.engines.sim.cost_model import GpuLowerBounds, Profile, StepShape, num_kv_blocks, step_time
from harness.engines.sim.hardware import ModelSpec, get_gpu, get_model
from harness.tools import ToolMode

StepTime = Callable[[list], float]  # a step's (request, tokens) pairs -> its duration in seconds


@dataclass(frozen=True)
class SimSetup:
    """The simulated testbed: engine cost and limits, KV size and the CPU tool pool."""

    step_time: StepTime
    num_blocks: int
    prefill_seconds: Callable[[int], float] | None = None
    block_size: int = 16
    limits: SchedulerLimits = SchedulerLimits()
    enable_prefix_caching: bool = True
    fast_forward: bool = True
    gpu_share: float = 1.0
    idle_wake_s: float = 0.0  # extra time of a step that follows an idle engine (cost_model.IDLE_WAKE_AFTER_S)
    tool_cores: int = 8
    tool_mode: ToolMode = "queue"
    cpu_stress: int = 0
    timeline_interval_s: float = 1.0
    fingerprint: str = ""  # identifies the cost model + settings, for caching isolated JCTs
    host_tier_tokens: int = 0  # host-memory KV tier (0 = none)
    host_load_s_per_token: float = 0.0
    prefix_cache: str = "block"  # "block": vLLM's hashed-block LRU cache; "radix": SGLang's radix tree
    gpu_bounds: GpuLowerBounds | None = None  # least costs of any step, for harness.bound (None: no GPU relaxation)

    def idle(self) -> SimSetup:
        """The same testbed without contention: the reference for isolated JCT."""
        return replace(self, cpu_stress=0, gpu_share=1.0)


def model_spec(name_or_dir: str) -> ModelSpec:
    """A catalog model by name, or a HuggingFace model directory (its config.json)."""
    path = Path(name_or_dir)
    if (path / "config.json").is_file():
        return ModelSpec.from_hf_config(path / "config.json")
    return get_model(name_or_dir)


def build_profile(config: RunConfig) -> Profile:
    """The cost profile: specs of --gpu x --model x --tp, then --profile FILE, then engine args."""
    profile = Profile.from_specs(get_gpu(config.gpu), model_spec(config.model), config.tp)
    if config.profile:
        profile = Profile.load(config.profile, base=profile)
    args = config.engine_args
    overrides = {
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "block_size": args.block_size,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "num_gpu_blocks": args.num_gpu_blocks,
    }
    return profile.with_overrides({k: v for k, v in overrides.items() if v is not None}, source="engine args")


def make_step_time(profile: Profile) -> StepTime:
    def duration(scheduled: list) -> float:
        return step_time(profile, StepShape.from_chunks((n, req.num_computed_tokens) for req, n in scheduled))

    return duration


def make_prefill_seconds(profile: Profile, budget: int) -> Callable[[int], float]:
    """Time to prefill `tokens` from scratch alone, in budget-sized chunks (the cost of a cold resume)."""

    def seconds(tokens: int) -> float:
        total, done = 0.0, 0
        while done < tokens:
            chunk = min(budget, tokens - done)
            total += step_time(profile, StepShape.from_chunks([(chunk, done)]))
            done += chunk
        return total

    return seconds


def prefix_cache_kind(config: RunConfig) -> str:
    """The sim's prefix cache: engine_args.prefix_cache, or for "auto" the backend's (radix for sglang)."""
    if config.engine_args.prefix_cache != "auto":
        return config.engine_args.prefix_cache
    backend = BACKENDS.get(config.backend)
    return backend.prefix_cache if backend is not None else "block"


def build_setup(config: RunConfig) -> SimSetup:
    profile = build_profile(config)
    args = config.engine_args
    limits = SchedulerLimits(args.max_num_batched_tokens, args.max_num_seqs, args.long_prefill_token_threshold,
                             args.scheduler_reserve_full_isl)
    prefix_cache = prefix_cache_kind(config)
    fingerprint = hashlib.sha256(json.dumps(
        [profile.model_dump(mode="json"), limits.__dict__, args.enable_prefix_caching, config.tool_cores, config.tool_mode,
         args.kv_offload_gib, args.host_link_gbps, *([prefix_cache] if prefix_cache != "block" else [])],
        sort_keys=True,
    ).encode()).hexdigest()[:16]
    return SimSetup(
        step_time=make_step_time(profile),
        prefill_seconds=make_prefill_seconds(profile, args.max_num_batched_tokens),
        num_blocks=num_kv_blocks(profile),
        block_size=profile.block_size,
        limits=limits,
        enable_prefix_caching=args.enable_prefix_caching,
        fast_forward=args.fast_forward,
        gpu_share=config.gpu_share,
        idle_wake_s=profile.idle_wake_s,
        tool_cores=config.tool_cores,
        tool_mode=config.tool_mode,
        cpu_stress=config.cpu_stress,
        timeline_interval_s=config.timeline_interval_s,
        fingerprint=fingerprint,
        host_tier_tokens=int(args.kv_offload_gib * 2**30 / profile.kv_bytes_per_token),
        host_load_s_per_token=profile.kv_bytes_per_token / (args.host_link_gbps * 1e9),
        prefix_cache=prefix_cache,
        gpu_bounds=GpuLowerBounds.of(profile),
    )
