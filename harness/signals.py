"""Polling the unified information stream: GPU side (KV usage, free/total blocks) from the engine,
in-process or from its /metrics, at most every `poll_interval_s` (0.2 s); when a poll fails, the last good
reading is reused for up to `max_age_s` (2 s) and then reported missing (None), so a controller can fall
back instead of acting on stale numbers. CPU side (tool workers, inflight calls, EMA of queue wait) is
local and fresh. The snapshot types are the policy contract's (harness.policy.signals).
"""

from __future__ import annotations

from collections.abc import Callable

from harness.policy.signals import EngineSignals, Signals, ToolSignals


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
