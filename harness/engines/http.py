"""`--engine http`: any OpenAI-compatible server as the engine, attached by URL - or launched for the run (a
`ServerProcess` from harness.engines.launch: vLLM's server with the plugin, SGLang's) - or several, as
data-parallel replicas behind one client.

Calls are streaming requests, to `/v1/completions` (`--endpoint completions`: the prompt as token ids where
the server takes them - vLLM, SGLang - else as text made from the same ids with `--tokenizer`) or to
`/v1/chat/completions` (`--endpoint chat`: the session as a growing OpenAI conversation with the workload's
tools, harness.engines.chat); `max_tokens` (chat: `max_completion_tokens`) = the turn's output length with
`ignore_eos`. A call records the server's own count of prompt and output tokens when it streams its usage
(`stream_options.include_usage`, as `vllm bench serve` asks), and the request carries `--header`s. With
several `--base-url`s, `Router` picks each call's replica: per call in turn (`round-robin`) or one replica per
session (`session`, for its prefix cache). Every call is an asyncio task on an `httpx.AsyncClient` of a few
(`ClientPool`), on an event loop of its own thread (`_Loop`): the tasks hand what they see to the simpy
environment through a queue drained every `POLL_S`, and closing the engine cancels them all, so a Ctrl-C ends
the run at once whatever the server does. A call is retried with exponential backoff while nothing of it has
streamed yet (connection refused or reset, 429, 5xx). A call that has not ended within `--request-timeout`
seconds, or whose stream ends without a token, is a *failed* call (its session fails, the run goes on and is
invalid, as `vllm bench serve` counts failed requests); a server that answers errors or goes away ends the run
as failed. KV usage comes from the servers' Prometheus `/metrics` when they have one (vLLM's and SGLang's
names both understood; summed over replicas); without it the KV signal is marked missing and MARS admission
runs on its CPU signals alone. The servers must answer before any session starts (one clear line and exit 2
otherwise); what was measured is always kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import sys
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
import numpy as np

from harness.calls import CallMeta, CallSpec
from harness.engines.base import BuildContext
from harness.engines.chat import Conversations, tool_specs, workload_tools
from harness.engines.real import FIRST_TOKEN_ID, RealEngine, SessionTokens, _Call, longest_call
from harness.errors import BadInput, EngineFailed
from harness.policy.signals import EngineSignals

if TYPE_CHECKING:
    from harness.config import RunConfig
    from workloads.model import Session

POLL_S = 0.002
# /metrics is read on the client's loop this often, never on the harness's thread: a scrape (~5 ms on vLLM's CPU
# server) there held up the arrivals due meanwhile (it delayed calls by 5-7 ms, their TTFT with them). A reading
# older than METRICS_STALE_S (failed scrapes) is no reading: the signal stream then ages its last one out.
METRICS_POLL_S = 0.2
METRICS_STALE_S = 1.0
SWITCH_INTERVAL_S = 0.0005
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
TEXT_TRIES = 10  # text prompts: how often a prompt's text is re-made to reach its token count (vllm bench's)
DEFAULT_REQUEST_TIMEOUT_S = 600.0
CLOSE_S = 2.0  # closing the engine waits this long at most for its cancelled calls and its loop's thread
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}  # --endpoint NAME -> where calls go
CONNECTIONS_PER_CLIENT = 32  # calls in flight on one client (ClientPool)
SESSION_ID = "{session_id}"  # in a --header's value: the call's session id (e.g. an affinity header)
NEEDS_TOKENIZER = ("--endpoint chat sends text messages: give the served model's tokenizer with --tokenizer DIR, "
                   "so they have the workload's token counts")
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


def _count(metrics: Mapping[str, float], key: str) -> int | None:
    """A counter of /metrics as an int, None when the server does not export it."""
    value = metrics.get(key)
    return None if value is None else int(value)


def engine_signals(metrics: Mapping[str, float], num_gpu_blocks: int | None = None,
                   block_size: int | None = None) -> EngineSignals | None:
    """The GPU side of the information stream from one (combined) /metrics reading; `num_gpu_blocks` and
    `block_size` stand in where the server does not publish its KV geometry. None when the reading has no KV
    usage or the cache's size is unknown: usage without the size is no block budget (missing, as the reference
    says)."""
    m = metrics
    total = int(m.get("num_gpu_blocks") or num_gpu_blocks or 0)
    if "kv_usage" not in m or not total:
        return None
    usage = float(m["kv_usage"])
    return EngineSignals(kv_usage=usage, free_blocks=int(round(total * (1 - usage))), total_blocks=total,
                         block_size=int(m.get("block_size") or block_size or 16),
                         running=int(m.get("running", 0)), waiting=int(m.get("waiting", 0)),
                         preemptions=_count(m, "preemptions"), prefix_query_tokens=_count(m, "prefix_cache_queries"),
                         prefix_hit_tokens=_count(m, "prefix_cache_hits"))


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
    endpoint: str = "completions"  # a key of PATHS
    headers: tuple[tuple[str, str], ...] = ()  # --header KEY=VALUE, sent with every request
    more_urls: tuple[str, ...] = ()  # further replicas of the same model (--base-url given again)
    routing: str = "session"  # with several replicas: "session" (sticky) or "round-robin" (per call)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(url.rstrip("/") for url in (self.base_url, *self.more_urls))


def api_key_from_env(name: str | None) -> str | None:
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise BadInput(f"--api-key-env {name}: that environment variable is not set")
    return key


def check_server(base_url: str | None, api_key_env: str | None, more_urls: Sequence[str] = (),
                 headers: Mapping[str, str] | None = None) -> list[str]:
    """The models the OpenAI-compatible server at `base_url` serves, after checking it and every further
    replica (`more_urls`) with the run's headers; one clear line (BadInput, exit 2) when none answers at one
    of them, it refuses the key, or it is not such a server."""
    if not base_url:
        raise BadInput("--engine http needs --base-url URL (the server's address, e.g. http://127.0.0.1:8000)")
    api_key = api_key_from_env(api_key_env)
    listed = []
    for url in (base_url, *more_urls):
        with _client(url, api_key, 10.0, headers) as client:
            listed.append(served_models(client, url))
    return listed[0]


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


def request_headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    """What every request carries: the API key as a bearer token, then the `--header`s (which win, as in
    `vllm bench serve`); a header whose value names the session is filled in per call (`HttpEngine._send`)."""
    out = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for key, value in (headers or {}).items():
        if SESSION_ID not in value:
            out = {k: v for k, v in out.items() if k.lower() != key.lower()}  # names are case-insensitive
            out[key] = value
    return out


def _client(base_url: str, api_key: str | None, timeout_s: float | None,
            headers: Mapping[str, str] | None = None) -> httpx.Client:
    """The synchronous client of the checks before a run (check_server)."""
    return httpx.Client(base_url=base_url.rstrip("/"), headers=request_headers(api_key, headers),
                        timeout=httpx.Timeout(timeout_s, connect=10.0))


def _async_client(api_key: str | None, headers: Mapping[str, str] | None = None,
                  connections: int | None = None, verify: Any = True) -> httpx.AsyncClient:
    """A client of the run, for every replica (requests name their URL), with at most `connections`
    connections (None: httpx's default). No read timeout: a call's limit is the whole call's (`request_timeout_s`,
    around each task)."""
    return httpx.AsyncClient(headers=request_headers(api_key, headers), timeout=httpx.Timeout(None, connect=10.0),
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                             verify=verify)


class ClientPool:
    """The clients the calls stream on: as many `httpx.AsyncClient`s as the calls in flight need, each given
    at most CONNECTIONS_PER_CLIENT calls at once, so every call in flight streams at once (one client's
    default cap of 100 would queue the rest on our side, counted as the server's latency) and no pool grows
    large: httpcore's pool scans all its connections, for each of its idle ones, whenever a request starts or
    ends, which for one pool of 2,000 connections costs milliseconds of CPU per call (benchmarks/http_streams.py).
    On the event loop's thread only."""

    def __init__(self, api_key: str | None, headers: Mapping[str, str] | None) -> None:
        self.api_key, self.headers = api_key, headers
        self.verify = httpx.create_ssl_context()  # one certificate load for every client
        self.clients: list[httpx.AsyncClient] = []
        self.in_flight: list[int] = []

    def acquire(self) -> int:
        """A client with room for one more call (a new one when all are full); its index."""
        for i, n in enumerate(self.in_flight):
            if n < CONNECTIONS_PER_CLIENT:
                self.in_flight[i] += 1
                return i
        self.clients.append(_async_client(self.api_key, self.headers, CONNECTIONS_PER_CLIENT, self.verify))
        self.in_flight.append(1)
        return len(self.clients) - 1

    def release(self, i: int) -> None:
        self.in_flight[i] -= 1

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients), return_exceptions=True)


