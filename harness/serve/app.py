"""The gateway's web layer: a Starlette app (served by uvicorn) relaying OpenAI calls to the upstreams on an
aiohttp client, around the sans-IO control plane (harness.serve.control), which decides who waits, where
calls go and what MARS sets in them. Why aiohttp and not httpx (the harness's client) upstream: a relayed
call cost the gateway 1.0 ms of CPU on httpx and 0.46 ms on aiohttp (fewer writes, no anyio layer), and the
gateway's budget is under 1 ms a call (benchmarks/gateway.py).

Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (relayed; a stream chunk by chunk as the
upstream sends it), `GET /v1/models` (the first upstream's), `POST /v1/mars/events` (an agent's tool and
session events), `GET /v1/mars/state`, `GET /metrics` (the gateway's, Prometheus), `GET /health`.

A request body is forwarded byte for byte, except that with `send_priority` MARS sets its `priority` field
(the body is then re-serialised). Every request header is forwarded (Authorization included) except the
hop-by-hop ones, `Host`, `Content-Length` and `Accept-Encoding` (streams are relayed uncompressed). Errors are
OpenAI-style JSON: 400 bad body, 404 unknown session (events), 413 body too large, 502 upstream unreachable or
broken, 503 not admitted in time or shutting down, 504 upstream timeout; an upstream's own error answer is
passed on as it is. An upstream failing mid-stream ends the stream with an SSE `error` event (the OpenAI
client raises it). A client that disconnects cancels its upstream call (the connection is closed, so vLLM
aborts the request) or, while it waits for admission, takes its session out of the backlog. Logs are JSON
lines with session ids, statuses and timings, never prompts nor header values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from harness.engines.http import combine_metrics, engine_signals, parse_metrics
from harness.policy.admission import AdmissionController
from harness.serve.control import ControlPlane, GatewaySession, UnknownSession
from harness.serve.identity import (DEFAULT_SESSION_HEADER, estimate_prompt_tokens, requested_output_tokens,
                                    session_identity)
from harness.serve.metrics import GatewayMetrics
from mars_impl.scheduler import SchedulerSettings

T = TypeVar("T")
log = logging.getLogger("mars_bench.serve")
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# not forwarded: hop-by-hop (RFC 9110 7.6.1), what the client sets itself, and compression (streams pass as sent)
DROP_REQUEST = frozenset({"host", "content-length", "connection", "keep-alive", "proxy-connection", "te", "trailer",
                          "transfer-encoding", "upgrade", "proxy-authorization", "accept-encoding"})
DROP_RESPONSE = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "date", "server",
                           "content-encoding"})
CONNECT_TIMEOUT_S = 10.0
METRICS_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


@dataclass(frozen=True)
class GatewayConfig:
    upstreams: tuple[str, ...]
    session_header: str = DEFAULT_SESSION_HEADER
    session_idle_s: float = 60.0
    tool_cores: int = 8
    send_priority: bool = False  # set MARS's per-call `priority` (vLLM --scheduling-policy priority)
    request_timeout_s: float = 600.0  # a call (a stream: between chunks, and in all) ends with 504 by then
    admission_timeout_s: float = 600.0  # a first call not admitted by then gets 503
    max_body_bytes: int = 32 * 2**20
    metrics_interval_s: float = 0.2  # how often the upstreams' /metrics are read
    kv_blocks: int | None = None  # KV geometry for upstreams that do not publish it (SGLang)
    block_size: int | None = None
    events_log: str | None = None  # the control plane's events, one JSON line each
    # a call with neither the session header nor `user`: "hash" = its session is a hash of its start
    # (harness.serve.identity); "pass" = it belongs to no session and passes at once (probes, one-off calls)
    untagged: Literal["hash", "pass"] = "hash"


class Event(BaseModel):
    """A message on POST /v1/mars/events."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["tool_started", "tool_finished", "session_end"]
    session_id: str | None = Field(default=None, min_length=1, description="default: the session header")
    tool_id: str = Field(default="tool", min_length=1, description="pairs a tool_started with its tool_finished")
    cores: int = Field(default=1, ge=1, le=4096)
    wait_s: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="time it waited for a core")


class ClientGone(Exception):
    """The client disconnected while we waited for something on its behalf."""


