"""What the harness knows of one LLM call, engine-independent, and what crosses to the engine with it.

* `CallSpec` - the next call of a session as the agent loop asks for it (the runner hands it to the
  engine);
* `CallMeta` - the session metadata every call carries to the engine (MARS's unified information stream:
  session, turn, last turn, next tool, the previous tool's duration), one schema for the harness that sends
  it and the scheduler plugin that reads it (over HTTP as a JSON string in vLLM's `vllm_xargs`);
* `CallRecord` - the call as measured: timings, tokens, cache hits and recomputation, and its row of the
  calls table (harness.tables.CALL_COLUMNS). Every engine fills one in; the simulated engine's request
  is one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallSpec:
    """The next LLM call of a session, with the metadata every call carries (MARS information stream)."""

    session_id: str
    turn: int
    prompt_tokens: int
    max_tokens: int
    is_last_turn: bool
    tool_name: str | None  # the tool this call will lead to
    prefix_id: str | None
    prefix_tokens: int
    session_arrival_s: float

    @property
    def call_id(self) -> str:
        return f"{self.session_id}#{self.turn}"


@dataclass(frozen=True)
class PrevTool:
    """The tool call that ended just before this call: its name and duration (queue wait included)."""

    name: str
    duration_s: float


@dataclass(frozen=True)
class CallMeta:
    """The session metadata a call carries to the engine's scheduler."""

    call_id: str  # the harness's id (vLLM adds a suffix to its own request ids)
    session_id: str
    turn: int = 0
    is_last_turn: bool = True
    tool_name: str | None = None
    session_arrival_s: float | None = None
    prev_tool: PrevTool | None = None
    measured: bool = True  # False for background traffic
    epoch: float | None = None  # the harness's clock origin (CLOCK_MONOTONIC seconds)

    @staticmethod
    def of(spec: CallSpec, measured: bool = True, prev_tool: PrevTool | None = None,
           epoch: float | None = None) -> CallMeta:
        return CallMeta(spec.call_id, spec.session_id, spec.turn, spec.is_last_turn, spec.tool_name,
                        spec.session_arrival_s, prev_tool, measured, epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def parse(raw: Mapping[str, Any] | str | None, request_id: str) -> CallMeta:
        """The metadata of a request as the engine received it: a dict (in-process) or a JSON string (over
        HTTP: `vllm_xargs` values are flat). Missing or bad metadata never stops the engine: the request
        then counts as a one-call session of its own."""
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = None
        raw = raw if isinstance(raw, Mapping) else {}
        prev = raw.get("prev_tool")
        try:
            prev_tool = PrevTool(str(prev.get("name", "")), float(prev.get("duration_s", 0.0))) \
                if isinstance(prev, Mapping) else None
            arrival, epoch = raw.get("session_arrival_s"), raw.get("epoch")
            return CallMeta(
                call_id=str(raw.get("call_id", request_id)), session_id=str(raw.get("session_id", request_id)),
                turn=int(raw.get("turn", 0)), is_last_turn=bool(raw.get("is_last_turn", True)),
                tool_name=None if raw.get("tool_name") is None else str(raw["tool_name"]),
                session_arrival_s=None if arrival is None else float(arrival), prev_tool=prev_tool,
                measured=bool(raw.get("measured", True)), epoch=None if epoch is None else float(epoch))
        except (TypeError, ValueError, AttributeError):
            return CallMeta(request_id, request_id)


@dataclass(eq=False)
class CallRecord:
    """One LLM call as measured, on the run's clock (seconds from its start)."""

    request_id: str
    session_id: str
    turn: int
    arrival_s: float  # handed to the engine
    num_prompt_tokens: int
    max_tokens: int
    num_output_tokens: int = 0
    first_scheduled_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    last_token_s: float = math.nan
    itl_s: list[float] = field(default_factory=list)
    cached_tokens: int = 0  # prefix-cache hit when first scheduled
    recomputed_tokens: int = 0
    num_preemptions: int = 0
    error: str | None = None  # why the call failed (no token, timed out); None for a call that ended well
    replica: str | None = None  # the server it went to, where a run has several (--base-url, repeated)

    def sample_token(self, t: float) -> None:
        """One output token produced at time `t` (TTFT, inter-token latency)."""
        if self.num_output_tokens == 0:
            self.first_token_s = t
        else:
            self.itl_s.append(t - self.last_token_s)
        self.last_token_s = t
        self.num_output_tokens += 1

    def sample_chunk(self, t: float, tokens: int) -> None:
        """`tokens` output tokens streamed together at time `t` (one chunk of a stream, one engine step).

        As `vllm bench serve` records a stream: one inter-token gap per chunk, never a 0 s gap between tokens
        that arrived together (TPOT still divides by every token). With one token per chunk this is
        `sample_token`."""
        if tokens <= 0:
            return
        if self.num_output_tokens == 0:
            self.first_token_s = t
        else:
            self.itl_s.append(t - self.last_token_s)
        self.last_token_s = t
        self.num_output_tokens += tokens

    def row(self) -> dict[str, Any]:
        """This call as a row of the calls table (harness.tables.CALL_COLUMNS); with several replicas, its
        `replica` too, which its `call` event in events.jsonl keeps (the table's schema is every engine's)."""
        row = {
            "session_id": self.session_id,
            "turn": self.turn,
            "arrival_s": self.arrival_s,
            "first_scheduled_s": self.first_scheduled_s,
            "first_token_s": self.first_token_s,
            "finish_s": self.finish_s,
            "prompt_tokens": self.num_prompt_tokens,
            "output_tokens": self.num_output_tokens,
            "cached_tokens": self.cached_tokens,
            "recomputed_tokens": self.recomputed_tokens,
            "preemptions": self.num_preemptions,
            "itl_s": list(self.itl_s),
            "error": self.error,
        }
        if self.replica is not None:
            row["replica"] = self.replica
        return row
