"""The unified information stream's data (MARS reference section 1): one snapshot of GPU- and CPU-side
state that admission and retention decide on. Engines and the tool pool produce it (harness.signals polls
them); policies and admission controllers only read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSignals:
    """GPU side, as the engine reports it."""

    kv_usage: float
    free_blocks: int
    total_blocks: int
    block_size: int
    running: int
    waiting: int
    # Cumulative counters since the engine started, None where the engine does not report them (CONCUR reads
    # their change over its control interval): recompute preemptions, and prompt tokens looked up in the prefix
    # cache and found there (vLLM's `prefix_cache_queries` / `prefix_cache_hits`; SGLang's prompt / cached tokens).
    preemptions: int | None = None
    prefix_query_tokens: int | None = None
    prefix_hit_tokens: int | None = None


@dataclass(frozen=True)
class ToolSignals:
    """CPU side, from the tool pool."""

    workers: int
    inflight: int
    ema_wait_s: float


@dataclass(frozen=True)
class Signals:
    """One snapshot of the information stream. GPU fields are None when the engine's are missing."""

    time_s: float
    engine: EngineSignals | None
    engine_age_s: float | None
    tools: ToolSignals

    @property
    def kv_usage(self) -> float | None:
        return self.engine.kv_usage if self.engine else None

    @property
    def backlog_per_core(self) -> float:
        """Inflight tool calls per tool core: the CPU pressure MARS's admission compares with its marks."""
        return self.tools.inflight / self.tools.workers if self.tools.workers else 0.0
