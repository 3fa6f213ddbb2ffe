"""`--engine sglang`: SGLang's server (`python -m sglang.launch_server`) launched for the run with the
flags its documentation gives (server arguments), and the agent sessions run against it with `--engine
http`'s client: the backend `sglang` on this engine is the real system (LPM schedule, radix cache), on
`--engine sim` its policy model. Metrics come from `--enable-metrics` (`sglang:token_usage`, ...).

SGLang's kernels need CUDA: this engine runs on GPU machines only (its end-to-end test needs a GPU).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.policy.admission import AdmissionController
from harness.engines.launch import LaunchedRun, ServerProcess, vocab_size
from harness.engines.vllm.engine import VllmSetup
from harness.runner import Sink
from workloads.model import Session


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

    def __init__(self, args: SglangArgs, log_path: Path, start_timeout_s: float = 900.0) -> None:
        super().__init__(args.model_path, log_path, start_timeout_s)
        self.args = args

    def command(self, port: int) -> list[str]:
        return sglang_command(self.args, port)


class SglangRun(LaunchedRun):
    """One run against an SGLang server this run launches and stops."""

    engine_name = "sglang"

    def __init__(self, sessions: Sequence[Session], admission: AdmissionController, setup: VllmSetup, args: SglangArgs,
                 run_dir: Path, sink: Sink | None = None, background: Sequence[Session] = ()) -> None:
        super().__init__(SglangServer(args, run_dir / "server.log"), sessions, admission, setup, sink, background,
                         vocab_size=vocab_size(args.model_path))
