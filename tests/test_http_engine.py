"""`--engine http`: attach to any OpenAI-compatible server by URL - a real, unmodified vLLM server (CPU
build) started here, with the vllm and mars-admission backends - and fail clearly on a wrong URL, a server
answering errors, and a server that stops answering mid-run, keeping what was measured."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.cli import main
from harness.engines.http import parse_metrics
from harness.engines.vllm.engine import VllmSetup, engine_args, prepare_environment
from harness.engines.vllm.server import VllmServer
from harness.results import find_run
from tests.fake_openai import OpenAIHandler
from workloads.source import WorkloadRequest, resolve

PRESSURE = ("--set", "engine_args.num_gpu_blocks=50", "--set", "engine_args.block_size=32")


def test_vllm_and_sglang_metric_names_are_both_understood() -> None:
    vllm = ('vllm:cache_config_info{block_size="32",cache_dtype="auto",num_gpu_blocks="50"} 1.0\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\nvllm:num_requests_waiting{engine="0"} 2.0\n')
    assert parse_metrics(vllm) == {"num_gpu_blocks": 50.0, "block_size": 32.0, "kv_usage": 0.25, "waiting": 2.0}
    # the names of SGLang's documented /metrics page (--enable-metrics)
    sglang = ('# HELP sglang:token_usage The token usage\n# TYPE sglang:token_usage gauge\n'
              'sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28\n'
              'sglang:num_running_reqs{model_name="m"} 5.0\nsglang:num_queue_reqs{model_name="m"} 1.0\n'
              'sglang:cache_hit_rate{model_name="m"} 0.0075\n')
    assert parse_metrics(sglang) == {"kv_usage": 0.28, "running": 5.0, "waiting": 1.0}


@pytest.mark.parametrize("args, message", [
    (["--base-url", "http://127.0.0.1:9"], "no server answers there"),
    ([], "--engine http needs --base-url"),
    (["--base-url", "http://127.0.0.1:9", "--api-key-env", "MARS_BENCH_NO_SUCH_VAR"], "MARS_BENCH_NO_SUCH_VAR"),
])
def test_no_server_is_one_line_exit_2_and_no_run(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                                 message: str) -> None:
    assert main(["run", "--engine", "http", "-b", "vllm", "-w", "tiny", "--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*/run.json"))  # nothing started, nothing written


class FakeServer(ThreadingHTTPServer):
    """An OpenAI-compatible server in a thread: streams `good_calls` completions (after the client's
    probe), then answers every completion with `then_status`, or stops answering at all."""

    def __init__(self, good_calls: int, then_status: int | None, text_only: bool = False, flaky: int = 0,
                 usage: bool = True, chunk: int = 1) -> None:
        self.good_calls, self.then_status, self.completions = good_calls, then_status, 0
        self.chunk = chunk  # output tokens per streamed chunk
        self.text_only, self.prompts = text_only, []
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []  # (path, headers, body) of each POST
        self.flaky, self.usage = flaky, usage  # the first `flaky` streamed calls get a 503; usage chunk or not
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def go_away(self) -> None:
        self.shutdown()
        self.server_close()  # connections are refused from now on

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(OpenAIHandler):
    server: FakeServer

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/v1/chat/completions":
            self._chat(body)
            return
        server.completions += 1
        if server.text_only and not isinstance(body["prompt"], str):
            self._send(400, json.dumps({"error": {"message": "prompt must be a string"}}).encode())
            return
        server.prompts.append(body["prompt"])
        if not body.get("stream"):  # the client's probe: token-id prompts are fine here
            self._send(200, json.dumps({"choices": [{"text": "x"}]}).encode())
            return
        if server.flaky > 0:
            server.flaky -= 1
            self._send(503, json.dumps({"error": {"message": "busy"}}).encode())
            return
        if server.completions > server.good_calls + 1:
            if server.then_status is None:  # the server is gone: it stops answering and listening
                threading.Thread(target=server.go_away, daemon=True).start()
                self.close_connection = True
                return
            self._send(server.then_status, json.dumps({"error": {"message": "model overloaded"}}).encode())
            return
        sizes = [min(server.chunk, body["max_tokens"] - i) for i in range(0, body["max_tokens"], server.chunk)]
        chunks = [{"choices": [{"text": "a" * n, **({} if server.text_only else {"token_ids": [17] * n})}]}
                  for n in sizes]
        if server.usage:
            chunks.append({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                                    "completion_tokens": body["max_tokens"]}})
        stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self._send(200, stream.encode(), "text/event-stream")

    def _chat(self, body: dict[str, Any]) -> None:
        """A chat stream as vLLM sends it: the assistant role with empty content first, then `chunk` tokens of
        content per chunk (their ids unless text_only), then the usage - a prompt count of its own (the
        messages' characters) and the output tokens."""
        server, n = self.server, body["max_completion_tokens"]
        sizes = [min(server.chunk, n - i) for i in range(0, n, server.chunk)]
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        chunks += [{"choices": [{"index": 0, "delta": {"content": "ab" * k},
                                 **({} if server.text_only else {"token_ids": [17] * k})}]} for k in sizes]
        prompt = sum(len(m.get("content") or "") for m in body["messages"])
        chunks.append({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": n,
                                                "prompt_tokens_details": {"cached_tokens": 3}}})
        stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self._send(200, stream.encode(), "text/event-stream")


