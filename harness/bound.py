"""The physical bound of a run: a mean JCT no policy can beat on the run's testbed, computed by the harness
for every simulated run (and every real run with a calibrated --profile). `run`, `compare` and the
benchmarks show the mean JCT as "x of bound" (1.0 = nothing left to gain).

The bound is the larger of two relaxations, each a valid lower bound on the mean JCT of any backend:

* **the floor** (GPU side, per session): every LLM call takes its time alone on the idle testbed (the run's
  cost model, chunked prefill under the engine's token budget, one token per decode step, no wake-up
  after idle), with its session's earlier context in the prefix cache and, unless its session is the first
  of its prefix group to arrive, the shared prefix too (the only cross-session hit a workload allows); every
  tool call runs at once on its own cores. In any backend a call shares each step with other calls, so each
  of its prefill chunks is at most the token budget and each step at least as long as the same chunk alone
  (the cost model is monotone in a step's tokens); its cached prefix is at most the floor's; waiting for
  KV blocks, admission, recomputation and tool queues only add time. So every session's JCT >= its floor.
* **the pool** (CPU side, in sum): the tool pool's work is conserved - it does at most `workers`
  core-seconds a second - so relax it to one machine that fast, preemptive, free to run any session's
  tool work at full speed; release a session's whole tool work (core-seconds) when its first call can end
  at the earliest, and end the session its last call's floor after that work is done. Shortest remaining
  work first minimises the sum of completion times of such a machine (Schrage 1968), so the mean of
  these JCTs is at most any real schedule's mean (but a session's own value is not its bound).

Per session the run records `floor_jct_s` and `pool_jct_s`; the summary's `bound_mean_jct_s` is the larger
of their means when every session completed, else the mean floor of the completed sessions (the floor holds
per session; the pool relaxation only for the whole set). The FIFO pool fed at each call's floor is not a
bound: MARS's admission, which holds sessions back, beats it on `paper` at 0.3/s (the CPU relaxation is
why the pool side is relaxed rather than simulated).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from harness.engines.sim.run import kept_cache, read_cache, simulate
from harness.engines.sim.testbed import SimSetup
from harness.policy import Policy
from harness.tools import ToolPool
from workloads.model import Session, ToolCall, Turn


def warm_prefix(sessions: Sequence[Session]) -> set[str]:
    """Ids of the sessions whose shared prefix another session has computed before they arrive: every
    session of a prefix group but the first to arrive (ties: workload order)."""
    first: dict[str, str] = {}
    for session in sorted(sessions, key=lambda s: s.arrival_s):  # stable: ties keep workload order
        if session.prefix_id is not None and session.prefix_tokens > 0:
            first.setdefault(session.prefix_id, session.id)
    return {s.id for s in sessions if s.prefix_id is not None and s.prefix_tokens > 0 and first[s.prefix_id] != s.id}


def floor_setup(setup: SimSetup) -> SimSetup:
    """The testbed a call's floor is measured on: idle (no GPU share, no stressors) and no wake-up cost
    (an engine under load is never idle)."""
    return replace(setup.idle(), idle_wake_s=0.0)


def _floor_key(session: Session, warm: bool, setup: SimSetup) -> str:
    content = session.model_dump(mode="json", exclude={"id", "arrival_s", "kind"})
    text = json.dumps(["floors", content, warm, setup.fingerprint], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def session_floors(session: Session, warm: bool, setup: SimSetup) -> list[float] | None:
    """The floor of each LLM call of `session`, in seconds: the session alone on `setup` (vanilla policy)
    with a KV cache that holds its whole context, after, if `warm`, a one-token call that leaves its shared
    prefix in the cache. None if a call cannot finish even so (e.g. past the engine's limits)."""
    context = session.prompt_tokens(len(session.turns) - 1) + session.turns[-1].output_tokens
    setup = replace(setup, num_blocks=max(setup.num_blocks, -(-context // setup.block_size) + 1))
    alone = session.with_arrival(0.0)
    sessions = [alone]
    if warm:
        primer = Session(id=f"{session.id}~primer", arrival_s=0.0, prefix_id=session.prefix_id,
                         prefix_tokens=session.prefix_tokens, turns=(Turn(new_tokens=0, output_tokens=1),))
        sessions = [primer, alone.with_arrival(_PRIMER_GAP_S)]
    calls = simulate(sessions, Policy(), setup).calls
    mine = calls[calls["session_id"] == session.id].sort_values("turn")
    if len(mine) != len(session.turns) or mine["finish_s"].isna().any():
        return None
    return [float(f - a) for a, f in zip(mine["arrival_s"], mine["finish_s"])]


_PRIMER_GAP_S = 1e3  # the primer's call is long done by then (the simulation skips the idle time)


def call_floors(sessions: Sequence[Session], setup: SimSetup, cache: Path | None = None) -> dict[str, list[float]]:
    """Each session's call floors (`session_floors`; a session without them is left out), cached by
    content, warmth and testbed like the isolated reference."""
    bare = floor_setup(setup)
    warm = warm_prefix(sessions)
    known: dict[str, list[float] | None] = read_cache(cache)
    out: dict[str, list[float]] = {}
    with kept_cache(cache, known) as added:
        for session in sessions:
            key = _floor_key(session, session.id in warm, bare)
            if key not in known:
                known[key] = session_floors(session, session.id in warm, bare)
                added()
            floors = known[key]
            if floors is not None:
                out[session.id] = floors
    return out


def floor_jcts(sessions: Sequence[Session], floors: Mapping[str, Sequence[float]], workers: int) -> dict[str, float]:
    """Each session's JCT with nothing shared: its call floors and its tool calls' own run times."""
    return {s.id: sum(floors[s.id]) + sum(tool_seconds(t.tool, workers) for t in s.turns if t.tool is not None)
            for s in sessions if s.id in floors}


def tool_seconds(tool: ToolCall, workers: int) -> float:
    """A tool call's run time on an idle pool of `workers` cores (a call wanting more runs longer on fewer)."""
    return tool.cpu_seconds * tool.cores / min(tool.cores, workers)


def tool_core_seconds(turn: Turn) -> float:
    return 0.0 if turn.tool is None else turn.tool.cpu_seconds * turn.tool.cores


def pool_jcts(sessions: Sequence[Session], floors: Mapping[str, Sequence[float]], capacity: float) -> dict[str, float]:
    """Each session's JCT in the CPU relaxation, whose SUM is a lower bound on any schedule's.

    Relaxation: the tool pool is one machine of `capacity` cores' speed that may run any session's tool
    work at full speed and preempt it at will (a real pool does at most `capacity` core-seconds a second);
    a session's whole tool work (its calls' core-seconds) is released when its first call can end at the
    earliest, and the session ends its last call's floor after its tool work is done. Shortest remaining
    work first is optimal for the sum of completion times of a preemptive single machine with release
    times (Schrage 1968), so no schedule of the real pool finishes its sessions sooner in sum. Sessions
    without tool work end at their floor. Without every session's floors there is no such sum: {}."""
    if any(s.id not in floors for s in sessions):
        return {}
    jct: dict[str, float] = {}
    jobs = []
    for s in sessions:
        work = sum(tool_core_seconds(t) for t in s.turns)
        if work <= 0:
            jct[s.id] = sum(floors[s.id])
            continue
        jobs.append((s.arrival_s + floors[s.id][0], work / capacity, s))
    jobs.sort(key=lambda j: j[0])
    ready: list[tuple[float, int, Session]] = []  # (remaining seconds, release order, session)
    t, i = 0.0, 0
    while i < len(jobs) or ready:
        if not ready:
            t = max(t, jobs[i][0])
        while i < len(jobs) and jobs[i][0] <= t:
            heapq.heappush(ready, (jobs[i][1], i, jobs[i][2]))
            i += 1
        remaining, seq, s = heapq.heappop(ready)
        horizon = jobs[i][0] if i < len(jobs) else math.inf
        if t + remaining <= horizon:
            t += remaining
            jct[s.id] = t + floors[s.id][-1] - s.arrival_s
        else:  # a release comes first: run up to it, then choose again
            heapq.heappush(ready, (remaining - (horizon - t), seq, s))
            t = horizon
    return jct


def bound_jcts(sessions: Sequence[Session], setup: SimSetup, cache: Path | None = None,
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Every session's floor JCT and its JCT in the CPU relaxation, on the run's testbed."""
    if not sessions:
        return {}, {}
    floors = call_floors(sessions, setup, cache)
    workers = ToolPool(setup.tool_cores, setup.tool_mode, stress_cores=setup.cpu_stress).workers
    return floor_jcts(sessions, floors, workers), pool_jcts(sessions, floors, workers)
