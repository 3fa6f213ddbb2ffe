"""One run end to end: resolve the workload and backend, build the testbed, compute the isolated
reference, simulate with events streamed to the results directory, summarise."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.policy.admission import AdmissionController
from harness.backends import get_backend
from harness.config import RunConfig
from harness.errors import BadInput
from harness.metrics import RunSummary, parse_goodput, summarize
from harness.results import RunWriter, make_run_id
from harness.runner import Outcome, isolated_jcts, simulate
from harness.testbed import build_setup
from workloads.model import Session
from workloads.source import WorkloadRequest, resolve
from workloads.synthetic import background_chat

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class RunResult:
    dir: Path
    summary: RunSummary
    stats: dict[str, Any]


class _CountingSink:
    """Forwards events to the writer and reports session completions to a progress callback."""

    def __init__(self, writer: RunWriter, total: int, progress: Progress | None) -> None:
        self.writer, self.total, self.progress, self.done = writer, total, progress, 0

    def event(self, kind: str, t: float, **fields: Any) -> None:
        self.writer.event(kind, t, **fields)
        if kind == "session_failed":
            self._tick()

    def call(self, t: float, row: dict[str, Any]) -> None:
        self.writer.call(t, row)

    def session(self, t: float, row: dict[str, Any]) -> None:
        self.writer.session(t, row)
        self._tick()

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress("simulating", self.done, self.total)


def run_experiment(config: RunConfig, results_dir: Path, progress: Progress | None = None,
                   run_id: str | None = None) -> RunResult:
    """Run `config` and write `results_dir/<run_id>/` (a new time-stamped id unless given); bad input raises
    BadInput before anything is written."""
    slo = parse_goodput(list(config.goodput)) if config.goodput else None
    backend = get_backend(config.backend, config.engine)
    name, sessions = resolve(WorkloadRequest(
        source=config.workload, sessions=config.sessions, rps=config.rps, arrival=config.arrival, cv=config.cv,
        seed=config.seed, sets=config.workload_sets,
    ))
    if config.engine == "http":  # a server that does not answer is bad input, before anything is written
        from harness.engines.http import check_server  # noqa: PLC0415

        check_server(config.base_url, config.api_key_env)
    if config.engine == "sglang" and importlib.util.find_spec("sglang") is None:
        raise BadInput("--engine sglang needs SGLang (pip install 'sglang[all]' on a GPU machine; its kernels need "
                       "CUDA); to measure a running SGLang server use --engine http --base-url URL")
    if config.tools == "real" and config.engine == "sim":
        raise BadInput("--tools real runs tool processes in real time: it needs a real engine (--engine vllm)")
    simulated = config.engine == "sim" or config.profile is not None  # the sim gives the isolated reference
    setup = build_setup(config) if simulated else None
    policy, admission = backend.make_policy(config), backend.make_admission(config)

    total = len(sessions)
    done = 0

    def isolated_progress(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("isolated reference", done, total)

    # the isolated reference is the simulated testbed's; a real engine's needs its calibrated profile (see
    # `mars-bench calibrate`), so real runs report slowdown and goodput only with --profile
    isolated = {} if setup is None else \
        isolated_jcts(sessions, setup, cache=results_dir / ".cache" / "isolated.json", progress=isolated_progress)
    run_id = run_id or make_run_id(config.backend, name, config.seed, results_dir)
    meta_config = {**config.model_dump(mode="json"), "workload_name": name, "num_sessions": total}
    with RunWriter(results_dir, run_id, meta_config, config.seed) as writer:
        background = background_chat(config.chat_rps, max(s.arrival_s for s in sessions), config.seed)
        sink = _CountingSink(writer, total, progress)
        if config.engine == "vllm":
            outcome = _run_vllm(config, sessions, admission, sink, background, writer.dir, results_dir)
        elif config.engine == "http":
            outcome = _run_http(config, sessions, admission, sink, background)
        elif config.engine == "sglang":
            outcome = _run_sglang(config, sessions, admission, sink, background, writer.dir, results_dir)
        else:
            assert setup is not None
            outcome = simulate(sessions, policy, setup, admission, sink=sink, isolated=isolated, background=background)
        summary = summarize(outcome.calls, outcome.sessions, alpha=config.alpha, goodput_slo=slo, end_s=outcome.end_s)
        payload = {**summary.model_dump(mode="json"), "engine_stats": outcome.stats}
        writer.finish(outcome.calls, outcome.sessions, payload, timeline=outcome.timeline)
    return RunResult(writer.dir, summary, outcome.stats)


def _run_vllm(config: RunConfig, sessions: list[Session], admission: AdmissionController, sink: Any,
              background: list[Session], run_dir: Path, results_dir: Path) -> Outcome:
    """The run on the real in-process vLLM engine; the plugin's step log goes to the run directory."""
    try:
        import vllm  # noqa: F401, PLC0415

        from harness.engines.vllm.engine import VllmRun, vllm_setup  # noqa: PLC0415
        from harness.engines.vllm.server import VllmServerRun  # noqa: PLC0415
    except ImportError as exc:
        raise BadInput(f"--engine vllm needs vLLM: pip install -e '.[vllm]' (see README) ({exc})") from None
    setup = vllm_setup(config, [*sessions, *background], cache_dir=results_dir / ".cache" / "vllm",
                       step_log=run_dir / "steps.jsonl")
    config_json = config.model_dump(mode="json")
    if config.vllm_mode == "server":
        return VllmServerRun(sessions, config_json, admission, setup, run_dir, sink, background).run()
    return VllmRun(sessions, config_json, admission, setup, sink, background).run()


