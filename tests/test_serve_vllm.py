"""The gateway in front of a real (unmodified) vLLM CPU server decides as the harness does: mars-bench's own
`--engine http` load generator, pointed at the gateway with session headers (`--backend vllm`: it admits
nothing itself), gets the sessions admitted in the same order as `--backend mars-admission` admits them
against the same server, for the same workload and admission settings.

The workload makes that order a matter of MARS's rules, not of timing: one active session at a time
(pool_size 1), six sessions arriving 0.1 s apart with first prompts of different lengths, each running
three calls and two 0.5 s tools (over a second), so the backlog holds every later session before the first one
ends, and each end frees one slot that MARS gives to the backlog's shortest first turn (order "shortest":
the backlog exceeds the free slots). Timing tolerance: the expected order holds as long as the last arrival
(0.5 s) comes before the first session ends (>= 1 s: two 0.5 s tools) - a margin of 0.5 s for HTTP and
polling jitter; the gateway ends a session `--session-idle` (1.5 s, above the 0.5 s tool gaps) after its
last call, so its admission times lag the harness's by about that much per session, and only the order is
compared, exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.cli import main
from harness.engines.vllm.server import VllmServer
from tests.fake_upstream import free_socket
from tests.test_http_engine import vllm_server  # noqa: F401 - the module's unmodified vLLM server fixture
from workloads.model import Session, ToolCall, Turn, save_sessions

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent
FIRST_PROMPTS = (60, 50, 140, 40, 100, 70)  # session i's first prompt (tokens)
ADMISSION = ("--set", "mars.pool_size=1", "--set", "mars.window_init=1", "--set", "mars.window_min=1")
TOOL_CORES = "8"


def workload(path: Path) -> Path:
    tool = ToolCall(name="pytest", cpu_seconds=0.5)
    sessions = [Session(id=f"s{i}", arrival_s=round(0.1 * i, 3),
                        turns=(Turn(new_tokens=n, output_tokens=6, tool=tool),
                               Turn(new_tokens=12, output_tokens=6, tool=tool), Turn(new_tokens=12, output_tokens=6)))
                for i, n in enumerate(FIRST_PROMPTS)]
    save_sessions(sessions, path)
    return path


def expected_order() -> list[str]:
    """s0 starts at once; s1..s5 wait; each end admits the shortest waiting first turn."""
    waiting = sorted(range(1, len(FIRST_PROMPTS)), key=lambda i: (FIRST_PROMPTS[i], i))
    return ["s0", *(f"s{i}" for i in waiting)]


def harness_order(run_dir: Path) -> list[str]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e["session_id"] for e in events if e.get("kind") == "session_admitted"]


@pytest.fixture
def gateway(vllm_server: VllmServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:  # noqa: F811
    """`mars-bench serve` in front of the server, as a user starts it; always stopped."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    events = tmp_path / "gateway-events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "--upstream", vllm_server.url, "--port",
                             str(port), "--policy", "mars", *ADMISSION, "--tool-cores", TOOL_CORES, "--session-idle",
                             "1.5", "--untagged", "pass", "--events-log", str(events), "--log-level", "warning"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.1)
        yield url, events
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_gateway_admits_in_the_order_mars_admission_does(vllm_server: VllmServer,  # noqa: F811
                                                             gateway: tuple[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    path = workload(tmp_path / "six.jsonl")
    common = ["run", "--engine", "http", "-w", str(path), "--tool-cores", TOOL_CORES, "--json"]
    assert main([*common, "--base-url", vllm_server.url, "-b", "mars-admission", *ADMISSION,
                 "--results-dir", str(tmp_path / "direct")]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["completed_sessions"] == 6
    url, events = gateway
    assert main([*common, "--base-url", url, "-b", "vllm", "--header", "X-Session-ID={session_id}",
                 "--results-dir", str(tmp_path / "via")]) == 0
    via = json.loads(capsys.readouterr().out)
    assert via["completed_sessions"] == 6
    wanted = expected_order()
    assert wanted != sorted(wanted)  # MARS's shortest-first order, not the arrival order
    assert harness_order(Path(direct["run_dir"])) == wanted
    admitted = [e["session_id"] for e in map(json.loads, events.read_text().splitlines())
                if e["kind"] == "session_admitted"]
    assert admitted == wanted
    arrived = [e for e in map(json.loads, events.read_text().splitlines()) if e["kind"] == "session_arrived"]
    assert [e["prompt_tokens"] for e in sorted(arrived, key=lambda e: e["session_id"])] == list(FIRST_PROMPTS)
    # the harness, as the client, saw the waits: each session's first call waited for the one before it to end
    calls = json.loads(httpx.get(url + "/v1/mars/state").text)
    assert calls["admitted_total"] == 6 and calls["backlog"] == 0


def test_the_openai_client_streams_from_vllm_through_the_gateway(vllm_server: VllmServer,  # noqa: F811
                                                                 gateway: tuple[str, Path]) -> None:
    import openai

    url, events = gateway
    llm = openai.OpenAI(base_url=url + "/v1", api_key="unused", default_headers={"X-Session-ID": "oa"}, max_retries=0)
    model = llm.models.list().data[0].id
    stream = llm.completions.create(model=model, prompt=[1, 2, 3, 4], max_tokens=8, stream=True,
                                    extra_body={"ignore_eos": True})
    choices = [chunk.choices[0] for chunk in stream if chunk.choices]
    assert len(choices) >= 2 and choices[-1].finish_reason == "length"  # streamed, chunk by chunk, to its end
    whole = llm.completions.create(model=model, prompt=[1, 2, 3, 4], max_tokens=8, extra_body={"ignore_eos": True})
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds.count("session_admitted") == 1 and kinds.count("session_arrived") == 1  # two calls, one session


def test_mars_priority_reaches_a_vllm_server_with_priority_scheduling(tiny_model_dir: Path, tmp_path: Path) -> None:
    """vLLM started with --scheduling-policy priority accepts the gateway's calls with their `priority` field
    (levels 0 and 1) and serves them. (Which value is set is checked on the fake upstream, tests/test_serve.py;
    vLLM 0.32 also accepts the field without priority scheduling, so its effect on the order is not checked.)"""
    import openai

    from harness.engines.vllm.engine import VllmSetup, engine_args, prepare_environment

    setup = VllmSetup(model=str(tiny_model_dir), max_model_len=4096, num_gpu_blocks=200, block_size=32,
                      load_format="dummy", cache_dir=str(tmp_path / "cache"))
    prepare_environment(setup.cache_dir)
    args = {k: v for k, v in engine_args(setup, {}).items() if k not in ("scheduler_cls", "additional_config")}
    server = VllmServer({**args, "scheduling_policy": "priority"}, tmp_path / "server.log")
    server.start()
    try:
        from harness.serve.run import build_gateway
        from tests.fake_upstream import serving

        gateway = build_gateway([server.url], send_priority=True)
        with serving(gateway.app) as url:
            llm = openai.OpenAI(base_url=url + "/v1", api_key="unused", default_headers={"X-Session-ID": "p"},
                                max_retries=0)
            model = llm.models.list().data[0].id
            for prompt in ([5] * 100, [5] * 3000):  # levels 0 and 1
                reply = llm.completions.create(model=model, prompt=prompt, max_tokens=2, extra_body={"ignore_eos": True})
                assert reply.usage is not None and reply.usage.completion_tokens == 2
            assert gateway.control.sessions["p"].calls == 2
    finally:
        server.stop()

