"""`--engine sglang`: SGLang's server (`python -m sglang.launch_server`) launched for the run with the
flags its documentation gives (server arguments), as the engine of `--engine http` (which owns it): the backend `sglang` on this engine is the real system (LPM schedule, radix cache), on
`--engine sim` its policy model. Metrics come from `--enable-metrics` (`sglang:token_usage`, ...).

SGLang's kernels need CUDA: this engine runs on GPU machines only (its end-to-end test needs a GPU).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from harness.engines.base import BuildContext
from harness.engines.chat import chat_context_limit
from harness.engines.http import HttpEngine, ServerLimits
from harness.engines.launch import ServerProcess, launched_engine, vocab_size
from harness.engines.real import load_format, longest_call, model_directory


@dataclass(frozen=True)
class SglangArgs:
    """What the launcher sets, in SGLang's terms (python -m sglang.launch_server --help)."""

    model_path: str
    context_length: int
    schedule_policy: str = "lpm"  # longest prefix match first (SGLang's default with the radix cache)
    radix_cache: bool = True
    mem_fraction_static: float | None = None  # share of GPU memory for weights + KV (SGLang picks by default)
    chunked_prefill_size: int | None = None
    max_running_requests: int | None = None
    tp: int = 1
    load_format: str = "auto"
    seed: int = 0


def sglang_command(args: SglangArgs, port: int) -> list[str]:
    argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", args.model_path, "--host", "127.0.0.1",
            "--port", str(port), "--schedule-policy", args.schedule_policy, "--enable-metrics",
            "--context-length", str(args.context_length), "--random-seed", str(args.seed)]
    if not args.radix_cache:
        argv.append("--disable-radix-cache")
    for flag, value in (("--mem-fraction-static", args.mem_fraction_static),
                        ("--chunked-prefill-size", args.chunked_prefill_size),
                        ("--max-running-requests", args.max_running_requests)):
        if value is not None:
            argv += [flag, str(value)]
    if args.tp > 1:
        argv += ["--tp", str(args.tp)]
    if args.load_format != "auto":
        argv += ["--load-format", args.load_format]
    return argv


class SglangServer(ServerProcess):
    name = "SGLang"
    engine_name = "sglang"

    def __init__(self, args: SglangArgs, log_path: Path, start_timeout_s: float = 900.0) -> None:
        super().__init__(args.model_path, log_path, start_timeout_s)
        self.args = args

    def command(self, port: int) -> list[str]:
        return sglang_command(self.args, port)


def build(ctx: BuildContext) -> HttpEngine:
    """The engine registry's builder for `--engine sglang`: the run's engine settings in SGLang's terms."""
    config = ctx.config
    model = model_directory(config.model)
    e = config.engine_args
    max_model_len = longest_call(ctx.sessions) + 1
    context = chat_context_limit(max_model_len) if config.endpoint == "chat" else max_model_len
    args = SglangArgs(model_path=model, context_length=context, radix_cache=e.enable_prefix_caching,
                      mem_fraction_static=e.gpu_memory_utilization, chunked_prefill_size=e.max_num_batched_tokens,
                      max_running_requests=e.max_num_seqs, tp=config.tp, load_format=load_format(model),
                      seed=config.seed)
    limits = ServerLimits(max_model_len, e.num_gpu_blocks, e.block_size, config.seed)
    return launched_engine(SglangServer(args, ctx.run_dir / "server.log"), limits, vocab_size(model),
                           config.request_timeout, config, ctx.sessions)