def _run_http(config: RunConfig, sessions: list[Session], admission: AdmissionController, sink: Any,
              background: list[Session]) -> Outcome:
    """The run against an OpenAI-compatible server someone else runs (attached by URL)."""
    from harness.engines.http import HttpRun, HttpTarget, api_key_from_env  # noqa: PLC0415
    from harness.engines.vllm.engine import VllmSetup  # noqa: PLC0415

    assert config.base_url is not None  # checked with the server before the run (check_server)
    e = config.engine_args
    longest = max((s.prompt_tokens(k) + t.output_tokens for s in [*sessions, *background] for k, t in enumerate(s.turns)),
                  default=1)
    setup = VllmSetup(model=config.served_model or "", max_model_len=longest + 1, max_num_seqs=e.max_num_seqs,
                      num_gpu_blocks=e.num_gpu_blocks, block_size=e.block_size, tool_cores=config.tool_cores,
                      tool_mode=config.tool_mode, real_tools=config.tools == "real", allow_commands=config.allow_commands,
                      cpu_stress=config.cpu_stress, timeline_interval_s=config.timeline_interval_s, seed=config.seed)
    target = HttpTarget(config.base_url, api_key=api_key_from_env(config.api_key_env), model=config.served_model,
                        tokenizer=config.tokenizer)
    return HttpRun(sessions, admission, setup, target, sink, background).run()


def _run_sglang(config: RunConfig, sessions: list[Session], admission: AdmissionController, sink: Any,
                background: list[Session], run_dir: Path, results_dir: Path) -> Outcome:
    """The run against SGLang's server, launched here with the run's engine settings in SGLang's terms."""
    from harness.engines.sglang import SglangArgs, SglangRun  # noqa: PLC0415
    from harness.engines.vllm.engine import vllm_setup  # noqa: PLC0415

    setup = vllm_setup(config, [*sessions, *background], cache_dir=results_dir / ".cache" / "sglang", step_log=None)
    e = config.engine_args
    args = SglangArgs(model_path=setup.model, context_length=setup.max_model_len, radix_cache=e.enable_prefix_caching,
                      mem_fraction_static=e.gpu_memory_utilization, chunked_prefill_size=e.max_num_batched_tokens,
                      max_running_requests=e.max_num_seqs, tp=config.tp, load_format=setup.load_format,
                      seed=config.seed)
    return SglangRun(sessions, admission, setup, args, run_dir, sink, background).run()
