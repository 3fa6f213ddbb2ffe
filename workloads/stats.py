"""Distribution summary of a workload: what `mars-bench workloads show` prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from workloads.model import USER_TOOL, Session


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"n": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


def describe(sessions: Sequence[Session]) -> dict[str, Any]:
    """Counts and mean/p50/p95/max of the quantities that load a serving system."""
    calls = [(s, k) for s in sessions for k in range(len(s.turns))]
    tools = [t.tool for s in sessions for t in s.turns if t.tool is not None and t.tool.name != USER_TOOL]
    arrivals = [s.arrival_s for s in sessions]
    span = max(arrivals) - min(arrivals) if sessions else 0.0
    core_seconds = [sum(t.tool.cpu_seconds * t.tool.cores for t in s.turns if t.tool and t.tool.name != USER_TOOL)
                    for s in sessions]
    think = [t.tool.cpu_seconds for s in sessions for t in s.turns if t.tool is not None and t.tool.name == USER_TOOL]
    rate = (len(sessions) - 1) / span if span > 0 else None
    distributions = {
        "turns per session": _stats([len(s.turns) for s in sessions]),
        "first-turn prompt tokens": _stats([s.first_prompt_tokens for s in sessions]),
        "prompt tokens per call": _stats([s.prompt_tokens(k) for s, k in calls]),
        "new tokens per call": _stats([s.turns[k].new_tokens for s, k in calls]),
        "output tokens per call": _stats([s.turns[k].output_tokens for s, k in calls]),
        "final context tokens": _stats([s.prompt_tokens(len(s.turns) - 1) + s.turns[-1].output_tokens for s in sessions]),
        "tool seconds per call": _stats([t.cpu_seconds for t in tools]),
        "tool core-seconds per session": _stats(core_seconds),
        # conversations: the users' think time between turns (no tool core; workloads.model.USER_TOOL)
        **({"user think seconds per gap": _stats(think)} if think else {}),
    }
    return {
        "sessions": len(sessions),
        "calls": len(calls),
        "tool_calls": len(tools),
        "kinds": dict(Counter(s.kind or "-" for s in sessions)),
        "tools": dict(Counter(t.name for t in tools)),
        "long_sessions_over_50k": sum(1 for s in sessions if s.first_prompt_tokens > 50_000),
        "arrival_span_s": span,
        "arrival_rate": rate,
        # Mean cores the tools keep busy when sessions arrive at this rate: > tool cores = overload.
        "offered_tool_cores": float(np.mean(core_seconds)) * rate if rate and core_seconds else None,
        "distributions": distributions,
    }
