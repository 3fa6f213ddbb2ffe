"""A vLLM V1 scheduler that runs any mars-bench policy (MARS or a baseline) inside a real vLLM engine: the
real engine's adapter over the policy driver (harness.policy.driver), as the simulated engine's core is.

Load it with `scheduler_cls="harness.engines.vllm.scheduler.PolicyScheduler"` and the run's settings in
`additional_config={"mars_bench": {"config": RunConfig as JSON, "epoch": ..., "step_log": ...}}` (in-process
engine args, or `--scheduler-cls` / `--additional-config` of the OpenAI server). Session metadata
(harness.calls.CallMeta) comes with every request in `SamplingParams.extra_args["mars"]` (over HTTP: the
request's `vllm_xargs`, as a JSON string).

vLLM's `Scheduler.schedule()` stays intact; the policy acts through a small, version-checked surface:
* `order_running` / `order_waiting`: the running list is put in the policy's order before each `schedule()`,
  the (FCFS deque) waiting queue when vLLM's waiting pass first looks at it - so only in a step that preempted
  nobody, as in the simulated engine;
* chunk sizes: `_reserve_prefill_lookahead`, which vLLM calls on every chunk it is about to schedule
  (running and waiting), applies the driver's cap (`prefill_cap`) and, for a running request whose new
  blocks do not fit, the driver's `fit_chunk`: release a pin, else shrink (`on_allocation_failure`);
* victims: for a policy with its own `choose_victim` the scheduler runs vLLM's PRIORITY victim path (which
  restores the budget of a victim that was already scheduled this step); when an allocation fails the
  policy's victim gets the one raised priority, so vLLM's `max(priority, arrival)` picks it. Other policies
  keep vLLM's FCFS victim (the last running request);
* retention: the turn ends of the calls that finished in a step are decided once vLLM processed the step's
  output, each call leaving `running` right before its own, as in the simulated engine; the driver's
  decision may keep every block the call held for its session (a pin holds one reference per block); pins
  expire at their deadline, are consumed when the session's next call is admitted (its prefix hits took the
  blocks), or are released in the policy's order when an allocation fails - before any chunk shrinking or
  preemption, as in the simulated engine;
* notifications: `on_arrival`, `on_tool_end` (the previous tool, carried by the next call's metadata),
  `on_scheduled` (with the measured step time), `on_preempted`, `on_finished`.
Offloading to a host tier is not available on this engine (`offload_seconds` is None), so policies that
would offload free instead.

The step log and the call log (harness.engines.vllm.steplog) are written when their paths are set.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import vllm
from vllm.v1.core.sched.request_queue import FCFSRequestQueue, SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from harness.backends import get_backend
from harness.calls import CallMeta
from harness.config import RunConfig
from harness.engines.vllm.steplog import CallLog, PrefillRate, StepLog, StepRecord
from harness.policy import Policy, ScheduledStep
from harness.policy.driver import Pin, PolicyDriver, is_decoding, remaining_prefill_tokens

SUPPORTED_VLLM = ("0.32.",)
CONFIG_KEY = "mars_bench"
META_KEY = "mars"


def check_vllm_version(version: str = vllm.__version__) -> None:
    """The override surface above is checked against these vLLM versions; others fail with one line."""
    if not version.startswith(SUPPORTED_VLLM):
        raise RuntimeError(f"mars-bench's vLLM scheduler plugin supports vLLM {', '.join(v + 'x' for v in SUPPORTED_VLLM)}; "
                           f"this is vLLM {version}")


def _blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class VllmRequestView:
    """A vLLM `Request` as the policy's RequestView, with the driver's per-call ledger."""

    __slots__ = ("req", "meta", "_blocks", "request_id", "session_id", "turn", "is_last_turn", "tool_name",
                 "arrival_s", "session_arrival_s", "num_prompt_tokens", "last_scheduled_s", "first_scheduled_s",
                 "lost_until", "recomputed_tokens")

    def __init__(self, req: Request, meta: CallMeta, arrival_s: float, blocks: Mapping[str, Any]) -> None:
        self.req = req
        self.meta = meta
        self._blocks = blocks  # vLLM's request id -> its KV blocks
        # what never changes is a plain attribute: policies read these in every sort key
        self.request_id: str = req.request_id
        self.session_id = meta.session_id
        self.turn = meta.turn
        self.is_last_turn = meta.is_last_turn
        self.tool_name = meta.tool_name
        self.arrival_s = arrival_s
        self.session_arrival_s = arrival_s if meta.session_arrival_s is None else meta.session_arrival_s
        self.num_prompt_tokens: int = req.num_prompt_tokens
        self.last_scheduled_s: float | None = None
        self.first_scheduled_s: float = float("nan")
        self.lost_until = 0  # tokens computed before the last preemption (computing them again is recompute)
        self.recomputed_tokens = 0

    num_output_tokens = property(lambda self: self.req.num_output_tokens)
    num_computed_tokens = property(lambda self: self.req.num_computed_tokens)
    num_preemptions = property(lambda self: self.req.num_preemptions)

    @property
    def num_blocks(self) -> int:
        return len(self._blocks.get(self.request_id, ()))

    @property
    def is_decoding(self) -> bool:
        req = self.req
        return is_decoding(req.num_output_tokens, req.num_computed_tokens, req.num_tokens)

    @property
    def remaining_prefill_tokens(self) -> int:
        req = self.req
        return remaining_prefill_tokens(req.num_output_tokens, req.num_computed_tokens, req.num_tokens)

    @property
    def phase(self) -> str:
        return "decode" if self.is_decoding else "prefill"


class _Views(Sequence):
    """vLLM requests seen as their views, without copying: `len` is O(1) (policies often want only that)."""

    def __init__(self, requests: Any, views: dict[str, VllmRequestView]) -> None:
        self._requests, self._views = requests, views

    def __len__(self) -> int:
        return len(self._requests)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._views[r.request_id] for r in list(self._requests)[index]]
        return self._views[self._requests[index].request_id]

    def __iter__(self) -> Any:
        views = self._views
        return (views[r.request_id] for r in self._requests)


class VllmEngineView:
    """The EngineView a policy is bound to (harness.policy.EngineView), read off vLLM's scheduler: its own
    `running` / `waiting` hold vLLM Requests, so the policy sees views of them."""

    def __init__(self, sched: PolicyScheduler) -> None:
        self._sched = sched
        self._kv = sched.kv_cache_manager
        self.block_size: int = sched.block_size

    # vLLM replaces its running list (and may replace its waiting queue): read them anew each time
    @property
    def running(self) -> _Views:
        return _Views(self._sched.running, self._sched.views)

    @property
    def waiting(self) -> _Views:
        return _Views(self._sched.waiting, self._sched.views)

    @property
    def pins(self) -> Mapping[str, Pin]:
        return self._sched.driver.pins.pins

    @property
    def kv_usage(self) -> float:
        return float(self._kv.usage)

    @property
    def num_free_blocks(self) -> int:
        return int(self._kv.block_pool.get_num_free_blocks())

    @property
    def num_total_blocks(self) -> int:
        return int(self._kv.block_pool.num_gpu_blocks) - 1  # the null block holds nothing

    def prefill_seconds(self, tokens: int) -> float:
        """Measured: the running estimate of seconds per prefilled token from this engine's own steps."""
        return self._sched.prefill_rate.seconds(tokens)

    def offload_seconds(self, tokens: int) -> float | None:
        return None

    def cached_prefix_tokens(self, req: Any) -> int:
        return int(self._kv.estimate_cached_tokens(req.req))

    def max_new_tokens(self, req: Any) -> int:
        return max(0, int(req.req.max_tokens) - int(req.req.num_output_tokens))


