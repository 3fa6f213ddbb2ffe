"""The host's load over a measurement, read from /proc: is a real-engine timing the engine's, or noise?

A real engine shares the machine: another tenant's processes take CPU time from it (and a hypervisor
takes steal time), so the same run can be several times slower. `HostLoad` samples the machine while a
measurement runs and reports:

* `load1_start`, `load1_end`, `load1_max`: the 1-minute load average (runnable tasks, ours included);
* `busy_cpus`: CPUs busy on average over the measurement (from /proc/stat, all processes);
* `own_cpus`: CPUs used by this process and its descendants (engine workers, servers it launched, tools);
* `others_cpus` = busy - own: CPUs taken by every other process on the machine (a server that mars-bench
  did not start, on the same machine, counts here);
* `steal_cpus`: CPUs the hypervisor gave to other guests;
* `cpus`: the machine's CPUs (the /proc/stat `cpuN` lines).

**The rule**: a measurement is `noisy` when other processes and steal together took more than a quarter
of the machine's CPUs (and at least half a CPU) on average over it: `others_cpus + steal_cpus >
max(NOISY_MIN_CPUS, NOISY_SHARE x cpus)`. Load averages are recorded but not judged: they count our own
runnable threads too (a CPU engine keeps several busy), so they cannot say whose the load was.

Linux only; elsewhere nothing is measured (`figures()` is empty and nothing is noisy).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.proctree import descendants

NOISY_SHARE = 0.25  # of the machine's CPUs taken by others (and steal) on average
NOISY_MIN_CPUS = 0.5  # ... and at least this many CPUs
SAMPLE_INTERVAL_S = 1.0
_PROC = Path("/proc")


@dataclass(frozen=True)
class Sample:
    """One reading of the machine: CPU ticks since boot (all CPUs together) and the load average."""

    wall_s: float  # time.monotonic()
    load1: float
    cpus: int
    total_ticks: int  # every state, steal included
    busy_ticks: int  # user, nice, system, irq, softirq (guest time is inside user)
    steal_ticks: int
    own_ticks: int  # this process tree: ours, our reaped children's, our live descendants'


def read_sample() -> Sample | None:
    """The machine now, or None where /proc cannot say."""
    try:
        load1 = float((_PROC / "loadavg").read_text().split()[0])
        lines = (_PROC / "stat").read_text().splitlines()
    except (OSError, ValueError, IndexError):
        return None
    total = busy = steal = cpus = 0
    for line in lines:
        name, *fields = line.split()
        if name == "cpu":
            ticks = [int(v) for v in fields[:8]] + [0] * (8 - len(fields[:8]))
            user, nice, system, idle, iowait, irq, softirq, steal = ticks
            busy = user + nice + system + irq + softirq
            total = busy + idle + iowait + steal
        elif name.startswith("cpu"):
            cpus += 1
    if not total:
        return None
    me = os.getpid()
    own = _ticks(me, children=True) + sum(_ticks(p, children=True) for p in descendants(me))
    return Sample(time.monotonic(), load1, max(cpus, 1), total, busy, steal, own)


def _ticks(pid: int, children: bool) -> int:
    """utime + stime (+ cutime + cstime: its reaped children's) of a process, in clock ticks; 0 if gone."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
        return sum(int(v) for v in fields[11:15 if children else 13])
    except (OSError, ValueError):
        return 0


def figures(samples: list[Sample]) -> dict[str, Any]:
    """The host load over `samples` (first to last) and whether it makes the measurement noisy."""
    if len(samples) < 2 or samples[-1].total_ticks <= samples[0].total_ticks:
        return {}
    first, last = samples[0], samples[-1]
    cpus = first.cpus
    per_cpu = (last.total_ticks - first.total_ticks) / cpus  # ticks each CPU had over the interval

    def share(delta: int) -> float:
        return max(0.0, delta / per_cpu)

    busy = share(last.busy_ticks - first.busy_ticks)
    own = share(last.own_ticks - first.own_ticks)
    steal = share(last.steal_ticks - first.steal_ticks)
    others = max(0.0, busy - own)
    limit = max(NOISY_MIN_CPUS, NOISY_SHARE * cpus)
    return {
        "cpus": cpus, "seconds": round(last.wall_s - first.wall_s, 3), "samples": len(samples),
        "load1_start": first.load1, "load1_end": last.load1, "load1_max": max(s.load1 for s in samples),
        "busy_cpus": round(busy, 3), "own_cpus": round(own, 3), "others_cpus": round(others, 3),
        "steal_cpus": round(steal, 3), "noisy_above_cpus": limit, "noisy": others + steal > limit,
    }


def describe(load: dict[str, Any]) -> str:
    """The figures in words: 'others 1.60 + steal 0.00 CPUs of 2, load1 max 9.1'; 'not measured' if empty."""
    if not load:
        return "not measured"
    try:
        return (f"others {float(load['others_cpus']):.2f} + steal {float(load['steal_cpus']):.2f} CPUs of "
                f"{load['cpus']}, load1 max {float(load['load1_max']):.1f}")
    except (KeyError, TypeError, ValueError):
        return "unreadable host load"


class HostLoad:
    """Samples the host from `start()` to `stop()` on a daemon thread (every `interval_s`); `read` is the
    sampler (`read_sample`; tests give a synthetic one)."""

    def __init__(self, read: Callable[[], Sample | None] | None = None,
                 interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.read = read or read_sample
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _take(self) -> None:
        sample = self.read()
        if sample is not None:
            self.samples.append(sample)

    def start(self) -> HostLoad:
        self._take()
        self._thread = threading.Thread(target=self._run, name="mars-bench-hostload", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the figures (harness.hostload.figures) over the whole measurement."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._take()
        return figures(self.samples)

    def __enter__(self) -> HostLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
