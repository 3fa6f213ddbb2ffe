"""SGLang (backend `sglang`): radix-tree prefix cache, longest-prefix-match-first scheduling of waiting
requests, admission by remaining KV token budget, retraction of the least advanced decode, no
admission control in front.

Sources followed (sgl-project/sglang; the two main files read at the commits named, the others from
current versions quoted in public copies of the code):
* `python/sglang/srt/managers/schedule_policy.py` (commit 00550cd): `CacheAwarePolicy.LPM` sorts the
  waiting queue in place by matched prefix length, longest first (`_sort_by_longest_prefix`);
  `_determine_active_policy` falls back to FCFS (no sort) while more than 128 requests wait.
  `PrefillAdder`: `rem_total_tokens` = allocator available + tree evictable - offset, the offset starting
  at sum over running requests of min(max_new_tokens - output so far, CLIP_MAX_NEW_TOKENS = 4096) x
  `new_token_ratio`; `add_one_req` locks the request's matched prefix (no longer evictable) and refuses
  it (NO_TOKEN, ending the pass) unless input still to compute + min(max_new_tokens, 4096) + one page
  < rem_total_tokens; an admitted request charges its page-rounded input plus its clipped max_new_tokens,
  a chunked one only its chunk.
* `scheduler.py` `update_running_batch`: when decode memory runs out, `retract_decode` and set
  `new_token_ratio` to the estimate it returns; otherwise `new_token_ratio_tracker.decay_step()`. The
  tracker (`new_token_ratio_tracker.py`, env defaults in `environ.py`): init = min(0.7 x
  schedule_conservativeness, 1), min = init x 0.14, decay = (init - min) / 600 per decode batch, reset to
  init when the scheduler is idle. Retracted requests go to the back of the waiting queue.
* `schedule_batch.py` `retract_decode` (retraction_policy "length"): sort the batch by (output tokens,
  -input tokens) descending and retract from the end, i.e. the request with the fewest output tokens,
  the longest prompt among those, the latest in the batch among those; the new ratio is (decoded tokens
  + 20 x requests left) / (their max_new_tokens + 1), at most 1.
* `server_args.py`: `chunked_prefill_size` 2048 below 35 GB of GPU memory, 8192 up to 160 GB (H100,
  H200, A100), 16384 above; `schedule_conservativeness` 1.0; `page_size` 1; `max_running_requests`
  None = min(KV tokens // 2, request pool of 2048-4096).
* `mem_cache/radix_cache.py`: see harness/engines/sim/radix_cache.py, the cache this backend runs on.

On the shared engine (deliberate differences): the engine mixes prefill chunks and decodes in one step
(vLLM V1), where SGLang runs a prefill batch before decoding unless `--enable-mixed-chunk`; what is SGLang
here is the order, the admission budget, the victim and the chunk size. The engine preempts one victim at
a time until the step's blocks fit (SGLang retracts until 20 decode steps fit) and keeps a retracted
request's decoded KV cached. A call's max_new_tokens is its max_tokens, which a trace-replaying client
sets to the turn's output length. Not modelled: in-batch prefix deprioritisation (a waiting request
whose prefix another waiting one is about to compute goes last; a RequestView does not say which prefix
it shares), LPM's prefix matching refreshing the LRU times of waiting requests' prefixes, and
`max_prefill_tokens` (16384, above the engine's 8192-token step budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.policy import Policy, R, RequestView, ScheduledStep


class LpmSettings(BaseModel):
    """SGLang's scheduler settings, named and defaulted as in its server args and environment."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    schedule_policy: Literal["lpm", "fcfs"] = Field(
        default="lpm", description="--schedule-policy: longest cached prefix first, or arrival order")
    lpm_fallback_queue_len: int = Field(
        default=128, ge=0, description="LPM sorts only while at most this many requests wait; FCFS beyond")
    chunked_prefill_size: int = Field(
        default=8192, ge=1, description="--chunked-prefill-size (SGLang's default for 35-160 GB GPUs: H100, H200): "
                                        "here the cap on one request's prefill chunk; the engine's step budget "
                                        "caps the batch")
    schedule_conservativeness: float = Field(
        default=1.0, gt=0, description="--schedule-conservativeness: scales the initial new-token ratio")
    init_new_token_ratio: float = Field(
        default=0.7, gt=0, le=1, description="SGLANG_INIT_NEW_TOKEN_RATIO: share of max_new_tokens reserved")
    min_new_token_ratio_factor: float = Field(
        default=0.14, gt=0, le=1, description="SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR: floor = init x this")
    new_token_ratio_decay_steps: int = Field(
        default=600, ge=1, description="SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS: decode steps from init to floor")
    retract_decode_steps: int = Field(
        default=20, ge=0, description="SGLANG_RETRACT_DECODE_STEPS: decode steps assumed after a retraction")
    clip_max_new_tokens: int = Field(
        default=4096, ge=1, description="SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION: cap on one request's reserve")
    max_running_requests: int | None = Field(
        default=None, ge=1, description="--max-running-requests; None = the engine's max_num_seqs only "
                                        "(SGLang's own default, >= 2048 on these GPUs, rarely binds first)")


