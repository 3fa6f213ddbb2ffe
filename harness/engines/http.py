"""`--engine http`: any OpenAI-compatible completions server as the engine, attached by URL - or launched
for the run (a `ServerProcess` from harness.engines.launch: vLLM's server with the plugin, SGLang's).

Calls are streaming `/v1/completions` requests: the prompt as token ids where the server takes them (vLLM,
SGLang), else as text made from the same ids with `--tokenizer` (the server's own count of prompt tokens is
recorded); `max_tokens` = the turn's output length with `ignore_eos`. Every call is an asyncio task on one
`httpx.AsyncClient`, on an event loop of its own thread (`_Loop`): the tasks hand what they see to the simpy
environment through a queue drained every `POLL_S`, and closing the engine cancels them all, so a Ctrl-C
ends the run at once whatever the server does. A call is retried with exponential backoff while nothing of
it has streamed yet (connection refused or reset, 429, 5xx). A call that has not ended within
`--request-timeout` seconds, or whose stream ends without a token, is a *failed* call (its session fails,
the run goes on and is invalid, as `vllm bench serve` counts failed requests); a server that answers errors
or goes away ends the run as failed. KV usage comes from the server's Prometheus `/metrics` when it has one
(vLLM's and SGLang's names both understood); without it the KV signal is marked missing and MARS admission
runs on its CPU signals alone. The server must answer before any session starts (one clear line and exit 2
otherwise); what was measured is always kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx

from harness.calls import CallMeta, CallSpec
from harness.engines.base import BuildContext
from harness.engines.real import FIRST_TOKEN_ID, RealEngine, SessionTokens, longest_call
from harness.errors import BadInput, EngineFailed
from harness.policy.signals import EngineSignals

POLL_S = 0.002
# Prometheus names -> our keys. vLLM (0.32 and the older gpu_cache name) and SGLang (--enable-metrics).
METRICS = {
    "vllm:kv_cache_usage_perc": "kv_usage", "vllm:gpu_cache_usage_perc": "kv_usage",
    "vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
    "vllm:num_preemptions_total": "preemptions", "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "sglang:token_usage": "kv_usage", "sglang:num_running_reqs": "running", "sglang:num_queue_reqs": "waiting",
    "sglang:cached_tokens_total": "prefix_cache_hits", "sglang:prompt_tokens_total": "prefix_cache_queries",
}
RETRY_STATUS = {429, 500, 502, 503, 504}
MIN_VOCAB = 2048
DEFAULT_REQUEST_TIMEOUT_S = 600.0
CLOSE_S = 2.0  # closing the engine waits this long at most for its cancelled calls and its loop's thread
T = TypeVar("T")


def parse_metrics(text: str) -> dict[str, float]:
    """The gauges and counters mars-bench reads from a Prometheus /metrics page (summed over labels), and
    the KV geometry vLLM publishes as labels of `vllm:cache_config_info` (num_gpu_blocks, block_size)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = METRICS.get(name)
        if key is not None:
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        elif name == "vllm:cache_config_info":
            for label in ("num_gpu_blocks", "block_size"):
                match = re.search(rf'[{{,]{label}="(\d+)"', line)
                if match:
                    out[label] = float(match.group(1))
    return out


def _count(metrics: dict[str, float], key: str) -> int | None:
    """A counter of /metrics as an int, None when the server does not export it."""
    value = metrics.get(key)
    return None if value is None else int(value)


@dataclass(frozen=True)
class HttpTarget:
    """Where the calls go and how: the server's URL, its API key, the served model's name, and how prompts
    are sent ("ids" or "text", with the tokenizer directory for text)."""

    base_url: str
    api_key: str | None = None
    model: str | None = None  # default: the first model /v1/models lists
    prompt_format: str = "auto"  # "auto": ids when the server takes them, else text
    tokenizer: str | None = None
    vocab_size: int | None = None  # for the synthetic prompt ids; default: the tokenizer's, else 2,048
    retries: int = 4
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S  # a call not ended by then fails (None: no limit)


