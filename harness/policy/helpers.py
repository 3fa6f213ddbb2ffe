"""Shared helpers of the policies (baselines and MARS): what they learn online through the hooks, and the
few quantities more than one policy reads the same way.

* `ToolDurations` - observed tool durations per tool name and over all tools (Continuum's per-tool
  estimate, with the global sample as the fallback until a tool has enough samples of its own);
* `ecdf` - the empirical CDF of a sample, as its support points and P(X <= x) at each;
* `RollingMean` - the mean of the last N values (Continuum-dy's queueing delay after eviction);
* `RunningCorrelation` - Pearson correlation from running sums (Continuum-dy's eta);
* `context_tokens` - the context a call leaves behind: what a pin holds and a cold resume re-prefills;
* `longest_pin_first` - the pin-release order of both Continuum's and InferCept's public code;
* `kv_holders_first` - the waiting order both give a call that resumes onto its pinned KV.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from statistics import fmean

import numpy as np

from harness.policy.hooks import PinView, R, RequestView


class ToolDurations:
    """Durations of finished tool calls (as `Policy.on_tool_end` reports them, queue wait included),
    kept per tool name and over all tools."""

    def __init__(self) -> None:
        self._by_tool: dict[str, list[float]] = {}
        self._all: list[float] = []

    def add(self, tool: str, seconds: float) -> None:
        self._by_tool.setdefault(tool, []).append(seconds)
        self._all.append(seconds)

    def count(self, tool: str | None = None) -> int:
        """Samples of `tool`, or of all tools when `tool` is None."""
        return len(self.samples(tool))

    def samples(self, tool: str | None = None) -> Sequence[float]:
        """The durations of `tool` (empty if never seen), or of all tools when `tool` is None."""
        return self._all if tool is None else self._by_tool.get(tool, ())

    def mean(self, tool: str | None = None) -> float | None:
        """Mean duration of `tool` (all tools when None); None before any observation."""
        values = self.samples(tool)
        return fmean(values) if values else None


def ecdf(samples: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of `samples`: its distinct values x (ascending) and P(X <= x) at each."""
    values, counts = np.unique(np.asarray(samples, dtype=float), return_counts=True)
    return values, np.cumsum(counts) / max(1, len(samples))


class RollingMean:
    """Mean of the last `window` values."""

    def __init__(self, window: int) -> None:
        self._values: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self._values.append(value)

    def __len__(self) -> int:
        return len(self._values)

    def mean(self, default: float) -> float:
        """The mean, or `default` before the first value."""
        return fmean(self._values) if self._values else default


class RunningCorrelation:
    """Pearson correlation of (x, y) pairs from running sums: O(1) memory, pairs arrive one by one."""

    def __init__(self) -> None:
        self.n = 0
        self._sx = self._sy = self._sxx = self._syy = self._sxy = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        self._sx += x
        self._sy += y
        self._sxx += x * x
        self._syy += y * y
        self._sxy += x * y

    def value(self) -> float | None:
        """The correlation in [-1, 1]; None with fewer than two pairs or when x or y never varies."""
        if self.n < 2:
            return None
        var_x = self.n * self._sxx - self._sx * self._sx
        var_y = self.n * self._syy - self._sy * self._sy
        if var_x <= 0 or var_y <= 0:
            return None
        cov = self.n * self._sxy - self._sx * self._sy
        return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))


def context_tokens(req: RequestView) -> int:
    """The call's whole context (prompt and output so far): what its KV covers once it finishes, so what
    a pin keeps and what a resume without one prefills again."""
    return req.num_prompt_tokens + req.num_output_tokens


def longest_pin_first(pins: Mapping[str, PinView]) -> str:
    """The session whose pin would hold its blocks longest. Continuum's preview scheduler releases "the
    longest retained KV" when blocks run short; InferCept's passive discard takes the paused request
    with the most interception time left - with a deadline per pin, both are the latest deadline."""
    return max(pins, key=lambda s: (pins[s].deadline_s, s))


def kv_holders_first(waiting: list[R]) -> list[R]:
    """`waiting` with the calls that already hold KV blocks (they adopted their session's pin on arrival)
    moved to the front, the order otherwise kept. Continuum's preview queue serves "pinned request ->
    job-level FCFS"; InferCept resumes a preserved request straight into its running group. It also keeps
    the engine live: blocks held by a waiting call can be neither released nor preempted, so a head that
    needs them would wait forever behind it.
    """
    return sorted(waiting, key=lambda r: r.num_blocks == 0)
