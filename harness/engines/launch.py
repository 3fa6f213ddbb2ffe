"""A serving engine's HTTP server as a child process: started on a free local port, health-checked, its log
kept, and always stopped - its whole process group (API server, engine core, workers). The run against it
is `--engine http`'s HttpEngine, which owns the server (`launched_engine`); a server kind adds what its
client should send and read (vLLM's plugin metadata and call log, harness.engines.vllm.server)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from harness.calls import CallMeta
from harness.engines.http import DEFAULT_REQUEST_TIMEOUT_S, HttpEngine, HttpTarget, ServerLimits, client_settings
from harness.errors import EngineFailed

if TYPE_CHECKING:
    from harness.config import RunConfig
    from workloads.model import Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server started with `command(port)` that answers `health_path` once it is ready."""

    name = "server"
    engine_name = "server"  # the run's `engine` figure
    health_path = "/health"

    def __init__(self, model: str, log_path: Path, start_timeout_s: float = 600.0) -> None:
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(self.command(self.port), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    self.proc = None
                    raise EngineFailed(f"the {self.name} server exited with code {code} while starting: "
                                       f"{self.last_error()} (log: {self.log_path})")
                try:
                    if client.get(self.url + self.health_path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        self.stop()
        raise EngineFailed(f"the {self.name} server did not answer {self.health_path} within "
                           f"{self.start_timeout_s:.0f} s (log: {self.log_path})")

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

    # --------------------------------------------------------------------- what its client asks of it
    def body_fields(self, meta: CallMeta) -> dict[str, Any]:
        """Fields this server's completion requests carry beside the standard ones."""
        return {}

    def call_figures(self, call_id: str) -> dict[str, Any]:
        """This server's own figures of a finished call (preemptions, recomputed tokens), when it gives any."""
        return {}

    def failure(self, reason: str) -> str:
        """Why the run stops, from a failed call's `reason`: a server that died says why in its log."""
        deadline = time.monotonic() + 3.0  # a dying server resets its connections before it is gone
        while self.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.alive:
            reason = f"the {self.name} server died mid-run ({self.last_error()})"
        return f"{reason} (log: {self.log_path})"

    def stats(self, client: dict[str, Any]) -> dict[str, Any]:
        """The run's engine figures from the client's (`client`) and this server's."""
        return {**client, "server_log": str(self.log_path)}




def launched_engine(server: ServerProcess, limits: ServerLimits, vocab_size: int,
                    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S, config: RunConfig | None = None,
                    sessions: Sequence[Session] = ()) -> HttpEngine:
    """The HTTP engine of a run against `server`, which it starts first and always stops: token-id prompts
    (chat messages decoded with the model's own tokenizer) and no retries (the server is ours: a failure is
    the server's, and its log says why); a call not ended within `request_timeout_s` fails, as on an attached
    server; the run's `config` gives the endpoint and headers."""
    endpoint, headers, tools = client_settings(config, sessions)
    target = HttpTarget(server.url, model=server.model, prompt_format="ids", request_timeout_s=request_timeout_s,
                        retries=0, vocab_size=vocab_size, endpoint=endpoint, headers=headers,
                        tokenizer=server.model if endpoint == "chat" else None)
    return HttpEngine(target, limits, server, tools)


def vocab_size(model: str) -> int:
    """The served model's vocabulary (its config), for the synthetic prompt ids."""
    from transformers import AutoConfig  # noqa: PLC0415 - vLLM's and SGLang's dependency

    return int(AutoConfig.from_pretrained(model).vocab_size)
