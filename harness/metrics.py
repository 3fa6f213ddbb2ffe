"""Every per-run figure, computed from the raw calls and sessions tables (DESIGN section 5).

A summary is a pure function of the two tables (columns: harness.tables), never kept by hand while a run goes,
so a run rebuilt from its event log gets the same figures as one that wrote its parquet files. Names follow
`vllm bench serve` where they overlap (mean_ttft_ms, p99_itl_ms, request_goodput, ...) so the numbers can be
put side by side with vLLM's own benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.console import fmt
from harness.errors import BadInput

SLO_METRICS = ("ttft", "tpot", "e2el")
# `vllm bench serve`'s --percentile-metrics (those of its generative runs we measure) and their default, and
# its --metric-percentiles default: the summary carries pNN_<metric>_ms for exactly these
CALL_METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILE_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl")
DEFAULT_PERCENTILES: tuple[float, ...] = (99,)
# the session figures (JCT, slowdown, admission wait) are ours: always these percentiles, plus any chosen
SESSION_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
MS = 1000.0
# summary.json names before they followed vLLM's (a run written then is read with today's names)
LEGACY_NAMES = {"duration_s": "duration", "completed_calls": "completed", "failed_calls": "failed"}

SloSpec = dict[str, float]
"""A vLLM `--goodput` spec: metric name (ttft, tpot, e2el) -> limit in milliseconds."""


# ------------------------------------------------------------------------------------------ goodput SLO
def parse_goodput(specs: str | Sequence[str]) -> SloSpec:
    """`--goodput ttft:500 tpot:50` (vLLM's syntax: KEY:VALUE pairs, VALUE in ms) as {"ttft": 500.0, ...}."""
    items = [specs] if isinstance(specs, str) else list(specs)
    pairs = [token for item in items for token in str(item).split()]
    if not pairs:
        raise BadInput("--goodput: no KEY:VALUE pair given (e.g. --goodput ttft:500 tpot:50)")
    slo: SloSpec = {}
    for pair in pairs:
        name, value = _parse_slo_pair(pair)
        if name in slo:
            raise BadInput(f"--goodput: {name} given twice")
        slo[name] = value
    return slo


def _parse_slo_pair(pair: str) -> tuple[str, float]:
    name, sep, raw = pair.partition(":")
    name = name.lower()
    if not sep:
        raise BadInput(f"--goodput: {pair!r} is not KEY:VALUE (e.g. ttft:500)")
    if name not in SLO_METRICS:
        raise BadInput(f"--goodput: unknown metric {name!r} (expected {', '.join(SLO_METRICS)})")
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"--goodput: {name} value {raw!r} is not a number of milliseconds") from None
    if not (math.isfinite(value) and value > 0):
        raise BadInput(f"--goodput: {name} must be a positive number of milliseconds, got {raw!r}")
    return name, value


def _as_slo(goodput_slo: SloSpec | str | Sequence[str] | None) -> SloSpec | None:
    """Accept an already parsed spec or the raw `--goodput` strings."""
    if goodput_slo is None:
        return None
    if isinstance(goodput_slo, Mapping):
        return parse_goodput([f"{name}:{value}" for name, value in goodput_slo.items()])
    return parse_goodput(goodput_slo)


# ------------------------------------------------------------------------------- percentile selection
def parse_percentile_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """`--percentile-metrics ttft,tpot,itl` (vLLM's name and syntax) as ("ttft", "tpot", "itl")."""
    items = [x.strip().lower() for x in (text.split(",") if isinstance(text, str) else text)]
    if not items or not all(items):
        raise BadInput(f"--percentile-metrics: {text!r} is not a comma-separated list of {', '.join(CALL_METRICS)}")
    for name in items:
        if name not in CALL_METRICS:
            raise BadInput(f"--percentile-metrics: unknown metric {name!r} (expected {', '.join(CALL_METRICS)})")
    repeated = sorted({x for x in items if items.count(x) > 1})
    if repeated:
        raise BadInput(f"--percentile-metrics: {', '.join(repeated)} given more than once")
    return tuple(items)


def parse_metric_percentiles(text: str | Sequence[float]) -> tuple[float, ...]:
    """`--metric-percentiles 50,90,99.9` (vLLM's name and syntax) as (50.0, 90.0, 99.9)."""
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else list(text)
    values: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise BadInput(f"--metric-percentiles: {item!r} is not a number (e.g. --metric-percentiles 50,90,99)") \
                from None
        if not 0 <= value <= 100:  # also refuses nan
            raise BadInput(f"--metric-percentiles: {item} is not between 0 and 100")
        values.append(value)
    if not values:
        raise BadInput("--metric-percentiles: give a comma-separated list, e.g. 50,90,99")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise BadInput(f"--metric-percentiles: {', '.join(f'{v:g}' for v in repeated)} given more than once")
    return tuple(values)