class PrefillAdder:
    """One step's KV token budget for admitting waiting requests: the memory side of SGLang's
    PrefillAdder, as an admission gate (`Policy.admission_gate`)."""

    def __init__(self, free_tokens: int, running_reserve: float, page_size: int, clip: int, capacity_tokens: int,
                 max_new_tokens: Callable[[RequestView], int], slots: int | None) -> None:
        self.rem_total_tokens = free_tokens - running_reserve  # available + evictable - offset
        self.page_size = page_size
        self.clip = clip
        self.capacity_tokens = capacity_tokens
        self.max_new_tokens = max_new_tokens
        self.slots = slots  # requests it may still admit (max_running_requests), None = no cap

    def __call__(self, req: RequestView, cached_tokens: int, new_tokens: int, locked_tokens: int) -> bool:
        if self.slots is not None and self.slots <= 0:
            return False
        context = req.num_prompt_tokens + req.num_output_tokens
        extend = context - cached_tokens
        # SGLang clips max_new_tokens to max_req_len - input - 1 (max_req_len = KV tokens - 1), so a request
        # that fits the cache at all passes this check on an idle engine; the page term keeps that true here
        room = self.capacity_tokens - self.page_size - context - 1
        max_new = max(min(self.max_new_tokens(req), self.clip, room), 0)
        available = self.rem_total_tokens - locked_tokens  # its hit is locked while it is considered
        if extend + max_new + self.page_size >= available:
            return False  # NO_TOKEN
        if new_tokens >= extend:
            charge = self._paged(extend) + max_new
        else:
            charge = self._paged(new_tokens)  # chunked: its output is reserved once it runs
        self.rem_total_tokens = available - charge - self.page_size
        if self.slots is not None:
            self.slots -= 1
        return True

    def _paged(self, tokens: int) -> int:
        return -(-tokens // self.page_size) * self.page_size


class SglangPolicy(Policy):
    """SGLang's scheduler on the shared engine: LPM order (FCFS beyond the fallback queue length), the
    PrefillAdder budget, `chunked_prefill_size` chunks, retraction of the least advanced request,
    KV freed into the radix cache at the end of every call."""

    name = "sglang"

    def __init__(self, settings: LpmSettings | None = None) -> None:
        s = self.settings = settings or LpmSettings()
        self.init_new_token_ratio = min(s.init_new_token_ratio * s.schedule_conservativeness, 1.0)
        self.min_new_token_ratio = min(self.init_new_token_ratio * s.min_new_token_ratio_factor, 1.0)
        span = self.init_new_token_ratio - self.min_new_token_ratio
        self.new_token_ratio_decay = span / s.new_token_ratio_decay_steps
        self.new_token_ratio = self.init_new_token_ratio
        self._place: dict[str, int] = {}  # request id -> its place in SGLang's waiting queue
        self._next_place = 0

    # ------------------------------------------------------------------------------ waiting queue
    def _enqueue(self, req: RequestView) -> None:
        self._place[req.request_id] = self._next_place
        self._next_place += 1

    def on_arrival(self, req: RequestView, now: float) -> None:
        self._enqueue(req)

    def on_preempted(self, req: RequestView, now: float) -> None:
        self._enqueue(req)  # a retracted request queues again at the back

    def on_finished(self, req: RequestView, now: float) -> None:
        self._place.pop(req.request_id, None)

    def order_waiting(self, waiting: list[R], now: float) -> list[R]:
        for req in waiting:
            if req.request_id not in self._place:
                self._enqueue(req)
        place = self._place
        s = self.settings
        if s.schedule_policy != "lpm" or len(waiting) > s.lpm_fallback_queue_len:
            return sorted(waiting, key=lambda r: place[r.request_id])
        assert self.engine is not None
        cached = self.engine.cached_prefix_tokens
        ordered = sorted(waiting, key=lambda r: (-cached(r), place[r.request_id]))
        for req in ordered:  # SGLang sorts its queue in place: the order stays, new arrivals queue behind
            self._enqueue(req)
        return ordered

    # --------------------------------------------------------------------------------- admission
    def admission_gate(self, now: float) -> PrefillAdder:
        engine = self.engine
        assert engine is not None
        s = self.settings
        clip = s.clip_max_new_tokens
        reserve = self.new_token_ratio * sum(min(max(engine.max_new_tokens(r), 0), clip) for r in engine.running)
        slots = None if s.max_running_requests is None else s.max_running_requests - len(engine.running)
        return PrefillAdder(engine.num_free_blocks * engine.block_size, reserve, engine.block_size, clip,
                            engine.num_total_blocks * engine.block_size, engine.max_new_tokens, slots)

    def prefill_cap(self, req: RequestView, now: float) -> int | None:
        return self.settings.chunked_prefill_size

    # -------------------------------------------------------------------------------- retraction
    def choose_victim(self, running: Sequence[R], now: float) -> R:
        """retract_decode: fewest output tokens, then longest prompt, then latest in the batch."""
        return min(reversed(running), key=lambda r: (r.num_output_tokens, -r.num_prompt_tokens))

    def on_scheduled(self, step: ScheduledStep) -> None:
        engine = self.engine
        assert engine is not None
        if step.preempted:
            running = engine.running
            decoded = sum(r.num_output_tokens for r in running)
            budget = sum(r.num_output_tokens + engine.max_new_tokens(r) for r in running)
            steps = self.settings.retract_decode_steps * len(running)
            self.new_token_ratio = min(1.0, (decoded + steps) / (budget + 1))
        elif any(n == 1 and r.num_output_tokens > 1 for r, n in step.scheduled):
            self.new_token_ratio = max(self.new_token_ratio - self.new_token_ratio_decay, self.min_new_token_ratio)
        if not engine.running and not engine.waiting:
            self.new_token_ratio = self.init_new_token_ratio  # idle
