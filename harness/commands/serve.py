"""`mars-bench serve`: the MARS gateway (harness.serve). Starlette, uvicorn, aiohttp and prometheus-client (the
`serve` extra) are imported only when it runs, so the CLI starts without them."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import click

from harness.errors import BadInput

POLICIES = {"mars": "mars-admission", "fcfs": "vllm"}  # --policy -> the backend whose admission it runs


@click.command()
@click.option("--upstream", "upstreams", multiple=True, required=True, metavar="URL",
              help="An OpenAI-compatible server (vLLM, SGLang); repeat it for replicas of one model.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.option("--policy", type=click.Choice(list(POLICIES)), default="mars", show_default=True,
              help="mars: MARS admission (the harness's mars-admission); fcfs: every session passes at once.")
@click.option("--session-header", default="X-Session-ID", show_default=True,
              help="Request header naming a call's session (else the `user` field, else a hash of its start).")
@click.option("--untagged", type=click.Choice(["hash", "pass"]), default="hash", show_default=True,
              help="A call with neither the session header nor `user`: hash = its session is a hash of the "
                   "conversation's start; pass = it belongs to no session and passes at once (probes).")
@click.option("--session-idle", "session_idle_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="A session ends this many seconds after its last call (or on a "
                                      "session_end event).")
@click.option("--tool-cores", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="this host's cores",
              help="CPU cores the agents' tools share (MARS's CPU signal).")
@click.option("--priority/--no-priority", "send_priority", default=False, show_default=True,
              help="Send MARS's per-call priority as the request's `priority` (needs vLLM "
                   "--scheduling-policy priority).")
@click.option("--request-timeout", "request_timeout_s", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds an upstream call may take (504 after).")
@click.option("--admission-timeout", "admission_timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=600.0, show_default=True, help="Seconds a first call may wait for admission (503 after).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=32.0, show_default=True,
              help="Largest request body (413 above).")
@click.option("--drain", "drain_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM / Ctrl-C: seconds streams in flight may take to finish.")
@click.option("--kv-blocks", type=click.IntRange(min=1), help="KV blocks of all upstreams, where /metrics does "
                                                             "not say (SGLang).")
@click.option("--block-size", type=click.IntRange(min=1), help="Tokens per KV block, where /metrics does not say.")
@click.option("--events-log", type=click.Path(dir_okay=False), help="Append the control plane's events here "
                                                                    "(JSON lines).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="An admission setting, e.g. "
                                                                       "--set mars.pool_size=16 (repeatable).")
def serve(upstreams: tuple[str, ...], host: str, port: int, policy: str, session_header: str, untagged: str,
          session_idle_s: float,
          tool_cores: int, send_priority: bool, request_timeout_s: float, admission_timeout_s: float,
          max_body_mb: float, drain_s: float, kv_blocks: int | None, block_size: int | None, events_log: str | None,
          log_level: str, sets: tuple[str, ...]) -> None:
    """Run MARS as an OpenAI-compatible gateway in front of vLLM or SGLang servers.

    Agent frameworks point their OpenAI base URL at it (http://HOST:PORT/v1) and send each task's id in the
    session header. A session's first call waits until MARS admits the session; its later calls pass.

    \b
    Example:
      mars-bench serve --upstream http://127.0.0.1:8000 --port 8080 --policy mars
    """
    from harness.commands.extras import require_extra  # noqa: PLC0415

    require_extra("serve", ("starlette", "uvicorn", "aiohttp", "prometheus_client"), "mars-bench serve")
    from harness.serve.run import build_gateway, check_upstreams, run_gateway  # noqa: PLC0415

    urls = tuple(check_url(u) for u in upstreams)
    if events_log:
        try:
            open(events_log, "a").close()  # noqa: SIM115 - only whether it can be written
        except OSError as exc:
            raise BadInput(f"--events-log {events_log}: cannot write there ({exc.strerror or exc})") from None
    sock = bind(host, port)
    try:
        check_upstreams(urls)
        gateway = build_gateway(urls, policy=POLICIES[policy], sets=sets, session_header=session_header,
                                untagged=untagged,
                                session_idle_s=session_idle_s, tool_cores=tool_cores, send_priority=send_priority,
                                request_timeout_s=request_timeout_s, admission_timeout_s=admission_timeout_s,
                                max_body_bytes=int(max_body_mb * 2**20), kv_blocks=kv_blocks, block_size=block_size,
                                events_log=events_log)
        run_gateway(gateway, sock, drain_s, log_level)
    finally:
        sock.close()


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"--upstream {url}: not an http(s)://HOST[:PORT] URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise BadInput(f"--upstream {url}: bad port") from None
    return url.rstrip("/")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one clear line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BadInput(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock
