"""What a run writes beside its own files for tooling that reads `vllm bench serve`'s (--save-detailed,
--result-format vllm).

* `calls_detailed.jsonl` — one line per call, vllm bench's per-request fields (its lists `input_lens`,
  `output_lens`, `ttfts`, `itls`, `latencies`, `start_times`, `queue_times`, `errors`, one item each) under
  their singular names, with the call's session id and turn;
* `vllm_result.json` — the JSON `vllm bench serve --save-result` writes (vllm/benchmarks/serve.py): its
  top-level keys, a call being its request, and with --save-detailed its per-request lists.

Both are pure functions of the run's config, summary and tables (written once the run ends), so they can be
rebuilt from a results directory. Where a value has no counterpart here it takes the value vLLM itself gives a
request without one (RequestFuncOutput's defaults: ttft 0.0, itl [], generated_text "").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import RunConfig
from harness.metrics import CALL_METRICS, flatten_gaps, per_call_metrics, percentile_word
from workloads.source import offered_rps

DETAILED_FILE = "calls_detailed.jsonl"
VLLM_RESULT_FILE = "vllm_result.json"
# the per-request lists `vllm bench serve` drops from its result without --save-detailed (its `for field in
# [...]` under `if not args.save_detailed`); `latencies` and `queue_times` stay in either case
DETAILED_LISTS = ("input_lens", "output_lens", "start_times", "ttfts", "itls", "generated_texts", "errors")


def _number(value: Any, default: float = 0.0) -> float:
    value = float(value)
    return default if math.isnan(value) else value


def detailed_calls(calls: pd.DataFrame, sessions: pd.DataFrame) -> list[dict[str, Any]]:
    """Every call in the order it was sent, with vllm bench's per-request fields in seconds.

    queue_time is vllm bench's client_queue_time, the wait on the client's side before the request is sent:
    for a session's first call, its wait for --max-concurrency and the admission controller; later calls are
    sent when the tool call before them ends (0). A failed call has output_len 0, as vLLM's."""
    c = per_call_metrics(calls).sort_values(["arrival_s", "session_id", "turn"], kind="stable")
    waits = {}
    if len(sessions):
        wait = sessions["admitted_s"].astype(float) - sessions["arrival_s"].astype(float)
        waits = dict(zip(sessions["session_id"], wait, strict=True))
    rows = []
    for call in c.itertuples(index=False):
        done = bool(call.completed)
        itl = flatten_gaps([call.itl_s]) if done else []
        rows.append({
            "session_id": str(call.session_id), "turn": int(call.turn),
            "input_len": int(call.prompt_tokens), "output_len": int(call.output_tokens) if done else 0,
            "ttft": _number(call.ttft_s), "itl": itl, "latency": _number(call.e2el_s) if done else 0.0,
            "start_time": float(call.arrival_s),
            "queue_time": _number(waits.get(call.session_id, math.nan)) if int(call.turn) == 0 else 0.0,
            "error": "" if done else str(call.error or "not finished when the run stopped"),
        })
    return rows


def vllm_result(config: RunConfig, summary: Mapping[str, Any], detailed: list[dict[str, Any]],
                request_rate: float | None, date: datetime | None = None) -> dict[str, Any]:
    """The JSON `vllm bench serve --save-result` writes, from this run (its key order).

    request_rate: the sessions' offered rate (vLLM's is per request: the same for one-call sessions); num_prompts
    is the number of calls sent. The per-request lists are kept with --save-detailed, as vLLM keeps them;
    generated_texts holds vLLM's "" for each call (mars-bench does not keep generated text)."""
    s = summary
    model_id = config.served_model or config.model
    result: dict[str, Any] = {
        "date": (date or datetime.now()).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": config.backend,
        "backend": config.backend,
        "label": config.label,
        "model_id": model_id,
        "tokenizer_id": config.tokenizer or model_id,
        "num_prompts": len(detailed),
        **config.metadata,
        "request_rate": "inf" if request_rate is not None and math.isinf(request_rate) else request_rate,
        "burstiness": config.burstiness if config.burstiness is None or math.isfinite(config.burstiness) else "inf",
        "max_concurrency": config.max_concurrency,
        "duration": s.get("duration"),
        "completed": s.get("completed"),
        "failed": s.get("failed"),
        "total_input_tokens": s.get("total_input_tokens"),
        "total_output_tokens": s.get("total_output_tokens"),
        "request_throughput": s.get("request_throughput"),
        "request_goodput": s.get("request_goodput") if s.get("goodput_slo") else None,
        "output_throughput": s.get("output_throughput"),
        "total_token_throughput": s.get("total_token_throughput"),
        "input_lens": [r["input_len"] for r in detailed],
        "output_lens": [r["output_len"] for r in detailed],
        "ttfts": [r["ttft"] for r in detailed],
        "itls": [r["itl"] for r in detailed],
        "latencies": [r["latency"] for r in detailed],
        "start_times": [r["start_time"] for r in detailed],
        "queue_times": [r["queue_time"] for r in detailed],
        "generated_texts": ["" for _ in detailed],
        "errors": [r["error"] for r in detailed],
        "max_output_tokens_per_s": s.get("max_output_tokens_per_s"),
        "max_concurrent_requests": s.get("max_concurrent_requests"),
        "rtfx": 0.0,  # vLLM's input audio seconds per second: no audio input here
    }
    for metric in CALL_METRICS:
        if metric not in (s.get("percentile_metrics") or ()):
            continue
        for stat in ("mean", "median", "std"):
            result[f"{stat}_{metric}_ms"] = s.get(f"{stat}_{metric}_ms")
        for p in s.get("metric_percentiles") or ():
            key = f"p{percentile_word(float(p))}_{metric}_ms"
            result[key] = s.get(key)
    if not config.save_detailed:
        for key in DETAILED_LISTS:
            del result[key]
    return result


def write_exports(run_dir: Path, config: RunConfig, summary: Mapping[str, Any], calls: pd.DataFrame,
                  sessions: pd.DataFrame) -> list[str]:
    """Write what --save-detailed and --result-format vllm ask for into `run_dir`; the names written."""
    if not config.save_detailed and config.result_format != "vllm":
        return []
    detailed = detailed_calls(calls, sessions)
    written = []
    if config.save_detailed:
        with (run_dir / DETAILED_FILE).open("w") as out:
            for row in detailed:
                out.write(json.dumps(row, allow_nan=False) + "\n")
        written.append(DETAILED_FILE)
    if config.result_format == "vllm":
        rate = offered_rps(config.model_dump(mode="json"))
        result = vllm_result(config, summary, detailed, None if math.isnan(rate) else rate)
        (run_dir / VLLM_RESULT_FILE).write_text(json.dumps(result, allow_nan=False) + "\n")
        written.append(VLLM_RESULT_FILE)
    return written
