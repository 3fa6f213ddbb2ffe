"""`--engine vllm --vllm-mode server`: the same run against vLLM's OpenAI-compatible server, launched
here with the scheduler plugin (`python -m vllm.entrypoints.openai.api_server --scheduler-cls ...`).

The server is started before the run, must answer /health within `start_timeout_s`, and is always
stopped (its whole process group: API server, engine core, workers) - at the end, on an error, on
Ctrl-C; its log is kept as `server.log` in the run directory. Calls are streaming `/v1/completions`
requests with the prompt as token ids, `ignore_eos`, `return_token_ids` (the session's next prompt
holds the model's real output ids) and the session metadata in `vllm_xargs` (a JSON string: vLLM's
`vllm_xargs` values are flat). Each call streams on its own thread; the threads hand what they see to
the simpy environment through a queue that is drained every `POLL_S`. KV signals come from the
server's /metrics; the plugin's per-call figures (preemptions, recomputed tokens) from its call log.

When the server dies mid-run the run ends as failed with what it measured so far.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from harness.admission import AdmissionController
from harness.engines.sim.request import SimRequest
from harness.engines.vllm import RealEngineRun, SessionTokens, VllmSetup, engine_args, vllm_version
from harness.errors import EngineFailed
from harness.runner import Sink
from mars_impl.signals import EngineSignals
from workloads.model import Session

POLL_S = 0.002
METRICS = {"vllm:kv_cache_usage_perc": "kv_usage", "vllm:num_requests_running": "running",
           "vllm:num_requests_waiting": "waiting", "vllm:num_preemptions_total": "preemptions",
           "vllm:prefix_cache_hits_total": "prefix_cache_hits", "vllm:prefix_cache_queries_total": "prefix_cache_queries"}


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """The gauges and counters mars-bench reads from a Prometheus /metrics page (summed over labels)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = METRICS.get(name)
        if key is not None:
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


