"""What every fake OpenAI-compatible server of the tests shares: a request handler answering `/v1/models`
(one model, `fake-model`) and, when its server has a `metrics_page`, a Prometheus `/metrics`; the fakes add
their `/v1/completions` (do_POST)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class OpenAIHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        metrics = getattr(self.server, "metrics_page", None)
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode())
        elif self.path == "/metrics" and metrics is not None:
            self._send(200, metrics.encode(), "text/plain")
        else:
            self._send(404, b"{}")


# ------------------------------------------------------------------------- a fast streaming fake
class FastStreams:
    """A fast fake OpenAI completions server on asyncio, for thousands of streams at once (a thread per
    connection, as the handler above, would spend its core switching threads): every streamed call gets
    `chunks` one-token chunks, chunk i sent `i * interval_s` after its request arrived, then its usage and
    `[DONE]`; keep-alive connections, chunked transfer encoding, `/v1/models` as above, and `/stats`: the
    streams open now and at most, and how late the server itself sent its chunks (its own lag, p50/p99 s).
    Run it in a process of its own: `python -m tests.fake_openai --port P --chunks K --interval S`."""

    def __init__(self, chunks: int, interval_s: float) -> None:
        self.chunks, self.interval_s = chunks, interval_s
        self.open = self.peak = self.streams = 0
        self.lag: list[float] = []

    async def serve(self, port: int) -> None:
        import asyncio

        server = await asyncio.start_server(self._connection, "127.0.0.1", port, backlog=8192)
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: Any, writer: Any) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = next((int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length:")), 0)
                body = json.loads(await reader.readexactly(length)) if length else {}
                if method == "POST" and body.get("stream"):
                    await self._stream(writer, body)
                elif method == "POST":  # the client's probe: token-id prompts are fine here
                    self._answer(writer, 200, {"choices": [{"text": "x"}]})
                elif path == "/v1/models":
                    self._answer(writer, 200, {"object": "list", "data": [{"id": "fake-model"}]})
                elif path == "/stats":
                    lag = sorted(self.lag) or [0.0]
                    self._answer(writer, 200, {"open": self.open, "peak": self.peak, "streams": self.streams,
                                               "lag_p50_s": lag[len(lag) // 2], "lag_p99_s": lag[int(len(lag) * 0.99)]})
                else:
                    self._answer(writer, 404, {})
                await writer.drain()
        except Exception:  # noqa: BLE001 - a client that went away, or sent what this fake cannot read
            writer.close()

    @staticmethod
    def _answer(writer: Any, status: int, data: dict[str, Any]) -> None:
        body = json.dumps(data).encode()
        writer.write(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)

    async def _stream(self, writer: Any, body: dict[str, Any]) -> None:
        import asyncio
        import time

        start = time.monotonic()
        self.open += 1
        self.streams += 1
        self.peak = max(self.peak, self.open)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b'data: {"choices":[{"index":0,"text":"a","token_ids":[17]}]}\n\n'
            for i in range(self.chunks):
                due = start + i * self.interval_s
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.lag.append(time.monotonic() - due)
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            usage = {"choices": [], "usage": {"prompt_tokens": len(body.get("prompt") or ()),
                                              "completion_tokens": self.chunks}}
            end = f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
        finally:
            self.open -= 1


if __name__ == "__main__":
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(description=FastStreams.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5)
    options = parser.parse_args()
    asyncio.run(FastStreams(options.chunks, options.interval).serve(options.port))