def percentile_word(p: float) -> str:
    """vLLM's spelling of a percentile in a key or label: 99 -> "99", 99.9 -> "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


# ---------------------------------------------------------------------------------- per-row derivations
def per_call_metrics(calls: pd.DataFrame) -> pd.DataFrame:
    """The calls table plus ttft_s, e2el_s, tpot_s, queue_s (seconds), completed and failed.

    tpot follows vLLM: decode time over the tokens after the first, undefined (NaN) for a one-token output.
    A failed call (its `error` set: no token, timed out) is not completed; tables written before the column
    existed have none.
    """
    out = calls.copy()
    out["failed"] = out["error"].notna() if "error" in out.columns else False
    arrival = out["arrival_s"].astype(float)
    out["ttft_s"] = out["first_token_s"].astype(float) - arrival
    out["e2el_s"] = out["finish_s"].astype(float) - arrival
    decode_tokens = out["output_tokens"].astype(float) - 1
    out["tpot_s"] = ((out["e2el_s"] - out["ttft_s"]) / decode_tokens).where(decode_tokens > 0)
    out["queue_s"] = out["first_scheduled_s"].astype(float) - arrival
    out["completed"] = out["finish_s"].notna() & ~out["failed"]
    return out


def per_session_metrics(sessions: pd.DataFrame) -> pd.DataFrame:
    """The sessions table plus jct_s, slowdown and admission_wait_s.

    `completed` is narrowed to sessions flagged complete that also have a finish time, so that every figure
    below agrees on which sessions count. JCT includes backlog time (arrival, not admission, is the start).
    """
    out = sessions.copy()
    out["completed"] = out["completed"].eq(True) & out["finish_s"].notna()
    arrival = out["arrival_s"].astype(float)
    out["jct_s"] = (out["finish_s"].astype(float) - arrival).where(out["completed"])
    isolated = out["isolated_jct_s"].astype(float)
    out["slowdown"] = out["jct_s"] / isolated.where(isolated > 0)
    out["admission_wait_s"] = out["admitted_s"].astype(float) - arrival
    return out


# --------------------------------------------------------------------------------------------- helpers
def _percentile_key(p: float) -> str:
    """vLLM's naming: p99, p99.9."""
    return f"p{percentile_word(float(p))}"


def _stats(values: Iterable[float], name: str, percentiles: Sequence[float], scale: float = 1.0) -> dict[str, float | None]:
    """mean_/median_/std_/pNN_<name> of the non-NaN values times `scale`; all None when there is no value.

    std is the population std and percentiles use numpy's default linear method, both as vLLM does.
    """
    arr = np.asarray(list(values), dtype=float) * scale
    arr = arr[~np.isnan(arr)]
    keys = ["mean", "median", "std", *(_percentile_key(p) for p in percentiles)]
    if arr.size == 0:
        return {f"{key}_{name}": None for key in keys}
    numbers = [np.mean(arr), np.median(arr), np.std(arr), *np.percentile(arr, list(percentiles))]
    return {f"{key}_{name}": float(v) for key, v in zip(keys, numbers, strict=True)}


def _mean(values: pd.Series) -> float | None:
    values = values.astype(float).dropna()
    return float(values.mean()) if len(values) else None


def _ratio(numerator: float, denominator: float | None) -> float | None:
    """numerator / denominator, None when the denominator is missing or zero (a rate over no time)."""
    if denominator is None or not denominator > 0:
        return None
    return float(numerator) / float(denominator)


def flatten_gaps(lists: Iterable[Any]) -> list[float]:
    """ITL gaps of many calls as one list (vLLM pools every gap); cells may be lists, arrays or missing."""
    out: list[float] = []
    for cell in lists:
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            continue
        out.extend(float(v) for v in cell)
    return out


def _check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise BadInput(f"goodput alpha must be a positive number, got {alpha!r}")
    return value


def _check_percentiles(percentiles: Iterable[float]) -> tuple[float, ...]:
    ps = tuple(float(p) for p in percentiles)
    bad = [p for p in ps if not 0 <= p <= 100]
    if bad:
        raise BadInput(f"percentiles must be between 0 and 100, got {bad[0]:g}")
    return ps


