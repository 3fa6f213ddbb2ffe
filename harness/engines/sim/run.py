"""Whole simulations without a results directory: `simulate` (tests, benchmarks, the isolated reference) and
`isolated_jcts` - each session alone on the idle testbed, the reference of slowdown and goodput for every
backend and engine."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import inputs
from harness.errors import BadInput
from harness.engines.sim.engine import SimEngine
from harness.engines.sim.testbed import SimSetup
from harness.policy import AdmissionController, AdmitAll, Policy
from harness.runner import AgentRun, Outcome, Sink, TimedTools
from harness.tools import ToolPool
from workloads.model import Session


class SimRun(AgentRun):
    """The agent runner around a simulated engine; `core` and `kv` are the engine's, for tests to inspect."""

    def __init__(self, sessions: Sequence[Session], policy: Policy, admission: AdmissionController, setup: SimSetup,
                 sink: Sink | None = None, background: Sequence[Session] = ()) -> None:
        engine = SimEngine(setup, policy)
        tools = TimedTools(engine.env, ToolPool(setup.tool_cores, setup.tool_mode, stress_cores=setup.cpu_stress))
        super().__init__(engine, sessions, admission, tools, sink, background, setup.timeline_interval_s)
        self.core, self.kv = engine.core, engine.kv


def simulate(sessions: Sequence[Session], policy: Policy, setup: SimSetup, admission: AdmissionController | None = None,
             sink: Sink | None = None, isolated: dict[str, float] | None = None,
             background: Sequence[Session] = ()) -> Outcome:
    """Run `sessions` through the simulated testbed under `policy`, with unmeasured `background` traffic."""
    return SimRun(sessions, policy, admission or AdmitAll(), setup, sink, background).run(isolated)


def _session_key(session: Session, setup: SimSetup) -> str:
    """Cache key: the session's content (not its id or arrival) and the testbed."""
    content = session.model_dump(mode="json", exclude={"id", "arrival_s", "kind"})
    text = json.dumps([content, setup.fingerprint], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def isolated_jcts(sessions: Sequence[Session], setup: SimSetup, cache: Path | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """JCT of each session alone on the idle testbed (vanilla vLLM policy), cached by content + testbed."""
    idle = setup.idle()
    known: dict[str, float] = read_cache(cache)
    out: dict[str, float] = {}
    with kept_cache(cache, known) as added:
        for session in sessions:
            key = _session_key(session, idle)
            if key not in known:
                alone = session.with_arrival(0.0)
                result = simulate([alone], Policy(), idle)
                known[key] = float(result.sessions["finish_s"].iloc[0] - alone.arrival_s)
                added()
            out[session.id] = known[key]
            if progress is not None:
                progress(1)
    return out


KEEP_EVERY_S = 10.0  # a growing cache is written at least this often, so a kill loses at most this much work


@contextmanager
def kept_cache(cache: Path | None, known: dict[str, Any]) -> Iterator[Callable[[], None]]:
    """Keep `known` in `cache` while it grows (the caller calls the yielded function after each entry it
    adds): written every KEEP_EVERY_S and at the end, also when a Ctrl-C or an error ends the computation,
    so a reference computed for minutes is never lost (the next run starts where this one stopped)."""
    dirty, written = False, time.monotonic()

    def added() -> None:
        nonlocal dirty, written
        dirty = True
        if cache is not None and time.monotonic() - written >= KEEP_EVERY_S:
            write_cache(cache, known)
            dirty, written = False, time.monotonic()

    try:
        yield added
    except BaseException:
        if cache is not None and dirty:
            try:
                write_cache(cache, known)
            except OSError:
                pass  # the error that ended the computation is what the user must see
        raise
    if cache is not None and dirty:
        write_cache(cache, known)


def read_cache(cache: Path | None) -> dict[str, Any]:
    """A JSON cache of per-session references (empty when there is none, or when it is corrupt: a cache is
    rebuilt, never trusted half-read)."""
    if cache is None or not cache.exists():
        return {}
    try:
        return inputs.read_json_object(cache)
    except BadInput:
        return {}


def write_cache(cache: Path, known: dict[str, Any]) -> None:
    """Replace the cache atomically: runs in parallel share it."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known))
    tmp.replace(cache)
