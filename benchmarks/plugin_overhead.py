"""Scheduler overhead of the policy plugin: time vLLM spends in its scheduler per engine step
(`schedule()` plus `update_from_output()`, where the plugin's hooks run) with vLLM's own `Scheduler` and
with `PolicyScheduler` running each policy, on the same request trace in the same process.

    python benchmarks/plugin_overhead.py                 # tiny model made on the spot, 3 repeats
    python benchmarks/plugin_overhead.py --calls 96 --repeats 5 --backends vllm,mars,continuum

Figures per scheduler (the best of the repeats, as `timeit` reports: other tenants of a shared machine
only ever add time; repeats run the variants back to back):
* `us/step`: mean scheduler time per engine step, and its difference from vLLM's own scheduler;
* `trace us/step`: the scheduler's total time over the trace divided by the steps vLLM's own scheduler took
  for it. A policy changes the schedule itself (a pin turns a prefill into cache hits, a cap splits a prompt
  over more steps), so its steps are not vLLM's steps: this is the cost of scheduling the same work.
(Timing the plugin's own code inside a step was tried: timers around its hooks, called several times a step,
cost more than the hooks themselves.)

Target (real-engine issue): under 5% overhead, or under 50 us per step. Times are the scheduler thread's CPU
time (`time.thread_time`), which other tenants of a shared machine disturb less than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.engines.vllm.engine import VllmSetup, engine_args, prepare_environment
from harness.hostload import HostLoad, describe
from harness.tiny_model import make_tiny_model

BLOCK = 32


def _timed(base: type) -> type:
    """`base` with its per-step scheduler work timed (schedule + update_from_output)."""

    class Timed(base):  # type: ignore[misc, valid-type]
        spent: list[float] = []

        def schedule(self, *args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return super().schedule(*args, **kwargs)
            finally:
                Timed.spent.append(time.thread_time() - t)

        def update_from_output(self, *args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return super().update_from_output(*args, **kwargs)
            finally:
                Timed.spent[-1] += time.thread_time() - t

    Timed.spent = []
    return Timed


def run_trace(model: Path, scheduler: type, plugin: dict[str, Any] | None, calls: int, cache: str) -> list[float]:
    """Step a fixed trace to the end: waves of calls, some sharing a prefix, with KV pressure."""
    from vllm import EngineArgs, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.llm_engine import LLMEngine

    setup = VllmSetup(model=str(model), max_model_len=2048, num_gpu_blocks=96, block_size=BLOCK,
                      max_num_batched_tokens=1024, load_format="dummy", cache_dir=cache)
    args = engine_args(setup, plugin or {})
    args["scheduler_cls"] = scheduler
    if plugin is None:
        args.pop("additional_config")
    llm = LLMEngine.from_engine_args(EngineArgs(**args))
    try:
        for i in range(calls):
            meta = {"call_id": f"s{i % 16}#{i // 16}", "session_id": f"s{i % 16}", "turn": i // 16,
                    "is_last_turn": False, "tool_name": "grep", "session_arrival_s": float(i % 16)}
            prompt = [100 + (i % 16)] * 200 + [300 + (j * 7 + i) % 1500 for j in range(100 + 37 * (i % 9))]
            params = SamplingParams(max_tokens=16 + 8 * (i % 5), ignore_eos=True, extra_args={"mars": meta})
            llm.add_request(f"r{i}", TokensPrompt(prompt_token_ids=prompt), params)
            if i % 16 == 15:  # a wave: let the engine work before the next one arrives
                for _ in range(20):
                    llm.step()
        while llm.has_unfinished_requests():
            llm.step()
        return list(scheduler.spent)
    finally:
        llm.engine_core.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="vllm,mars,autellix,continuum")
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plugin-overhead-"))
    prepare_environment(str(work / "cache"))
    from vllm.v1.core.sched.scheduler import Scheduler

    from harness.config import RunConfig
    from harness.engines.vllm.scheduler import PolicyScheduler

    model = make_tiny_model(work / "tiny")
    variants: list[tuple[str, dict[str, Any] | None]] = [("vLLM Scheduler", None)]
    for backend in ns.backends.split(","):
        config = RunConfig(backend=backend, engine="vllm").model_dump(mode="json")
        variants.append((f"plugin: {backend}", {"config": config}))
    per_step: dict[str, list[float]] = {name: [] for name, _ in variants}
    per_trace: dict[str, list[float]] = {name: [] for name, _ in variants}
    steps: dict[str, int] = {}
    host = HostLoad().start()  # the figures are CPU times of this process: say whether others shared the CPUs
    for _ in range(ns.repeats):
        base_steps = 0
        for name, plugin in variants:
            scheduler = _timed(Scheduler if plugin is None else PolicyScheduler)
            spent = run_trace(model, scheduler, plugin, ns.calls, str(work / "cache"))
            base_steps = base_steps or len(spent)
            steps[name] = len(spent)
            per_step[name].append(statistics.fmean(spent))
            per_trace[name].append(sum(spent) / base_steps)
    base_us = min(per_step["vLLM Scheduler"]) * 1e6
    load = host.stop()
    print(f"{ns.calls} calls, {ns.repeats} repeats; scheduler CPU time per engine step (best of the repeats)")
    print(f"{'scheduler':<20}{'steps':>7}{'us/step':>9}{'overhead':>10}{'trace us/step':>15}{'overhead':>10}"
          f"{'trace %':>9}")
    for name, _ in variants:
        us, trace = min(per_step[name]) * 1e6, min(per_trace[name]) * 1e6
        print(f"{name:<20}{steps[name]:>7}{us:>9.1f}{us - base_us:>+10.1f}{trace:>15.1f}{trace - base_us:>+10.1f}"
              f"{100 * (trace / base_us - 1):>+8.1f}%")
    print(f"host: {'NOISY, figures not comparable' if load.get('noisy') else 'quiet'} ({describe(load)})")

if __name__ == "__main__":
    main()
