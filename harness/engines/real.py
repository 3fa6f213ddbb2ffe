"""What every real engine shares (in-process vLLM, an attached or launched OpenAI-compatible server): a
real-time clock, append-only session prompts as token ids, the session metadata each call carries, the
calls in flight and the per-token timing of their outputs. A subclass sends calls (`_send`) and delivers
what the engine produced (`_tokens_arrived`, `_finish`, or `_fail`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import simpy
import simpy.rt

from harness.calls import CallMeta, CallRecord, CallSpec, PrevTool
from harness.errors import BadInput
from workloads.model import Session

FIRST_TOKEN_ID = 16  # synthetic prompt tokens avoid the low ids, where tokenizers keep special tokens


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SessionTokens:
    """Token ids of each session's context, append-only: shared prefix, then per turn its new tokens and
    the model's outputs. The same session and seed give the same prompt ids in every run."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        if vocab_size <= FIRST_TOKEN_ID + 1:
            raise BadInput(f"the model's vocabulary ({vocab_size} tokens) is too small for synthetic prompts")
        self.vocab_size = vocab_size
        self.seed = seed
        self._context: dict[str, list[int]] = {}

    def _fresh(self, n: int, *key: object) -> list[int]:
        rng = np.random.default_rng(_stable_seed(self.seed, *key))
        return rng.integers(FIRST_TOKEN_ID, self.vocab_size, size=n).tolist()

    def prompt(self, spec: CallSpec) -> list[int]:
        """The prompt ids of a call: the session's context so far plus fresh ids up to its prompt length."""
        context = self._context.get(spec.session_id)
        if context is None:
            context = self._fresh(spec.prefix_tokens, "prefix", spec.prefix_id) if spec.prefix_id else []
        missing = spec.prompt_tokens - len(context)
        if missing > 0:
            context = context + self._fresh(missing, spec.session_id, spec.turn)
        self._context[spec.session_id] = context
        return list(context)

    def add_output(self, session_id: str, token_ids: Sequence[int]) -> None:
        self._context.setdefault(session_id, []).extend(int(t) for t in token_ids)

    def end(self, session_id: str) -> None:
        self._context.pop(session_id, None)


def longest_call(sessions: Sequence[Session]) -> int:
    """Prompt plus output tokens of the longest call of `sessions` (the context limit a run needs)."""
    return max((s.prompt_tokens(k) + t.output_tokens for s in sessions for k, t in enumerate(s.turns)), default=1)


def model_directory(model: str) -> str:
    """A local model directory, or a hub id for machines that can download; bad names fail clearly."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise BadInput(f"--model {model}: no config.json in that directory")
        return str(path)
    if "/" in model and not path.exists():
        return model  # a hub id (needs a network or a filled HF cache)
    raise BadInput(f"--model {model}: not a model directory; for a real engine give a directory "
                   "(make one with `mars-bench model make-tiny DIR`) or a hub id such as Qwen/Qwen3-Coder-30B-A3B-Instruct")


def load_format(model: str) -> str:
    """"dummy" for a local directory without weights (a tiny model made here), else "auto"."""
    path = Path(model)
    local = path.is_dir()
    has_weights = local and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
    return "auto" if has_weights or not local else "dummy"


class _Call:
    """A call in flight: the harness's record, its event, and the session's output ids so far."""

    def __init__(self, spec: CallSpec, record: CallRecord, event: simpy.Event) -> None:
        self.spec = spec
        self.record = record
        self.event = event
        self.output_ids: list[int] = []


class RealEngine:
    """The shared part of every real engine (harness.engines.base.Engine) on a real-time clock."""

    name = "real"

    def __init__(self, max_model_len: int, seed: int = 0) -> None:
        self.env = simpy.rt.RealtimeEnvironment(strict=False)
        self.max_model_len = max_model_len
        self.seed = seed
        self.calls: dict[str, _Call] = {}
        self.prev_tool: dict[str, PrevTool] = {}
        self.cached_tokens = 0
        self.prompt_tokens = 0  # prompt tokens of the finished calls (cached_tokens of them were cached)
        self.tokens: SessionTokens | None = None
        self.on_step: Callable[[float], None] = lambda now: None
        self._wake: simpy.Event | None = None  # set while the engine's loop waits for a call
        self._epoch = time.monotonic()

    # ------------------------------------------------------------------------------ Engine
    def bind(self, on_step: Callable[[float], None]) -> None:
        self.on_step = on_step

    def start(self) -> None:
        self.env.sync()  # real time starts now, not when the engine finished loading
        self._epoch = time.monotonic()

    def fits(self, spec: CallSpec) -> bool:
        return spec.prompt_tokens + spec.max_tokens <= self.max_model_len

    def submit(self, spec: CallSpec, measured: bool) -> simpy.Event:
        """Build the call's prompt ids and metadata, register it as in flight, send it, wake the loop."""
        assert self.tokens is not None
        record = CallRecord(spec.call_id, spec.session_id, spec.turn, self.env.now, spec.prompt_tokens,
                            spec.max_tokens)
        meta = CallMeta.of(spec, measured, self.prev_tool.pop(spec.session_id, None), self._epoch)
        event = self.env.event()
        self.calls[spec.call_id] = _Call(spec, record, event)
        self._send(spec, self.tokens.prompt(spec), meta)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return event

    def tool_ended(self, session_id: str, tool_name: str, duration_s: float) -> None:
        """The policy hears of it with the session's next call (its metadata carries the previous tool)."""
        self.prev_tool[session_id] = PrevTool(tool_name, duration_s)

    def close(self) -> None:
        """Stop what the engine started; safe to call twice (subclasses)."""

    # ------------------------------------------------------------------------------ subclasses
    def _send(self, spec: CallSpec, prompt: list[int], meta: CallMeta) -> None:
        """Hand the call to the engine."""
        raise NotImplementedError

    def _now(self) -> float:
        return time.monotonic() - self._epoch

    def _tokens_arrived(self, call: _Call, new: Sequence[int], start: float, end: float) -> None:
        """New output ids of a call, produced by the step [start, end] (harness clock)."""
        record = call.record
        record.sample_chunk(end, len(new))  # one ITL gap per chunk, as vllm bench serve records a stream
        call.output_ids.extend(int(t) for t in new)
        if math.isnan(record.first_scheduled_s):
            record.first_scheduled_s = start

    def _finish(self, call: _Call, cached_tokens: int, figures: dict[str, Any], end: float) -> None:
        """The call finished at `end`: its cached tokens (the engine's count) and the scheduler's figures."""
        assert self.tokens is not None
        record = call.record
        del self.calls[record.request_id]
        record.finish_s = end
        record.cached_tokens = cached_tokens
        self.cached_tokens += cached_tokens
        self.prompt_tokens += call.spec.prompt_tokens
        record.num_preemptions = int(figures.get("preemptions", 0))
        record.recomputed_tokens = int(figures.get("recomputed_tokens", 0))
        first = figures.get("first_scheduled_s")
        if first is not None and not math.isnan(first):
            record.first_scheduled_s = first
        if call.spec.is_last_turn:
            self.tokens.end(record.session_id)
        else:
            self.tokens.add_output(record.session_id, call.output_ids)
        call.event.succeed(record)

    def _fail(self, call: _Call, reason: str) -> None:
        """The call failed (`reason`): it ends without a finish time, and its session with it."""
        assert self.tokens is not None
        record = call.record
        del self.calls[record.request_id]
        record.error = reason
        self.tokens.end(record.session_id)
        call.event.succeed(record)
