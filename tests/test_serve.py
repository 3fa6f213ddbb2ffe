"""`mars-bench serve`, the MARS gateway: relayed calls through the official `openai` client (streaming and
not), session identity, admission from the harness's own controller, session-affine routing over two
upstreams, failures (mid-stream, unreachable, timeout, client gone), its /metrics, its logs, its CLI and
its graceful shutdown. The upstreams are fakes (tests.fake_upstream); the real vLLM server is in
tests/test_serve_vllm.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.cli import main
from harness.serve.app import Gateway
from harness.serve.identity import estimate_prompt_tokens, session_identity
from harness.serve.run import build_gateway
from tests.fake_upstream import FakeUpstream, free_socket, serving

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-very-secret-key"
PROMPT = "please fix the failing test in utils.py"


@contextmanager
def gateway_on(*upstreams: str, sets: tuple[str, ...] = (), **options: Any) -> Iterator[tuple[str, Gateway]]:
    gateway = build_gateway(upstreams, sets=sets, **options)
    with serving(gateway.app) as url:
        yield url, gateway


@pytest.fixture
def upstream() -> Iterator[tuple[str, FakeUpstream]]:
    fake = FakeUpstream()
    with serving(fake.app) as url:
        yield url, fake


def client(url: str, session: str | None = None, **kwargs: Any) -> openai.OpenAI:
    headers = {"X-Session-ID": session} if session else {}
    return openai.OpenAI(base_url=url + "/v1", api_key=SECRET, default_headers=headers, max_retries=0, **kwargs)


def metrics_of(url: str) -> dict[str, float]:
    """The gateway's /metrics, read with prometheus_client's own parser: sample name (+labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# ----------------------------------------------------------------------------- identity (pure)
def test_the_session_is_the_header_else_the_user_field_else_a_hash_of_the_conversations_start() -> None:
    messages = [{"role": "system", "content": "you are an agent"}, {"role": "user", "content": PROMPT}]
    body = {"model": "m", "messages": messages, "user": "task-7"}
    assert session_identity({"X-Session-ID": "s1"}, body) == ("s1", "header")
    assert session_identity({"x-my-session": "s2"}, body, "X-My-Session") == ("s2", "header")
    assert session_identity({}, body) == ("task-7", "user")
    del body["user"]
    first, source = session_identity({}, body)
    grown = {**body, "messages": [*messages, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "x"}]}
    assert source == "hash" and session_identity({}, grown)[0] == first  # the same task as it grows
    other = {**body, "messages": [messages[0], {"role": "user", "content": "another task"}]}
    assert session_identity({}, other)[0] != first
    ids = {"model": "m", "prompt": list(range(300))}
    assert session_identity({}, ids)[0] == session_identity({}, {"model": "m", "prompt": list(range(400))})[0]


def test_prompt_tokens_are_exact_for_token_ids_and_four_characters_a_token_for_text() -> None:
    assert estimate_prompt_tokens({"prompt": list(range(123))}) == 123
    assert estimate_prompt_tokens({"prompt": "x" * 400}) == 100
    chat = {"messages": [{"role": "user", "content": "x" * 40}, {"role": "user", "content": [{"type": "text",
                                                                                             "text": "y" * 40}]}]}
    assert estimate_prompt_tokens(chat) == 20 + 2 * 4


# ----------------------------------------------------------------------------- the openai client through it
def test_the_openai_client_gets_answers_and_streams_through_the_gateway(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    with gateway_on(up_url) as (url, gateway):
        llm = client(url, "task-1")
        reply = llm.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": PROMPT}],
                                            temperature=0.5)
        assert reply.choices[0].message.content == "hello"
        chunks = list(llm.chat.completions.create(model="fake-model", stream=True,
                                                  messages=[{"role": "user", "content": PROMPT}]))
        assert [c.choices[0].delta.content for c in chunks] == [f"t{i} " for i in range(fake.chunks)]
        text = "".join(c.choices[0].text for c in llm.completions.create(model="fake-model", prompt=[1, 2, 3],
                                                                          max_tokens=5, stream=True))
        assert text == "".join(f"t{i} " for i in range(fake.chunks))
        assert [m.id for m in llm.models.list()] == ["fake-model"]
        # bodies arrive as sent, the key and the session header with them
        headers, body = fake.requests[0]
        assert body == {"model": "fake-model", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0.5}
        assert headers["authorization"] == f"Bearer {SECRET}" and headers["x-session-id"] == "task-1"
        assert "priority" not in body
        state = gateway.control.state()
        assert state["admitted"] == 1 and state["admitted_total"] == 1  # three calls, one session


