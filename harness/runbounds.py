"""The cache and capacity bounds of one run (harness.cachebound) from its workload, testbed and calls: what
`run` prints beside the measured hit rate and throughput, and `report` beside the leaderboard.

`run_bounds` takes what a run has in hand; `bounds_of_record` rebuilds it from a result directory (run.json's
config resolves the same workload and testbed), for runs written before the bounds were kept in summary.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.cachebound import belady_hits, capacity, ideal_hits, peak_token_rate
from harness.config import RunConfig
from harness.engines.sim.cost_model import StepShape, step_time
from workloads.model import Session

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
    from harness.engines.sim.testbed import build_profile, build_setup  # noqa: PLC0415
    from harness.tools import ToolPool  # noqa: PLC0415

    if not sessions:
        return dict.fromkeys(BOUND_KEYS)
    profile = build_profile(config)
    block_size = profile.block_size
    workers = ToolPool(config.tool_cores, config.tool_mode, stress_cores=config.cpu_stress).workers
    gpu = simulated or config.profile is not None
    rate = 0.0
    if gpu:
        budget = config.engine_args.max_num_batched_tokens
        rate = config.gpu_share * peak_token_rate(lambda n: step_time(profile, StepShape.from_chunks([(n, 0)])), budget)
    cap = capacity(sessions, block_size, rate if gpu else float("inf"), workers, config.rps or arrival_rate(sessions))
    out: dict[str, Any] = {
        "ideal_prefix_hit_rate": ideal_hits(sessions, block_size).rate,
        "belady_prefix_hit_rate": None,
        "throughput_bound": cap.sessions_per_s if gpu else None,
        "gpu_capacity": cap.gpu_sessions_per_s if gpu else None,
        "tool_capacity": cap.tool_sessions_per_s,
        "tool_offered_cores": cap.offered_cores,
        "tool_workers": cap.workers,
    }
    if gpu and calls is not None and not calls.empty and config.engine_args.kv_offload_gib == 0:
        # a host KV tier serves hits a device cache of this size could not: no Bélády bound for it
        blocks = build_setup(config).num_blocks
        out["belady_prefix_hit_rate"] = belady_hits(sessions, block_size, blocks, call_order(calls)).rate
    return {k: (None if isinstance(v, float) and v == float("inf") else v) for k, v in out.items()}


def bounds_of_record(config: dict[str, Any], calls: pd.DataFrame | None) -> dict[str, Any]:
    """`run_bounds` of a stored run: its config (run.json's) resolves the same workload; {} when it no longer
    can (a workload file gone, a config of another version)."""
    from harness.engines.registry import get_engine  # noqa: PLC0415
    from harness.errors import BadInput  # noqa: PLC0415
    from workloads.source import WorkloadRequest, resolve  # noqa: PLC0415

    try:
        known = {k: v for k, v in config.items() if k in RunConfig.model_fields}
        run = RunConfig.model_validate(known)
        _, sessions = resolve(WorkloadRequest(
            source=run.workload, sessions=run.sessions, rps=run.rps, arrival=run.arrival, cv=run.cv,
            burstiness=run.burstiness, seed=run.seed, sets=run.workload_sets, force=run.force,
        ))
        simulated = get_engine(run.engine).simulated
        return run_bounds(sessions, run, calls, simulated)
    except (BadInput, ValueError, OSError, KeyError):
        return {}
