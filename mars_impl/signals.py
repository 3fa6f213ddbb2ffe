"""The unified information stream (MARS reference section 1): one snapshot of GPU- and CPU-side state
that admission and retention decide on.

GPU side (KV usage, free/total blocks) comes from the engine: in-process or from its /metrics. It is
polled at most every `poll_interval_s` (0.2 s); when a poll fails, the last good reading is reused for
up to `max_age_s` (2 s) and then reported missing (None), so a controller can fall back instead of
acting on stale numbers. CPU side (tool workers, inflight calls, EMA of queue wait) is local and fresh.
"""

from __future__ import annotations

from collections.abc import Callable
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


class SignalStream:
    """Polls the engine at most every `poll_interval_s`, tolerating failed polls up to `max_age_s`."""

    def __init__(
        self,
        read_engine: Callable[[], EngineSignals | None],
        read_tools: Callable[[], ToolSignals],
        poll_interval_s: float = 0.2,
        max_age_s: float = 2.0,
    ) -> None:
        self.read_engine = read_engine
        self.read_tools = read_tools
        self.poll_interval_s = poll_interval_s
        self.max_age_s = max_age_s
        self._engine: EngineSignals | None = None
        self._engine_at: float | None = None
        self._polled_at: float | None = None

    def snapshot(self, now: float) -> Signals:
        if self._polled_at is None or now - self._polled_at >= self.poll_interval_s:
            self._polled_at = now
            reading = self.read_engine()
            if reading is not None:
                self._engine, self._engine_at = reading, now
        engine, age = self._engine, None
        if self._engine_at is not None:
            age = now - self._engine_at
            if age > self.max_age_s:
                engine = None
        return Signals(time_s=now, engine=engine, engine_age_s=age, tools=self.read_tools())
