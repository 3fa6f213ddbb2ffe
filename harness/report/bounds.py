"""The cache and capacity bounds beside the leaderboard (harness.runbounds): read from each run's summary, or
worked out again from its run.json for runs written before the summary kept them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from harness.report.doc import Text
from harness.report.load import ResultSet, Run
from harness.runbounds import BOUND_KEYS, bounds_of_record

Progress = Callable[[str, int, int], None]


def with_bounds(results: ResultSet, progress: Progress | None = None) -> ResultSet:
    """`results` with every ranked run's summary holding the bounds (computed where it lacks them; a run whose
    workload cannot be rebuilt keeps none). `progress("bounds", done, total)` hears of each run computed."""
    missing = [r for r in results.runs if r.included and r.summary is not None and BOUND_KEYS[0] not in r.summary]
    if not missing:
        return results
    memo: dict[str, object] = {}
    done: dict[str, Run] = {}
    for i, run in enumerate(missing):
        if progress is not None:
            progress("bounds", i, len(missing))
        bounds = bounds_of_record(run.record.config, run.record.calls(), memo)
        done[run.run_id] = replace(run, summary={**(run.summary or {}), **bounds})
    if progress is not None:
        progress("bounds", len(missing), len(missing))
    return replace(results, runs=[done.get(r.run_id, r) for r in results.runs])


def _mean(runs: Sequence[Run], key: str) -> float:
    values = [r.figure(key) for r in runs]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def point_bounds(runs: Sequence[Run]) -> dict[str, float | None]:
    """The bounds of one load point: each BOUND_KEYS figure's mean over its runs (None where no run has it)."""
    means = {key: _mean(runs, key) for key in BOUND_KEYS}
    return {key: None if math.isnan(v) else v for key, v in means.items()}


def bounds_text(runs: Sequence[Run]) -> Text | None:
    """One line under a load point's leaderboard: the ideal hit rate, the throughput bound and what limits it,
    the tool pool's offered load; None when no run has them."""
    ideal, throughput = _mean(runs, "ideal_prefix_hit_rate"), _mean(runs, "throughput_bound")  # NaN: none
    gpu, tool = _mean(runs, "gpu_capacity"), _mean(runs, "tool_capacity")
    offered, workers = _mean(runs, "tool_offered_cores"), _mean(runs, "tool_workers")
    parts = []
    if not math.isnan(ideal):
        parts.append(f"ideal prefix-cache hit rate {ideal:.1%} (an infinite cache)")
    if not math.isnan(throughput):
        side = "the tool pool" if not math.isnan(tool) and tool <= gpu else "the GPU"
        capacities = f"GPU {gpu:.3g}" + ("" if math.isnan(tool) else f", tool pool {tool:.3g}")
        parts.append(f"throughput bound {throughput:.3g} sessions/s, set by {side} ({capacities})")
    if not math.isnan(offered) and not math.isnan(workers):
        load = offered / workers if workers else math.nan
        verdict = " - overloaded: its queue grows while sessions arrive" if load > 1 else ""
        parts.append(f"tool pool offered {offered:.3g} busy cores of {workers:.0f} ({load:.0%}{verdict})")
    if not parts:
        return None
    seeds = len({r.seed for r in runs})
    over = f" (mean over {seeds} seeds)" if seeds > 1 else ""
    return Text(f"Bounds from the workload and testbed{over}: " + "; ".join(parts) + ".")
