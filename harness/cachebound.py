"""What the prefix cache and the testbed's capacity allow, from the workload and the testbed alone: bounds a
run's measured hit rate and throughput are read against. Sans-IO and pure: sessions and numbers in, numbers
out (harness.runbounds feeds it a run's workload and testbed).

The cache is modelled as the sim's (harness.engines.sim.kv_cache) sees it, at its block granularity: a call
with a prompt of P tokens can hit at most (P - 1) // block_size leading blocks of its context (the engine
always computes the prompt's last token), only a leading run of cached blocks hits (the shared prefix
first, then the session's own context), and after the call its context's first (P + O - 1) // block_size
blocks are computed (prompt and every output token but the last). A block of the shared prefix
(`prefix_tokens // block_size` whole blocks) is the same block for every session of its prefix group; the
rest belong to their session.

* **ideal hit rate** (`ideal_hits`): an infinite cache, in which every block computed before is a hit
  (the session's own history and shared prefixes computed by any earlier call). No schedule, eviction or
  retention policy hits more: it is the workload's own ceiling, the same in every order of the calls.
* **Bélády bound** (`belady_hits`): for a KV cache of `capacity` blocks and ONE GIVEN ORDER of the calls,
  the most tokens any eviction policy can hit - evict the resident block whose next use is farthest in the
  future (Bélády 1966), every block of the call being served held resident while it runs. Each call reads
  a whole chain of blocks (its prefix, then its session's blocks), so all blocks of one chain share their
  next use and the walk moves whole runs of blocks: O(calls log calls). What it bounds is eviction for
  that order only: a scheduler that reorders calls (runs a session's next call while its blocks are still
  cached) can hit more than a Bélády walk of some other order. `run` and `report` walk each run's own
  order (its calls by first scheduled step), so there the measured hits are those of one eviction policy
  on that very order; the walk is looser than the engine in its favour (it ignores the blocks that other
  running calls hold and the partial last block), which keeps it a bound.
* **LRU** (`lru_hits`): the same walk evicting the least recently used block (vLLM's free queue, the
  last block of a context first): what plain LRU hits on the same order, for comparison.
* **throughput bound** (`capacity`): the sessions per second the testbed can sustain, the smaller of the
  GPU's (its peak token rate over a session's tokens that even the ideal cache leaves to compute) and the
  tool pool's (its cores over a session's tool core-seconds), and the pool's offered load (busy cores the
  arrival rate asks for, against the cores it has).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

from workloads.model import Session

CallId = tuple[str, int]  # (session id, turn)
_Chain = tuple[str, Hashable]  # ("p", prefix id) or ("s", session id)


@dataclass(frozen=True)
class CallBlocks:
    """One LLM call as the prefix cache sees it, in blocks."""

    session: str
    prefix: str | None  # prefix group, None when its session has no whole block of shared prefix
    prefix_blocks: int  # leading blocks that are the shared prefix's
    readable: int  # leading blocks it could hit: (prompt - 1) // block_size
    written: int  # leading blocks computed once it has run: (prompt + output - 1) // block_size
    prompt_tokens: int


@dataclass(frozen=True)
class Hits:
    """Prompt tokens served from the cache, of the prompt tokens the calls asked for."""

    hit_tokens: int
    prompt_tokens: int

    @property
    def rate(self) -> float | None:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else None


def call_blocks(sessions: Iterable[Session], block_size: int, order: Sequence[CallId] | None = None,
                ) -> list[CallBlocks]:
    """The calls of `sessions` in `order` ((session id, turn) pairs; default: sessions by arrival, each
    session's turns in turn), as blocks of `block_size` tokens. A call in `order` that the sessions do not
    have is a ValueError."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    by_id = {s.id: s for s in sessions}
    if order is None:
        order = [(s.id, k) for s in sorted(by_id.values(), key=lambda s: s.arrival_s) for k in range(len(s.turns))]
    out = []
    for session_id, turn in order:
        session = by_id.get(session_id)
        if session is None or not 0 <= turn < len(session.turns):
            raise ValueError(f"call {session_id!r} turn {turn} is not in the workload")
        prompt = session.prompt_tokens(turn)
        shared = session.prefix_tokens // block_size if session.prefix_id is not None else 0
        out.append(CallBlocks(session_id, session.prefix_id if shared else None, shared, max(prompt - 1, 0) // block_size,
                              (prompt + session.turns[turn].output_tokens - 1) // block_size, prompt))
    return out


def ideal_hits(sessions: Iterable[Session], block_size: int) -> Hits:
    """Hits of an infinite cache: every block computed before is hit (any order gives the same)."""
    return walk(call_blocks(sessions, block_size), block_size, capacity=None)


def belady_hits(sessions: Iterable[Session], block_size: int, capacity: int,
                order: Sequence[CallId] | None = None) -> Hits:
    """The most prompt tokens any eviction policy hits with `capacity` blocks, the calls coming in `order`."""
    return walk(call_blocks(sessions, block_size, order), block_size, capacity, "farthest next use")


def lru_hits(sessions: Iterable[Session], block_size: int, capacity: int,
             order: Sequence[CallId] | None = None) -> Hits:
    """Hits of LRU eviction (least recently used block first) with `capacity` blocks, calls in `order`."""
    return walk(call_blocks(sessions, block_size, order), block_size, capacity, "least recently used")


def walk(calls: Sequence[CallBlocks], block_size: int, capacity: int | None,
         evict: str = "farthest next use") -> Hits:
    """Serve `calls` in order from a cache of `capacity` blocks (None: unbounded), evicting by `evict`
    ("farthest next use": Bélády; "least recently used": LRU) and counting the hit prompt tokens.

    The resident blocks of a chain are always a leading run of it: a chain's blocks share their next (and
    last) use, and among equal keys a session's own blocks, which lie deeper in a context than its shared
    prefix, go first (a session's next call uses its prefix too, so the prefix's next use is never later)."""
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0 blocks, got {capacity}")
    chains = [_chains(c) for c in calls]
    future: dict[_Chain, list[int]] = {}  # chain -> the call indices that use it, latest first (popped from the end)
    for i in range(len(calls) - 1, -1, -1):
        for chain in chains[i]:
            future.setdefault(chain, []).append(i)
    resident: dict[_Chain, int] = {}
    held = 0  # resident blocks in all
    heap: list[tuple[float, int, int, _Chain]] = []  # (eviction key, own-before-prefix, version, chain)
    version: dict[_Chain, int] = {}
    hits = prompts = 0
    for i, call in enumerate(calls):
        prefix, own = chains[i] if len(chains[i]) == 2 else (None, chains[i][0])
        have_prefix = resident.get(prefix, 0) if prefix else 0
        hit = min(have_prefix, call.prefix_blocks, call.readable)
        if have_prefix >= call.prefix_blocks and call.readable > call.prefix_blocks:
            hit += min(resident.get(own, 0), call.readable - call.prefix_blocks)
        hits += hit * block_size
        prompts += call.prompt_tokens
        # the call's context is resident while it runs: its prefix first, then its own blocks (a longer prefix
        # of the same group, resident for another session, stays)
        target = {own: max(call.written - call.prefix_blocks, resident.get(own, 0))}
        if prefix is not None:
            target = {prefix: max(call.prefix_blocks, have_prefix), **target}
        if capacity is not None:
            room = capacity
            for chain in target:
                target[chain] = min(target[chain], room)
                room -= target[chain]
        for chain in target:
            future[chain].pop()
            version[chain] = version.get(chain, 0) + 1  # its heap entries are stale; its blocks are in use
        if capacity is not None:
            need = sum(want - resident.get(chain, 0) for chain, want in target.items())
            while held + need > capacity and heap:
                key, tie, seen, victim = heapq.heappop(heap)
                if version.get(victim) != seen or not resident.get(victim):
                    continue
                gone = min(resident[victim], held + need - capacity)
                resident[victim] -= gone
                held -= gone
                if resident[victim]:  # its deepest blocks went; the rest keep their place
                    heapq.heappush(heap, (key, tie, seen, victim))
        for chain, want in target.items():
            held += want - resident.get(chain, 0)
            resident[chain] = want
            if want:
                heapq.heappush(heap, (*_key(chain, i, future, evict), version[chain], chain))
    return Hits(hits, prompts)


def _chains(call: CallBlocks) -> tuple[_Chain, ...]:
    own: _Chain = ("s", call.session)
    return (("p", call.prefix), own) if call.prefix is not None else (own,)


def _key(chain: _Chain, now: int, future: dict[_Chain, list[int]], evict: str) -> tuple[float, int]:
    """Heap order of a chain's blocks (smallest evicted first): Bélády, the farthest next use (never: first);
    LRU, the oldest last use (`now`: the call that just used it). Ties: a session's own blocks first."""
    tie = 0 if chain[0] == "s" else 1
    if evict == "least recently used":
        return float(now), tie
    upcoming = future.get(chain)
    return (-float(upcoming[-1]) if upcoming else -math.inf), tie


# ------------------------------------------------------------------------------------------- throughput
@dataclass(frozen=True)
class Capacity:
    """Sessions per second the testbed can sustain, and the tool pool's offered load."""

    gpu_sessions_per_s: float  # peak token rate / tokens a session leaves to compute with the ideal cache
    tool_sessions_per_s: float  # pool cores / a session's tool core-seconds (inf: no tool work)
    offered_rps: float | None  # the arrival rate, sessions/s
    tool_core_seconds: float  # per session, mean
    workers: int  # the pool's cores

    @property
    def sessions_per_s(self) -> float:
        """The throughput bound: the smaller of the two capacities."""
        return min(self.gpu_sessions_per_s, self.tool_sessions_per_s)

    @property
    def offered_cores(self) -> float | None:
        """Busy cores the arrival rate asks of the tool pool (compare with `workers`)."""
        return None if self.offered_rps is None else self.offered_rps * self.tool_core_seconds

    @property
    def tool_load(self) -> float | None:
        """Offered busy cores / cores: above 1 the tool queue grows for as long as sessions arrive."""
        cores = self.offered_cores
        return None if cores is None or self.workers <= 0 else cores / self.workers


def peak_token_rate(step_seconds: Callable[[int], float], budget: int) -> float:
    """The most tokens per second a step of at most `budget` tokens reaches: max over n of n / step_seconds(n)
    (`step_seconds(n)`: a step of n prompt tokens of one fresh sequence, the cheapest shape a step of n
    tokens has), over n = 1, 2, 4, ... and `budget`."""
    sizes = {budget, *(2**k for k in range(int(math.log2(max(budget, 1))) + 1))}
    return max(n / step_seconds(n) for n in sizes if 0 < n <= budget)


def capacity(sessions: Sequence[Session], block_size: int, token_rate: float, workers: int,
             offered_rps: float | None = None) -> Capacity:
    """The throughput bound of `sessions` on a GPU computing at most `token_rate` tokens/s and a pool of
    `workers` cores. A session needs its output tokens and the prompt tokens the ideal cache misses computed,
    and its tools' core-seconds run: no schedule sustains more sessions/s than either side's capacity over
    the mean session (with every session done, N / span <= this bound)."""
    if not sessions:
        raise ValueError("capacity of an empty workload")
    ideal = ideal_hits(sessions, block_size)
    tokens = ideal.prompt_tokens - ideal.hit_tokens + sum(s.total_output_tokens for s in sessions)
    core_seconds = sum(t.tool.cpu_seconds * t.tool.cores for s in sessions for t in s.turns if t.tool is not None)
    per_session = core_seconds / len(sessions)
    gpu = token_rate * len(sessions) / tokens if tokens else math.inf
    tool = workers / per_session if per_session > 0 else math.inf
    return Capacity(gpu, tool, offered_rps, per_session, workers)