def api_key_from_env(name: str | None) -> str | None:
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise BadInput(f"--api-key-env {name}: that environment variable is not set")
    return key


def check_server(base_url: str | None, api_key_env: str | None) -> list[str]:
    """The models an OpenAI-compatible server at `base_url` serves; one clear line (BadInput, exit 2) when
    none answers there, it refuses the key, or it is not such a server."""
    if not base_url:
        raise BadInput("--engine http needs --base-url URL (the server's address, e.g. http://127.0.0.1:8000)")
    with _client(base_url, api_key_from_env(api_key_env), 10.0) as client:
        return served_models(client, base_url)


def served_models(client: httpx.Client, base_url: str) -> list[str]:
    try:
        response = client.get("/v1/models", timeout=10.0)
    except httpx.HTTPError as exc:
        raise BadInput(f"--base-url {base_url}: no server answers there ({type(exc).__name__}: {exc})") from None
    return model_list(response, base_url)


def model_list(response: httpx.Response, base_url: str) -> list[str]:
    """The model ids of a /v1/models answer; one clear line when it is not an OpenAI model list."""
    if response.status_code in (401, 403):
        raise BadInput(f"--base-url {base_url}: the server refused the API key ({response.status_code}); "
                       "give it with --api-key-env VAR")
    if response.status_code != 200:
        raise BadInput(f"--base-url {base_url}: /v1/models answered {response.status_code}; is it an "
                       "OpenAI-compatible server?")
    try:
        return [str(m["id"]) for m in response.json().get("data", []) if m.get("id")]
    except (ValueError, AttributeError, TypeError):
        raise BadInput(f"--base-url {base_url}: /v1/models did not answer an OpenAI model list") from None


def _client(base_url: str, api_key: str | None, timeout_s: float | None) -> httpx.Client:
    """The synchronous client of the checks before a run (check_server)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0))


def _async_client(base_url: str, api_key: str | None) -> httpx.AsyncClient:
    """The run's client, with no cap on connections: every call in flight streams at once (httpx's default of
    100 would queue the rest on our side, counted as the server's latency). No read timeout: a call's limit
    is the whole call's (`request_timeout_s`, around each task)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(None, connect=10.0),
                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))


class _Loop:
    """An asyncio event loop on a thread of its own, for the engine's calls; the simpy clock stays on the
    caller's thread. `close` cancels every task and ends the thread within CLOSE_S (daemon, so not even a
    stuck loop can keep the process alive)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mars-bench-http", daemon=True)
        self.thread.start()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task of the loop."""
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run `coro` on the loop and wait for its result (a Ctrl-C still interrupts the wait)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except BaseException:
            future.cancel()
            raise

    def close(self, client: httpx.AsyncClient | None) -> None:
        """Cancel every task, close `client`, stop the loop and end its thread; safe to call twice."""
        if self.loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=CLOSE_S / 2)
            if client is not None:
                await asyncio.wait_for(client.aclose(), CLOSE_S / 2)

        if self.thread.is_alive():
            try:
                self.wait(shutdown(), CLOSE_S)
            except Exception:  # noqa: BLE001, S110 - a connection that will not close dies with the loop
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(CLOSE_S)
        if not self.thread.is_alive():
            self.loop.close()


