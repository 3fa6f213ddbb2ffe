"""`--engine vllm --vllm-mode server`: the same run against vLLM's OpenAI-compatible server, launched
here with the scheduler plugin (`python -m vllm.entrypoints.openai.api_server --scheduler-cls ...`).

The server is started before the run, must answer /health within `start_timeout_s`, and is always
stopped (its whole process group: API server, engine core, workers) - at the end, on an error, on
Ctrl-C; its log is kept as `server.log` in the run directory. Calls are streaming `/v1/completions`
requests with the prompt as token ids, `ignore_eos`, `return_token_ids` but on a session's last call (the next prompt
holds the model's real output ids) and the session metadata in `vllm_xargs` (a JSON string: vLLM's
`vllm_xargs` values are flat), or with `--endpoint chat` chat requests with the same metadata. The client side
is `--engine http`'s (harness.engines.http.HttpEngine, which owns the server): asyncio streams, /metrics signals; the plugin's per-call figures (preemptions, recomputed tokens)
come from its call log.

When the server dies mid-run the run ends as failed with what it measured so far.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.calls import CallMeta
from harness.engines.http import DEFAULT_REQUEST_TIMEOUT_S, HttpEngine, ServerLimits, parse_metrics
from harness.engines.launch import ServerProcess, launched_engine, vocab_size
from harness.engines.vllm.engine import VllmSetup, engine_args, prepare_environment, vllm_version

if TYPE_CHECKING:
    from harness.config import RunConfig
    from workloads.model import Session


def server_command(args: dict[str, Any], port: int) -> list[str]:
    """The server's command line for vLLM EngineArgs `args` (booleans as --flag / --no-flag)."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
            "--enable-prompt-tokens-details", "--disable-uvicorn-access-log"]
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


class VllmServer(ServerProcess):
    """vLLM's OpenAI server for EngineArgs `args` (with the plugin when they name it). With `call_log`, the
    plugin writes each finished call's figures there, and the client reads them back."""

    name = "vLLM"
    engine_name = "vllm-server"

    def __init__(self, args: dict[str, Any], log_path: Path, start_timeout_s: float = 600.0,
                 call_log: Path | None = None) -> None:
        super().__init__(str(args["model"]), log_path, start_timeout_s)
        self.args = args
        self.call_log = call_log
        self._figures: dict[str, dict[str, Any]] = {}
        self._call_log_pos = 0

    def command(self, port: int) -> list[str]:
        return server_command(self.args, port)

    def body_fields(self, meta: CallMeta) -> dict[str, Any]:
        """The session metadata for the plugin: `vllm_xargs` values are flat, so it travels as JSON."""
        return {"vllm_xargs": {"mars": json.dumps(meta.to_dict())}}

    def call_figures(self, call_id: str) -> dict[str, Any]:
        """The plugin's figures for a finished call: it writes them before vLLM sends the last chunk."""
        if self.call_log is None:
            return {}
        if call_id not in self._figures and self.call_log.exists():
            with open(self.call_log) as f:
                f.seek(self._call_log_pos)
                for line in f:
                    if line.endswith("\n"):
                        record = json.loads(line)
                        self._figures[record.pop("call_id")] = record
                        self._call_log_pos += len(line.encode())
        return self._figures.pop(call_id, {})

    def stats(self, client: dict[str, Any]) -> dict[str, Any]:
        return {"vllm_mode": "server", "vllm_version": vllm_version(), "vllm_cached_tokens": client["cached_tokens"],
                "vllm_preemptions": client["server_preemptions"],
                "vllm_prefix_cache_hits": client["server_prefix_cache_hits"],
                "vllm_prefix_cache_queries": client["server_prefix_cache_queries"],
                "server_log": str(self.log_path), **{k: client[k] for k in ("calls_retried", "metrics")}}


def launch(setup: VllmSetup, config_json: dict[str, Any], run_dir: Path,
           request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S, config: RunConfig | None = None,
           sessions: Sequence[Session] = ()) -> HttpEngine:
    """`--vllm-mode server`: vLLM's server with the plugin, launched for the run, as its engine."""
    prepare_environment(setup.cache_dir)  # the server inherits vLLM's environment for these machines
    call_log = run_dir / "server_calls.jsonl"
    plugin = {"config": config_json, "step_log": setup.step_log, "call_log": str(call_log)}
    server = VllmServer(engine_args(setup, plugin), run_dir / "server.log", call_log=call_log)
    limits = ServerLimits(setup.max_model_len, setup.num_gpu_blocks, setup.block_size, setup.seed)
    return launched_engine(server, limits, vocab_size(setup.model), request_timeout_s, config, sessions)


__all__ = ["VllmServer", "launch", "parse_metrics", "server_command"]
