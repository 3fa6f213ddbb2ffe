"""The physical bound of a run: a mean JCT no policy can beat on the run's testbed, computed by the harness
for every simulated run (and every real run with a calibrated --profile). `run`, `compare` and the
benchmarks show the mean JCT as "x of bound" (1.0 = nothing left to gain).

The bound is the largest of several relaxations, each a valid lower bound on the mean JCT of any backend:

* **the floor** (per session): every LLM call takes its time alone on the idle testbed (the run's
  cost model, chunked prefill under the engine's token budget, one token per decode step, no wake-up
  after idle), with its session's earlier context in the prefix cache and the shared prefix too (the only
  cross-session hit a workload allows; even the first session of a group to arrive may find it computed
  by a later one that admission let in first, or by a warm-up session); every
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
* **the mean busy times** (in sum; `busy_time_jcts`), one per resource: the tool pool (a machine of
  `workers` cores' speed; a tool call's work is its core-seconds), the GPU's compute and the GPU's memory
  (machines whose work per token or per sequence and step is a least cost no step can undercut:
  cost_model.GpuLowerBounds - FLOPs and attention pairs; KV read and written, and a share of each step's
  fixed cost per private KV token resident, since what one step holds fits the KV cache). Any real
  schedule induces a schedule of each machine (the work rates never sum above its speed). In it, let M_s
  be the work-weighted mean time of session s's work. Each piece of that work (a call, a tool call) can
  start no earlier than its session's chain allows (`release`: arrival + the floors and lone tool times
  before it) and its mean time lies at least `tail` before the session ends: the rest of the chain
  (later floors and lone tool times) plus half its own shortest run (a tool call runs at most on its
  own cores; a call's decode tokens take a step each, every step lasts at least a one-token step). So
  C_s >= M_s + delta_s (delta_s the work-weighted tails), and sum_s M_s is at least its least value over
  all schedules of the machine, reached by the preemptive schedule that runs the released work of the
  session with the least total work first (an exchange argument; Goemans et al. 2002's LP schedule).
  Hence sum_s JCT_s >= sum_s (M_s(LP) + delta_s - arrival_s).

Per session the run records `floor_jct_s` and `pool_jct_s` (its term in whichever sum relaxation has the
largest sum); the summary's `bound_mean_jct_s` is the larger of their means when every session completed,
else the mean floor of the completed sessions (the floor holds per session; the others only for the whole
set). The FIFO pool fed at each call's floor is not a bound: MARS's admission, which holds sessions back,
beats it on `paper` at 0.3/s (the CPU relaxation is why the pool side is relaxed rather than simulated).
What no relaxation here models: the KV cache's capacity as a limit on what stays cached across tool calls
(recomputation), the loss of a non-preemptive pool's packing (head-of-line blocking), and that a policy
does not know a session's future work; under heavy load this is what separates the bound from any policy.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.engines.sim.cost_model import GpuLowerBounds
from harness.engines.sim.run import kept_cache, read_cache, simulate
from harness.engines.sim.testbed import SimSetup
from harness.policy import Policy
from harness.tools import ToolPool
from workloads.model import Session, ToolCall, Turn


def warm_prefix(sessions: Sequence[Session]) -> set[str]:
    """Ids of the sessions whose floor finds their shared prefix cached: every session of a prefix group.
    Not only the later arrivals: the first to arrive may be held back (admission) while a later one, or a
    warm-up session, computes the prefix, so no session is sure to find it cold."""
    return {s.id for s in sessions if s.prefix_id is not None and s.prefix_tokens > 0}


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


@dataclass(frozen=True, slots=True)
class Piece:
    """Work of one session on one relaxed machine: `work` machine-seconds that cannot start before `release`
    and whose mean time lies at least `tail` seconds before the session ends (see `busy_time_jcts`)."""

    release: float
    work: float
    tail: float


def lp_mean_busy_times(jobs: Sequence[Sequence[Piece]]) -> list[float]:
    """For each job (a list of pieces), its mean busy time M = sum over its pieces of work x mean time of
    that work, / the job's work, in the schedule of a single machine of speed 1 that minimises sum_j M_j:
    preemptive, never idle while a piece is released, always running a released piece of the job with the
    least total work (ties: job order). Why it minimises: M_j is linear in where the work runs; moving eps
    of job b's work from t2 to t1 < t2 in exchange for eps of job a's (a ran at t1, b was released by t1)
    changes sum M by eps (t2 - t1) (1/P_a - 1/P_b) < 0 when P_b < P_a, and filling idle time earlier
    only lowers M; so an optimum obeys the rule (the LP schedule of Goemans et al. 2002, weights 1).
    Jobs without work get 0."""
    total = [sum(p.work for p in pieces) for pieces in jobs]
    moments = [0.0] * len(jobs)  # sum of work x time
    events = sorted((p.release, j, p.work) for j, pieces in enumerate(jobs) for p in pieces if p.work > 0)
    ready: list[tuple[float, int, float]] = []  # (job's total work, job, remaining work of this piece)
    t, i = 0.0, 0
    while i < len(events) or ready:
        if not ready:
            t = max(t, events[i][0])
        while i < len(events) and events[i][0] <= t:
            _, j, work = events[i]
            heapq.heappush(ready, (total[j], j, work))
            i += 1
        key, j, remaining = heapq.heappop(ready)
        horizon = events[i][0] if i < len(events) else math.inf
        end = min(t + remaining, horizon)
        moments[j] += (end * end - t * t) / 2  # work at rate 1 over [t, end]
        if end < t + remaining:
            heapq.heappush(ready, (key, j, remaining - (end - t)))
        t = end
    return [m / w if w > 0 else 0.0 for m, w in zip(moments, total)]


def busy_time_jcts(sessions: Sequence[Session], pieces: Mapping[str, Sequence[Piece]],
                   floors: Mapping[str, float]) -> dict[str, float]:
    """Each session's term of a mean-busy-time bound, whose SUM is a lower bound on any schedule's sum of JCTs.

    A resource (the tool pool, the GPU) is relaxed to one machine of speed 1 whose work every real schedule
    induces (the pieces' work rates never sum above 1). In any schedule a session s ends at C_s >= M_k +
    tail_k for each of its pieces k (M_k: the mean time of piece k's work; tail_k: how long at least the
    rest of the session takes after that mean, from the chain of its calls and tools), so C_s >= M_s +
    delta_s, the work-weighted means. The LP schedule (`lp_mean_busy_times`) has the least sum of M_s over
    all schedules of the machine, hence sum_s C_s >= sum_s (M_s(LP) + delta_s). A session without work on
    the machine is bounded by its floor instead. Without every session's floor there is no such sum: {}."""
    if any(s.id not in floors for s in sessions):
        return {}
    with_work = [s for s in sessions if sum(p.work for p in pieces.get(s.id, ())) > 0]
    means = lp_mean_busy_times([pieces[s.id] for s in with_work])
    out = {s.id: floors[s.id] for s in sessions}
    for s, mean in zip(with_work, means):
        work = sum(p.work for p in pieces[s.id])
        delta = sum(p.work * p.tail for p in pieces[s.id]) / work
        out[s.id] = mean + delta - s.arrival_s
    return out


def tool_pieces(session: Session, floors: Sequence[float], workers: int) -> list[Piece]:
    """The tool pool as one machine of `workers` cores' speed: tool call k is a piece of its core-seconds /
    workers, released when the session's chain lets it start at the earliest (arrival + the floors of calls
    0..k + tools 0..k-1 alone). It runs at most at its own cores (min(cores, workers)), so its work's mean
    time is at least half its run time alone before it ends, and after it the session still needs the
    floors of calls k+1.. and the run times of tools k+1.. alone: its tail."""
    runs = [0.0 if t.tool is None else tool_seconds(t.tool, workers) for t in session.turns]
    out = []
    start = session.arrival_s
    after = [0.0] * len(session.turns)  # after[k]: floors of calls k+1.. + tools k+1.. alone
    for k in range(len(session.turns) - 2, -1, -1):
        after[k] = after[k + 1] + floors[k + 1] + runs[k + 1]
    for k, turn in enumerate(session.turns):
        start += floors[k]
        if turn.tool is not None and turn.tool.cpu_seconds > 0:
            out.append(Piece(start, tool_core_seconds(turn) / workers, after[k] + runs[k] / 2))
        start += runs[k]
    return out


def gpu_pieces(session: Session, floors: Sequence[float], workers: int, bounds: GpuLowerBounds,
               kv_tokens_held: bool) -> list[Piece]:
    """The GPU as one machine that does every step's work at its least cost (cost_model.GpuLowerBounds): the
    compute machine (`kv_tokens_held` False) or the memory machine (True). Call k is one piece released at
    the earliest start its chain allows. Its least work: the tokens it must compute (at least its own new
    tokens, >= 1: everything before them at best cached; the first output token comes with the last
    prefill step) and its output_tokens - 1 decode tokens at positions prompt, prompt + 1, ...; on the
    memory machine each decode step also reads its context and holds its private KV (the context beyond
    the shared prefix), and the prefill reads and holds at least the whole prompt once. Tail: its i-th
    last decode token runs in a step ending at least (i - 1) least-steps before the call ends, its
    prefill before all of them; within a step the work is spread evenly, so half a least-step more;
    after the call the session still needs its tool alone and the floors of calls k+1..."""
    b = bounds
    if kv_tokens_held:
        def costs(prompt: int, computed: int) -> tuple[float, float, float]:
            # decode at p: kv (p + 1) + resident (p + 1 - prefix) = (kv + resident) p + kv + resident (1 - prefix)
            prefill = b.kv_token_s * prompt + b.resident_token_s * max(0, prompt - session.prefix_tokens)
            return (prefill, b.kv_token_s + b.resident_token_s,
                    b.kv_token_s + b.resident_token_s * (1 - session.prefix_tokens))
    else:
        def costs(prompt: int, computed: int) -> tuple[float, float, float]:
            return _compute_costs(b, prompt, computed)
    return _call_pieces(session, floors, workers, b.step_s, costs)


def _compute_costs(b: GpuLowerBounds, prompt: int, computed: int) -> tuple[float, float, float]:
    """A call's least compute work: (its prefill's, then per position and constant of a decode at p)."""
    first = prompt - computed  # position of the first computed token
    prefill = b.token_s * computed + b.pair_s * (computed * (first + 1) + computed * (computed - 1) / 2)
    return prefill, b.pair_s, b.token_s + b.pair_s


def _call_pieces(session: Session, floors: Sequence[float], workers: int, step_s: float,
                 costs: Callable[[int, int], tuple[float, float, float]]) -> list[Piece]:
    """One piece per call, its work `costs(prompt, computed)` = (prefill work, a, c): a decode at position p
    costs a p + c. Release and tail as `gpu_pieces` says."""
    runs = [0.0 if t.tool is None else tool_seconds(t.tool, workers) for t in session.turns]
    after = _after_calls(session, floors, runs)
    out = []
    start = session.arrival_s
    for k, turn in enumerate(session.turns):
        prompt = session.prompt_tokens(k)
        prefill, per_pos, const = costs(prompt, max(turn.new_tokens, 1))
        # decode i (1 = the first) sits at position prompt + i - 1 and is the (n - i + 1)-th last of n: its
        # work w_i = a0 + per_pos i and its distance from the call's end (n - i + 1/2) least steps
        n = turn.output_tokens - 1
        s0 = n * (n + 1) / 2  # sum of i
        s1 = n * (n + 1) * (2 * n + 1) / 6  # sum of i^2
        a0 = per_pos * (prompt - 1) + const
        decode_work = a0 * n + per_pos * s0
        decode_moment = step_s * (a0 * ((n + 0.5) * n - s0) + per_pos * ((n + 0.5) * s0 - s1))
        work = prefill + decode_work
        moment = prefill * (n + 0.5) * step_s + decode_moment
        out.append(Piece(start, work, after[k] + (moment / work if work > 0 else 0.0)))
        start += floors[k] + runs[k]
    return out


def _after_calls(session: Session, floors: Sequence[float], runs: Sequence[float]) -> list[float]:
    """after[k]: what the session needs at least after call k ends: tool k alone, calls k+1.. at their floors
    and tools k+1.. alone."""
    after = [0.0] * len(session.turns)
    for k in range(len(session.turns) - 1, -1, -1):
        after[k] = runs[k] + (after[k + 1] + floors[k + 1] if k + 1 < len(session.turns) else 0.0)
    return after


def bound_jcts(sessions: Sequence[Session], setup: SimSetup, cache: Path | None = None,
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Every session's floor JCT and its term in the tightest of the sum relaxations (the CPU pool, the
    mean busy time of the tool pool, of the GPU's compute and of its memory), on the run's testbed."""
    if not sessions:
        return {}, {}
    floors = call_floors(sessions, setup, cache)
    workers = ToolPool(setup.tool_cores, setup.tool_mode, stress_cores=setup.cpu_stress).workers
    floor = floor_jcts(sessions, floors, workers)
    return floor, tightest(sum_relaxations(sessions, floors, floor, workers, setup.gpu_bounds))


def sum_relaxations(sessions: Sequence[Session], floors: Mapping[str, Sequence[float]],
                    floor: Mapping[str, float], workers: int, gpu: GpuLowerBounds | None) -> dict[str, dict[str, float]]:
    """Every relaxation whose sum over the sessions bounds any schedule's (name -> per-session terms); {} when
    a session has no floors (a relaxation needs every session)."""
    if any(s.id not in floors for s in sessions):
        return {}
    out = {"pool": pool_jcts(sessions, floors, workers)}
    out["tool busy time"] = busy_time_jcts(
        sessions, {s.id: tool_pieces(s, floors[s.id], workers) for s in sessions}, floor)
    if gpu is not None:
        for name, held in (("gpu compute", False), ("gpu memory", True)):
            out[name] = busy_time_jcts(
                sessions, {s.id: gpu_pieces(s, floors[s.id], workers, gpu, held) for s in sessions}, floor)
    return out


def tightest(relaxations: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The per-session terms of the relaxation with the largest sum ({} if none)."""
    if not relaxations:
        return {}
    return dict(max(relaxations.values(), key=lambda terms: sum(terms.values())))