def error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    """An OpenAI-style error answer."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


def sse_error(message: str, code: str) -> bytes:
    """The SSE event that ends a stream the upstream broke (the OpenAI client raises APIError on it)."""
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Gateway:
    """One gateway: its control plane, its upstream clients, its metrics and its Starlette app."""

    def __init__(self, config: GatewayConfig, admission: AdmissionController,
                 scheduler: SchedulerSettings | None = None) -> None:
        self.config = config
        self.urls = tuple(u.rstrip("/") for u in config.upstreams)
        self.control = ControlPlane(admission, len(self.urls), config.tool_cores, config.session_idle_s, scheduler,
                                    sink=self._event)
        self.metrics = GatewayMetrics(self.control.state)
        self.t0 = time.monotonic()
        self.closing = False
        self.waiters: dict[str, asyncio.Event] = {}
        self.upstream_up = [True] * len(self.urls)
        self.upstream_metrics = [True] * len(self.urls)  # False once an upstream answered /metrics with 404
        self.tick_s = admission.interval_s or 0.5
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                             sock_read=config.request_timeout_s)
        self.http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._events_file: Any = None
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/mars/events", self.events, methods=["POST"]),
            Route("/v1/mars/state", self.state, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ], lifespan=self._lifespan)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------------------------ life
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # no cap on connections (the upstream queues calls), no decompression (bodies pass as they come), no
        # headers of its own (the caller's are forwarded)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=self.timeout,
                                          auto_decompress=False,
                                          skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))
        if self.config.events_log:
            self._events_file = open(self.config.events_log, "a", buffering=1)  # noqa: SIM115 - closed below
        self._tasks = [asyncio.create_task(self._poll_metrics()), asyncio.create_task(self._ticks())]
        _log("gateway_started", upstreams=list(self.urls), policy=self.control.admission.name)
        try:
            yield
        finally:
            self.close_backlog()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.http.close()
            if self._events_file is not None:
                self._events_file.close()
            _log("gateway_stopped")

    def close_backlog(self) -> None:
        """Shutting down: calls waiting for admission get 503 at once; streams in flight drain."""
        self.closing = True
        for waiter in self.waiters.values():
            waiter.set()

    async def _ticks(self) -> None:
        """Every tick: sessions idle past session_idle_s end, and admission runs (as the harness's interval)."""
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.now()
            self.control.expire(now)
            self.control.admit(now)

    async def _poll_metrics(self) -> None:
        """The upstreams' /metrics, combined, into the control plane's information stream."""
        assert self.http is not None
        while True:
            pages = await asyncio.gather(*(self._scrape(i) for i in range(len(self.urls))))
            read = [p for p in pages if p is not None]
            reading = engine_signals(combine_metrics(read), self.config.kv_blocks, self.config.block_size) \
                if len(read) == len(self.urls) else None
            self.control.observe_engine(reading, self.now())
            await asyncio.sleep(self.config.metrics_interval_s)

    async def _scrape(self, i: int) -> dict[str, float] | None:
        assert self.http is not None
        if not self.upstream_metrics[i]:
            return None
        try:
            async with self.http.get(self.urls[i] + "/metrics", timeout=METRICS_TIMEOUT) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            self.upstream_up[i] = False
            return None
        self.upstream_up[i] = True
        if status == 404:
            self.upstream_metrics[i] = False
            _log("upstream_without_metrics", upstream=i)
        return parse_metrics(text) if status == 200 else None

    def _event(self, kind: str, t: float, **fields: Any) -> None:
        """The control plane's events: wake admitted calls, count, log, and write the events log."""
        if kind == "session_admitted":
            waiter = self.waiters.pop(fields["session_id"], None)
            if waiter is not None:
                waiter.set()
            self.metrics.sessions_admitted.inc()
            self.metrics.admission_wait.observe(fields["waited_s"])
        elif kind == "session_ended":
            self.metrics.sessions_ended.labels(fields["reason"]).inc()
        elif kind == "tool_gap":
            self.metrics.tool_gap.observe(fields["gap_s"])
        if self._events_file is not None:
            self._events_file.write(json.dumps({"kind": kind, "t": round(t, 6), **fields}, default=str) + "\n")
        if kind != "tool_gap":
            _log(kind, t=round(t, 6), **fields)

    # ------------------------------------------------------------------------------ calls
    async def chat(self, request: Request) -> Response:
        return await self._relay(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._relay(request, "completions")

    async def _relay(self, request: Request, endpoint: str) -> Response:
        started = time.perf_counter()
        response = await self._call(request, endpoint)
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if not isinstance(response, _Relayed):
            self.metrics.call_seconds.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def _call(self, request: Request, endpoint: str) -> Response:
        raw = await self._read_body(request)
        if isinstance(raw, Response):
            return raw
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, "the request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return error(400, "the request body is not a JSON object", "invalid_request_error")
        session_id, source = session_identity(request.headers, body, self.config.session_header)
        if source == "hash" and self.config.untagged == "pass":
            return await self._forward(request, endpoint, None, self.control.untracked_replica(), raw,
                                       bool(body.get("stream")))
        prompt = estimate_prompt_tokens(body)
        gs = self.control.call_arrives(session_id, source, prompt, requested_output_tokens(body), self.now())
        if gs.admitted_s is None:
            refused = await self._wait_for_admission(request, gs)
            if refused is not None:
                return refused
        replica = self.control.call_started(gs, self.now())
        if self.config.send_priority:
            body["priority"] = self.control.priority(gs, prompt)
            raw = json.dumps(body).encode()
        return await self._forward(request, endpoint, gs, replica, raw, bool(body.get("stream")))

    async def _read_body(self, request: Request) -> bytes | Response:
        limit = self.config.max_body_bytes
        too_big = error(413, f"the request body exceeds {limit} bytes", "invalid_request_error")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _wait_for_admission(self, request: Request, gs: GatewaySession) -> Response | None:
        """Wait until the session is admitted; an error answer when it is not in time or the gateway closes.
        A client that leaves takes its session out of the backlog."""
        waiter = self.waiters.get(gs.id)
        if waiter is None:
            waiter = self.waiters[gs.id] = asyncio.Event()
        try:
            await _race(request, asyncio.wait_for(waiter.wait(), self.config.admission_timeout_s))
        except TimeoutError:
            self._give_up(gs, "admission_timeout")
            return error(503, f"session {gs.id} was not admitted within {self.config.admission_timeout_s:g} s",
                         "server_overloaded", "admission_timeout")
        except ClientGone:
            self._give_up(gs, "client_gone")
            return Response(status_code=499)
        if gs.admitted_s is None and self.closing:
            self._give_up(gs, "shutdown")
            return error(503, "the gateway is shutting down", "server_overloaded", "shutting_down")
        if gs.admitted_s is None:  # a session_end event ended it while it waited
            return error(503, f"session {gs.id} ended before it was admitted", "server_overloaded", "session_ended")
        return None

    def _give_up(self, gs: GatewaySession, reason: str) -> None:
        self.waiters.pop(gs.id, None)
        self.control.abandon(gs, self.now(), reason)

    async def _forward(self, request: Request, endpoint: str, gs: GatewaySession | None, replica: int, raw: bytes,
                       stream: bool) -> Response:
        """Send the call to upstream `replica` and answer with what comes back (a stream relayed as it comes);
        `gs`: the session it belongs to (None: none, `--untagged pass`)."""
        assert self.http is not None
        http = self.http
        url = self.urls[replica] + PATHS[endpoint]
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP_REQUEST]
        sent = time.perf_counter()
        session_id = gs.id if gs is not None else None

        def finished() -> None:
            if gs is not None:
                self.control.call_ended(gs, self.now())

        done = _Once(finished)

        async def exchange() -> tuple[aiohttp.ClientResponse, bytes | None]:
            """The upstream's answer: its headers and (unless it is a stream to relay) its body."""
            upstream = await http.post(url, data=raw, headers=headers)
            self.metrics.upstream_latency.labels(str(replica)).observe(time.perf_counter() - sent)
            if stream and upstream.status == 200 and upstream.content_type == "text/event-stream":
                return upstream, None
            try:
                body = await upstream.read()
            except BaseException:
                upstream.close()  # not read to its end: the connection cannot be reused
                raise
            upstream.release()
            return upstream, body

        try:
            upstream, content = await _race(request, exchange())
        except BaseException as exc:
            done()
            return self._failure(exc, session_id, replica)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in DROP_RESPONSE}
        if content is not None:
            done()
            _log("call", session_id=session_id, endpoint=endpoint, upstream=replica, status=upstream.status,
                 stream=False, seconds=round(time.perf_counter() - sent, 6))
            return Response(content, upstream.status, out_headers)
        return _Relayed(self._chunks(upstream, session_id, replica, endpoint, sent), out_headers,
                        lambda: self._stream_closed(upstream, done))

    async def _chunks(self, upstream: aiohttp.ClientResponse, session_id: str | None, replica: int, endpoint: str,
                      sent: float) -> AsyncIterator[bytes]:
        """The upstream's stream as it comes; its failure or overrun ends it with an SSE error event."""
        deadline = sent + self.config.request_timeout_s
        self.metrics.streams.inc()
        status = "ok"
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
                if time.perf_counter() > deadline:
                    status = "timeout"
                    self.metrics.upstream_errors.labels("timeout").inc()
                    yield sse_error(f"the call ran past {self.config.request_timeout_s:g} s", "upstream_timeout")
                    break
        except TimeoutError:
            status = "timeout"
            self.metrics.upstream_errors.labels("timeout").inc()
            yield sse_error("the upstream stopped sending", "upstream_timeout")
        except aiohttp.ClientError as exc:
            status = "broken"
            self.metrics.upstream_errors.labels("broken_stream").inc()
            yield sse_error(f"the upstream failed mid-stream ({type(exc).__name__})", "upstream_error")
        except asyncio.CancelledError:
            status = "client_gone"
            raise
        finally:
            self.metrics.streams.dec()
            _log("call", session_id=session_id, endpoint=endpoint, upstream=replica, status=200, stream=True,
                 outcome=status, seconds=round(time.perf_counter() - sent, 6))

    async def _stream_closed(self, upstream: aiohttp.ClientResponse, done: _Once) -> None:
        """The relay ended: a stream read to its end gives its connection back, any other is closed (so the
        upstream sees the client go and aborts the request)."""
        if upstream.content.at_eof():
            upstream.release()
        else:
            upstream.close()
        done()

    def _failure(self, exc: BaseException, session_id: str | None, replica: int) -> Response:
        if isinstance(exc, ClientGone):
            _log("client_gone", session_id=session_id, upstream=replica)
            return Response(status_code=499)
        if isinstance(exc, TimeoutError):
            self.metrics.upstream_errors.labels("timeout").inc()
            return error(504, f"upstream {replica} did not answer within {self.config.request_timeout_s:g} s",
                         "upstream_timeout", "upstream_timeout")
        if isinstance(exc, aiohttp.ClientError):
            self.metrics.upstream_errors.labels("unreachable").inc()
            _log("upstream_error", session_id=session_id, upstream=replica, error=type(exc).__name__)
            return error(502, f"upstream {replica} failed ({type(exc).__name__})", "upstream_error", "upstream_error")
        raise exc

    # ------------------------------------------------------------------------------ the rest
    async def models(self, request: Request) -> Response:
        assert self.http is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP_REQUEST]
        try:
            async with self.http.get(self.urls[0] + "/v1/models", headers=headers) as upstream:
                content, status = await upstream.read(), upstream.status
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in DROP_RESPONSE}
        except BaseException as exc:  # noqa: BLE001 - _failure re-raises what is not an HTTP failure
            return self._failure(exc, None, 0)
        return Response(content, status, out_headers)

    async def events(self, request: Request) -> Response:
        raw = await self._read_body(request)
        if isinstance(raw, Response):
            return raw
        try:
            event = Event.model_validate_json(raw)
        except ValidationError as exc:
            return error(400, f"bad event: {exc.errors()[0]['msg']} ({'.'.join(map(str, exc.errors()[0]['loc']))})",
                         "invalid_request_error")
        session_id = event.session_id or request.headers.get(self.config.session_header)
        if not session_id:
            return error(400, f"the event names no session (session_id or {self.config.session_header})",
                         "invalid_request_error")
        now = self.now()
        try:
            if event.event == "tool_started":
                self.control.tool_started(session_id, event.tool_id, event.cores, event.wait_s, now)
            elif event.event == "tool_finished":
                self.control.tool_finished(session_id, event.tool_id, now)
            else:
                self.control.end_session(session_id, now)
                waiter = self.waiters.pop(session_id, None)
                if waiter is not None:  # its first call was still waiting: it is answered now
                    waiter.set()
                self.control.admit(now)
        except UnknownSession:
            return error(404, f"no session {session_id} at the gateway (never seen, or ended)",
                         "invalid_request_error", "unknown_session")
        return JSONResponse({"ok": True})

    async def state(self, request: Request) -> Response:
        return JSONResponse(self.control.state())

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.page(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def health(self, request: Request) -> Response:
        up = any(self.upstream_up)
        body = {"status": "ok" if up and not self.closing else "unavailable",
                "upstreams": [{"index": i, "up": u, "metrics": m}
                              for i, (u, m) in enumerate(zip(self.upstream_up, self.upstream_metrics, strict=True))]}
        return JSONResponse(body, 200 if up and not self.closing else 503)


class _Relayed(StreamingResponse):
    """A relayed stream whose upstream is closed (and its call counted ended) however the relay ends: at the
    end of the stream, on a client disconnect (Starlette cancels the relay), or on an error."""

    def __init__(self, content: AsyncIterator[bytes], headers: dict[str, str], on_close: Any) -> None:
        super().__init__(content, 200, headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            await self.on_close()


class _Once:
    """A callback that runs once, however many paths reach it."""

    def __init__(self, func: Any) -> None:
        self.func: Any = func

    def __call__(self) -> None:
        func, self.func = self.func, None
        if func is not None:
            func()


async def _race(request: Request, work: Awaitable[T]) -> T:
    """`work`, awaited here, unless the client disconnects first: then it is cancelled and ClientGone raised.
    One watcher task beside it (a second task for `work` would cost a task switch per call)."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _log(event: str, **fields: Any) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": event, **fields}, default=str))

