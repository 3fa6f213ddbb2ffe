"""Column schemas of the raw result tables every engine writes and every report reads.

Times are seconds on the run's clock (simulated or wall), measured from the run's start.
A value that was never reached (a call still running when the run stopped) is NaN.
"""

from __future__ import annotations

import pandas as pd

# One row per LLM call (one turn of one session).
CALL_COLUMNS: dict[str, str] = {
    "session_id": "string",
    "turn": "int64",  # 0-based turn index within the session
    "arrival_s": "float64",  # the call was handed to the engine
    "first_scheduled_s": "float64",  # first step that computed any of its tokens
    "first_token_s": "float64",  # first output token produced
    "finish_s": "float64",  # last output token produced; NaN for a failed call
    "prompt_tokens": "int64",  # full prompt (whole session context so far)
    "output_tokens": "int64",  # output tokens produced
    "cached_tokens": "int64",  # prompt tokens served from the prefix cache at first schedule
    "recomputed_tokens": "int64",  # tokens computed again after preemption
    "preemptions": "int64",  # times this call was preempted
    "itl_s": "object",  # list[float]: gaps between consecutive output tokens
    "error": "string",  # why the call failed (a failed call counts in the summary's `failed`); null when it ended well
}

# One row per session (one agent task).
SESSION_COLUMNS: dict[str, str] = {
    "session_id": "string",
    "arrival_s": "float64",  # arrived in the backlog
    "admitted_s": "float64",  # admitted by the control plane (agent loop started)
    "finish_s": "float64",  # last call finished; NaN when not completed
    "completed": "bool",
    "num_turns": "int64",  # turns the session has
    "turns_done": "int64",  # turns whose LLM call finished
    "prompt_tokens": "int64",  # sum over its calls
    "output_tokens": "int64",
    "llm_s": "float64",  # time inside LLM calls (arrival to finish, summed)
    "tool_s": "float64",  # time tools were executing
    "tool_wait_s": "float64",  # time tool calls waited for cores
    "isolated_jct_s": "float64",  # JCT of this session alone on the idle system; NaN if unknown
    "floor_jct_s": "float64",  # its JCT with nothing shared, a bound per session (harness.bound); NaN if unknown
    "pool_jct_s": "float64",  # its term in the tightest sum relaxation (tool pool, GPU), a bound in sum over the run (harness.bound)
}


# One row per timeline sample (at most one per `timeline_interval_s`, taken at an engine step). The engine's
# columns (harness.engines.base.ENGINE_TIMELINE_KEYS) are NaN where an engine cannot tell (an attached server
# reports no free blocks or pins); the admission controller's state follows as `admission_<key>` columns.
TIMELINE_COLUMNS: dict[str, str] = {
    "t": "float64",  # seconds on the run's clock
    "kv_usage": "float64",  # fraction of KV blocks referenced by requests or pins
    "free_blocks": "float64",
    "running": "float64",  # requests in the running batch
    "waiting": "float64",  # requests in the engine's waiting queue
    "pinned": "float64",  # sessions holding pinned KV across a tool call
    "gpu_busy_s": "float64",  # engine busy time so far
    "preemptions": "float64",  # preemptions so far
    "tool_inflight": "int64",  # tool calls queued or running
    "tool_busy_cores": "float64",
    "active_sessions": "int64",  # admitted, not finished
    "backlog": "int64",  # arrived, not admitted
}


def timeline_frame(samples: list[dict]) -> pd.DataFrame:
    """The timeline table: TIMELINE_COLUMNS in order (NaN where a sample lacks one), then any admission_*."""
    frame = pd.DataFrame(samples)
    if frame.empty:
        return frame
    extra = [c for c in frame.columns if c not in TIMELINE_COLUMNS]
    return frame.reindex(columns=[*TIMELINE_COLUMNS, *extra])


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    """An empty table with the given schema."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def conform(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The frame with exactly the schema's columns in order and types; missing columns are an error."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"table lacks columns: {', '.join(missing)}")
    out = frame[list(columns)].copy()
    for name, dtype in columns.items():
        if dtype != "object":
            out[name] = out[name].astype(dtype)
    return out.reset_index(drop=True)
