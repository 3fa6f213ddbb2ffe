"""A vLLM V1 scheduler that runs any mars-bench policy (MARS or a baseline) inside a real vLLM engine.

Load it with `scheduler_cls="mars_impl.vllm_plugin.PolicyScheduler"` and the run's settings in
`additional_config={"mars_bench": {"backend": ..., "config": RunConfig as JSON, "epoch": ...}}` (in-process
engine args, or `--scheduler-cls` / `--additional-config` of the OpenAI server). Session metadata comes
with every request in `SamplingParams.extra_args["mars"]` (over HTTP: the request's `vllm_xargs`).

vLLM's `Scheduler.schedule()` stays intact; the policy acts through a small, version-checked surface:
* `order_running` / `order_waiting`: the running list and the (FCFS deque) waiting queue are put in the
  policy's order before each `schedule()`;
* `prefill_cap` and chunk shrinking: `_reserve_prefill_lookahead`, which vLLM calls on every chunk it
  is about to schedule (running and waiting), also applies the policy's per-request cap and, when the
  chunk's new blocks exceed the free (and releasable pinned) blocks, `on_allocation_failure`;
* victims: for a policy with its own `choose_victim` the scheduler runs vLLM's PRIORITY victim path (which
  restores the budget of a victim that was already scheduled this step); when an allocation fails the
  policy's victim gets the one raised priority, so vLLM's `max(priority, arrival)` picks it. Other policies
  keep vLLM's FCFS victim (the last running request);
* retention: `on_turn_end` may keep a finished call's full cached blocks for its session (a pin with a
  deadline holds one reference per block); pins are released at their deadline, when the session's next
  call is scheduled (its prefix hits took the blocks), or, in `choose_pin_to_release` order, when an
  allocation fails - before any chunk shrinking or preemption, as in the simulated engine;
* notifications: `on_arrival`, `on_tool_end` (the previous tool, carried by the next call's metadata),
  `on_scheduled` (with the measured step time), `on_preempted`, `on_finished`.
Offloading to a host tier is not available on this engine (`offload_seconds` is None), so policies that
would offload free instead.

Every step can be logged (`step_log` path in the settings): one JSON line per step with the scheduled
tokens per request ([call id, tokens, phase, tokens computed before the step]), who was preempted, shrunk,
capped and pinned - the evidence the engine tests read, and what calibration fits step times to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import vllm
from vllm.v1.core.sched.request_queue import FCFSRequestQueue, SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from harness.engines.sim.core import Pin
from harness.policy import FREE, Policy, Retention, ScheduledStep

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


class RequestMeta:
    """The session metadata a call carries (see harness.engines.vllm.call_meta)."""

    def __init__(self, raw: Mapping[str, Any] | str | None, request_id: str) -> None:
        if isinstance(raw, str):  # over HTTP `vllm_xargs` values are flat: the metadata comes as JSON
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = None
        raw = raw if isinstance(raw, Mapping) else {}  # bad metadata must never stop the engine
        self.call_id: str = str(raw.get("call_id", request_id))  # the harness's id (vLLM adds a suffix to its own)
        self.session_id: str = str(raw.get("session_id", request_id))
        self.turn: int = int(raw.get("turn", 0))
        self.is_last_turn: bool = bool(raw.get("is_last_turn", True))
        self.tool_name: str | None = raw.get("tool_name")
        self.session_arrival_s: float | None = raw.get("session_arrival_s")
        self.prev_tool: Mapping[str, Any] | None = raw.get("prev_tool")
        self.measured: bool = bool(raw.get("measured", True))
        self.epoch: float | None = raw.get("epoch")  # the harness's clock origin (CLOCK_MONOTONIC seconds)


class VllmRequestView:
    """A vLLM `Request` as the policy's RequestView."""

    __slots__ = ("req", "meta", "_sched", "request_id", "session_id", "turn", "is_last_turn", "tool_name",
                 "arrival_s", "session_arrival_s", "num_prompt_tokens", "last_scheduled_s", "first_scheduled_s",
                 "lost_until", "recomputed_tokens")

    def __init__(self, req: Request, meta: RequestMeta, arrival_s: float, sched: PolicyScheduler) -> None:
        self.req = req
        self.meta = meta
        self._sched = sched
        # what never changes is a plain attribute: policies read these in every sort key
        self.request_id: str = req.request_id
        self.session_id = meta.session_id
        self.turn = meta.turn
        self.is_last_turn = meta.is_last_turn
        self.tool_name = meta.tool_name
        self.arrival_s = arrival_s
        self.session_arrival_s = arrival_s if meta.session_arrival_s is None else float(meta.session_arrival_s)
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
        return len(self._sched.req_to_blocks.get(self.request_id, ()))

    @property
    def is_decoding(self) -> bool:
        return self.req.num_output_tokens > 0 and self.req.num_computed_tokens >= self.req.num_tokens - 1

    @property
    def remaining_prefill_tokens(self) -> int:
        return 0 if self.is_decoding else max(0, self.req.num_tokens - self.req.num_computed_tokens)


