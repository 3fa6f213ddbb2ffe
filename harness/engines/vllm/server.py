"""`--engine vllm --vllm-mode server`: the same run against vLLM's OpenAI-compatible server, launched
here with the scheduler plugin (`python -m vllm.entrypoints.openai.api_server --scheduler-cls ...`).

The server is started before the run, must answer /health within `start_timeout_s`, and is always
stopped (its whole process group: API server, engine core, workers) - at the end, on an error, on
Ctrl-C; its log is kept as `server.log` in the run directory. Calls are streaming `/v1/completions`
requests with the prompt as token ids, `ignore_eos`, `return_token_ids` (the session's next prompt
holds the model's real output ids) and the session metadata in `vllm_xargs` (a JSON string: vLLM's
`vllm_xargs` values are flat). The client side is `--engine http`'s (harness.engines.http): streaming
threads, /metrics signals; the plugin's per-call figures (preemptions, recomputed tokens) come from its
call log.

When the server dies mid-run the run ends as failed with what it measured so far.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from harness.policy.admission import AdmissionController
from harness.engines.http import parse_metrics
from harness.engines.launch import LaunchedRun, ServerProcess, vocab_size
from harness.engines.sim.request import SimRequest
from harness.engines.vllm.engine import VllmSetup, engine_args, prepare_environment, vllm_version
from harness.runner import Sink
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
    """vLLM's OpenAI server for EngineArgs `args` (with the plugin when they name it)."""

    name = "vLLM"

    def __init__(self, args: dict[str, Any], log_path: Path, start_timeout_s: float = 600.0) -> None:
        super().__init__(str(args["model"]), log_path, start_timeout_s)
        self.args = args

    def command(self, port: int) -> list[str]:
        return server_command(self.args, port)


class VllmServerRun(LaunchedRun):
    """One run against a vLLM server this run launches (with the plugin) and stops."""

    engine_name = "vllm-server"

    def __init__(self, sessions: Sequence[Session], config_json: dict[str, Any], admission: AdmissionController,
                 setup: VllmSetup, run_dir: Path, sink: Sink | None = None, background: Sequence[Session] = ()) -> None:
        prepare_environment(setup.cache_dir)  # the server inherits vLLM's environment for these machines
        self.call_log = run_dir / "server_calls.jsonl"
        self._figures: dict[str, dict[str, Any]] = {}
        self._call_log_pos = 0
        plugin = {"config": config_json, "step_log": setup.step_log, "call_log": str(self.call_log)}
        super().__init__(VllmServer(engine_args(setup, plugin), run_dir / "server.log"), sessions, admission, setup,
                         sink, background, vocab_size=vocab_size(setup.model))

    def _body(self, req: SimRequest, prompt: list[int], meta: dict[str, Any]) -> dict[str, Any]:
        return {**super()._body(req, prompt, meta), "vllm_xargs": {"mars": json.dumps(meta)}}

    def _call_figures(self, call_id: str) -> dict[str, Any]:
        """The plugin's figures for a finished call: it writes them before vLLM sends the last chunk."""
        if call_id not in self._figures and self.call_log.exists():
            with open(self.call_log) as f:
                f.seek(self._call_log_pos)
                for line in f:
                    if line.endswith("\n"):
                        record = json.loads(line)
                        self._figures[record.pop("call_id")] = record
                        self._call_log_pos += len(line.encode())
        return self._figures.pop(call_id, {})

    def engine_stats(self) -> dict[str, Any]:
        stats = super().engine_stats()
        return {"vllm_mode": "server", "vllm_version": vllm_version(), "vllm_cached_tokens": self.cached_tokens,
                "vllm_preemptions": stats["server_preemptions"], "vllm_prefix_cache_hits": stats["server_prefix_cache_hits"],
                "vllm_prefix_cache_queries": stats["server_prefix_cache_queries"],
                **{k: stats[k] for k in ("server_log", "calls_retried", "metrics")}, **self._tool_stats()}


__all__ = ["VllmServer", "VllmServerRun", "parse_metrics", "server_command"]