class Router:
    """Which replica (an index into the URLs) each call goes to, as a data-parallel deployment's router would
    send it. "round-robin": each call to the next replica in turn. "session": a session's first call goes to
    the replica holding the fewest sessions now (the lowest index on a tie) and all its later calls follow
    it there, where its context sits in the prefix cache; the session lets go of it when it ends."""

    def __init__(self, replicas: int, routing: str = "session") -> None:
        if routing not in ("session", "round-robin"):
            raise ValueError(f"unknown routing {routing!r}")
        self.replicas = replicas
        self.routing = routing
        self._next = 0
        self._sticky: dict[str, int] = {}
        self._held = [0] * replicas  # sessions on each replica now
        self.calls = [0] * replicas

    def pick(self, session_id: str) -> int:
        if self.routing == "round-robin":
            replica = self._next
            self._next = (self._next + 1) % self.replicas
        else:
            replica = self.place(session_id)
        self.calls[replica] += 1
        return replica

    def place(self, session_id: str) -> int:
        """The session's replica ("session" routing): where it is, else the one holding the fewest sessions."""
        replica = self._sticky.get(session_id, -1)
        if replica < 0:
            replica = min(range(self.replicas), key=lambda r: self._held[r])
            self._sticky[session_id] = replica
            self._held[replica] += 1
        return replica

    @property
    def held(self) -> list[int]:
        """Sessions on each replica now."""
        return list(self._held)

    def end(self, session_id: str) -> None:
        replica = self._sticky.pop(session_id, None)
        if replica is not None:
            self._held[replica] -= 1


