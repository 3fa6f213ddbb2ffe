"""A fake OpenAI-compatible upstream for the gateway's tests (Starlette), and `serving(app)`: any ASGI app on
uvicorn in a thread of the test process, on a free port, stopped on exit.

The fake records every request it gets (headers and body), streams `chunks` chunks `interval_s` apart (chat or
completions, with vLLM's `token_ids`), answers non-streaming calls with one JSON, publishes vLLM-named
/metrics, and misbehaves on demand: `fail_after` chunks then the connection drops; `cancelled` counts
streams that ended because the client went away."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


class FakeUpstream:
    def __init__(self, chunks: int = 5, interval_s: float = 0.01, kv_usage: float = 0.1, blocks: int = 1000,
                 block_size: int = 16) -> None:
        self.chunks, self.interval_s = chunks, interval_s
        self.kv_usage, self.blocks, self.block_size = kv_usage, blocks, block_size
        self.fail_after: int | None = None
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.cancelled = 0
        self.open = 0
        self.app = Starlette(routes=[
            Route("/v1/models", self.models), Route("/metrics", self.metrics),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ])

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                                         "owned_by": "me"}]})

    async def metrics(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse(
            f'vllm:cache_config_info{{block_size="{self.block_size}",num_gpu_blocks="{self.blocks}"}} 1.0\n'
            f'vllm:kv_cache_usage_perc{{engine="0"}} {self.kv_usage}\nvllm:num_requests_running{{engine="0"}} '
            f'{self.open}\nvllm:num_requests_waiting{{engine="0"}} 0\n')

    async def chat(self, request: Request) -> Any:
        return await self._answer(request, chat=True)

    async def completions(self, request: Request) -> Any:
        return await self._answer(request, chat=False)

    async def _answer(self, request: Request, chat: bool) -> Any:
        body = json.loads(await request.body())
        self.requests.append((dict(request.headers), body))
        if not body.get("stream"):
            await asyncio.sleep(self.interval_s)
            choice = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"} \
                if chat else {"index": 0, "text": "hello", "finish_reason": "stop"}
            return JSONResponse({"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0,
                                 "model": body.get("model", "fake-model"), "choices": [choice],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        return StreamingResponse(self._stream(chat, body.get("model", "fake-model")), media_type="text/event-stream")

    async def _stream(self, chat: bool, model: str) -> Any:
        self.open += 1
        try:
            for i in range(self.chunks):
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("the fake upstream breaks its stream")
                if chat:
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                             "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
                else:
                    chunk = {"id": "x", "object": "text_completion", "created": 0, "model": model,
                             "choices": [{"index": 0, "text": f"t{i} ", "token_ids": [i], "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(self.interval_s)
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.open -= 1


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a thread; its base URL. Stopped (lifespan shutdown included) on exit."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="auto", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