@dataclass
class _Step:
    start_s: float
    scheduled: list[tuple[VllmRequestView, int]]
    preempted: list[VllmRequestView] = field(default_factory=list)
    phases: dict[str, tuple[str, int]] = field(default_factory=dict)  # call id -> (decode|prefill, context)


class PolicyScheduler(Scheduler):
    """vLLM's scheduler with a mars-bench policy's hooks (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_vllm_version()
        super().__init__(*args, **kwargs)
        settings = dict(self.vllm_config.additional_config or {}).get(CONFIG_KEY) or {}
        self.epoch: float = float(settings.get("epoch", time.monotonic()))
        self._planning_at: float | None = None  # `now` of the step schedule() is planning
        self.mb_policy: Policy = _make_policy(settings)
        # hooks the policy leaves at vLLM's behaviour cost nothing per step
        kind = type(self.mb_policy)
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
        self.waiting = FCFSRequestQueue()
        self.views: dict[str, VllmRequestView] = {}
        self.finished_calls: dict[str, dict[str, Any]] = {}  # call id -> per-call figures, for an in-process harness
        self.pins: dict[str, Pin] = {}
        self.counters = {"preemptions": 0, "pins_made": 0, "pins_used": 0, "pins_expired": 0,
                         "pins_released_early": 0, "chunks_shrunk": 0, "chunks_capped": 0}
        self._s_per_prefill_token = float(settings.get("prefill_s_per_token", 1e-4))
        self._step: _Step | None = None
        self._step_events: dict[str, list[Any]] = {}
        self._log = open(settings["step_log"], "a") if settings.get("step_log") else None  # noqa: SIM115
        self.steps_logged = 0
        # per-call figures for a harness in another process (server mode): one JSON line per finished call
        self._call_log = open(settings["call_log"], "a") if settings.get("call_log") else None  # noqa: SIM115
        # request id -> its KV blocks (the plugin assumes one KV cache group: full attention)
        self.req_to_blocks = self.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks
        self._allocate = self.kv_cache_manager.allocate_slots
        if self._chooses_victims or kind.on_turn_end is not Policy.on_turn_end or self._log is not None:
            self.kv_cache_manager.allocate_slots = self._allocate_slots  # type: ignore[method-assign]
        if not (self._caps or self._shrinks):
            self._reserve_prefill_lookahead = super()._reserve_prefill_lookahead  # type: ignore[method-assign]
        self.engine_view = PluginEngineView(self)
        self.mb_policy.bind(self.engine_view)

    # ------------------------------------------------------------------ EngineView for the policy
    def now(self) -> float:
        """Seconds since the run's epoch (the harness's clock: both read CLOCK_MONOTONIC); one value for all
        the hooks of a step being planned, as in the simulated engine."""
        if self._planning_at is not None:
            return self._planning_at
        return time.monotonic() - self.epoch

    @property
    def kv_usage(self) -> float:
        return float(self.kv_cache_manager.usage)

    @property
    def num_free_blocks(self) -> int:
        return int(self.kv_cache_manager.block_pool.get_num_free_blocks())

    @property
    def num_total_blocks(self) -> int:
        return int(self.kv_cache_manager.block_pool.num_gpu_blocks) - 1  # the null block holds nothing

    def prefill_seconds(self, tokens: int) -> float:
        """Measured: the running estimate of seconds per prefilled token from this engine's own steps."""
        return tokens * self._s_per_prefill_token

    def cached_prefix_tokens(self, req: Any) -> int:
        return int(self.kv_cache_manager.estimate_cached_tokens(req.req))

    def max_new_tokens(self, req: Any) -> int:
        return max(0, int(req.req.max_tokens) - int(req.req.num_output_tokens))

    def num_request_blocks(self, request_id: str) -> int:
        return len(self.req_to_blocks.get(request_id, ()))

    # ------------------------------------------------------------------------------- requests
    def add_request(self, request: Request) -> None:
        extra = (request.sampling_params.extra_args or {}) if request.sampling_params else {}
        meta = RequestMeta(extra.get(META_KEY), request.request_id)
        if meta.epoch is not None:  # a server started before the run: take the harness's clock
            self.epoch = float(meta.epoch)
        now = self.now()
        view = VllmRequestView(request, meta, now, self)
        self.views[request.request_id] = view
        super().add_request(request)
        if meta.prev_tool:
            self.mb_policy.on_tool_end(meta.session_id, str(meta.prev_tool.get("name", "")),
                                       float(meta.prev_tool.get("duration_s", 0.0)), now)
        self.mb_policy.on_arrival(view, now)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        now = self.now()
        self._release_expired_pins(now)
        policy = self.mb_policy
        if self._orders_running and len(self.running) > 1:
            self.running[:] = self._in_policy_order(self.running, policy.order_running, now)
        if self._orders_waiting and len(self.waiting) > 1:
            order = self._in_policy_order(self.waiting, policy.order_waiting, now)
            self.waiting.clear()
            self.waiting.extend(order)
        self._step = _Step(start_s=now, scheduled=[])
        self._step_events = {"shrunk": [], "capped": [], "pins_released": [], "victims": []}
        if self._log is not None:
            self._step_events["running_before"] = [[v.meta.call_id, _phase(v)] for v in self.engine_view.running]
        self._planning_at = now
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            self._planning_at = None
        step, views, pins, logging = self._step, self.views, self.pins, self._log is not None
        for rid, n in out.num_scheduled_tokens.items():
            view = views.get(rid)
            if view is None:
                continue
            if view.last_scheduled_s is None:
                view.first_scheduled_s = now
            view.last_scheduled_s = now
            step.scheduled.append((view, n))
            if view.lost_until or logging:
                req = view.req
                before = req.num_computed_tokens - n  # vLLM already advanced it
                if view.lost_until > before:
                    view.recomputed_tokens += min(before + n, view.lost_until) - before
                if logging:
                    decode = req.num_output_tokens > 0 and before >= req.num_tokens - 1
                    step.phases[view.meta.call_id] = ("decode" if decode else "prefill", before)
            if pins:
                pin = pins.pop(view.session_id, None)
                if pin is not None:  # the call holds its prefix hits now: the pin's references can go
                    self.kv_cache_manager.block_pool.free_blocks(reversed(pin.blocks))
                    self.counters["pins_used"] += 1
        return out

    def _in_policy_order(self, queue: Any, order: Any, now: float) -> list[Request]:
        """The requests of `queue` in the policy's order; requests without a view (none in practice) last."""
        views = self.views
        try:
            return [v.req for v in order([views[r.request_id] for r in queue], now)]
        except KeyError:
            known = [views[r.request_id] for r in queue if r.request_id in views]
            return [v.req for v in order(known, now)] + [r for r in queue if r.request_id not in views]

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        out = super().update_from_output(scheduler_output, model_runner_output)
        step, self._step = self._step, None
        if step is not None and (step.scheduled or step.preempted):
            end = self.now()
            duration = max(0.0, end - step.start_s)
            prefill = sum(n for v, n in step.scheduled if n > 1)
            if prefill >= 64 and duration > 0:  # a prefill-dominated step: update the per-token estimate
                self._s_per_prefill_token = 0.8 * self._s_per_prefill_token + 0.2 * duration / sum(
                    n for _, n in step.scheduled)
            if self._observes:
                self.mb_policy.on_scheduled(ScheduledStep(step.start_s, duration, step.scheduled, step.preempted))
            if self._log is not None:
                self._write_step(step, duration)
        return out

    def _write_step(self, step: _Step, duration: float) -> None:
        assert self._log is not None
        record = {
            "t": round(step.start_s, 6), "duration_s": round(duration, 6),
            "scheduled": [[v.meta.call_id, n, *step.phases.get(v.meta.call_id, ("prefill", 0))] for v, n in step.scheduled],
            "block_size": self.block_size,
            "preempted": [v.meta.call_id for v in step.preempted],
            "free_blocks": self.num_free_blocks, "pins": sorted(self.pins),
            "running_before": self._step_events.get("running_before", []),
            **{k: v for k, v in self._step_events.items() if v and k != "running_before"},
        }
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        self.steps_logged += 1

    # ---------------------------------------------------------------------------- chunk sizes
    def _reserve_prefill_lookahead(self, request: Request, num_computed_tokens: int, num_new_tokens: int) -> int:
        n = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        view = self.views.get(request.request_id)
        if view is None or n <= 1:
            return n
        now = self.now()
        if self._caps and not view.is_decoding:
            cap = self.mb_policy.prefill_cap(view, now)
            if cap is not None and max(1, cap) < n:
                n = max(1, cap)
                self._step_events["capped"].append([view.meta.call_id, n])
        if self._shrinks and request.status == RequestStatus.RUNNING:  # shrink while the new blocks don't fit
            held = self.num_request_blocks(request.request_id)
            available = self.num_free_blocks + sum(p.num_blocks for p in self.pins.values())
            while _blocks_for(num_computed_tokens + n, self.block_size) - held > available:
                smaller = self.mb_policy.on_allocation_failure(view, n, now)
                if not 0 < smaller < n:
                    break
                self._step_events["shrunk"].append([view.meta.call_id, n, smaller])
                self.counters["chunks_shrunk"] += 1
                n = smaller
        return n

    # ---------------------------------------------------------------------- allocation, victims
    def _allocate_slots(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        while True:
            blocks = self._allocate(request, *args, **kwargs)
            if blocks is not None or not self._release_a_pin():
                break
        if blocks is None and request.status == RequestStatus.RUNNING and self.running and (
                self._chooses_victims or self._log is not None):
            # vLLM preempts next: max(priority, arrival) - made the policy's victim - or, for a policy that
            # keeps vLLM's rule, the last running request (the policy's own choice is logged beside it)
            now = self.now()
            views = list(self.engine_view.running)
            victim = self.mb_policy.choose_victim(views, now)
            if self._chooses_victims:
                for r in self.running:
                    r.priority = 0
                victim.req.priority = 1
            if self._log is not None:
                requester = self.views.get(request.request_id)
                self._step_events["victims"].append({
                    "for": requester.meta.call_id if requester else request.request_id,
                    "tokens": int(args[0]) if args else int(kwargs.get("num_new_tokens", 0)),
                    "victim": victim.meta.call_id,
                    "running": [[v.meta.call_id, _phase(v), v.num_blocks] for v in views]})
        return blocks

    def _preempt_request(self, request: Request, timestamp: float, *args: Any, **kwargs: Any) -> None:
        view = self.views.get(request.request_id)
        if view is not None:
            view.lost_until = max(view.lost_until, request.num_computed_tokens)
        super()._preempt_request(request, timestamp, *args, **kwargs)
        request.priority = 0
        self.counters["preemptions"] += 1
        if view is None:
            return
        if self._step is not None:
            self._step.preempted.append(view)
            self._step.scheduled = [(v, n) for v, n in self._step.scheduled if v is not view]
        self.mb_policy.on_preempted(view, self.now())

    # ------------------------------------------------------------------------- finish, retention
    def _free_request(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        view = self.views.pop(request.request_id, None)
        retention = FREE
        if view is not None:
            figures = {"preemptions": request.num_preemptions, "recomputed_tokens": view.recomputed_tokens,
                       "first_scheduled_s": view.first_scheduled_s}
            if self._call_log is not None:
                self._call_log.write(json.dumps({"call_id": view.meta.call_id, **figures}) + "\n")
                self._call_log.flush()
            else:
                self.finished_calls[view.meta.call_id] = figures
        if view is not None and request.status in (RequestStatus.FINISHED_LENGTH_CAPPED, RequestStatus.FINISHED_STOPPED):
            now = self.now()
            self.mb_policy.on_finished(view, now)
            if not view.is_last_turn:
                retention = self.mb_policy.on_turn_end(view, now)
            if retention.action == "keep":
                self._pin(view, retention, now)
        return super()._free_request(request, *args, **kwargs)

    def _pin(self, view: VllmRequestView, retention: Retention, now: float) -> None:
        """Take one reference on the call's cached (full, hashed) blocks until the deadline."""
        blocks = [b for b in self.kv_cache_manager.get_blocks(view.request_id).blocks[0] if b.block_hash is not None]
        if not blocks:
            return
        old = self.pins.pop(view.session_id, None)
        if old is not None:
            self.kv_cache_manager.block_pool.free_blocks(reversed(old.blocks))
        self.kv_cache_manager.block_pool.touch(blocks)
        self.pins[view.session_id] = Pin(view.session_id, blocks, len(blocks) * self.block_size, now,
                                             now + retention.seconds)
        self.counters["pins_made"] += 1

    def _release_a_pin(self) -> bool:
        if not self.pins:
            return False
        session = self.mb_policy.choose_pin_to_release(self.pins, self.now())
        pin = self.pins.pop(session)
        self.kv_cache_manager.block_pool.free_blocks(reversed(pin.blocks))
        self.counters["pins_released_early"] += 1
        if self._step_events is not None and "pins_released" in self._step_events:
            self._step_events["pins_released"].append(session)
        return True

    def _release_expired_pins(self, now: float) -> None:
        if not self.pins:
            return
        for session in [s for s, p in self.pins.items() if p.deadline_s <= now]:
            pin = self.pins.pop(session)
            self.kv_cache_manager.block_pool.free_blocks(reversed(pin.blocks))
            self.counters["pins_expired"] += 1

    def mb_stats(self) -> dict[str, Any]:
        """Counters for the run's stats (pins, preemptions, chunk shrinking and capping)."""
        return dict(self.counters)


def _phase(view: VllmRequestView) -> str:
    return "decode" if view.is_decoding else "prefill"


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


class PluginEngineView:
    """The EngineView a policy is bound to: vLLM's own `running` / `waiting` hold vLLM Requests, so the
    policy reads views of them through this object."""

    def __init__(self, sched: PolicyScheduler) -> None:
        self._sched = sched

    running = property(lambda self: _Views(self._sched.running, self._sched.views))
    waiting = property(lambda self: _Views(self._sched.waiting, self._sched.views))
    pins = property(lambda self: self._sched.pins)
    kv_usage = property(lambda self: self._sched.kv_usage)
    num_free_blocks = property(lambda self: self._sched.num_free_blocks)
    num_total_blocks = property(lambda self: self._sched.num_total_blocks)
    block_size = property(lambda self: self._sched.block_size)

    def prefill_seconds(self, tokens: int) -> float:
        return self._sched.prefill_seconds(tokens)

    def offload_seconds(self, tokens: int) -> float | None:
        return None

    def cached_prefix_tokens(self, req: Any) -> int:
        return self._sched.cached_prefix_tokens(req)

    def max_new_tokens(self, req: Any) -> int:
        return self._sched.max_new_tokens(req)


def _make_policy(settings: Mapping[str, Any]) -> Policy:
    """The policy named in the engine's additional_config (the run's backend and RunConfig)."""
    from harness.backends import get_backend
    from harness.config import RunConfig

    config = RunConfig.model_validate(settings.get("config") or {"backend": settings.get("backend", "vllm")})
    return get_backend(config.backend, "vllm").make_policy(config)