# ---------------------------------------------------------------------------------------------- summary
class RunSummary(BaseModel):
    """Every per-run figure; the content of summary.json. A figure undefined for the run is None, never NaN.

    Session distributions carry mean/median/std and p50/p90/p95/p99 (plus any other chosen percentile). The
    per-call figures follow `vllm bench serve`: mean/median/std of ttft, tpot, itl and e2el, and pNN_<metric>_ms
    for exactly the chosen `percentile_metrics` x `metric_percentiles` (default p99 of ttft, tpot and itl),
    kept as extra fields.
    """

    model_config = ConfigDict(extra="allow")

    # sessions
    num_sessions: int = 0
    completed_sessions: int = 0
    incomplete_sessions: int = 0
    # seconds from the benchmark's start (after any warm-up) to the last finished work, as vLLM's
    duration: float | None = None
    # job completion time over completed sessions, seconds
    mean_jct_s: float | None = None
    median_jct_s: float | None = None
    std_jct_s: float | None = None
    p50_jct_s: float | None = None
    p90_jct_s: float | None = None
    p95_jct_s: float | None = None
    p99_jct_s: float | None = None
    # slowdown = JCT / isolated JCT, over completed sessions with a known isolated JCT
    mean_slowdown: float | None = None
    median_slowdown: float | None = None
    std_slowdown: float | None = None
    p50_slowdown: float | None = None
    p90_slowdown: float | None = None
    p95_slowdown: float | None = None
    p99_slowdown: float | None = None
    # the physical bound (harness.bound): a mean JCT no policy beats on this testbed, and the mean JCT as a
    # multiple of it (1.0 = nothing left to gain)
    bound_mean_jct_s: float | None = None
    x_of_bound: float | None = None
    # session throughput and slowdown goodput
    session_throughput: float | None = None
    goodput: float | None = None
    goodput_alpha: float | None = None
    goodput_fraction: float | None = None
    # `vllm bench serve`'s figures under its names, a call being its request
    completed: int = 0  # completed calls
    failed: int = 0  # failed calls: no token, or not ended within the timeout
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    request_throughput: float | None = None
    output_throughput: float | None = None
    total_token_throughput: float | None = None
    max_output_tokens_per_s: float | None = None  # the busiest whole second's streamed chunks, as vLLM counts
    max_concurrent_requests: int = 0  # most calls in flight within one whole second, as vLLM counts
    request_goodput: float | None = None
    goodput_slo: dict[str, float] | None = None
    percentile_metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_PERCENTILE_METRICS))
    metric_percentiles: list[float] = Field(default_factory=lambda: list(DEFAULT_PERCENTILES))
    mean_ttft_ms: float | None = None
    median_ttft_ms: float | None = None
    std_ttft_ms: float | None = None
    mean_tpot_ms: float | None = None
    median_tpot_ms: float | None = None
    std_tpot_ms: float | None = None
    mean_itl_ms: float | None = None
    median_itl_ms: float | None = None
    std_itl_ms: float | None = None
    mean_e2el_ms: float | None = None
    median_e2el_ms: float | None = None
    std_e2el_ms: float | None = None
    # engine
    prefix_cache_hit_rate: float | None = None
    preemptions: int = 0
    recomputed_tokens: int = 0
    # agent loop, per completed session / per admitted session
    mean_tool_wait_s: float | None = None
    mean_tool_s: float | None = None
    mean_llm_s: float | None = None
    mean_admission_wait_s: float | None = None
    median_admission_wait_s: float | None = None
    std_admission_wait_s: float | None = None
    p50_admission_wait_s: float | None = None
    p90_admission_wait_s: float | None = None
    p95_admission_wait_s: float | None = None
    p99_admission_wait_s: float | None = None
    # MLPerf-style validity
    valid: bool = False
    invalid_reasons: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_nan(cls, data: Any) -> Any:
        """NaN and inf become None, so summary.json stays strict JSON and 'undefined' has one spelling; a summary
        written before the names followed vLLM's is read with today's names."""
        if isinstance(data, dict):
            return {key: _finite_or_none(value) for key, value in with_vllm_names(data).items()}
        return data