class PolicyOrderedQueue(FCFSRequestQueue):
    """vLLM's FCFS waiting queue that puts itself in the policy's order (`order_once`, armed for one step)
    when vLLM's waiting pass first looks at it: after the running pass and only in a step that preempted
    nobody, where the simulated engine asks the policy's `order_waiting`."""

    order_once: Callable[[], None] | None = None

    def peek_request(self) -> Request:
        order, self.order_once = self.order_once, None
        if order is not None:
            order()
        return super().peek_request()


class PolicyScheduler(Scheduler):
    """vLLM's scheduler with a mars-bench policy's hooks (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_vllm_version()
        super().__init__(*args, **kwargs)
        settings = dict(self.vllm_config.additional_config or {}).get(CONFIG_KEY) or {}
        self.epoch: float = float(settings.get("epoch", time.monotonic()))
        self.clock: Callable[[], float] = lambda: time.monotonic() - self.epoch
        self._planning_at: float | None = None  # `now` of the step schedule() is planning
        self.waiting = PolicyOrderedQueue()
        self._preempted_in_step = False
        self.views: dict[str, VllmRequestView] = {}
        self.finished_calls: dict[str, dict[str, Any]] = {}  # call id -> per-call figures, for an in-process harness
        self._prefill_s_per_token = float(settings.get("prefill_s_per_token", 1e-4))
        self._step: StepRecord | None = None
        self._turn_ends: list[tuple[VllmRequestView, list[Any]]] | None = None  # in update_from_output
        self.step_log = StepLog(settings["step_log"]) if settings.get("step_log") else None
        self.call_log = CallLog(settings["call_log"]) if settings.get("call_log") else None
        # request id -> its KV blocks (the plugin assumes one KV cache group: full attention)
        self.req_to_blocks = self.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks
        self._allocate = self.kv_cache_manager.allocate_slots
        self.engine_view = VllmEngineView(self)
        self.use_policy(make_policy(settings))

    def use_policy(self, policy: Policy) -> None:
        """Schedule with `policy` from now on, with a driver of its own (pins, counters) and a fresh prefill-rate
        estimate. Called at start-up; later only on an idle engine (no requests, no pins), e.g. to run several
        policies on one engine (tests/test_conformance.py)."""
        if self.requests or (getattr(self, "driver", None) is not None and self.driver.pins):
            raise RuntimeError("use_policy: the engine still has requests or pins")
        self.mb_policy: Policy = policy
        self.driver = PolicyDriver(policy, self._release_pinned_blocks)
        self.prefill_rate = PrefillRate(self._prefill_s_per_token)
        # hooks the policy leaves at vLLM's behaviour cost nothing per step
        kind = type(policy)
        self._orders_running = kind.order_running is not Policy.order_running
        self._orders_waiting = kind.order_waiting is not Policy.order_waiting
        self._caps = kind.prefill_cap is not Policy.prefill_cap
        self._shrinks = kind.on_allocation_failure is not Policy.on_allocation_failure
        self._observes = kind.on_scheduled is not Policy.on_scheduled
        self._chooses_victims = kind.choose_victim is not Policy.choose_victim
        # vLLM's PRIORITY victim path keeps the step's bookkeeping exact for any victim, so a policy that
        # chooses victims gets it; vLLM's FCFS path (the last running request) is the default policy's rule.
        # The waiting queue stays a FCFS deque either way, reordered by the policy (preempted requests at
        # its front, as vLLM FCFS does).
        self.policy = SchedulingPolicy.PRIORITY if self._chooses_victims else SchedulingPolicy.FCFS
        manager, wraps = self.kv_cache_manager, self.__dict__
        if self._chooses_victims or kind.on_turn_end is not Policy.on_turn_end or self.step_log is not None:
            manager.allocate_slots = self._allocate_slots  # type: ignore[method-assign]
        else:
            manager.allocate_slots = self._allocate  # type: ignore[method-assign]
        if self._caps or self._shrinks:
            wraps.pop("_reserve_prefill_lookahead", None)
        else:
            self._reserve_prefill_lookahead = super()._reserve_prefill_lookahead  # type: ignore[method-assign]
        policy.bind(self.engine_view)

    # ------------------------------------------------------------------------------ clock, state
    def now(self) -> float:
        """Seconds on the run's clock (by default CLOCK_MONOTONIC since the harness's epoch; a test may set
        `clock`); one value for all the hooks of a step being planned, as in the simulated engine."""
        if self._planning_at is not None:
            return self._planning_at
        return self.clock()

    @property
    def pins(self) -> Mapping[str, Pin]:
        return self.driver.pins.pins

    @property
    def counters(self) -> dict[str, int]:
        return self.driver.counters

    def _release_pinned_blocks(self, blocks: list[Any]) -> None:
        self.kv_cache_manager.block_pool.free_blocks(reversed(blocks))

    # ------------------------------------------------------------------------------- requests
    def add_request(self, request: Request) -> None:
        extra = (request.sampling_params.extra_args or {}) if request.sampling_params else {}
        meta = CallMeta.parse(extra.get(META_KEY), request.request_id)
        if meta.epoch is not None:  # a server started before the run: take the harness's clock
            self.epoch = meta.epoch
        now = self.now()
        view = VllmRequestView(request, meta, now, self.req_to_blocks)
        self.views[request.request_id] = view
        super().add_request(request)
        if meta.prev_tool is not None:
            self.mb_policy.on_tool_end(meta.session_id, meta.prev_tool.name, meta.prev_tool.duration_s, now)
        self.mb_policy.on_arrival(view, now)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        now = self.now()
        driver = self.driver
        driver.pins.expire(now)
        policy = self.mb_policy
        # The policy's orders are asked where the simulated engine asks them, also for one request or none (an
        # order may change the policy's state: Autellix promotes starving programs): the running order every
        # step; the waiting order when vLLM's waiting pass first looks at the queue - after the running pass,
        # in a step that preempted nobody - or, if it looked at no request, once the step is planned.
        if self._orders_running:
            self.running[:] = self._in_policy_order(self.running, policy.order_running, now)
        waiting = self.waiting
        if self._orders_waiting:
            waiting.order_once = lambda: self._order_waiting(now)
        self._preempted_in_step = False
        step = self._step = StepRecord(start_s=now)
        logging = self.step_log is not None
        if logging:
            step.running_before = [[v.meta.call_id, v.phase] for v in self.engine_view.running]
        self._planning_at = now
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            self._planning_at = None
            order, waiting.order_once = waiting.order_once, None
        if order is not None and not self._preempted_in_step:
            order()
        views = self.views
        for rid, n in out.num_scheduled_tokens.items():
            view = views.get(rid)
            if view is None:
                continue
            before = view.req.num_computed_tokens - n  # vLLM already advanced it
            driver.scheduled(view, now, before, n)
            step.scheduled.append((view, n))
            if logging:
                req = view.req
                decode = is_decoding(req.num_output_tokens, before, req.num_tokens)
                step.phases[view.meta.call_id] = ("decode" if decode else "prefill", before)
        return out

    def _order_waiting(self, now: float) -> None:
        order = self._in_policy_order(self.waiting, self.mb_policy.order_waiting, now)
        self.waiting.clear()
        self.waiting.extend(order)

    def _in_policy_order(self, queue: Any, order: Any, now: float) -> list[Request]:
        """The requests of `queue` in the policy's order; requests without a view (none in practice) last."""
        views = self.views
        try:
            return [v.req for v in order([views[r.request_id] for r in queue], now)]
        except KeyError:
            known = [views[r.request_id] for r in queue if r.request_id in views]
            return [v.req for v in order(known, now)] + [r for r in queue if r.request_id not in views]

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        running = list(self.running)  # as this step left it
        self._turn_ends = []
        try:
            out = super().update_from_output(scheduler_output, model_runner_output)
        finally:
            ends, self._turn_ends = self._turn_ends, None
        if ends:
            self._end_turns(running, ends)
        step, self._step = self._step, None
        if step is not None and (step.scheduled or step.preempted):
            duration = max(0.0, self.now() - step.start_s)
            self.prefill_rate.observe([n for _, n in step.scheduled], duration)
            if self._observes:
                self.mb_policy.on_scheduled(ScheduledStep(step.start_s, duration, step.scheduled, step.preempted))
            if self.step_log is not None:
                self.step_log.write(step, duration, self.block_size, self.engine_view.num_free_blocks, sorted(self.pins))
        return out

    # ---------------------------------------------------------------------------- chunk sizes
    def _reserve_prefill_lookahead(self, request: Request, num_computed_tokens: int, num_new_tokens: int) -> int:
        n = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        view = self.views.get(request.request_id)
        if view is None or n <= 1:
            return n
        now = self.now()
        if self._caps:
            capped = self.driver.cap_chunk(view, n, now)
            if capped < n and self._step is not None:
                self._step.capped.append([view.meta.call_id, capped])
            n = capped
        if self._shrinks and request.status == RequestStatus.RUNNING:
            held = len(self.req_to_blocks.get(request.request_id, ()))
            free = self.engine_view

            def fits(k: int) -> bool:
                return _blocks_for(num_computed_tokens + k, self.block_size) - held <= free.num_free_blocks

            shrunk, _ = self._fit_chunk(view, n, now, fits)
            if shrunk < n and self._step is not None:
                self._step.shrunk.append([view.meta.call_id, n, shrunk])
            n = shrunk
        return n

    def _fit_chunk(self, view: VllmRequestView, n: int, now: float, fits: Callable[[int], bool]) -> tuple[int, bool]:
        """The driver's fit_chunk, with the pins it released logged in the step."""
        before = set(self.pins)
        result = self.driver.fit_chunk(view, n, now, fits)
        if self._step is not None and len(self.pins) < len(before):
            self._step.pins_released.extend(sorted(before - set(self.pins)))
        return result

    # ---------------------------------------------------------------------- allocation, victims
    def _allocate_slots(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        while True:
            blocks = self._allocate(request, *args, **kwargs)
            if blocks is not None:
                if self.driver.pins and request.status != RequestStatus.RUNNING:
                    # a waiting call is admitted: it holds its prefix hits now, so its session's pin goes
                    # (its blocks the call did not take - the partial last one - are free for the calls
                    # admitted after it), as in the simulated engine's admission
                    view = self.views.get(request.request_id)
                    if view is not None:
                        self.driver.pins.consume(view.session_id)
                break
            session = self.driver.pins.release_one(self.now())
            if session is None:
                break
            if self._step is not None:
                self._step.pins_released.append(session)
        if blocks is None and request.status == RequestStatus.RUNNING and self.running and (
                self._chooses_victims or self.step_log is not None):
            # vLLM preempts next: max(priority, arrival) - made the policy's victim - or, for a policy that
            # keeps vLLM's rule, the last running request (the policy's own choice is logged beside it)
            views = list(self.engine_view.running)
            victim = self.mb_policy.choose_victim(views, self.now())
            if self._chooses_victims:
                for r in self.running:
                    r.priority = 0
                victim.req.priority = 1
            if self._step is not None and self.step_log is not None:
                requester = self.views.get(request.request_id)
                self._step.victims.append({
                    "for": requester.meta.call_id if requester else request.request_id,
                    "tokens": int(args[0]) if args else int(kwargs.get("num_new_tokens", 0)),
                    "victim": victim.meta.call_id,
                    "running": [[v.meta.call_id, v.phase, v.num_blocks] for v in views]})
        return blocks

    def _preempt_request(self, request: Request, timestamp: float, *args: Any, **kwargs: Any) -> None:
        self._preempted_in_step = True
        view = self.views.get(request.request_id)
        computed = request.num_computed_tokens
        super()._preempt_request(request, timestamp, *args, **kwargs)
        request.priority = 0
        if view is None:
            self.counters["preemptions"] += 1
            return
        if self._step is not None:
            self._step.preempted.append(view)
            self._step.scheduled = [(v, n) for v, n in self._step.scheduled if v is not view]
        self.driver.preempted(view, computed, self.now())

    # ------------------------------------------------------------------------- finish, retention
    def _free_request(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        view = self.views.pop(request.request_id, None)
        held = None
        if view is not None:
            figures = {"preemptions": request.num_preemptions, "recomputed_tokens": view.recomputed_tokens,
                       "first_scheduled_s": view.first_scheduled_s}
            if self.call_log is not None:
                self.call_log.write(view.meta.call_id, figures)
            else:
                self.finished_calls[view.meta.call_id] = figures
            if request.status in (RequestStatus.FINISHED_LENGTH_CAPPED, RequestStatus.FINISHED_STOPPED):
                # the call's turn end decides what becomes of its blocks: hold them (one reference each, as the
                # call held them) past vLLM's free until then
                held = list(self.req_to_blocks.get(request.request_id, ()))
                self.kv_cache_manager.block_pool.touch(held)
                view._blocks = {view.request_id: held}  # the policy still sees the blocks the call held
        result = super()._free_request(request, *args, **kwargs)
        if held is not None:
            if self._turn_ends is not None:
                self._turn_ends.append((view, held))
            else:  # finished outside a step's output (none in practice)
                with contextlib.suppress(ValueError):
                    self.running.remove(view.req)
                self._end_turn(view, held, self.now())
        return result

    def _end_turns(self, running: list[Request], ends: list[tuple[VllmRequestView, list[Any]]]) -> None:
        """The turn ends of the calls that finished in a step, decided once vLLM processed the step's whole
        output (every call's new token is in), in the step's order, each call leaving `running` right before
        its own turn end - the simulated engine's order: a policy reading the running calls (InferCept's
        C_other) or the free blocks sees what the simulated engine shows it."""
        after, done, views = self.running, set(), self.views
        for view, _ in ends:  # the calls still to end are running calls, seen through their views
            views[view.request_id] = view
        try:
            for view, held in ends:
                done.add(id(view.req))
                del views[view.request_id]
                self.running = [r for r in running if id(r) not in done]
                self._end_turn(view, held, self.now())
        finally:
            self.running = after
            for view, _ in ends:
                views.pop(view.request_id, None)

    def _end_turn(self, view: VllmRequestView, blocks: list[Any], now: float) -> None:
        """The driver's turn-end decision for a finished call whose `blocks` are held for it: a keep pins them
        all (the pin takes the hold over), as the simulated engine's pin; otherwise they are freed, in the
        order vLLM frees a request's blocks."""
        decision = self.driver.turn_end(view, now)
        if decision.action == "keep" and blocks:
            self.driver.pins.make(view.session_id, blocks, view.req.num_computed_tokens, now, decision.seconds)
        else:
            self._release_pinned_blocks(blocks)

    def mb_stats(self) -> dict[str, Any]:
        """Counters for the run's stats (pins, preemptions, chunk shrinking and capping)."""
        return dict(self.counters)


def make_policy(settings: Mapping[str, Any]) -> Policy:
    """The policy named in the engine's additional_config (the run's backend and RunConfig)."""
    config = RunConfig.model_validate(settings.get("config") or {"backend": settings.get("backend", "vllm")})
    return get_backend(config.backend, "vllm").make_policy(config)
