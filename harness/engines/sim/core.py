"""The simulated engine's scheduler: vLLM V1 `Scheduler.schedule()` behaviour, an adapter over the policy
driver (harness.policy.driver: pins, turn ends, recompute ledger, chunk caps and shrinking), as the vLLM
scheduler plugin is.

No clock and no simpy here: `schedule(now)` plans one step, `complete(plan, end)` applies it. The simpy
process in `engine.py` owns time. Keeping the two apart lets tests drive single steps by hand.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.engines.sim.kv_cache import KVCache
from harness.engines.sim.request import SimRequest
from harness.policy import Policy, ScheduledStep
from harness.policy.driver import Pin, PolicyDriver


@dataclass(frozen=True)
class SchedulerLimits:
    """vLLM's scheduler limits (SchedulerConfig names)."""

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    long_prefill_token_threshold: int = 0  # 0 = off; otherwise caps every prefill chunk
    reserve_full_prompt: bool = True  # admit a waiting call only if its whole context fits (vLLM >= 0.32)


@dataclass
class StepPlan:
    """What one step computes: (request, new tokens) in schedule order, and who was preempted."""

    start_s: float
    scheduled: list[tuple[SimRequest, int]] = field(default_factory=list)
    preempted: list[SimRequest] = field(default_factory=list)
    transfer_s: float = 0.0  # KV loaded back from the host tier before the step can run


class HostTier:
    """Host-memory KV tier: offloaded session contexts, least recently offloaded evicted first.

    Offloading (device to host) overlaps with the tool call, so it costs nothing on the critical path;
    loading back costs tokens x KV bytes per token / host link bandwidth before the call's first step.
    """

    def __init__(self, capacity_tokens: int, load_s_per_token: float) -> None:
        self.capacity_tokens = capacity_tokens
        self.load_s_per_token = load_s_per_token
        self.entries: OrderedDict[str, int] = OrderedDict()  # session -> offloaded context tokens
        self.used_tokens = 0
        self.offloads = 0
        self.loads = 0

    def put(self, session_id: str, tokens: int) -> None:
        self.pop(session_id)
        if tokens > self.capacity_tokens:
            return
        while self.used_tokens + tokens > self.capacity_tokens:
            _, dropped = self.entries.popitem(last=False)
            self.used_tokens -= dropped
        self.entries[session_id] = tokens
        self.used_tokens += tokens
        self.offloads += 1

    def get(self, session_id: str) -> int:
        return self.entries.get(session_id, 0)

    def pop(self, session_id: str) -> int:
        tokens = self.entries.pop(session_id, 0)
        self.used_tokens -= tokens
        return tokens