def test_mars_priority_is_sent_when_asked(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    with gateway_on(up_url, send_priority=True) as (url, _):
        llm = client(url, "p")
        llm.completions.create(model="fake-model", prompt=list(range(100)), max_tokens=1)
        llm.completions.create(model="fake-model", prompt=list(range(100 + 5000)), max_tokens=1)
        assert [body["priority"] for _, body in fake.requests] == [0, 1]  # MLFQ levels: <= 2048, <= 8192 new tokens


# ----------------------------------------------------------------------------- admission
def test_a_sessions_first_call_waits_until_admitted_and_its_later_calls_pass(upstream: tuple[str, FakeUpstream],
                                                                             tmp_path: Path) -> None:
    up_url, fake = upstream
    one = ("mars.pool_size=1", "mars.window_init=1", "mars.window_min=1")
    log = tmp_path / "events.jsonl"
    with gateway_on(up_url, sets=one, events_log=str(log)) as (url, gateway):
        client(url, "a").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        results: list[Any] = []

        async def second() -> None:
            async with httpx.AsyncClient() as http:
                r = await http.post(url + "/v1/completions", headers={"X-Session-ID": "b"},
                                    json={"model": "fake-model", "prompt": [2], "max_tokens": 1})
                results.append((r.status_code, time.monotonic()))

        import threading

        thread = threading.Thread(target=asyncio.run, args=(second(),))
        thread.start()
        wait_for(lambda: gateway.control.state()["backlog"] == 1)
        client(url, "a").completions.create(model="fake-model", prompt=[1, 5], max_tokens=1)  # admitted: passes
        assert not results and len(fake.requests) == 2
        ended = time.monotonic()
        r = httpx.post(url + "/v1/mars/events", json={"event": "session_end", "session_id": "a"})
        assert r.status_code == 200
        thread.join(5)
        assert results and results[0][0] == 200 and results[0][1] >= ended
        m = metrics_of(url)
        assert m["mars_gateway_admitted_sessions"] == 1 and m["mars_gateway_backlog_sessions"] == 0
        assert m["mars_gateway_window"] == 1 and m["mars_gateway_sessions_ended_total{reason=session_end}"] == 1
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["session_id"] for e in events if e["kind"] == "session_admitted"] == ["a", "b"]


