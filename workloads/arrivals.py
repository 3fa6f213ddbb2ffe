"""Arrival processes: when each session enters the backlog.

* fixed   — one session every 1/rps seconds (the MARS testbed's default);
* poisson — exponential gaps with mean 1/rps;
* gamma   — gamma gaps with mean 1/rps, as `vllm bench serve --burstiness B` draws them: shape B, scale
            theta = 1/(rps*B), so the gaps' coefficient of variation is 1/sqrt(B). B < 1 is burstier than
            Poisson, B = 1 is Poisson, B -> inf approaches fixed. `cv` is the older way to say the same:
            B = 1/cv^2;
* trace   — explicit timestamps (a workload file's own arrival times, or a list given by the user).

`rps` may be infinite (`--rps inf`, vllm bench's `--request-rate inf`): every session arrives at 0.
The first session arrives at time 0, so a run's span starts with its first arrival. (vllm bench also draws a
gap before its first request and rescales the schedule to span exactly N/rate; ours is not rescaled, so a
seed's schedule spans N-1 drawn gaps.)
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
    """The gamma shape from `--burstiness` or its alias `--cv` (B = 1/cv^2); Poisson (1) when neither is given."""
    if burstiness is not None:
        if cv is not None and not math.isclose(burstiness, 1.0 / cv**2):
            raise BadInput(f"--burstiness {burstiness:g} and --cv {cv:g} disagree (burstiness = 1/cv^2); give one")
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
    """`n` non-decreasing arrival times in seconds, starting at 0. For gamma, `burstiness` (when given)
    is the shape; else 1/cv^2."""
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
    if process == "fixed":
        gaps = np.full(n - 1, 1.0 / rps)
    elif process == "poisson":
        gaps = rng.exponential(1.0 / rps, size=n - 1)
    else:
        if cv <= 0:
            raise BadInput(f"gamma arrivals need cv > 0, got {cv}")
        shape = burstiness if burstiness is not None else 1.0 / cv**2
        if shape <= 0:
            raise BadInput(f"gamma arrivals need burstiness > 0, got {shape:g}")
        theta = 1.0 / (rps * shape)
        gaps = rng.gamma(shape, theta, size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])
