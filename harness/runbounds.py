"""The cache and capacity bounds of one run (harness.cachebound) from its workload, testbed and calls: what
`run` prints beside the measured hit rate and throughput, and `report` beside the leaderboard.

`run_bounds` takes what a run has in hand; `bounds_of_record` rebuilds it from a result directory (run.json's
config resolves the same workload and testbed), for runs written before the bounds were kept in summary.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.cachebound import belady_hits, capacity, ideal_hits, peak_token_rate
from harness.config import RunConfig
from harness.engines.sim.cost_model import StepShape, step_time
from workloads.model import Session

DEFAULT_BLOCK_SIZE = 16  # vLLM's KV block size when none is set
# summary.json keys, in the order `run` prints them
BOUND_KEYS = ("ideal_prefix_hit_rate", "belady_prefix_hit_rate", "throughput_bound", "gpu_capacity",
              "tool_capacity", "tool_offered_cores", "tool_workers")


def call_order(calls: pd.DataFrame) -> list[tuple[str, int]]:
    """The run's calls in the order the engine first scheduled them (its prefix-cache lookups); calls never
    scheduled are left out, as the measured hit rate leaves them out."""
    ran = calls[calls["first_scheduled_s"].notna()].sort_values(["first_scheduled_s", "arrival_s"], kind="stable")
    return list(zip(ran["session_id"].astype(str), ran["turn"].astype(int), strict=True))


def arrival_rate(sessions: Sequence[Session]) -> float | None:
    """Sessions per second over the arrivals' span ((n - 1) gaps); None with one session or one instant."""
    times = [s.arrival_s for s in sessions]
    span = max(times) - min(times) if times else 0.0
    return (len(times) - 1) / span if span > 0 else None


def run_bounds(sessions: Sequence[Session], config: RunConfig, calls: pd.DataFrame | None,
               simulated: bool) -> dict[str, Any]:
    """The bounds of a run of `sessions` under `config`, its calls as measured (None: not run). The KV
    capacity and the GPU's token rate come from the testbed's cost profile, so a real engine without a
    calibrated --profile gets the cache bounds it can (the ideal hit rate) and the tool pool's, no others."""
    return {**workload_bounds(sessions, config, simulated), **order_bound(sessions, config, calls, simulated)}


def _profiled(config: RunConfig, simulated: bool) -> bool:
    """Whether the testbed's KV size and GPU speed are known: simulated, or a real engine with a profile."""
    return simulated or config.profile is not None


def workload_bounds(sessions: Sequence[Session], config: RunConfig, simulated: bool) -> dict[str, Any]:
    """The bounds that do not depend on the schedule: ideal hit rate, throughput bound, tool-pool load."""
    from harness.engines.sim.testbed import build_profile  # noqa: PLC0415
    from harness.tools import ToolPool  # noqa: PLC0415

    keys = [k for k in BOUND_KEYS if k != "belady_prefix_hit_rate"]
    if not sessions:
        return dict.fromkeys(keys)
    workers = ToolPool(config.tool_cores, config.tool_mode, stress_cores=config.cpu_stress).workers
    gpu = _profiled(config, simulated)
    rate = math.inf
    # a real engine without a profile: its block size as configured (vLLM's default 16), no cost model
    block_size = config.engine_args.block_size or DEFAULT_BLOCK_SIZE
    if gpu:
        profile = build_profile(config)
        block_size = profile.block_size
        budget = config.engine_args.max_num_batched_tokens
        rate = config.gpu_share * peak_token_rate(lambda n: step_time(profile, StepShape.from_chunks([(n, 0)])), budget)
    cap = capacity(sessions, block_size, rate, workers, config.rps or arrival_rate(sessions))
    out = {
        "ideal_prefix_hit_rate": ideal_hits(sessions, block_size).rate,
        "throughput_bound": cap.sessions_per_s if gpu else None,
        "gpu_capacity": cap.gpu_sessions_per_s if gpu else None,
        "tool_capacity": cap.tool_sessions_per_s,
        "tool_offered_cores": cap.offered_cores,
        "tool_workers": cap.workers,
    }
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in out.items()}


def order_bound(sessions: Sequence[Session], config: RunConfig, calls: pd.DataFrame | None,
                simulated: bool) -> dict[str, Any]:
    """The Bélády bound on the hit rate of the run's own call order, on the testbed's KV blocks; None without
    calls, without a known KV size, or with a host KV tier (it serves hits a device cache of this size could
    not)."""
    from harness.engines.sim.testbed import build_setup  # noqa: PLC0415

    rate = None
    if sessions and _profiled(config, simulated) and calls is not None and not calls.empty \
            and config.engine_args.kv_offload_gib == 0:
        setup = build_setup(config)
        rate = belady_hits(sessions, setup.block_size, setup.num_blocks, call_order(calls)).rate
    return {"belady_prefix_hit_rate": rate}


def bounds_of_record(config: dict[str, Any], calls: pd.DataFrame | None,
                     memo: dict[str, Any] | None = None) -> dict[str, Any]:
    """`run_bounds` of a stored run: its config (run.json's) resolves the same workload; {} when it no longer
    can (a workload file gone, a config of another version). `memo` keeps each workload and its bounds for the
    next run of the same workload and testbed (another backend)."""
    from harness.engines.registry import get_engine  # noqa: PLC0415
    from harness.errors import BadInput  # noqa: PLC0415
    from workloads.source import WorkloadRequest, resolve  # noqa: PLC0415

    memo = {} if memo is None else memo
    key = json.dumps({k: v for k, v in config.items() if k != "backend"}, sort_keys=True, default=str)
    try:
        if key not in memo:
            run = RunConfig.model_validate({k: v for k, v in config.items() if k in RunConfig.model_fields})
            _, sessions = resolve(WorkloadRequest(
                source=run.workload, sessions=run.sessions, rps=run.rps, arrival=run.arrival, cv=run.cv,
                burstiness=run.burstiness, seed=run.seed, sets=run.workload_sets, force=run.force,
            ))
            simulated = get_engine(run.engine).simulated
            memo[key] = (sessions, run, simulated, workload_bounds(sessions, run, simulated))
        sessions, run, simulated, fixed = memo[key]
        return {**fixed, **order_bound(sessions, run, calls, simulated)}
    except (BadInput, ValueError, OSError, KeyError):
        return {}