def with_vllm_names(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A summary.json's content under today's names (LEGACY_NAMES: duration_s -> duration, ...)."""
    out = dict(summary)
    for old, new in LEGACY_NAMES.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def summarize(
    calls: pd.DataFrame,
    sessions: pd.DataFrame,
    *,
    alpha: float = 3.0,
    goodput_slo: SloSpec | str | Sequence[str] | None = None,
    end_s: float | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    percentile_metrics: Sequence[str] = DEFAULT_PERCENTILE_METRICS,
    start_s: float = 0.0,
    stopped: str | None = None,
    planned_sessions: int | None = None,
) -> RunSummary:
    """Every per-run figure of one run from its two raw tables.

    alpha: a session is good when its slowdown is at most alpha. goodput_slo: vLLM `--goodput` limits for
    request_goodput. end_s: when the run was stopped; with sessions still running the span runs to it.
    percentiles, percentile_metrics: vLLM's --metric-percentiles and --percentile-metrics, the pNN_<metric>_ms
    the summary carries. start_s: the benchmark's start on the tables' clock (0, the run's start; after a
    warm-up, its end): `duration` runs from it, as vLLM's from its benchmark's start.
    stopped: how a run that did not run to its end stopped ("interrupted", "failed"): it is invalid, saying
    how far it got. planned_sessions: the run's number of sessions, when the table lacks some (a table
    rebuilt from the event log has only the sessions that ended).
    """
    alpha = _check_alpha(alpha)
    ps = _check_percentiles(percentiles)
    metrics = parse_percentile_metrics(list(percentile_metrics))
    slo = _as_slo(goodput_slo)
    c, s = per_call_metrics(calls), per_session_metrics(sessions)
    total = max(len(s), planned_sessions or 0)
    duration = _duration(c, s, end_s, start_s)
    session_ps = tuple(sorted(set(SESSION_PERCENTILES) | set(ps)))
    fields = {
        "duration": duration,
        **_session_fields(s, total, duration, alpha, session_ps),
        **_call_fields(c, duration, slo, ps, metrics),
        **_validity(s, total, int(c["failed"].sum()), stopped),
    }
    return RunSummary(**fields)


def _duration(c: pd.DataFrame, s: pd.DataFrame, end_s: float | None, start_s: float) -> float | None:
    """From the benchmark's start to the last finished work; to end_s when the run was stopped with work
    running. vLLM's duration runs from its benchmark's start too, not from the first arrival (with Poisson
    arrivals the first comes after a gap). Should a table hold arrivals before start_s, the span starts with them.

    Finished calls of unfinished sessions count too, so a run read back from a crash log spans all it did.
    """
    arrivals = s["arrival_s"] if len(s) else c["arrival_s"]
    first = arrivals.astype(float).min()
    if math.isnan(first):
        return None
    start = min(float(start_s), float(first))
    finishes = pd.concat([s.loc[s["completed"], "finish_s"], c.loc[c["completed"], "finish_s"]]).astype(float)
    last = finishes.max() if len(finishes) else math.nan
    if end_s is not None and not s["completed"].all():
        last = end_s if math.isnan(last) else max(float(end_s), last)
    if math.isnan(last):
        return None
    return max(float(last) - start, 0.0)


def _session_fields(s: pd.DataFrame, total: int, duration: float | None, alpha: float,
                    ps: tuple[float, ...]) -> dict[str, Any]:
    done = s[s["completed"]]
    good = int((done["slowdown"] <= alpha).sum())  # NaN slowdown (isolated JCT unknown) is never good
    known = s.empty or s["isolated_jct_s"].notna().any()  # no isolated reference at all: goodput unknown
    admitted = s["admission_wait_s"].dropna()
    return {
        "num_sessions": total,
        "completed_sessions": len(done),
        "incomplete_sessions": total - len(done),
        **_stats(done["jct_s"], "jct_s", ps),
        **_stats(done["slowdown"], "slowdown", ps),
        "session_throughput": _ratio(len(done), duration),
        "goodput": _ratio(good, duration) if known else None,
        "goodput_alpha": float(alpha),
        "goodput_fraction": _ratio(good, total) if known else None,
        "mean_tool_wait_s": _mean(done["tool_wait_s"]),
        "mean_tool_s": _mean(done["tool_s"]),
        "mean_llm_s": _mean(done["llm_s"]),
        **_stats(admitted, "admission_wait_s", ps),
        **_bound_fields(s, done),
    }


def _bound_fields(s: pd.DataFrame, done: pd.DataFrame) -> dict[str, Any]:
    """bound_mean_jct_s (harness.bound) and x_of_bound: with every session completed, the larger of the mean
    floor and the mean of the tightest sum relaxation (`pool_jct_s`); else the mean floor of the completed sessions. Tables written before
    the bound existed have no columns: both undefined."""
    if "floor_jct_s" not in s.columns or "pool_jct_s" not in s.columns:
        return {}
    floor, pool = s["floor_jct_s"].astype(float), s["pool_jct_s"].astype(float)
    if len(s) and len(done) == len(s) and floor.notna().all() and pool.notna().all():
        bound, jct = max(float(floor.mean()), float(pool.mean())), float(done["jct_s"].astype(float).mean())
    else:
        known = done[done["floor_jct_s"].astype(float) > 0]
        if known.empty:
            return {}
        bound, jct = float(known["floor_jct_s"].astype(float).mean()), float(known["jct_s"].astype(float).mean())
    return {"bound_mean_jct_s": bound, "x_of_bound": jct / bound if bound > 0 else None}


def _call_fields(c: pd.DataFrame, duration: float | None, slo: SloSpec | None, ps: tuple[float, ...],
                 metrics: tuple[str, ...]) -> dict[str, Any]:
    done = c[c["completed"]]
    scheduled = c[c["first_scheduled_s"].notna()]
    input_tokens, output_tokens = int(done["prompt_tokens"].sum()), int(done["output_tokens"].sum())
    fields: dict[str, Any] = {
        "completed": len(done),
        "failed": int(c["failed"].sum()),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": _ratio(len(done), duration),
        "output_throughput": _ratio(output_tokens, duration),
        "total_token_throughput": _ratio(input_tokens + output_tokens, duration),
        **_peaks(done),
        "request_goodput": _ratio(int(_meets_slo(done, slo).sum()), duration) if slo else None,
        "goodput_slo": slo,
        "percentile_metrics": list(metrics),
        "metric_percentiles": list(ps),
        "prefix_cache_hit_rate": _ratio(scheduled["cached_tokens"].sum(), scheduled["prompt_tokens"].sum()),
        "preemptions": int(c["preemptions"].sum()),
        "recomputed_tokens": int(c["recomputed_tokens"].sum()),
    }
    for name in CALL_METRICS:
        values = flatten_gaps(done["itl_s"]) if name == "itl" else done[f"{name}_s"]
        fields |= _stats(values, f"{name}_ms", ps if name in metrics else (), scale=MS)
    return fields


def _peaks(done: pd.DataFrame) -> dict[str, Any]:
    """max_output_tokens_per_s and max_concurrent_requests as `vllm bench serve` counts them: whole-second
    buckets from the first completed call's start; a call counts in every bucket from its start's to its end's,
    and each streamed chunk (its first token, then one per ITL gap) in the bucket of its time."""
    if done.empty:
        return {"max_output_tokens_per_s": None, "max_concurrent_requests": 0}
    start = done["arrival_s"].to_numpy(dtype=float)
    end = done["finish_s"].to_numpy(dtype=float)
    origin = float(start.min())
    buckets = int(np.ceil(end.max() - origin)) + 1
    first = (start - origin).astype(int)
    last = np.minimum((end - origin).astype(int), buckets - 1)
    spans = np.zeros(buckets + 1, dtype=np.int64)
    np.add.at(spans, first, 1)
    np.add.at(spans, last + 1, -1)
    chunk_times = [np.concatenate(([ft], ft + np.cumsum(flatten_gaps([gaps]))))
                   for ft, gaps in zip(done["first_token_s"].astype(float), done["itl_s"], strict=True)]
    times = np.concatenate(chunk_times) - origin if chunk_times else np.zeros(0)
    tokens = np.bincount(times[(times >= 0) & (times < buckets)].astype(int), minlength=buckets)
    return {"max_output_tokens_per_s": float(tokens.max()), "max_concurrent_requests": int(np.cumsum(spans).max())}


def _meets_slo(done: pd.DataFrame, slo: SloSpec) -> pd.Series:
    """Calls within every limit. As in vLLM, a one-token output has tpot 0 for this test, so it meets tpot."""
    ok = pd.Series(True, index=done.index)
    for name, limit_ms in slo.items():
        value_s = done[f"{name}_s"].fillna(0.0) if name == "tpot" else done[f"{name}_s"]
        ok &= value_s <= limit_ms / MS
    return ok


def _validity(s: pd.DataFrame, total: int, failed_calls: int, stopped: str | None) -> dict[str, Any]:
    """MLPerf-style: a run that stopped early, whose sessions did not all complete, or with failed calls does
    not give comparable figures."""
    done = int(s["completed"].sum())
    reasons: list[str] = []
    if stopped:
        reasons.append(f"{stopped} after {done} of {total} sessions")
    elif total == 0:
        reasons.append("no sessions")
    elif done == 0:
        reasons.append("no session completed")
    elif done < total:
        reasons.append(f"{total - done} of {total} sessions did not complete")
    if failed_calls:
        reasons.append(f"{failed_calls} call{'s' if failed_calls > 1 else ''} failed")
    return {"valid": not reasons, "invalid_reasons": reasons}


# --------------------------------------------------------------------------------------------- display
def _seconds(v: Any) -> str:
    return f"{fmt(v)} s"


def _ms(v: Any) -> str:
    return f"{fmt(v)} ms"


def _percent(v: Any) -> str:
    return f"{v * 100:.1f}%"


_ROWS: tuple[tuple[str, str, Any], ...] = (
    # (label, summary field, formatter)
    ("duration", "duration", _seconds),
    ("mean JCT", "mean_jct_s", _seconds),
    ("p50 JCT", "p50_jct_s", _seconds),
    ("p95 JCT", "p95_jct_s", _seconds),
    ("p99 JCT", "p99_jct_s", _seconds),
    ("mean slowdown", "mean_slowdown", lambda v: f"{fmt(v)}x"),
    ("x of bound", "x_of_bound", lambda v: f"{fmt(v)}x"),
    ("throughput", "session_throughput", lambda v: f"{fmt(v)} sessions/s"),
    ("token throughput", "total_token_throughput", lambda v: f"{fmt(v)} tokens/s"),
    ("output throughput", "output_throughput", lambda v: f"{fmt(v)} tokens/s"),
    ("goodput", "goodput", lambda v: f"{fmt(v)} sessions/s"),
    ("good sessions", "goodput_fraction", _percent),
    ("request goodput", "request_goodput", lambda v: f"{fmt(v)} calls/s"),
    ("mean TTFT", "mean_ttft_ms", _ms),
    ("pNN TTFT", "pNN_ttft_ms", _ms),  # one row per chosen percentile, when ttft is a chosen metric
    ("mean TPOT", "mean_tpot_ms", _ms),
    ("prefix cache hit rate", "prefix_cache_hit_rate", _percent),
    ("preemptions", "preemptions", fmt),
    ("mean tool wait", "mean_tool_wait_s", _seconds),
    ("mean admission wait", "mean_admission_wait_s", _seconds),
)


def summary_table_rows(summary: RunSummary | Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows the CLI prints: the important subset. Takes a RunSummary or its JSON dump.

    Missing or None values print as "-"; request goodput is shown only when an SLO was given.
    """
    data = summary.model_dump() if isinstance(summary, RunSummary) else with_vllm_names(summary)
    rows = [("sessions completed", f"{fmt(data.get('completed_sessions'))}/{fmt(data.get('num_sessions'))}"),
            ("calls completed", fmt(data.get("completed"))), ("calls failed", fmt(data.get("failed")))]
    for label, key, show in _ROWS:
        if key == "pNN_ttft_ms":
            rows += _percentile_rows(data, "ttft", "TTFT")
            continue
        value = data.get(key)
        if key == "request_goodput" and not data.get("goodput_slo"):
            continue
        if key == "goodput" and data.get("goodput_alpha") is not None:
            label = f"goodput (slowdown <= {data['goodput_alpha']:g})"
        rows.append((label, "-" if value is None else show(value)))
    rows.append(("valid", _validity_text(data)))
    return rows


def _percentile_rows(data: Mapping[str, Any], metric: str, name: str) -> list[tuple[str, str]]:
    """pNN rows of a metric for the run's chosen percentiles (a summary from before they were chosen: its pNN
    fields of the metric)."""
    chosen = data.get("metric_percentiles")
    if chosen is None:
        keys = [k for k in data if k.startswith("p") and k.endswith(f"_{metric}_ms")]
    elif metric in (data.get("percentile_metrics") or ()):
        keys = [f"p{percentile_word(float(p))}_{metric}_ms" for p in chosen]
    else:
        keys = []
    return [(f"{k.split('_')[0]} {name}", "-" if data.get(k) is None else _ms(data[k])) for k in keys]


def _validity_text(data: Mapping[str, Any]) -> str:
    if data.get("valid"):
        return "yes"
    reasons = data.get("invalid_reasons") or []
    return f"no ({'; '.join(reasons)})" if reasons else "no"
