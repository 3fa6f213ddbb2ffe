"""Arrival processes: when each session enters the backlog.

* fixed   — one session every 1/rps seconds (the MARS testbed's default);
* poisson — exponential gaps with mean 1/rps;
* gamma   — gamma gaps with mean 1/rps and coefficient of variation `cv` (cv > 1 is burstier than
            Poisson, cv = 1 is Poisson, cv -> 0 approaches fixed), as `vllm bench serve --burstiness`
            with burstiness = 1/cv^2;
* trace   — explicit timestamps (a workload file's own arrival times, or a list given by the user).

The first session arrives at time 0, so a run's span starts with its first arrival.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from harness.errors import BadInput

ArrivalProcess = Literal["fixed", "poisson", "gamma", "trace"]
ARRIVAL_PROCESSES: tuple[str, ...] = ("fixed", "poisson", "gamma", "trace")


def arrival_times(
    process: ArrivalProcess,
    n: int,
    rps: float,
    rng: np.random.Generator,
    cv: float = 1.0,
    timestamps: Sequence[float] | None = None,
) -> np.ndarray:
    """`n` non-decreasing arrival times in seconds, starting at 0."""
    if process == "trace":
        if timestamps is None or len(timestamps) < n:
            have = 0 if timestamps is None else len(timestamps)
            raise BadInput(f"arrival 'trace' needs {n} timestamps, got {have}")
        times = np.asarray(timestamps[:n], dtype=float)
        if np.any(times < 0) or np.any(np.diff(times) < 0):
            raise BadInput("arrival timestamps must be >= 0 and non-decreasing")
        return times
    if rps <= 0:
        raise BadInput(f"--rps must be > 0, got {rps}")
    if n == 0:
        return np.zeros(0)
    if process == "fixed":
        gaps = np.full(n - 1, 1.0 / rps)
    elif process == "poisson":
        gaps = rng.exponential(1.0 / rps, size=n - 1)
    elif process == "gamma":
        if cv <= 0:
            raise BadInput(f"gamma arrivals need cv > 0, got {cv}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rps * shape), size=n - 1)
    else:
        raise BadInput(f"unknown arrival process {process!r} (expected {', '.join(ARRIVAL_PROCESSES)})")
    return np.concatenate([[0.0], np.cumsum(gaps)])
