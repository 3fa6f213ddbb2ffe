"""Building and running a gateway: the admission controller from the backend registry (the object
`--backend mars-admission` runs in the harness, built from the same settings), the start-up checks, and
uvicorn with a graceful shutdown."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import httpx
import uvicorn

from harness.backends import get_backend
from harness.config import make_config
from harness.errors import BadInput
from harness.serve.app import Gateway, GatewayConfig
from mars_impl.scheduler import SchedulerSettings
from workloads.overrides import parse_assignment


def build_gateway(upstreams: Sequence[str], policy: str = "mars-admission", sets: Sequence[str] = (),
                  tool_cores: int = 8, **options: Any) -> Gateway:
    """A gateway running `policy`'s admission controller (a backend name: mars-admission, vllm = none)."""
    for item in sets:
        if parse_assignment(item)[0][0] != "mars":
            raise BadInput(f"--set {item.split('=', 1)[0]}: the gateway takes admission settings only (mars.NAME)")
    config = make_config(tuple(sets), backend=policy, engine="http", tool_cores=tool_cores)
    admission = get_backend(policy, "http").make_admission(config)
    scheduler = SchedulerSettings(**{k: getattr(config.mars, k) for k in SchedulerSettings.model_fields})
    return Gateway(GatewayConfig(tuple(upstreams), tool_cores=tool_cores, **options), admission, scheduler)


def check_upstreams(urls: Sequence[str]) -> None:
    """Every upstream answers HTTP (any status: it may want a key the gateway does not hold); else BadInput."""
    for url in urls:
        try:
            httpx.get(url + "/v1/models", timeout=10.0)
        except httpx.HTTPError as exc:
            raise BadInput(f"--upstream {url}: no server answers there ({type(exc).__name__})") from None


class _Server(uvicorn.Server):
    """uvicorn's server; on shutdown the calls waiting for admission are answered 503 first, so that only the
    streams in flight are drained."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.gateway.close_backlog()
        await super().shutdown(sockets)


def run_gateway(gateway: Gateway, sock: socket.socket, drain_s: float, log_level: str = "info") -> None:
    """Serve on `sock` until SIGINT or SIGTERM, then drain (at most `drain_s`) and return."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("mars_bench.serve")
    log.addHandler(handler)
    log.setLevel(log_level.upper())
    config = uvicorn.Config(gateway.app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=drain_s, timeout_keep_alive=30)
    server = _Server(config, gateway)
    # uvicorn catches the signals itself and raises them again once it has stopped: ignored then, so that a
    # drained gateway exits 0 instead of running the CLI's Ctrl-C path
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, signal.SIG_IGN)
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        log.removeHandler(handler)
