"""InferCept (backend `infercept`): FCFS, and at each tool call keep the KV for as long as preserving it
wastes less GPU memory than discarding and recomputing it.

Sources followed:
* Abhyankar et al., "InferCept: Efficient Intercept Support for Augmented Large Language Model
  Inference", ICML 2024 (arXiv 2402.01869), "min-waste interception": waste = GPU memory x time; for each
  intercepted request take the cheapest of discard (recompute on resume), preserve (keep the KV in GPU
  memory) and swap. Only the abstract and secondary summaries were reachable through our search (e.g.
  aaronwu.dev lecture notes on the paper: discarding also stalls the *other* running requests while the
  context is recomputed, so their memory counts as waste too); the equations below were checked against
  the authors' code instead.
* Its public code, github.com/WukLab/InferCept, `vllm/core/scheduler_v2.py` (`_schedule_chunk_and_fill`,
  `discard_waste`): preserve waste = remaining interception time x blocks x block size (T_INT x C);
  discard waste of a *chunked* recomputation = the recomputed context's memory growing chunk by chunk (a
  triangle, hence a factor 1/2 on C) plus the running requests' memory for the whole recomputation (no
  1/2 on C_other).
* The vLLM fork holding the public preview baselines side by side (see baselines/continuum.py),
  `_infercept_pin_ttl_s`: discard cost = T_fwd(C) x (C + C_other) / 2 token-seconds, TTL = discard
  cost / C, pin only if TTL > 0.01 s, T_fwd(C) = 0.0002 s x C by default.
* Our reference, shared/reference/mars-algorithm.md, "Baselines", which states the same formula.

Differences from the paper, deliberately kept: (1) InferCept knows each interception's duration up front
(`api_exec_time`) and compares the two wastes; it cannot be known here, so the decision becomes its
break-even point: keep for TTL = discard cost / C, the interception time at which preserving starts to
waste more than discarding. (2) The reference halves C_other too, where InferCept's code charges it in
full; we follow the reference. (3) No swap: the simulated engine has no host tier. (4) Swap budgets and
per-iteration re-evaluation of paused requests are not modelled; a pin lives until its TTL or until the
engine needs its blocks (then the pin with the most time left goes first, as InferCept's passive discard).

T_fwd: the default is the reference's constant 0.0002 s/token, because it makes the baseline decide the
same on every engine and needs no calibrated cost model. `t_fwd_from_engine` uses the engine's own
re-prefill estimate instead (`EngineView.prefill_seconds(C)`, InferCept's profiled forward time); on the
simulated H100 profile it is ~2-3e-5 s/token, so TTLs come out about ten times shorter.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from harness.policy.helpers import context_tokens, kv_holders_first, longest_pin_first
from harness.policy import FREE, PinView, Policy, R, RequestView, Retention


class InferCeptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    t_fwd_s_per_token: float = Field(default=0.0002, gt=0, description="re-prefill seconds per context token")
    t_fwd_from_engine: bool = Field(default=False,
                                    description="use the engine's prefill-time estimate instead of the constant")
    min_ttl_s: float = Field(default=0.01, ge=0, description="keep the KV only if the TTL exceeds this")


class InferCeptPolicy(Policy):
    """FCFS (vLLM's order and victim; a call resuming onto its preserved KV goes ahead of the waiting
    queue, as InferCept resumes it into the running group); min-waste retention at tool calls."""

    name = "infercept"

    def __init__(self, settings: InferCeptSettings | None = None) -> None:
        self.settings = settings or InferCeptSettings()

    def t_fwd_s(self, tokens: int) -> float:
        """T_fwd(C): seconds to recompute a context of `tokens` tokens."""
        if self.settings.t_fwd_from_engine:
            if self.engine is None:
                raise RuntimeError("t_fwd_from_engine needs an engine (bind)")
            return self.engine.prefill_seconds(tokens)
        return self.settings.t_fwd_s_per_token * tokens

    def discard_cost(self, req: RequestView) -> float:
        """Token-seconds wasted by discarding the context of `req` and recomputing it:
        T_fwd(C) x (C + C_other) / 2, C_other = the contexts of the other running requests."""
        others = self.engine.running if self.engine is not None else ()
        c_other = sum(context_tokens(r) for r in others if r.request_id != req.request_id)
        c = context_tokens(req)
        return self.t_fwd_s(c) * (c + c_other) / 2

    def ttl_s(self, req: RequestView) -> float:
        """The break-even interception time: preserving C tokens for t costs t x C token-seconds, which
        equals the discard cost at t = discard cost / C."""
        c = context_tokens(req)
        return self.discard_cost(req) / c if c > 0 else 0.0

    def on_turn_end(self, req: RequestView, now: float) -> Retention:
        if req.is_last_turn or req.tool_name is None:
            return FREE
        ttl = self.ttl_s(req)
        return Retention.keep(ttl) if ttl > self.settings.min_ttl_s else FREE

    def order_waiting(self, waiting: list[R], now: float) -> list[R]:
        return kv_holders_first(waiting)

    def choose_pin_to_release(self, pins: Mapping[str, PinView], now: float) -> str:
        return longest_pin_first(pins)