@pytest.fixture
def fake() -> Iterator[Any]:
    servers: list[FakeServer] = []

    def make(good_calls: int, then_status: int | None, **options: Any) -> FakeServer:
        servers.append(FakeServer(good_calls, then_status, **options))
        return servers[-1]

    yield make
    for server in servers:
        server.server_close()


@pytest.mark.parametrize("then_status, cause", [(400, "answered 400: "), (503, "answered 503"), (None, "ConnectError")])
def test_a_server_failing_mid_run_fails_the_run_clearly_and_keeps_the_calls(
        fake: Any, tmp_path: Path, capsys: pytest.CaptureFixture, then_status: int | None, cause: str) -> None:
    server = fake(good_calls=6, then_status=then_status)
    code = main(["run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny",
                 "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert cause in err and "the calls measured so far are kept" in err
    run = find_run(tmp_path, "latest")
    assert run.status == "failed" and len(run.calls()) >= 6


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """An unmodified vLLM OpenAI server (no scheduler plugin), as a user would run it."""
    out = tmp_path_factory.mktemp("server")
    setup = VllmSetup(model=str(tiny_model_dir), max_model_len=1568, num_gpu_blocks=50, block_size=32,
                      load_format="dummy", cache_dir=str(out / "cache"))
    prepare_environment(setup.cache_dir)
    args = {k: v for k, v in engine_args(setup, {}).items() if k not in ("scheduler_cls", "additional_config")}
    server = VllmServer(args, out / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.engine
@pytest.mark.parametrize("backend", ["vllm", "mars-admission"])
def test_attach_to_a_running_vllm_server(vllm_server: VllmServer, backend: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--engine", "http", "--base-url", vllm_server.url, "-b", backend, "-w", "tiny",
                 *PRESSURE, "--results-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed_sessions"] == 16
    run = Path(out["run_dir"])
    calls = pd.read_parquet(run / "calls.parquet")
    assert len(calls) == 68 and calls["first_token_s"].notna().all()
    assert (calls[calls["turn"] > 0]["cached_tokens"] > 0).mean() > 0.5  # token-id prompts: real prefix reuse
    stats = json.loads((run / "summary.json").read_text())["engine_stats"]
    assert stats["prompt_format"] == "ids" and stats["metrics"] == "yes" and stats["server_prefix_cache_hits"] > 0
    timeline = pd.read_parquet(run / "timeline.parquet")
    assert timeline["kv_usage"].notna().any() and timeline["kv_usage"].max() > 0  # parsed from the live /metrics
    if backend == "mars-admission":  # the control plane read the server's KV signal (50 blocks from /metrics)
        assert timeline["admission_kv_usage"].notna().any()


@pytest.mark.engine
def test_chat_and_headers_against_a_vllm_server_that_wants_a_key(tiny_model_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """An unmodified vLLM server started with --api-key: only a request with the `--header` Authorization gets
    in, and its /v1/chat/completions serves the sessions' conversations (the tiny model's chat template)."""
    setup = VllmSetup(model=str(tiny_model_dir), max_model_len=4096, num_gpu_blocks=200, block_size=32,
                      load_format="dummy", cache_dir=str(tmp_path / "cache"))
    prepare_environment(setup.cache_dir)
    args = {k: v for k, v in engine_args(setup, {}).items() if k not in ("scheduler_cls", "additional_config")}
    server = VllmServer({**args, "api_key": "mars-test-key"}, tmp_path / "server.log")
    server.start()
    try:
        run = ["run", "--engine", "http", "--base-url", server.url, "--endpoint", "chat", "--tokenizer",
               str(tiny_model_dir), "-b", "vllm", "-w", "tiny", "--sessions", "2", "--results-dir", str(tmp_path)]
        assert main(run) == 2  # without the key the server refuses, before any session starts
        assert "refused the API key" in capsys.readouterr().err
        assert main([*run, "--header", "Authorization=Bearer mars-test-key", "--header", "X-Request-Source=mars",
                     "--json"]) == 0
    finally:
        server.stop()
    out = json.loads(capsys.readouterr().out)
    assert out["completed_sessions"] == 2
    calls = pd.read_parquet(Path(out["run_dir"]) / "calls.parquet")
    assert calls["first_token_s"].notna().all() and calls["error"].isna().all()
    _, sessions = resolve(WorkloadRequest("tiny", sessions=2))
    wanted = sorted(t.output_tokens for s in sessions for t in s.turns)
    assert sorted(calls["output_tokens"]) == wanted  # vLLM's usage: every token asked for (ignore_eos)
    assert (calls[calls["turn"] > 0]["cached_tokens"] > 0).any()  # the conversation grows append-only
    stats = json.loads((Path(out["run_dir"]) / "summary.json").read_text())["engine_stats"]
    assert stats["endpoint"] == "chat" and stats["headers"] == ["Authorization", "X-Request-Source"]
    assert "mars-test-key" not in (Path(out["run_dir"]) / "run.json").read_text()


def test_the_sglang_launcher_uses_sglangs_documented_flags() -> None:
    from harness.engines.sglang import SglangArgs, sglang_command

    argv = sglang_command(SglangArgs(model_path="/m", context_length=4096, radix_cache=False, mem_fraction_static=0.8,
                                     chunked_prefill_size=2048, max_running_requests=64, tp=2, load_format="dummy"), 30001)
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    expected = {"--model-path": "/m", "--port": "30001", "--schedule-policy": "lpm", "--context-length": "4096",
                "--mem-fraction-static": "0.8", "--chunked-prefill-size": "2048", "--max-running-requests": "64",
                "--tp": "2", "--load-format": "dummy"}
    assert {flag: argv[argv.index(flag) + 1] for flag in expected} == expected
    assert "--enable-metrics" in argv and "--disable-radix-cache" in argv
    assert "--disable-radix-cache" not in sglang_command(SglangArgs(model_path="/m", context_length=8), 1)


def test_sglang_without_the_package_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("SGLang is installed here; this checks the message on machines without it")
    assert main(["run", "--engine", "sglang", "-b", "sglang", "-w", "tiny", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs SGLang" in err and len(err.splitlines()) == 1


@pytest.mark.gpu
def test_sglang_serves_a_run_on_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or pytest.importorskip("importlib.util").find_spec("sglang") is None:
        pytest.skip("needs a GPU and SGLang: SGLang's kernels need CUDA")
    from harness.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    for backend in ("sglang", "mars-admission"):
        assert main(["run", "--engine", "sglang", "--model", str(model), "-b", backend, "-w", "tiny",
                     "--results-dir", str(tmp_path / backend), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["completed_sessions"] == 16
        stats = json.loads((Path(out["run_dir"]) / "summary.json").read_text())["engine_stats"]
        assert stats["metrics"] == "yes" and stats["engine"] == "sglang"


def test_a_text_only_server_gets_text_prompts_from_the_tokenizer(fake: Any, tiny_model_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    server = fake(good_calls=10_000, then_status=None, text_only=True)
    args = ["run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny", "--sessions", "3",
            "--results-dir", str(tmp_path)]
    assert main(args) == 2  # without a tokenizer its prompts could not have the workload's token counts
    assert "--tokenizer" in capsys.readouterr().err
    assert main([*args, "--tokenizer", str(tiny_model_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed_sessions"] == 3
    streamed = [p for p in server.prompts if isinstance(p, str) and len(p) > 20]
    assert streamed and all(isinstance(p, str) for p in server.prompts)
    calls = pd.read_parquet(Path(out["run_dir"]) / "calls.parquet")
    assert (calls["output_tokens"] > 0).all()  # a text chunk counts as a token when no ids are streamed


def test_text_prompts_have_exactly_the_token_counts_of_the_id_prompts(fake: Any, tiny_model_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """--prompt-format text (as `vllm bench serve` sends prompts): each prompt, encoded by the served model's
    tokenizer, is as long as the id prompt of the same call; plain decoding would make them ~15% longer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = ["run", "--engine", "http", "-b", "vllm", "-w", "tiny", "--sessions", "4", "--rps", "inf", "--json"]
    lengths = {}
    for form in ("ids", "text"):
        server = fake(good_calls=10_000, then_status=None)
        assert main([*base, "--base-url", server.url, "--prompt-format", form, "--tokenizer", str(tiny_model_dir),
                     "--results-dir", str(tmp_path / form)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["completed_sessions"] == 4
        sent = [p for path, _, body in server.requests if (p := body.get("prompt")) is not None and body.get("stream")]
        assert all(isinstance(p, str if form == "text" else list) for p in sent) and len(sent) > 4
        lengths[form] = sorted(len(tok.encode(p, add_special_tokens=False)) if form == "text" else len(p) for p in sent)
        stats = json.loads((Path(out["run_dir"]) / "summary.json").read_text())["engine_stats"]
        assert stats["prompt_format"] == form
        assert json.loads((Path(out["run_dir"]) / "run.json").read_text())["config"]["prompt_format"] == form
    assert stats["prompt_tokens_mismatched"] == 0, stats
    assert lengths["text"] == lengths["ids"], lengths
    naive = sorted(len(tok.encode(tok.decode(list(range(100, 164))), add_special_tokens=False)) for _ in range(1))
    assert naive != [64]  # what the length matching is for: this tokenizer does not round-trip ids


def test_only_calls_with_a_next_turn_ask_for_token_ids(fake: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A session's last call (every call of a single-turn run) is the request `vllm bench serve` sends: no
    `return_token_ids`, so vLLM does not echo the prompt's ids in its first chunk; earlier calls ask for
    them, their reply's ids joining the next prompt."""
    server = fake(good_calls=10_000, then_status=None)
    assert main(["run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny", "--sessions", "3",
                 "--header", "X-Session={session_id}", "--results-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed_sessions"] == 3
    by_session: dict[str, list[dict[str, Any]]] = {}
    for _, headers, body in server.requests:
        if body.get("stream"):
            by_session.setdefault(headers["x-session"], []).append(body)
    assert len(by_session) == 3 and max(len(calls) for calls in by_session.values()) > 1
    for calls in by_session.values():
        assert [c.get("return_token_ids") for c in calls] == [True] * (len(calls) - 1) + [None]
    prompts = [c["prompt"] for calls in by_session.values() for c in calls]
    assert all(isinstance(p, list) for p in prompts)
    calls = pd.read_parquet(Path(out["run_dir"]) / "calls.parquet")
    assert (calls["output_tokens"] > 0).all()
    # each call is dated from the moment its request was sent, as vllm bench starts its TTFT clock; how late
    # the client sent them is kept apart
    assert (calls["arrival_s"] == calls["first_scheduled_s"]).all()
    lag = json.loads((Path(out["run_dir"]) / "summary.json").read_text())["engine_stats"]["client_send_lag_ms"]
    assert set(lag) == {"mean", "p99", "max"} and 0 <= lag["mean"] <= lag["p99"] <= lag["max"]


def test_prompt_format_text_needs_a_tokenizer_and_a_server(fake: Any, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    server = fake(good_calls=10_000, then_status=None)
    assert main(["run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny",
                 "--prompt-format", "text", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--prompt-format text needs" in err and "--tokenizer" in err and len(err.splitlines()) == 1
    assert main(["run", "-b", "vllm", "-w", "tiny", "--prompt-format", "ids", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--prompt-format ids is for a server" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*/run.json"))


def test_a_refused_call_is_sent_again_and_a_stream_without_usage_still_ends(fake: Any, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    server = fake(good_calls=10_000, then_status=None, flaky=2, usage=False)
    assert main(["run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny", "--sessions", "3",
                 "--results-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed_sessions"] == 3
    stats = json.loads((Path(out["run_dir"]) / "summary.json").read_text())["engine_stats"]
    assert stats["calls_retried"] == 2 and stats["metrics"] == "missing"  # the fake has no /metrics page


def test_itl_is_one_gap_per_streamed_chunk_as_vllm_bench_records_it(fake: Any, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    server = fake(good_calls=10_000, then_status=None, chunk=4)
    assert main(["run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny", "--sessions", "2",
                 "--results-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    calls = pd.read_parquet(Path(out["run_dir"]) / "calls.parquet")
    assert (calls["output_tokens"] > 4).any()
    for tokens, gaps in zip(calls["output_tokens"], calls["itl_s"], strict=True):
        assert len(gaps) == -(-tokens // 4) - 1  # one per chunk after the first, none inside a chunk


# ------------------------------------------------------------------ --endpoint chat, --header, replicas
def _by_session(server: FakeServer, header: str = "x-session") -> dict[str, list[dict[str, Any]]]:
    """The streamed requests' bodies per session, in the order sent (the session from an affinity header)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, headers, body in server.requests:
        if body.get("stream"):
            out.setdefault(headers[header], []).append(body)
    return out


def test_chat_sends_each_session_as_a_growing_conversation_with_its_tools(
        fake: Any, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    server = fake(good_calls=10_000, then_status=None, text_only=True, chunk=3)
    assert main(["run", "--engine", "http", "--base-url", server.url, "--endpoint", "chat", "--tokenizer",
                 str(tiny_model_dir), "--header", "X-Session={session_id}", "-b", "vllm", "-w", "tiny",
                 "--sessions", "3", "--results-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed_sessions"] == 3
    assert {path for path, _, _ in server.requests} == {"/v1/chat/completions"}  # no completions probe either
    sessions = _by_session(server)
    assert len(sessions) == 3
    for bodies in sessions.values():
        first = bodies[0]
        assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
        assert first["ignore_eos"] is True and "max_tokens" not in first and first["max_completion_tokens"] > 0
        names = [t["function"]["name"] for t in first["tools"]]
        assert names == sorted(names) and "read_file" in names and first["tool_choice"] == "none"
        assert all(b["tools"] == first["tools"] for b in bodies)  # one tool list: a prefix every call shares
        assert [m["role"] for m in first["messages"]] == ["system", "user"]  # the shared prefix, the task
        for before, after in zip(bodies, bodies[1:]):
            sent = before["messages"]
            assert after["messages"][:len(sent)] == sent  # append-only: the server's prefix cache can hit
            reply, answer = after["messages"][len(sent):]
            assert reply["role"] == "assistant"
            assert reply["content"] == "ab" * before["max_completion_tokens"]  # the streamed text, joined
            (call,) = reply["tool_calls"]
            assert answer == {"role": "tool", "tool_call_id": call["id"], "content": answer["content"]}
            assert call["function"]["name"] in names and len(answer["content"]) > 20
    calls = pd.read_parquet(Path(out["run_dir"]) / "calls.parquet")
    # the server's usage counts: output tokens (3 per text chunk here, not one), its own prompt count
    prompts = {sum(len(m["content"] or "") for m in b["messages"]) for bs in sessions.values() for b in bs}
    assert set(calls["prompt_tokens"]) == prompts and (calls["cached_tokens"] == 3).all()
    for tokens, gaps in zip(calls["output_tokens"], calls["itl_s"], strict=True):
        assert len(gaps) == -(-tokens // 3) - 1  # a gap per content chunk; the role-only first chunk is no token
    stats = json.loads((Path(out["run_dir"]) / "summary.json").read_text())["engine_stats"]
    assert stats["endpoint"] == "chat" and stats["headers"] == ["X-Session"]


def test_sse_data_lines_are_read_as_the_spec_says() -> None:
    from harness.engines.http import _sse_data

    assert _sse_data('data: {"a": 1}') == _sse_data('data:{"a": 1}') == '{"a": 1}'
    assert _sse_data("data:  x") == " x"  # only one space is the separator
    assert [_sse_data(line) for line in (": ping", "event: message", "id: 3", "")] == [None] * 4


def test_the_conversation_turns_the_user_pseudo_tool_into_a_user_message() -> None:
    from harness.calls import CallSpec
    from harness.engines.chat import Conversations

    chat = Conversations(lambda ids: " ".join(map(str, ids)))

    def spec(turn: int, tool: str | None) -> CallSpec:
        return CallSpec("s", turn, 0, 2, tool is None, tool, "p", 1, 0.0)

    assert chat.messages(spec(0, "user"), [1, 2, 3]) == [{"role": "system", "content": "1"},
                                                          {"role": "user", "content": "2 3"}]
    chat.reply(spec(0, "user"), "hi", 2)
    messages = chat.messages(spec(1, None), [1, 2, 3, 9, 9, 4])
    assert messages[2:] == [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "4"}]


def test_headers_arrive_with_every_request_and_a_credential_is_never_written(
        fake: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    server = fake(good_calls=10_000, then_status=None)
    assert main(["run", "--engine", "http", "--base-url", server.url, "--header", "X-Priority = high",
                 "--header", "Authorization=Bearer s3cret-value", "--header", "X-Session-ID={session_id}",
                 "-b", "vllm", "-w", "tiny", "--sessions", "3", "--results-dir", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    streamed = [h for _, h, body in server.requests if body.get("stream")]
    assert len(streamed) > 3 and len(server.requests) == len(streamed) + 1  # the calls and the client's probe
    assert all(h["x-priority"] == "high" and h["authorization"] == "Bearer s3cret-value"
               for _, h, _ in server.requests)
    assert {h["x-session-id"] for h in streamed} == {f"tiny-0-0000{i}" for i in range(3)}
    run_dir = Path(json.loads(out)["run_dir"])
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["headers"] == {"X-Priority": "high", "Authorization": "<redacted>",
                                 "X-Session-ID": "{session_id}"}
    written = "".join(p.read_text(errors="replace") for p in run_dir.iterdir() if p.suffix in (".json", ".jsonl"))
    assert "s3cret" not in written + out + err


def test_round_robin_sends_each_call_to_the_next_replica(fake: Any, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    a, b = fake(good_calls=10_000, then_status=None), fake(good_calls=10_000, then_status=None)
    assert main(["run", "--engine", "http", "--base-url", a.url, "--base-url", b.url, "--routing", "round-robin",
                 "-b", "vllm", "-w", "tiny", "--sessions", "4", "--results-dir", str(tmp_path), "--json"]) == 0
    run_dir = Path(json.loads(capsys.readouterr().out)["run_dir"])
    sent = {s.url: sum(1 for _, _, body in s.requests if body.get("stream")) for s in (a, b)}
    assert abs(sent[a.url] - sent[b.url]) <= 1 and sum(sent.values()) > 8
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    replicas = [e["replica"] for e in events if e["kind"] == "call"]
    assert {r: replicas.count(r) for r in set(replicas)} == sent  # each call's replica, in its event
    stats = json.loads((run_dir / "summary.json").read_text())["engine_stats"]
    assert stats["calls_per_replica"] == sent and stats["routing"] == "round-robin"


def test_session_routing_keeps_each_session_on_one_replica(fake: Any, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    a, b = fake(good_calls=10_000, then_status=None), fake(good_calls=10_000, then_status=None)
    assert main(["run", "--engine", "http", "--base-url", a.url, "--base-url", b.url, "--header",
                 "X-Session={session_id}", "-b", "vllm", "-w", "tiny", "--sessions", "6",
                 "--results-dir", str(tmp_path), "--json"]) == 0  # --routing session is the default
    run_dir = Path(json.loads(capsys.readouterr().out)["run_dir"])
    on_a, on_b = _by_session(a), _by_session(b)
    assert on_a and on_b and not set(on_a) & set(on_b) and len(on_a) + len(on_b) == 6
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    for e in (e for e in events if e["kind"] == "call"):
        assert e["replica"] == (a.url if e["session_id"] in on_a else b.url)


def test_the_session_router_balances_new_sessions_and_forgets_ended_ones() -> None:
    from harness.engines.http import Router

    router = Router(2, "session")
    assert [router.pick(s) for s in ("s1", "s2", "s1", "s3")] == [0, 1, 0, 0]
    router.end("s1")
    router.end("s3")  # replica 0 now holds none, replica 1 holds s2
    assert router.pick("s4") == 0 and router.pick("s2") == 1 and router.calls == [4, 2]
    rr = Router(3, "round-robin")
    assert [rr.pick("s") for _ in range(4)] == [0, 1, 2, 0]


@pytest.mark.parametrize("args, message", [
    (["--header", "X-Priority"], "--header X-Priority: not KEY=VALUE"),
    (["--header", "Authorization: Bearer s3cret"], "--header Authorization: not KEY=VALUE"),
    (["--header", "X Priority=high"], "not a valid header name"),
    (["--header", "=high"], "not KEY=VALUE"),
    (["--endpoint", "responses"], "--endpoint"),
    (["--endpoint", "chat"], "--tokenizer DIR"),
    (["--routing", "random"], "--routing"),
])
def test_a_bad_header_endpoint_or_routing_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             args: list[str], message: str) -> None:
    assert main(["run", "--engine", "http", "--base-url", "http://127.0.0.1:9", "-b", "vllm", "-w", "tiny",
                 "--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "s3cret" not in err, err
    assert not list(tmp_path.glob("*/run.json"))


def test_server_settings_on_an_engine_without_a_server_are_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "-b", "vllm", "-w", "tiny", "--header", "X-A=1", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--header is for a server" in err and len(err.splitlines()) == 1


def test_calls_in_flight_are_spread_over_small_client_pools() -> None:
    import asyncio

    from harness.engines.http import CONNECTIONS_PER_CLIENT, ClientPool

    async def spread() -> tuple[list[int], list[int]]:
        clients = ClientPool(None, None)
        taken = [clients.acquire() for _ in range(2 * CONNECTIONS_PER_CLIENT + 1)]
        clients.release(taken[0])
        again = clients.acquire()  # the room one call left is used before a new client is made
        await clients.aclose()
        return [taken.count(i) for i in range(3)], [again, len(clients.clients)]

    counts, (again, made) = asyncio.run(spread())
    assert counts == [CONNECTIONS_PER_CLIENT, CONNECTIONS_PER_CLIENT, 1] and again == 0 and made == 3


def test_the_streams_benchmark_holds_every_stream_at_once() -> None:
    """benchmarks/http_streams.py, small: the client against the fast fake server, every stream open at once."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/http_streams.py", "--streams", "150", "--chunks", "4",
                           "--interval", "0.3", "--json"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["server_peak_open"] == figures["ended_well"] == 150
    assert figures["client_cpu_us_per_chunk"] > 0 and "load average" in figures["uptime_before"]