class EngineCore:
    """Waiting and running queues, the KV cache and the policy hooks; one `schedule` = one step."""

    def __init__(self, kv: KVCache, limits: SchedulerLimits, policy: Policy,
                 prefill_seconds: Callable[[int], float] | None = None, host: HostTier | None = None) -> None:
        self.kv = kv
        self.limits = limits
        self.policy = policy
        self.waiting: list[SimRequest] = []
        self.running: list[SimRequest] = []
        self.driver = PolicyDriver(policy, kv.free)
        self._pin_table = self.driver.pins
        self._prefill_seconds = prefill_seconds
        self.host = host
        self._transfer_s = 0.0  # load time of the requests admitted in the step being planned
        # vLLM's prefix-cache counters: at each admission from the waiting queue (also after a preemption),
        # the request's tokens are queried and the cached (or host-loaded) prefix is hit
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        policy.bind(self)

    # ------------------------------------------------------------- EngineView (what policies read)
    @property
    def pins(self) -> dict[str, Pin]:
        return self._pin_table.pins

    @property
    def kv_usage(self) -> float:
        return self.kv.usage

    @property
    def num_free_blocks(self) -> int:
        return self.kv.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.kv.num_blocks

    @property
    def block_size(self) -> int:
        return self.kv.block_size

    def prefill_seconds(self, tokens: int) -> float:
        if self._prefill_seconds is None:
            raise RuntimeError("this engine was built without a prefill-time estimate")
        return self._prefill_seconds(tokens)

    def offload_seconds(self, tokens: int) -> float | None:
        """Time to load `tokens` of KV back from the host tier; None when there is no host tier."""
        return None if self.host is None else tokens * self.host.load_s_per_token

    # --------------------------------------------------------------------------------- requests
    def add(self, req: SimRequest, now: float) -> None:
        """A call reaches the waiting queue. A pin its session holds stays a pin (releasable under
        pressure) until the call is admitted, when its cached blocks become the call's prefix hits."""
        self.waiting.append(req)
        self.policy.on_arrival(req, now)

    def fits_at_all(self, req: SimRequest) -> bool:
        """Whether the call's whole context fits in the KV cache (else it can never run)."""
        return self.kv.blocks_for(req.num_prompt_tokens + req.max_tokens) <= self.kv.num_blocks

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --------------------------------------------------------------------------------- the step
    def _chunk(self, req: SimRequest, budget: int, now: float) -> int:
        n = self.driver.cap_chunk(req, min(req.pending_tokens, budget), now)
        if self.limits.long_prefill_token_threshold > 0 and not req.is_decoding:
            n = min(n, self.limits.long_prefill_token_threshold)
        return n

    def _allocate(self, req: SimRequest, n: int) -> bool:
        need = self.kv.blocks_for(req.num_computed_tokens + n) - len(req.blocks)
        if need <= 0:
            return True
        new = self.kv.allocate(need)
        if new is None:
            return False
        req.blocks.extend(new)
        return True

    def _preempt(self, req: SimRequest, now: float) -> None:
        self.kv.free(req.blocks)
        req.blocks = []
        computed, req.num_computed_tokens = req.num_computed_tokens, 0
        req.num_cached_blocks = 0
        req.num_preemptions += 1
        self.waiting.insert(0, req)
        self.driver.preempted(req, computed, now)

    def schedule(self, now: float) -> StepPlan:
        """Plan one step: running requests first, then waiting ones if nobody was preempted."""
        self._pin_table.expire(now)
        plan = StepPlan(start_s=now)
        budget = self.limits.max_num_batched_tokens
        running = self.policy.order_running(list(self.running), now)
        scheduled: dict[int, int] = {}  # id(req) -> tokens, for victims scheduled earlier this step
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = self._chunk(req, budget, now)
            preempted_self = False
            while True:
                n, fits = self.driver.fit_chunk(req, n, now, lambda k: self._allocate(req, k))  # noqa: B023
                if fits:
                    break
                victim = self.policy.choose_victim(running, now)
                index = running.index(victim)
                running.pop(index)
                budget += scheduled.pop(id(victim), 0)
                self._preempt(victim, now)
                plan.preempted.append(victim)
                if victim is req:
                    preempted_self = True
                    break
                if index < i:
                    i -= 1
            if preempted_self:
                break  # as vLLM: a request that had to preempt itself ends the running pass
            scheduled[id(req)] = n
            budget -= n
            i += 1
        plan.scheduled = [(r, scheduled[id(r)]) for r in running if id(r) in scheduled]
        self.running = running
        if not plan.preempted:
            self._transfer_s = 0.0
            self._schedule_waiting(plan, budget, now)
            plan.transfer_s = self._transfer_s
        return plan

    def _schedule_waiting(self, plan: StepPlan, budget: int, now: float) -> None:
        gate = self.policy.admission_gate(now) if self.waiting else None
        for req in self.policy.order_waiting(list(self.waiting), now):
            if budget <= 0 or len(self.running) >= self.limits.max_num_seqs:
                break
            if gate is not None and not self._gate_admits(gate, req, budget, now):
                break  # as SGLang's PrefillAdder: a request the budget refuses ends the step's admissions
            self._link_context(req)
            n = self._admit(req, budget, now)
            if not n:
                break  # as vLLM: the queue head blocks the rest
            self.waiting.remove(req)
            self.running.append(req)
            plan.scheduled.append((req, n))
            budget -= n

    def _admit(self, req: SimRequest, budget: int, now: float) -> int:
        """Take the cached prefix and allocate the chunk's blocks: the chunk's tokens, or 0 and no change.

        As vLLM's `allocate_slots`: it fits when the new blocks plus the cached hits that sit in the free
        queue (taking them removes them from it) do not exceed the free blocks. At least one token is
        always left to compute. The blocks of the session's pin are cached hits that cost no free block;
        once the call holds them the pin is dropped (its partial last block is recomputed).
        """
        kv, bs = self.kv, self.kv.block_size
        while True:
            hits = self._prefix_hits(req)
            loaded = self._host_blocks(req, hits)
            req.num_computed_tokens = (hits + loaded) * bs
            n = self._chunk(req, budget, now)
            end = req.num_tokens if self.limits.reserve_full_prompt else req.num_computed_tokens + n
            need = kv.blocks_for(max(end, req.num_computed_tokens + n)) - hits
            free = kv.num_free_blocks
            # evictable hits lie between 0 and `hits`: count them only when the answer depends on it
            if need + hits <= free or (need <= free and need + self._evictable_hits(req, hits) <= free):
                break
            req.num_computed_tokens = 0
            if self._pin_table.release_one(now) is None:
                return 0
        self.prefix_query_tokens += req.num_tokens
        self.prefix_hit_tokens += req.num_computed_tokens
        req.blocks = kv.take(req.block_keys(hits, bs))
        if loaded:
            self._load_from_host(req, hits, loaded)
        req.num_cached_blocks = hits + loaded
        if req.last_scheduled_s is None and req.num_preemptions == 0:
            req.cached_tokens = req.num_computed_tokens
        allocated = self._allocate(req, n)
        assert allocated, "free-block check and allocation disagree"
        self._pin_table.consume(req.session_id)
        return n

    def _host_blocks(self, req: SimRequest, hits: int) -> int:
        """Full blocks beyond the device-cache hits that the host tier holds for this session."""
        if self.host is None:
            return 0
        limit = (req.num_tokens - 1) // self.kv.block_size
        return max(0, min(self.host.get(req.session_id) // self.kv.block_size, limit) - hits)

    def _load_from_host(self, req: SimRequest, hits: int, loaded: int) -> None:
        """Copy `loaded` blocks back from the host tier into fresh device blocks, cached as computed."""
        assert self.host is not None
        blocks = self.kv.allocate(loaded)
        assert blocks is not None, "free-block check and host load disagree"
        for i, block in enumerate(blocks, start=hits):
            self.kv.cache_block(block, req.block_key(i, self.kv.block_size))
        req.blocks.extend(blocks)
        self.host.pop(req.session_id)
        self.host.loads += 1
        self._transfer_s += loaded * self.kv.block_size * self.host.load_s_per_token

    def _prefix_hits(self, req: SimRequest) -> int:
        """Leading blocks of the request's context that the prefix cache holds (shared prefix first)."""
        kv, bs = self.kv, self.kv.block_size
        limit = (req.num_tokens - 1) // bs
        shared = req.prefix_blocks(bs)
        if shared >= limit:
            return min(kv.run_length("p", req.prefix_id, 0), limit) if shared else 0
        if shared and kv.run_length("p", req.prefix_id, 0) < shared:
            return kv.run_length("p", req.prefix_id, 0)
        return shared + min(kv.run_length("s", req.session_id, shared), limit - shared)

    def _evictable_hits(self, req: SimRequest, hits: int) -> int:
        """Hit blocks nobody references. A waiting call's own blocks are referenced only by its session's
        pin (its calls run one at a time), so only the shared-prefix blocks need looking at one by one."""
        bs = self.kv.block_size
        shared = min(req.prefix_blocks(bs), hits)
        pin = self.pins.get(req.session_id)
        pinned_own = max(0, min(hits, pin.computed_tokens // bs) - shared) if pin is not None else 0
        prefix = sum(1 for i in range(shared) if self.kv.is_evictable(req.block_key(i, bs)))
        return prefix + hits - shared - pinned_own

    # ------------------------------------------------------------------------------- completion
    def complete(self, plan: StepPlan, end: float) -> list[SimRequest]:
        """Apply a computed step at time `end`; return the calls that finished."""
        finished: list[SimRequest] = []
        bs = self.kv.block_size
        scheduled = self.driver.scheduled
        for req, n in plan.scheduled:
            before = req.num_computed_tokens
            after = before + n
            req.num_computed_tokens = after
            scheduled(req, plan.start_s, before, n)
            full = after // bs
            if full > req.num_cached_blocks:
                keys = req.block_keys(full, bs)
                for index in range(req.num_cached_blocks, full):
                    self.kv.cache_block(req.blocks[index], keys[index])
            req.num_cached_blocks = max(req.num_cached_blocks, after // bs)
            if after == req.num_tokens:
                self._sample(req, end)
                if req.finished:
                    finished.append(req)
        for req in finished:
            self.running.remove(req)
            self._finish(req, end)
        self.policy.on_scheduled(
            ScheduledStep(plan.start_s, end - plan.start_s, plan.scheduled, plan.preempted)
        )
        return finished

    def _sample(self, req: SimRequest, t: float) -> None:
        req.sample_token(t)

    def _finish(self, req: SimRequest, t: float) -> None:
        req.finish_s = t
        decision = self.driver.turn_end(req, t)
        if decision.action == "keep":
            self._pin_table.make(req.session_id, req.blocks, req.num_computed_tokens, t, decision.seconds)
        else:
            self.kv.free(req.blocks)
            if decision.action == "offload" and self.host is not None:
                self.host.put(req.session_id, req.num_computed_tokens)
            if decision.action == "discard":  # the session's own blocks; the shared prefix stays cached
                self.kv.forget(req.blocks[req.prefix_blocks(self.kv.block_size):])
        req.blocks = []

    # ------------------------------------------------------------- prefix-aware policies (SGLang LPM)
    def cached_prefix_tokens(self, req: SimRequest) -> int:
        """EngineView: tokens of a waiting request's context the prefix cache holds now."""
        return self._prefix_hits(req) * self.kv.block_size

    def max_new_tokens(self, req: SimRequest) -> int:
        """EngineView: output tokens the call may still produce."""
        return req.max_tokens - req.num_output_tokens

    def _gate_admits(self, gate: Callable[[SimRequest, int, int, int], bool], req: SimRequest, budget: int,
                     now: float) -> bool:
        """Ask the policy's admission gate about `req` with the hit and the chunk `_admit` would give it."""
        bs = self.kv.block_size
        hits = self._prefix_hits(req)
        cached = (hits + self._host_blocks(req, hits)) * bs
        computed, req.num_computed_tokens = req.num_computed_tokens, cached
        chunk = self._chunk(req, budget, now)
        req.num_computed_tokens = computed
        return gate(req, cached, chunk, self._evictable_hits(req, hits) * bs)

    def _link_context(self, req: SimRequest) -> None:
        """A radix cache keys its tree by context, so it must know that a session's own blocks follow its
        shared prefix (the block cache keys each block on its own and ignores this)."""
        shared = req.prefix_blocks(self.kv.block_size)
        if shared:
            self.kv.link_chain(req.block_key(shared, self.kv.block_size), req.block_key(shared - 1, self.kv.block_size))