def combine_metrics(pages: Sequence[dict[str, float]]) -> dict[str, float]:
    """The /metrics figures of several replicas as one server's: counts and KV blocks summed, KV usage the
    share of all their blocks in use (the mean usage when a replica does not say how many it has)."""
    if len(pages) == 1:
        return dict(pages[0])
    out: dict[str, float] = {}
    for page in pages:
        for key, value in page.items():
            if key not in ("kv_usage", "block_size"):
                out[key] = out.get(key, 0.0) + value
            elif key == "block_size":
                out[key] = value
    usages = [p["kv_usage"] for p in pages if "kv_usage" in p]
    if len(usages) == len(pages):
        blocks = [p.get("num_gpu_blocks") for p in pages]
        if all(blocks):
            out["kv_usage"] = sum(p["kv_usage"] * p["num_gpu_blocks"] for p in pages) / sum(blocks)  # type: ignore[arg-type]
        else:
            out["kv_usage"] = sum(usages) / len(usages)
    return out


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

    def close(self, *clients: httpx.AsyncClient | ClientPool | None) -> None:
        """Cancel every task, close the `clients`, stop the loop and end its thread; safe to call twice."""
        if self.loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=CLOSE_S / 2)
            opened = [c.aclose() for c in clients if c is not None]
            if opened:
                await asyncio.wait_for(asyncio.gather(*opened, return_exceptions=True), CLOSE_S / 2)

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

    def __init__(self, target: HttpTarget, limits: ServerLimits, server: Server | None = None,
                 tools: Sequence[str] = ()) -> None:
        super().__init__(limits.max_model_len, limits.seed)
        self._loop: _Loop | None = None
        self.http: httpx.AsyncClient | None = None  # start-up checks and /metrics; the calls stream on `streams`
        self.streams: ClientPool | None = None
        self._tok: Any = None
        self._text_rng = np.random.default_rng(limits.seed)  # text prompts: ids that extend a short text
        self.text_mismatch = 0  # text prompts: tokens by which they missed their counts (vllm bench's mismatch)
        self.server = server
        self.limits = limits
        self.target = target
        self.urls = target.urls
        self.router = Router(len(self.urls), target.routing)
        self.tools = tool_specs(tools)  # --endpoint chat: the workload's tools as OpenAI `tools`
        self.chat: Conversations | None = None
        self._session_headers = {k: v for k, v in target.headers if SESSION_ID in v}
        self._inbox: queue.SimpleQueue[tuple[str, str, Any, float, float]] = queue.SimpleQueue()
        self._metrics: dict[str, float] = {}
        self.metrics_available = True
        self._reading_at: float | None = None  # when the newest /metrics reading was taken (harness clock)
        self._switch_interval: float | None = None  # Python's GIL switch interval before the run (restored)
        self.send_lags: list[float] = []  # per streamed call: sent - due (the client's lag behind its schedule)
        self.retried = 0
        self.failed = 0
        try:  # from here on a failure closes what was opened (the server, the loop, the client)
            if server is not None:
                server.start()
            self._loop = _Loop()
            self.http, self.streams = self._loop.wait(self._open(), 10.0)
            self.model = target.model or self._served_model()
            self.prompt_format, vocab = self._prompt_format()
            self.tokens = SessionTokens(vocab, limits.seed)
            if target.endpoint == "chat":
                self.chat = Conversations(self._decode)
        except BaseException:
            self.close()
            raise
        self.env.process(self._drain())

    async def _open(self) -> tuple[httpx.AsyncClient, ClientPool]:
        headers = dict(self.target.headers)  # made on the loop that will use them
        return _async_client(self.target.api_key, headers), ClientPool(self.target.api_key, headers)

    def _get(self, path: str, timeout_s: float) -> httpx.Response:
        """A GET of the (first) server from the caller's thread, on the loop."""
        assert self._loop is not None and self.http is not None
        return self._loop.wait(self.http.get(self.urls[0] + path, timeout=timeout_s), timeout_s + 1.0)

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
        if self.target.endpoint == "chat":
            if tokenizer is None:
                raise BadInput(NEEDS_TOKENIZER)
            return "text", vocab
        wanted = self.target.prompt_format
        if wanted == "ids":  # a launcher that knows its server: no probe (it would count in the server's figures)
            return "ids", vocab
        if wanted == "auto":
            probe = {"model": self.model, "prompt": [100, 101, 102, 103], "max_tokens": 1, "temperature": 0.0}
            assert self._loop is not None and self.http is not None
            response = self._loop.wait(self.http.post(self.urls[0] + PATHS["completions"], json=probe, timeout=60.0),
                                       61.0)
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
        """The request of one call: a completion of the prompt, or (`--endpoint chat`) the session's
        conversation with the prompt's new part as its last message, as `vllm bench serve` sends either (a
        launched server may add its own fields)."""
        body: dict[str, Any] = {"model": self.model}
        if self.chat is not None:
            body["messages"] = self.chat.messages(spec, prompt)
            if self.tools:
                body |= {"tools": self.tools, "tool_choice": "none"}
            body["max_completion_tokens"] = spec.max_tokens
        else:
            body["prompt"] = self._decode(prompt) if self.prompt_format == "text" else prompt
            body["max_tokens"] = spec.max_tokens
        body |= {"ignore_eos": True, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
        if not spec.is_last_turn:
            # the reply's ids join the session's next prompt (its prefix cache hits them); vLLM then also sends
            # the whole prompt's ids in the first chunk, which a last turn (every call of vllm bench's
            # single-turn runs) does without: its TTFT is measured on the request `vllm bench serve` sends
            body["return_token_ids"] = True
        return body if self.server is None else {**body, **self.server.body_fields(meta)}

    def _decode(self, ids: list[int]) -> str:
        """Text that the server's tokenizer reads as exactly len(ids) tokens (a random id sequence decoded and
        encoded again is seldom as long: ~15% longer with a small BPE vocabulary), made as `vllm bench serve`
        makes its random prompts (datasets.gen_prompt_decode_to_target_len: decode, encode, cut or extend the
        ids at the end with random ones, up to TEXT_TRIES times) but cutting one id deeper on each try that
        comes out long (vllm bench's plain cut can loop on an end that re-merges longer: 1 prompt in 8 with
        the tiny model's tokenizer missed its count). Only the end changes, so a session's next prompt still
        starts with this one's text (its prefix cache hits) but for the last few tokens."""
        tok, target, seq = self._tok, len(ids), list(ids)
        for attempt in range(TEXT_TRIES + 1):
            text = str(tok.decode(seq))
            seq = tok.encode(text, add_special_tokens=False)
            if len(seq) == target or attempt == TEXT_TRIES:
                break
            if len(seq) > target:
                seq = seq[:max(0, target - attempt)]
            if len(seq) < target:
                seq += self._text_rng.integers(0, tok.vocab_size, size=target - len(seq)).tolist()
        self.text_mismatch += abs(len(seq) - target)
        return text

    def _send(self, spec: CallSpec, prompt: list[int], meta: CallMeta) -> None:
        assert self._loop is not None
        replica = self.router.pick(spec.session_id)
        if len(self.urls) > 1:
            self.calls[spec.call_id].record.replica = self.urls[replica]
        url = self.urls[replica] + PATHS[self.target.endpoint]
        headers = {k: v.replace(SESSION_ID, spec.session_id) for k, v in self._session_headers.items()}
        self._loop.spawn(self._call(spec.call_id, url, self._body(spec, prompt, meta), headers or None))

    def _post(self, call_id: str, kind: str, payload: Any, start: float, end: float) -> None:
        """Hand (call, kind, payload, start, end) to the simpy side: kind "tokens" (new ids), "done" (cached
        tokens), "failed" (the call failed, the run goes on), "error" (the run ends)."""
        self._inbox.put((call_id, kind, payload, start, end))

    async def _call(self, call_id: str, url: str, body: dict[str, Any], headers: dict[str, str] | None) -> None:
        """On the loop: one call within its time limit; whatever happens, the inbox hears how it ended."""
        limit = self.target.request_timeout_s
        try:
            async with asyncio.timeout(limit):
                await self._stream(call_id, url, body, headers)
        except TimeoutError:
            self._post(call_id, "failed", f"no end within {limit:g} s (--request-timeout)", 0.0, self._now())
        except EngineFailed as exc:
            self._post(call_id, "error", str(exc), 0.0, self._now())
        except Exception as exc:  # noqa: BLE001 - every other failure of a call ends the run, with its reason
            self._post(call_id, "error", f"{type(exc).__name__}: {exc}", 0.0, self._now())

    async def _stream(self, call_id: str, url: str, body: dict[str, Any], headers: dict[str, str] | None) -> None:
        """Stream one call, retrying while nothing has streamed, posting what it sees to the inbox. As `vllm
        bench serve` reads a stream: a chunk with output (its `token_ids`, else one token per text or
        `delta` with content) is one step; the usage chunk gives the server's token counts."""
        assert self.streams is not None
        streams = self.streams
        client = streams.acquire()
        try:
            await self._stream_on(streams.clients[client], call_id, url, body, headers)
        finally:
            streams.release(client)

    async def _stream_on(self, http: httpx.AsyncClient, call_id: str, url: str, body: dict[str, Any],
                         headers: dict[str, str] | None) -> None:
        delay = 0.2
        for attempt in range(self.target.retries + 1):
            streamed = False
            try:
                last = self._now()
                usage_at: float | None = None
                done = _Done()
                async with http.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code in RETRY_STATUS and attempt < self.target.retries:
                            raise _Retry(f"{response.status_code}")
                        raise EngineFailed(f"the server answered {response.status_code}: {response.text[:300]}")
                    async for line in response.aiter_lines():
                        data = _sse_data(line)
                        if data is None or data == "[DONE]":
                            continue
                        chunk = json.loads(data)
                        now = self._now()
                        if chunk.get("error"):
                            raise EngineFailed(f"the server failed a call: {chunk['error'].get('message', chunk)}")
                        for choice in chunk.get("choices") or []:
                            n = _new_tokens(choice)
                            if n:
                                streamed = True
                                self._post(call_id, "tokens", n, last, now)
                                last = now
                            if self.chat is not None:
                                done.text.append(_text(choice))
                        usage = chunk.get("usage")
                        if usage:
                            done.read_usage(usage)
                            usage_at = now
                if not streamed:  # as `vllm bench serve`: a call without a first token is a failed call
                    self._post(call_id, "failed", "the server's stream ended without a token", 0.0, self._now())
                    return
                # the usage chunk ends the call; a server that ignores include_usage: the stream's end
                self._post(call_id, "done", done, last, self._now() if usage_at is None else usage_at)
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
            # the next look POLL_S from now on the wall clock: a look that took longer than POLL_S (a loaded
            # host) would otherwise leave the run's clock behind the wall clock, further with every look
            yield env.timeout(POLL_S + max(0.0, self._now() - env.now))
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
                    self._done(call, payload, end)
                elif kind == "failed":
                    self.failed += 1
                    self._session_ends(call.spec.session_id)
                    self._fail(call, payload)
                else:
                    raise EngineFailed(f"{self._failure(payload)}; the calls measured so far are kept")

    def _done(self, call: _Call, done: _Done, end: float) -> None:
        """A call streamed to its end: the server's token counts where it gave them (a text chunk may hold
        several tokens; its prompt count includes a chat template), the reply joins the conversation."""
        record = call.record
        if done.prompt_tokens is not None:
            record.num_prompt_tokens = done.prompt_tokens
        if done.completion_tokens:
            record.num_output_tokens = done.completion_tokens
        if call.spec.is_last_turn:
            self._session_ends(call.spec.session_id)
        elif self.chat is not None:
            self.chat.reply(call.spec, "".join(done.text), len(call.output_ids))
        self._finish(call, done.cached, self._call_figures(record.request_id), end)

    def _tokens_arrived(self, call: _Call, new: Sequence[int], start: float, end: float) -> None:
        """As RealEngine's; a call's first chunk also dates the call from the moment its request was sent
        (`start`), where `vllm bench serve` starts its TTFT clock, so TTFT and E2EL do not hold the client's
        own lag behind the schedule; that lag (sent - due) is kept apart (`client_send_lag_ms`)."""
        record = call.record
        if record.num_output_tokens == 0 and new:
            self.send_lags.append(max(0.0, start - record.arrival_s))
            record.arrival_s = min(start, end)
        super()._tokens_arrived(call, new, start, end)

    def _session_ends(self, session_id: str) -> None:
        self.router.end(session_id)
        if self.chat is not None:
            self.chat.end(session_id)

    def _failure(self, reason: str) -> str:
        """Why the run stops, from a failed call's reason (a launched server's log tells more)."""
        return reason if self.server is None else self.server.failure(reason)

    def _call_figures(self, call_id: str) -> dict[str, Any]:
        """Engine-side figures of a finished call (preemptions, ...); an attached server gives none."""
        return {} if self.server is None else self.server.call_figures(call_id)

    # ------------------------------------------------------------------------------ signals, stats
    async def _read_metrics(self) -> dict[str, float]:
        """Every replica's /metrics, combined; a 404 means the server has none (the signals are missing)."""
        assert self.http is not None
        http = self.http
        responses = await asyncio.gather(*(http.get(url + "/metrics", timeout=1.0) for url in self.urls))
        pages = []
        for response in responses:
            if response.status_code == 404:
                self.metrics_available = False
            response.raise_for_status()
            pages.append(parse_metrics(response.text))
        self._metrics = combine_metrics(pages)
        self._reading_at = self._now()
        return self._metrics

    def _scrape(self) -> dict[str, float]:
        """A reading now, from the caller's thread (at start and for the run's closing figures)."""
        assert self._loop is not None
        return self._loop.wait(self._read_metrics(), 2.0)

    async def _poll_metrics(self) -> None:
        """On the loop, for the whole run: a reading every METRICS_POLL_S (a failed one keeps the last)."""
        while self.metrics_available:
            await asyncio.sleep(METRICS_POLL_S)
            try:
                await self._read_metrics()
            except (httpx.HTTPError, TimeoutError):
                pass

    def start(self) -> None:
        super().start()
        # the client's loop takes the GIL from the harness's thread after 0.5 ms, not Python's 5 ms: a stream's
        # chunk is timed when the loop reads it, so a wait for the GIL is TTFT and ITL that the server never had
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
        if self.metrics_available and self._loop is not None:
            try:  # the first reading before the first arrival, then the loop keeps them coming
                self._scrape()
            except (httpx.HTTPError, TimeoutError):
                pass
            self._loop.spawn(self._poll_metrics())

    def signals(self) -> EngineSignals | None:
        """The newest /metrics reading (taken on the loop; this never waits for the server)."""
        if not self.metrics_available:
            return None  # no /metrics: the KV signal is missing, admission falls back (reference)
        if self._reading_at is None or self._now() - self._reading_at > METRICS_STALE_S:
            return None  # no recent reading: the signal stream keeps the last one for a while
        return engine_signals(self._metrics, self.limits.num_gpu_blocks, self.limits.block_size)

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
                 "base_url": self.target.base_url, "model": self.model, "endpoint": self.target.endpoint,
                 "prompt_format": self.prompt_format, "calls_retried": self.retried, "calls_failed": self.failed,
                 "request_timeout_s": self.target.request_timeout_s,
                 "metrics": "yes" if self.metrics_available else "missing", "cached_tokens": self.cached_tokens,
                 "server_preemptions": m.get("preemptions"), "server_prefix_cache_hits": m.get("prefix_cache_hits"),
                 "server_prefix_cache_queries": m.get("prefix_cache_queries")}
        if self.send_lags:  # how late the client sent its calls (vllm bench's clock starts at the send, too)
            lags = np.asarray(self.send_lags) * 1e3
            stats["client_send_lag_ms"] = {"mean": round(float(lags.mean()), 3),
                                           "p99": round(float(np.percentile(lags, 99)), 3),
                                           "max": round(float(lags.max()), 3)}
        if self.prompt_format == "text":  # tokens by which text prompts missed their counts (0: every one exact)
            stats["prompt_tokens_mismatched"] = self.text_mismatch
        if self.target.headers:  # their names only: a value may be a credential
            stats["headers"] = sorted(k for k, _ in self.target.headers)
        if len(self.urls) > 1:
            stats |= {"base_urls": list(self.urls), "routing": self.target.routing,
                      "calls_per_replica": dict(zip(self.urls, self.router.calls, strict=True))}
        return stats if self.server is None else self.server.stats(stats)

    def close(self) -> None:
        """Cancel the calls in flight, close the client, end the loop's thread, stop a launched server."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close(self.http, self.streams)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        if self.server is not None:
            self.server.stop()


def _sse_data(line: str) -> str | None:
    """The data of a server-sent event's `data:` line (one space after the colon is dropped, as the SSE spec
    says), None for any other line: a comment (`: ping`), `event:` or `id:` fields, the blank line between
    events. OpenAI-compatible servers put each chunk's JSON on one `data:` line, so an event is one line.
    (httpx-sse parses the same in 4.6 us a chunk against this 4.1 us; it is not a dependency of the core.)"""
    if not line.startswith("data:"):
        return None
    return line[6:] if line.startswith("data: ") else line[5:]


class _Retry(Exception):
    """A call the server refused before streaming anything, worth sending again."""


@dataclass
class _Done:
    """How a stream ended: the usage it reported (cached, prompt and output tokens) and, for chat, its text."""

    cached: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text: list[str] = field(default_factory=list)

    def read_usage(self, usage: dict[str, Any]) -> None:
        self.cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        if usage.get("prompt_tokens") is not None:
            self.prompt_tokens = int(usage["prompt_tokens"])
        if usage.get("completion_tokens") is not None:
            self.completion_tokens = int(usage["completion_tokens"])


# what a chat chunk's `delta` streams as output: its text, a reasoning model's thinking, a tool call
_OUTPUT_DELTAS = ("content", "reasoning_content", "reasoning", "tool_calls")


def _new_tokens(choice: dict[str, Any]) -> list[int]:
    """The output token ids of a streamed choice (completions or chat): vLLM's `token_ids`, or one stand-in
    id per chunk from servers that stream text only, and for a session's last call, sent without
    `return_token_ids` (timing needs the count; the server's usage corrects it at the end; a session's
    next prompt gets the stand-ins of a text-only server). A chat stream's first chunk, its `assistant`
    role with empty content, is no token."""
    ids = choice.get("token_ids")
    if ids:
        return [int(t) for t in ids]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return [FIRST_TOKEN_ID] if any(delta.get(key) for key in _OUTPUT_DELTAS) else []
    # a completion chunk is one token even when its text is empty (a special token), as vllm bench counts it
    return [FIRST_TOKEN_ID] if isinstance(choice.get("text"), str) else []


def _text(choice: dict[str, Any]) -> str:
    """The text a streamed choice adds to the reply."""
    delta = choice.get("delta")
    return str((delta.get("content") if isinstance(delta, dict) else choice.get("text")) or "")


def client_settings(config: RunConfig | None, sessions: Sequence[Session]) -> tuple[str, tuple[tuple[str, str], ...],
                                                                                 tuple[str, ...]]:
    """The run's endpoint, headers and (for chat) the workload's tools: what every server-backed engine's
    client takes from the run config."""
    if config is None:
        return "completions", (), ()
    tools = workload_tools(sessions) if config.endpoint == "chat" else ()
    return config.endpoint, tuple(config.headers.items()), tools


def build(ctx: BuildContext) -> HttpEngine:
    """The engine registry's builder for `--engine http`: attach to the server at --base-url."""
    config = ctx.config
    assert config.base_url is not None  # checked with the server before the run (check_server)
    e = config.engine_args
    limits = ServerLimits(longest_call(ctx.sessions) + 1, e.num_gpu_blocks, e.block_size, config.seed)
    endpoint, headers, tools = client_settings(config, ctx.sessions)
    target = HttpTarget(config.base_url, api_key=api_key_from_env(config.api_key_env), model=config.served_model,
                        tokenizer=config.tokenizer, prompt_format=config.prompt_format,
                        request_timeout_s=config.request_timeout, endpoint=endpoint,
                        headers=headers, more_urls=config.more_base_urls, routing=config.routing)
    return HttpEngine(target, limits, tools=tools)