def test_a_session_ended_while_it_waits_is_answered_at_once(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    one = ("mars.pool_size=1", "mars.window_init=1", "mars.window_min=1")
    with gateway_on(up_url, sets=one) as (url, gateway):
        client(url, "a").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        answers: list[httpx.Response] = []

        import threading

        waiting = threading.Thread(target=lambda: answers.append(httpx.post(
            url + "/v1/completions", headers={"X-Session-ID": "b"}, json={"model": "fake-model", "prompt": [2]})))
        waiting.start()
        wait_for(lambda: gateway.control.state()["backlog"] == 1)
        assert httpx.post(url + "/v1/mars/events", json={"event": "session_end", "session_id": "b"}).status_code == 200
        waiting.join(5)
        assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "session_ended"
        assert len(fake.requests) == 1 and gateway.control.state()["backlog"] == 0


def test_a_first_call_not_admitted_in_time_is_503_and_leaves_the_backlog(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, _ = upstream
    one = ("mars.pool_size=1", "mars.window_init=1", "mars.window_min=1")
    with gateway_on(up_url, sets=one, admission_timeout_s=0.3) as (url, gateway):
        client(url, "a").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        with pytest.raises(openai.InternalServerError) as info:
            client(url, "b").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        assert info.value.status_code == 503 and info.value.body["code"] == "admission_timeout"
        assert gateway.control.state()["backlog"] == 0


def test_an_idle_session_ends_and_the_next_is_admitted(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, _ = upstream
    one = ("mars.pool_size=1", "mars.window_init=1", "mars.window_min=1")
    with gateway_on(up_url, sets=one, session_idle_s=0.3) as (url, gateway):
        client(url, "a").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        started = time.monotonic()
        client(url, "b").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        assert time.monotonic() - started >= 0.25  # waited for a's idle end
        assert gateway.control.ended_total == {"idle": 1}


def test_an_unknown_session_is_404_for_events_and_a_new_session_for_calls(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, _ = upstream
    with gateway_on(up_url) as (url, gateway):
        r = httpx.post(url + "/v1/mars/events", json={"event": "tool_started", "session_id": "nobody"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session"
        r = httpx.post(url + "/v1/mars/events", json={"event": "explode", "session_id": "nobody"})
        assert r.status_code == 400 and "error" in r.json()
        client(url, "newcomer").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        assert "newcomer" in gateway.control.sessions
        r = httpx.post(url + "/v1/mars/events", headers={"X-Session-ID": "newcomer"},
                       json={"event": "tool_started", "cores": 4, "wait_s": 1.5})
        assert r.status_code == 200 and gateway.control.tool_signals().inflight == 1
        assert gateway.control.tool_signals().ema_wait_s == 1.5
        httpx.post(url + "/v1/mars/events", headers={"X-Session-ID": "newcomer"}, json={"event": "tool_finished"})
        assert gateway.control.tool_signals().inflight == 0  # it reports its tools: its gap is not guessed


# ----------------------------------------------------------------------------- routing
def test_sessions_stay_on_their_upstream_and_new_ones_go_to_the_least_loaded() -> None:
    first, second = FakeUpstream(), FakeUpstream()
    with serving(first.app) as url1, serving(second.app) as url2, gateway_on(url1, url2) as (url, gateway):
        for session in ("a", "b", "a", "c", "b", "a"):
            client(url, session).completions.create(model="fake-model", prompt=[1], max_tokens=1)
        on_first = [h["x-session-id"] for h, _ in first.requests]
        on_second = [h["x-session-id"] for h, _ in second.requests]
        assert on_first == ["a", "a", "c", "a"] and on_second == ["b", "b"]
        httpx.post(url + "/v1/mars/events", json={"event": "session_end", "session_id": "a"})
        httpx.post(url + "/v1/mars/events", json={"event": "session_end", "session_id": "c"})
        client(url, "d").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        assert first.requests[-1][0]["x-session-id"] == "d"  # first holds none now, second holds b
        m = metrics_of(url)
        assert m["mars_gateway_upstream_sessions{upstream=0}"] == 1
        assert m["mars_gateway_upstream_sessions{upstream=1}"] == 1
        assert m["mars_gateway_upstream_kv_usage"] == pytest.approx(0.1)  # both /metrics combined
    assert gateway.control.state()["admitted_total"] == 4


# ----------------------------------------------------------------------------- failures
def test_an_upstream_failing_mid_stream_ends_the_stream_with_an_error(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    fake.fail_after = 2
    with gateway_on(up_url) as (url, _):
        seen = []
        with pytest.raises(openai.APIError, match="mid-stream"):
            for chunk in client(url, "s").chat.completions.create(model="fake-model", stream=True,
                                                                  messages=[{"role": "user", "content": PROMPT}]):
                seen.append(chunk.choices[0].delta.content)
        assert seen == ["t0 ", "t1 "]
        assert metrics_of(url)["mars_gateway_upstream_errors_total{kind=broken_stream}"] == 1


def test_an_unreachable_upstream_is_502_and_a_slow_one_504(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    with gateway_on(up_url, request_timeout_s=0.2) as (url, gateway):
        fake.interval_s = 1.0
        with pytest.raises(openai.APIStatusError) as info:
            client(url, "slow").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        assert info.value.status_code == 504 and info.value.body["code"] == "upstream_timeout"
        gateway.urls = ("http://127.0.0.1:9",)  # nothing listens there
        with pytest.raises(openai.APIStatusError) as info:
            client(url, "slow").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        assert info.value.status_code == 502 and info.value.body["type"] == "upstream_error"


def test_a_client_that_disconnects_cancels_its_upstream_stream(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    fake.chunks, fake.interval_s = 200, 0.05
    with gateway_on(up_url) as (url, gateway):
        with httpx.stream("POST", url + "/v1/completions", headers={"X-Session-ID": "gone"},
                          json={"model": "fake-model", "prompt": [1], "stream": True}) as r:
            chunks = r.iter_raw()  # held: a dropped iterator closes the response, i.e. disconnects
            next(chunks)
            time.sleep(0.2)
            assert fake.open == 1 and fake.cancelled == 0  # still streaming
        wait_for(lambda: fake.cancelled == 1 and fake.open == 0)
        wait_for(lambda: metrics_of(url)["mars_gateway_streams_in_flight"] == 0)
        assert gateway.control.sessions["gone"].in_flight == 0


def test_a_body_too_large_is_413_and_not_json_is_400(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    with gateway_on(up_url, max_body_bytes=1000) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
        assert httpx.post(url + "/v1/completions", content=b"{nope").status_code == 400
        assert not fake.requests


# ----------------------------------------------------------------------------- operability
def test_metrics_parse_with_prometheus_clients_parser_and_health_answers(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, _ = upstream
    with gateway_on(up_url) as (url, _):
        for session in ("a", "b"):
            client(url, session).completions.create(model="fake-model", prompt=[1], max_tokens=1)
        wait_for(lambda: "mars_gateway_upstream_kv_usage" in metrics_of(url))
        m = metrics_of(url)
        assert m["mars_gateway_admitted_sessions"] == 2 and m["mars_gateway_window"] == 30
        assert m["mars_gateway_active_limit"] >= 1 and m["mars_gateway_sessions_admitted_total"] == 2
        assert m["mars_gateway_admission_wait_seconds_count"] == 2
        assert m["mars_gateway_upstream_latency_seconds_count{upstream=0}"] == 2
        assert m["mars_gateway_requests_total{endpoint=completions,status=200}"] == 2
        health = httpx.get(url + "/health")
        assert health.status_code == 200 and health.json()["upstreams"][0]["metrics"] is True


def test_logs_name_sessions_and_never_prompts_or_keys(upstream: tuple[str, FakeUpstream],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    up_url, _ = upstream
    with caplog.at_level(logging.INFO, logger="mars_bench.serve"), gateway_on(up_url) as (url, _):
        client(url, "logged").chat.completions.create(model="fake-model",
                                                      messages=[{"role": "user", "content": PROMPT}])
        list(client(url, "logged").chat.completions.create(model="fake-model", stream=True,
                                                           messages=[{"role": "user", "content": PROMPT}]))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mars_bench.serve"]
    assert {"session_arrived", "session_admitted", "call"} <= {line["event"] for line in lines}
    text = caplog.text
    assert "logged" in text and PROMPT not in text and SECRET not in text and "Bearer" not in text


# ----------------------------------------------------------------------------- the command
def test_bad_input_is_one_line_and_exit_2(upstream: tuple[str, FakeUpstream], capsys: pytest.CaptureFixture) -> None:
    up_url, _ = upstream
    taken = free_socket()
    taken.listen()
    port = str(taken.getsockname()[1])
    cases = [(["--upstream", "ftp://x"], "not an http(s)"), (["--upstream", "http://127.0.0.1:9"], "no server answers"),
             (["--upstream", up_url, "--port", port], "cannot listen"),
             (["--upstream", up_url, "--port", "0", "--set", "engine_args.block_size=3"], "admission settings only"),
             (["--upstream", up_url, "--port", "0", "--set", "mars.window_min=0"], "window_min"),
             (["--upstream", up_url, "--port", "0", "--events-log", "/nonexistent/dir/e.jsonl"], "cannot write")]
    try:
        for args, expected in cases:
            assert main(["serve", *args]) == 2, args
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, err
    finally:
        taken.close()


def test_sigterm_drains_the_streams_in_flight_then_exits_0(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    fake.chunks, fake.interval_s = 20, 0.05
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "--upstream", up_url, "--port", str(port),
                             "--drain", "10"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/health"), 20)
        with httpx.stream("POST", url + "/v1/completions", headers={"X-Session-ID": "d"}, timeout=20,
                          json={"model": "fake-model", "prompt": [1], "stream": True}) as r:
            lines = iter(r.iter_lines())
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert first.startswith("data: ") and rest[-1] == "data: [DONE]" and len(rest) == fake.chunks
        assert proc.wait(15) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in err and "gateway_stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_untagged_calls_are_a_hashed_session_or_pass_at_once(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    one = ("mars.pool_size=1", "mars.window_init=1", "mars.window_min=1")
    messages = [{"role": "system", "content": "agent"}, {"role": "user", "content": PROMPT}]
    with gateway_on(up_url, sets=one) as (url, gateway):
        client(url).chat.completions.create(model="fake-model", messages=messages)
        client(url).chat.completions.create(model="fake-model", messages=[*messages, {"role": "user", "content": "go"}])
        assert [gs.source for gs in gateway.control.sessions.values()] == ["hash"]  # one session, both calls
    with gateway_on(up_url, sets=one, untagged="pass", admission_timeout_s=0.3) as (url, gateway):
        client(url, "a").completions.create(model="fake-model", prompt=[1], max_tokens=1)  # holds the only slot
        client(url).completions.create(model="fake-model", prompt=[9, 9], max_tokens=1)  # passes anyway
        assert list(gateway.control.sessions) == ["a"] and fake.requests[-1][1]["prompt"] == [9, 9]


# ----------------------------------------------------------------------------- the control plane (sans-IO)
def test_the_control_plane_runs_the_harness_admission_object_and_guesses_tools_from_gaps() -> None:
    from harness.backends import get_backend
    from harness.config import make_config
    from mars_impl.admission import MarsAdmission

    sets = ("mars.pool_size=2", "mars.window_init=2", "mars.window_min=1")
    gateway = build_gateway(["http://127.0.0.1:9"], sets=sets, tool_cores=4)
    control = gateway.control
    harness = get_backend("mars-admission", "http").make_admission(make_config(sets, backend="mars-admission",
                                                                               engine="http", tool_cores=4))
    assert type(control.admission) is type(harness) is MarsAdmission
    assert control.admission.settings == harness.settings and control.admission.tool_cores == 4
    a = control.call_arrives("a", "header", 100, 10, 0.0)
    b = control.call_arrives("b", "header", 100, 10, 0.1)
    c = control.call_arrives("c", "header", 50, 10, 0.2)
    assert a.admitted_s == 0.0 and b.admitted_s == 0.1 and c.admitted_s is None  # two slots
    control.call_started(a, 0.0)
    assert control.tool_signals().inflight == 0  # a's call in flight, b admitted but not called yet
    control.call_ended(a, 1.0)
    assert control.tool_signals().inflight == 1  # a between calls: on a tool
    idle = control.session_idle_s
    assert control.expire(0.1 + idle - 0.01) == []
    assert [gs.id for gs in control.expire(0.1 + idle)] == ["b"]  # admitted, never called: idle since admitted
    assert control.admit(0.1 + idle) == [c]  # its slot goes to the backlog
    assert [gs.id for gs in control.expire(1.0 + idle)] == ["a"] and set(control.sessions) == {"c"}


def test_a_client_that_leaves_the_backlog_takes_its_session_out(upstream: tuple[str, FakeUpstream]) -> None:
    up_url, fake = upstream
    one = ("mars.pool_size=1", "mars.window_init=1", "mars.window_min=1")
    with gateway_on(up_url, sets=one) as (url, gateway):
        client(url, "a").completions.create(model="fake-model", prompt=[1], max_tokens=1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", headers={"X-Session-ID": "b"}, timeout=0.3,
                       json={"model": "fake-model", "prompt": [2]})
        wait_for(lambda: gateway.control.ended_total.get("client_gone") == 1)
        assert gateway.control.state()["backlog"] == 0 and len(fake.requests) == 1
