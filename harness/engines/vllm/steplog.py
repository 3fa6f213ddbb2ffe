"""What the vLLM scheduler plugin writes beside the engine, and the one estimate it keeps of it.

* `StepLog` - one JSON line per engine step (`steps.jsonl`): the tokens scheduled per call
  ([call id, tokens, phase, tokens computed before the step]), who was preempted, shrunk, capped and
  pinned, the free blocks; what the engine tests read and what calibration fits step times to;
* `CallLog` - one JSON line per finished call (`server_calls.jsonl`): the plugin's per-call figures
  (preemptions, recomputed tokens, first scheduled) for a harness in another process (server mode);
* `PrefillRate` - a running estimate of seconds per prefilled token from the engine's own steps
  (EngineView.prefill_seconds on the real engine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepRecord:
    """What happened in the step being planned, as the log writes it."""

    start_s: float
    scheduled: list[tuple[Any, int]] = field(default_factory=list)  # (request view, tokens)
    preempted: list[Any] = field(default_factory=list)
    phases: dict[str, tuple[str, int]] = field(default_factory=dict)  # call id -> (decode|prefill, context)
    running_before: list[list[str]] = field(default_factory=list)
    shrunk: list[list[Any]] = field(default_factory=list)
    capped: list[list[Any]] = field(default_factory=list)
    pins_released: list[str] = field(default_factory=list)
    victims: list[dict[str, Any]] = field(default_factory=list)


class StepLog:
    """`steps.jsonl`: one line per engine step, flushed as it is written (a killed run keeps its steps)."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "a")  # noqa: SIM115 - open for the engine's lifetime
        self.steps_logged = 0

    def write(self, step: StepRecord, duration_s: float, block_size: int, free_blocks: int, pins: list[str]) -> None:
        record = {
            "t": round(step.start_s, 6), "duration_s": round(duration_s, 6),
            "scheduled": [[v.meta.call_id, n, *step.phases.get(v.meta.call_id, ("prefill", 0))]
                          for v, n in step.scheduled],
            "block_size": block_size,
            "preempted": [v.meta.call_id for v in step.preempted],
            "free_blocks": free_blocks, "pins": pins,
            "running_before": step.running_before,
            **{k: v for k in ("shrunk", "capped", "pins_released", "victims") if (v := getattr(step, k))},
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.steps_logged += 1


class CallLog:
    """`server_calls.jsonl`: one line per finished call, `{"call_id": ..., **figures}`."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "a")  # noqa: SIM115 - open for the engine's lifetime

    def write(self, call_id: str, figures: dict[str, Any]) -> None:
        self._file.write(json.dumps({"call_id": call_id, **figures}) + "\n")
        self._file.flush()


class PrefillRate:
    """Seconds per prefilled token: an EMA over prefill-dominated steps (>= 64 prefill tokens)."""

    def __init__(self, initial_s_per_token: float = 1e-4) -> None:
        self.s_per_token = initial_s_per_token

    def observe(self, scheduled_tokens: list[int], duration_s: float) -> None:
        prefill = sum(n for n in scheduled_tokens if n > 1)
        if prefill >= 64 and duration_s > 0:
            self.s_per_token = 0.8 * self.s_per_token + 0.2 * duration_s / sum(scheduled_tokens)

    def seconds(self, tokens: int) -> float:
        return tokens * self.s_per_token