class VllmServer:
    """A vLLM OpenAI server with the plugin: started and health-checked, always stopped."""

    def __init__(self, args: dict[str, Any], log_path: Path, start_timeout_s: float = 600.0) -> None:
        self.args = args
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(args["model"])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(server_command(self.args, self.port), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    self.proc = None
                    raise EngineFailed(f"the vLLM server exited with code {code} while starting: {self.last_error()} "
                                       f"(log: {self.log_path})")
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        self.stop()
        raise EngineFailed(f"the vLLM server did not answer /health within {self.start_timeout_s:.0f} s "
                           f"(log: {self.log_path})")

    def last_error(self) -> str:
        """The last error line of the server's log, for one-line messages."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        return (errors or lines or ["no output"])[-1].strip()[-300:]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after `grace_s`."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # workers left in the group after the leader exited
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class VllmServerRun(RealEngineRun):
    """One run against a vLLM server this run launches and stops."""

    def __init__(self, sessions: Sequence[Session], config_json: dict[str, Any], admission: AdmissionController,
                 setup: VllmSetup, run_dir: Path, sink: Sink | None = None, background: Sequence[Session] = ()) -> None:
        self.server: VllmServer | None = None
        self._pool: ThreadPoolExecutor | None = None
        super().__init__(sessions, admission, setup, sink, background)
        self.call_log = run_dir / "server_calls.jsonl"
        plugin = {"config": config_json, "step_log": setup.step_log, "call_log": str(self.call_log)}
        self.server = VllmServer(engine_args(setup, plugin), run_dir / "server.log")
        try:
            self.server.start()
        except BaseException:
            self.close()
            raise
        self.tokens = SessionTokens(_vocab_size(setup.model), setup.seed)
        self.http = httpx.Client(base_url=self.server.url, timeout=httpx.Timeout(None, connect=10.0))
        self._pool = ThreadPoolExecutor(max_workers=max(8, setup.max_num_seqs))
        self._inbox: queue.SimpleQueue[tuple[str, str, Any, float, float]] = queue.SimpleQueue()
        self._figures: dict[str, dict[str, Any]] = {}
        self._call_log_pos = 0
        self._metrics: dict[str, float] = {}
        self.env.process(self._drain())

    # ------------------------------------------------------------------------------ calls
    def _send(self, req: SimRequest, prompt: list[int], meta: dict[str, Any]) -> None:
        body = {"model": self.server.model if self.server else "", "prompt": prompt, "max_tokens": req.max_tokens,
                "ignore_eos": True, "temperature": 0.0, "stream": True, "return_token_ids": True,
                "stream_options": {"include_usage": True}, "vllm_xargs": {"mars": json.dumps(meta)}}
        assert self._pool is not None
        self._pool.submit(self._stream, req.request_id, body)

    def _stream(self, call_id: str, body: dict[str, Any]) -> None:
        """On a worker thread: stream one completion, posting (call, kind, payload, t0, t1) to the inbox."""
        try:
            last = self._now()
            with self.http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise EngineFailed(f"the vLLM server answered {response.status_code}: {response.text[:300]}")
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    now = self._now()
                    if chunk.get("error"):
                        raise EngineFailed(f"the vLLM server failed a call: {chunk['error'].get('message', chunk)}")
                    for choice in chunk.get("choices") or []:
                        ids = choice.get("token_ids") or []
                        if ids:
                            self._inbox.put((call_id, "tokens", ids, last, now))
                            last = now
                    usage = chunk.get("usage")
                    if usage:
                        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                        self._inbox.put((call_id, "done", int(cached), last, now))
        except Exception as exc:  # noqa: BLE001 - every failure of a call ends the run, with its reason
            reason = str(exc) if isinstance(exc, EngineFailed) else f"{type(exc).__name__}: {exc}"
            self._inbox.put((call_id, "error", reason, 0.0, self._now()))

    def _drain(self) -> Any:
        """Deliver what the streaming threads saw, in order, on the environment's clock."""
        env = self.env
        while True:
            if not self.calls:  # nothing in flight: sleep until the next call (the run ends when none comes)
                self._wake = env.event()
                yield self._wake
            yield env.timeout(POLL_S)
            self._sample(env.now)
            while True:
                try:
                    call_id, kind, payload, start, end = self._inbox.get_nowait()
                except queue.Empty:
                    break
                call = self.calls.get(call_id)
                if call is None:
                    continue
                if kind == "tokens":
                    self._tokens_arrived(call, payload, start, end)
                elif kind == "done":
                    self._finish(call, payload, self._call_figures(call_id), end)
                else:
                    dead = self.server is not None and not self.server.alive
                    reason = f"the vLLM server died mid-run ({self.server.last_error() if self.server else ''})" \
                        if dead else payload
                    log = f" (log: {self.server.log_path})" if self.server else ""
                    raise EngineFailed(f"{reason}{log}; the calls measured so far are kept")

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

    # ------------------------------------------------------------------------------ signals, stats
    def _scrape(self) -> dict[str, float]:
        response = self.http.get("/metrics", timeout=1.0)
        response.raise_for_status()
        self._metrics = parse_metrics(response.text)
        return self._metrics

    def engine_signals(self) -> EngineSignals | None:  # type: ignore[override]
        try:
            m = self._scrape()
        except httpx.HTTPError:
            return None  # a missing reading: the signal stream keeps the last one for a while
        total = int(self.setup.num_gpu_blocks or 0)
        usage = float(m.get("kv_usage", 0.0))
        return EngineSignals(kv_usage=usage, free_blocks=int(round(total * (1 - usage))), total_blocks=total,
                             block_size=int(self.setup.block_size or 16), running=int(m.get("running", 0)),
                             waiting=int(m.get("waiting", 0)))

    def engine_timeline(self) -> dict[str, Any]:
        m = self._metrics
        return {"kv_usage": m.get("kv_usage"), "running": m.get("running"), "waiting": m.get("waiting"),
                "preemptions": m.get("preemptions")}

    def engine_stats(self) -> dict[str, Any]:
        try:
            m = self._scrape()
        except httpx.HTTPError:
            m = self._metrics
        return {"vllm_mode": "server", "vllm_version": vllm_version(), "vllm_cached_tokens": self.cached_tokens,
                "vllm_preemptions": m.get("preemptions"), "vllm_prefix_cache_hits": m.get("prefix_cache_hits"),
                "vllm_prefix_cache_queries": m.get("prefix_cache_queries"),
                "server_log": str(self.server.log_path) if self.server else None, **self._tool_stats()}

    def _close_engine(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "http", None) is not None:
            self.http.close()
        if self.server is not None:
            self.server.stop()


def _vocab_size(model: str) -> int:
    from transformers import AutoConfig  # noqa: PLC0415 - vLLM's dependency

    return int(AutoConfig.from_pretrained(model).vocab_size)


__all__ = ["VllmServer", "VllmServerRun", "parse_metrics", "server_command"]