class Server(Protocol):
    """A server the engine launched and owns (harness.engines.launch.ServerProcess): what its client asks of it."""

    engine_name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def body_fields(self, meta: CallMeta) -> dict[str, Any]: ...
    def call_figures(self, call_id: str) -> dict[str, Any]: ...
    def failure(self, reason: str) -> str: ...
    def stats(self, client: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ServerLimits:
    """What the client knows of the server's limits: the longest call it accepts and its KV geometry when
    /metrics does not publish it. (The client itself has no cap on calls in flight: the server queues them.)"""

    max_model_len: int
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    seed: int = 0


class HttpEngine(RealEngine):
    """An OpenAI-compatible server as the engine: attached by URL, or `server`, launched here, started
    first and always stopped (at the end, on an error, on Ctrl-C)."""

    name = "http"

    def __init__(self, target: HttpTarget, limits: ServerLimits, server: Server | None = None) -> None:
        super().__init__(limits.max_model_len, limits.seed)
        self._loop: _Loop | None = None
        self.http: httpx.AsyncClient | None = None
        self._tok: Any = None
        self.server = server
        self.limits = limits
        self.target = target
        self._inbox: queue.SimpleQueue[tuple[str, str, Any, float, float]] = queue.SimpleQueue()
        self._metrics: dict[str, float] = {}
        self.metrics_available = True
        self.retried = 0
        self.failed = 0
        try:  # from here on a failure closes what was opened (the server, the loop, the client)
            if server is not None:
                server.start()
            self._loop = _Loop()
            self.http = self._loop.wait(self._open(), 10.0)
            self.model = target.model or self._served_model()
            self.prompt_format, vocab = self._prompt_format()
            self.tokens = SessionTokens(vocab, limits.seed)
        except BaseException:
            self.close()
            raise
        self.env.process(self._drain())

    async def _open(self) -> httpx.AsyncClient:
        return _async_client(self.target.base_url, self.target.api_key)  # made on the loop that will use it

    def _get(self, path: str, timeout_s: float) -> httpx.Response:
        """A GET of the server from the caller's thread, on the loop."""
        assert self._loop is not None and self.http is not None
        return self._loop.wait(self.http.get(path, timeout=timeout_s), timeout_s + 1.0)

    # ------------------------------------------------------------------------------ start-up
    def _served_model(self) -> str:
        try:
            response = self._get("/v1/models", 10.0)
        except httpx.HTTPError as exc:
            raise BadInput(f"--base-url {self.target.base_url}: no server answers there "
                           f"({type(exc).__name__}: {exc})") from None
        models = model_list(response, self.target.base_url)
        if not models:
            raise BadInput(f"--base-url {self.target.base_url}: the server lists no model; name one with --model")
        return models[0]

    def _prompt_format(self) -> tuple[str, int]:
        """("ids" | "text", vocabulary size for the synthetic prompt ids: the model's, or one every model
        has - which ids a prompt holds does not matter for timing, only that its prefix repeats)."""
        tokenizer = self._tok = self._tokenizer()
        vocab = self.target.vocab_size or (len(tokenizer) if tokenizer is not None else MIN_VOCAB)
        wanted = self.target.prompt_format
        if wanted == "ids":  # a launcher that knows its server: no probe (it would count in the server's figures)
            return "ids", vocab
        if wanted == "auto":
            probe = {"model": self.model, "prompt": [100, 101, 102, 103], "max_tokens": 1, "temperature": 0.0}
            assert self._loop is not None and self.http is not None
            response = self._loop.wait(self.http.post("/v1/completions", json=probe, timeout=60.0), 61.0)
            if response.status_code == 200:
                return "ids", vocab
        if tokenizer is None:
            raise BadInput("the server takes text prompts only: give its tokenizer with --tokenizer DIR, so the "
                           "prompts have the workload's token counts")
        return "text", vocab

    def _tokenizer(self) -> Any:
        if not self.target.tokenizer:
            return None
        from transformers import AutoTokenizer  # noqa: PLC0415 - vLLM's dependency; only for text prompts

        try:
            return AutoTokenizer.from_pretrained(self.target.tokenizer)
        except (OSError, ValueError) as exc:
            raise BadInput(f"--tokenizer {self.target.tokenizer}: {exc}") from None

    # ------------------------------------------------------------------------------ calls
    def _body(self, spec: CallSpec, prompt: list[int], meta: CallMeta) -> dict[str, Any]:
        """The completion request of one call (a launched server may add its own fields)."""
        text_prompt: Any = prompt
        if self.prompt_format == "text":
            text_prompt = self._decode(prompt)
        body = {"model": self.model, "prompt": text_prompt, "max_tokens": spec.max_tokens, "ignore_eos": True,
                "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
                "return_token_ids": True}
        return body if self.server is None else {**body, **self.server.body_fields(meta)}

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))

    def _send(self, spec: CallSpec, prompt: list[int], meta: CallMeta) -> None:
        assert self._loop is not None
        self._loop.spawn(self._call(spec.call_id, self._body(spec, prompt, meta)))

    def _post(self, call_id: str, kind: str, payload: Any, start: float, end: float) -> None:
        """Hand (call, kind, payload, start, end) to the simpy side: kind "tokens" (new ids), "done" (cached
        tokens), "failed" (the call failed, the run goes on), "error" (the run ends)."""
        self._inbox.put((call_id, kind, payload, start, end))

    async def _call(self, call_id: str, body: dict[str, Any]) -> None:
        """On the loop: one call within its time limit; whatever happens, the inbox hears how it ended."""
        limit = self.target.request_timeout_s
        try:
            async with asyncio.timeout(limit):
                await self._stream(call_id, body)
        except TimeoutError:
            self._post(call_id, "failed", f"no end within {limit:g} s (--request-timeout)", 0.0, self._now())
        except EngineFailed as exc:
            self._post(call_id, "error", str(exc), 0.0, self._now())
        except Exception as exc:  # noqa: BLE001 - every other failure of a call ends the run, with its reason
            self._post(call_id, "error", f"{type(exc).__name__}: {exc}", 0.0, self._now())

    async def _stream(self, call_id: str, body: dict[str, Any]) -> None:
        """Stream one completion, retrying while nothing has streamed, posting what it sees to the inbox."""
        assert self.http is not None
        delay = 0.2
        for attempt in range(self.target.retries + 1):
            streamed = False
            try:
                last = self._now()
                usage_at: float | None = None
                cached = 0
                async with self.http.stream("POST", "/v1/completions", json=body) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code in RETRY_STATUS and attempt < self.target.retries:
                            raise _Retry(f"{response.status_code}")
                        raise EngineFailed(f"the server answered {response.status_code}: {response.text[:300]}")
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        now = self._now()
                        if chunk.get("error"):
                            raise EngineFailed(f"the server failed a call: {chunk['error'].get('message', chunk)}")
                        for choice in chunk.get("choices") or []:
                            n = _new_tokens(choice)
                            if n:
                                streamed = True
                                self._post(call_id, "tokens", n, last, now)
                                last = now
                        usage = chunk.get("usage")
                        if usage:
                            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
                            usage_at = now
                if not streamed:  # as `vllm bench serve`: a call without a first token is a failed call
                    self._post(call_id, "failed", "the server's stream ended without a token", 0.0, self._now())
                    return
                # the usage chunk ends the call; a server that ignores include_usage: the stream's end
                self._post(call_id, "done", cached, last, self._now() if usage_at is None else usage_at)
                return
            except (_Retry, httpx.TransportError) as exc:
                if streamed or attempt >= self.target.retries:
                    reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _Retry) else f"answered {exc}"
                    raise EngineFailed(f"the server failed a call ({reason})") from None
                self.retried += 1
                await asyncio.sleep(delay)
                delay *= 2

    def _drain(self) -> Any:
        """Deliver what the calls saw, in order, on the environment's clock."""
        env = self.env
        while True:
            if not self.calls:  # nothing in flight: sleep until the next call (the run ends when none comes)
                self._wake = env.event()
                yield self._wake
            yield env.timeout(POLL_S)
            self.on_step(env.now)
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
                elif kind == "failed":
                    self.failed += 1
                    self._fail(call, payload)
                else:
                    raise EngineFailed(f"{self._failure(payload)}; the calls measured so far are kept")

    def _failure(self, reason: str) -> str:
        """Why the run stops, from a failed call's reason (a launched server's log tells more)."""
        return reason if self.server is None else self.server.failure(reason)

    def _call_figures(self, call_id: str) -> dict[str, Any]:
        """Engine-side figures of a finished call (preemptions, ...); an attached server gives none."""
        return {} if self.server is None else self.server.call_figures(call_id)

    # ------------------------------------------------------------------------------ signals, stats
    def _scrape(self) -> dict[str, float]:
        response = self._get("/metrics", 1.0)
        if response.status_code == 404:
            self.metrics_available = False
        response.raise_for_status()
        self._metrics = parse_metrics(response.text)
        return self._metrics

    def signals(self) -> EngineSignals | None:
        if not self.metrics_available:
            return None  # no /metrics: the KV signal is missing, admission falls back (reference)
        try:
            m = self._scrape()
        except (httpx.HTTPError, TimeoutError):
            return None  # a missing reading: the signal stream keeps the last one for a while
        total = int(m.get("num_gpu_blocks") or self.limits.num_gpu_blocks or 0)
        if "kv_usage" not in m or not total:
            return None  # usage without the cache's size is no block budget: missing, as the reference says
        usage = float(m["kv_usage"])
        return EngineSignals(kv_usage=usage, free_blocks=int(round(total * (1 - usage))), total_blocks=total,
                             block_size=int(m.get("block_size") or self.limits.block_size or 16),
                             running=int(m.get("running", 0)), waiting=int(m.get("waiting", 0)),
                             preemptions=_count(m, "preemptions"), prefix_query_tokens=_count(m, "prefix_cache_queries"),
                             prefix_hit_tokens=_count(m, "prefix_cache_hits"))

    def timeline(self) -> dict[str, Any]:
        m = self._metrics
        return {"kv_usage": m.get("kv_usage"), "running": m.get("running"), "waiting": m.get("waiting"),
                "preemptions": m.get("preemptions")}

    def stats(self) -> dict[str, Any]:
        try:
            m = self._scrape() if self.metrics_available else {}
        except (httpx.HTTPError, TimeoutError):
            m = self._metrics
        stats = {"engine": self.name if self.server is None else self.server.engine_name,
                 "base_url": self.target.base_url, "model": self.model,
                 "prompt_format": self.prompt_format, "calls_retried": self.retried, "calls_failed": self.failed,
                 "request_timeout_s": self.target.request_timeout_s,
                 "metrics": "yes" if self.metrics_available else "missing", "cached_tokens": self.cached_tokens,
                 "server_preemptions": m.get("preemptions"), "server_prefix_cache_hits": m.get("prefix_cache_hits"),
                 "server_prefix_cache_queries": m.get("prefix_cache_queries")}
        return stats if self.server is None else self.server.stats(stats)

    def close(self) -> None:
        """Cancel the calls in flight, close the client, end the loop's thread, stop a launched server."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close(self.http)
        if self.server is not None:
            self.server.stop()


class _Retry(Exception):
    """A call the server refused before streaming anything, worth sending again."""


def _new_tokens(choice: dict[str, Any]) -> list[int]:
    """The output token ids of a streamed choice: vLLM's `token_ids`, or one stand-in id per text chunk from
    servers that stream text only (timing needs the count; the session's next prompt gets the stand-ins)."""
    ids = choice.get("token_ids")
    if ids:
        return [int(t) for t in ids]
    return [FIRST_TOKEN_ID] if choice.get("text") else []


def build(ctx: BuildContext) -> HttpEngine:
    """The engine registry's builder for `--engine http`: attach to the server at --base-url."""
    config = ctx.config
    assert config.base_url is not None  # checked with the server before the run (check_server)
    e = config.engine_args
    limits = ServerLimits(longest_call(ctx.sessions) + 1, e.num_gpu_blocks, e.block_size, config.seed)
    target = HttpTarget(config.base_url, api_key=api_key_from_env(config.api_key_env), model=config.served_model,
                        tokenizer=config.tokenizer, request_timeout_s=config.request_timeout)
    return HttpEngine(target, limits)
