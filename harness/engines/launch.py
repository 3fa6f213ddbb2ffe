"""A serving engine's HTTP server as a child process: started on a free local port, health-checked, its log
kept, and always stopped - its whole process group (API server, engine core, workers) - and the run against
it (`--engine http`'s client)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from collections.abc import Sequence
from typing import Any

import httpx

from harness.policy.admission import AdmissionController
from harness.engines.http import HttpRun, HttpTarget
from harness.engines.vllm.engine import VllmSetup
from harness.errors import EngineFailed
from harness.runner import Sink
from workloads.model import Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server started with `command(port)` that answers `health_path` once it is ready."""

    name = "server"
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




class LaunchedRun(HttpRun):
    """A run against a server it starts first and always stops (at the end, on an error, on Ctrl-C)."""

    def __init__(self, server: ServerProcess, sessions: Sequence[Session], admission: AdmissionController,
                 setup: VllmSetup, sink: Sink | None = None, background: Sequence[Session] = (),
                 **target: Any) -> None:
        self.server: ServerProcess | None = server
        try:
            server.start()
            super().__init__(sessions, admission, setup, HttpTarget(server.url, model=server.model, prompt_format="ids",
                                                                    call_timeout_s=None, retries=0, **target),
                             sink, background)
        except BaseException:  # whatever fails after the start must not leave the server running
            server.stop()
            raise

    def _failure(self, reason: str) -> str:
        server = self.server
        if server is None:
            return reason
        deadline = time.monotonic() + 3.0  # a dying server resets its connections before it is gone
        while server.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.alive:
            reason = f"the {server.name} server died mid-run ({server.last_error()})"
        return f"{reason} (log: {server.log_path})"

    def engine_stats(self) -> dict[str, Any]:
        return {**super().engine_stats(), "server_log": str(self.server.log_path) if self.server else None}

    def _close_engine(self) -> None:
        super()._close_engine()
        if self.server is not None:
            self.server.stop()


def vocab_size(model: str) -> int:
    """The served model's vocabulary (its config), for the synthetic prompt ids."""
    from transformers import AutoConfig  # noqa: PLC0415 - vLLM's and SGLang's dependency

    return int(AutoConfig.from_pretrained(model).vocab_size)
