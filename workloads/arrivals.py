"""Arrival processes: when each session enters the backlog.

* fixed   — one session every 1/rps seconds (the MARS testbed's default);
* poisson — exponential gaps with mean 1/rps;
* gamma   — gamma gaps with mean 1/rps and coefficient of variation `cv` (shape 1/cv^2, scale
            1/(rps*shape)): cv > 1 is burstier than Poisson, cv = 1 is Poisson, cv -> 0 approaches fixed;
* trace   — explicit timestamps (a workload file's own arrival times, or a list given by the user).

The first session arrives at time 0, so a run's span starts with its first arrival.

`burstiness` (`--burstiness B`) switches to `vllm bench serve`'s own schedule (its `get_request`): N gamma gaps
of shape B and scale theta = 1/(rps*B) (gaps' CV 1/sqrt(B): B < 1 burstier than Poisson, B = 1 Poisson,
B = inf fixed), the first one before the first session, their running sum rescaled so that the last
session arrives at exactly N/rps. So a seed's run offers exactly the asked rate, as vllm bench's does;
`--cv` is the same shape written as B = 1/cv^2, on our own schedule (first arrival at 0, not rescaled).

`rps` may be infinite (`--rps inf`, vllm bench's `--request-rate inf`): every session arrives at 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from harness.errors import BadInput

ArrivalProcess = Literal["fixed", "poisson", "gamma", "trace"]
ARRIVAL_PROCESSES: tuple[str, ...] = ("fixed", "poisson", "gamma", "trace")


def burstiness_of(cv: float | None, burstiness: float | None) -> float:
    """The gamma shape asked for: `--burstiness`, or `--cv` as 1/cv^2; Poisson (1) when neither is given.
    Both at once are refused: they ask for different schedules (vllm bench's, ours)."""
    if burstiness is not None and cv is not None:
        raise BadInput("give --burstiness (vllm bench's arrival schedule) or --cv (ours), not both")
    if burstiness is not None:
        return burstiness
    return 1.0 / cv**2 if cv is not None else 1.0


def arrival_times(
    process: ArrivalProcess,
    n: int,
    rps: float,
    rng: np.random.Generator,
    cv: float = 1.0,
    timestamps: Sequence[float] | None = None,
    burstiness: float | None = None,
) -> np.ndarray:
    """`n` non-decreasing arrival times in seconds: from 0, or for gamma with `burstiness` vllm bench's
    schedule (`vllm_schedule`)."""
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
    if process not in ARRIVAL_PROCESSES:
        raise BadInput(f"unknown arrival process {process!r} (expected {', '.join(ARRIVAL_PROCESSES)})")
    if math.isinf(rps):
        return np.zeros(n)  # a burst: everything at once, whatever the process
    if burstiness is not None and process == "gamma":
        return vllm_schedule(n, rps, burstiness, rng)
    if process == "fixed":
        gaps = np.full(n - 1, 1.0 / rps)
    elif process == "poisson":
        gaps = rng.exponential(1.0 / rps, size=n - 1)
    else:
        if cv <= 0:
            raise BadInput(f"gamma arrivals need cv > 0, got {cv}")
        shape = 1.0 / cv**2
        theta = 1.0 / (rps * shape)
        gaps = rng.gamma(shape, theta, size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def vllm_schedule(n: int, rps: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times as `vllm bench serve --request-rate rps --burstiness B` makes them: n gamma gaps (shape B,
    scale 1/(rps*B); constant 1/rps for B = inf), cumulated, rescaled so the last arrival is at n/rps."""
    if burstiness <= 0:
        raise BadInput(f"--burstiness must be > 0, got {burstiness:g}")
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / rps)
    else:
        gaps = rng.gamma(burstiness, 1.0 / (rps * burstiness), size=n)
    times = np.cumsum(gaps)
    if times[-1] > 0:
        times *= (n / rps) / times[-1]
    return times
