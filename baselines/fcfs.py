"""Vanilla vLLM V1 (backend `vllm`): FCFS, chunked prefill, automatic prefix caching with LRU eviction,
recompute preemption of the request that entered the running queue last, no admission control, KV freed
at the end of every call.

Every hook of `harness.policy.Policy` defaults to exactly this behaviour (vLLM V1
`vllm/v1/core/sched/scheduler.py` with `scheduling_policy="fcfs"`), so the class adds nothing but its
name; it exists so that the baseline is a noun one can import and swap like the others.
"""

from __future__ import annotations

from harness.policy import Policy


class FcfsPolicy(Policy):
    name = "vllm"
