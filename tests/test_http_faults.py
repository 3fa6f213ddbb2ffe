"""Faulty servers and interrupts against `--engine http`: a server that hangs cannot hold a run (Ctrl-C ends
it within 5 s, leaving no process; `--request-timeout` fails a hung call at the timeout), a stream without
tokens is a failed call that makes the run invalid, and a run that stopped early still writes its tables
and a summary that says how far it got - also an interrupted sim run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import stop_requested
from harness.report.load import load_results
from harness.results import find_run
from tests.fake_openai import OpenAIHandler
from tests.processes import processes_with, wait_for_calls

REPO = Path(__file__).resolve().parents[1]
METRICS_PAGE = ('vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0\n'
                'vllm:kv_cache_usage_perc{engine="0"} 0.1\nvllm:num_requests_running{engine="0"} 1.0\n')


class FaultyServer(ThreadingHTTPServer):
    """An OpenAI-compatible completions server in threads of this process, with a /metrics page. It streams
    `good_calls` completions well, then does `then` to every further one: "hang" (never answers), "hang-mid-
    stream" (sends the headers and one token, then nothing), "no-tokens" (a stream with only its usage) or
    "error" (answers 400)."""

    daemon_threads = True
    metrics_page = METRICS_PAGE

    def __init__(self, good_calls: int, then: str) -> None:
        self.good_calls, self.then = good_calls, then
        self.streamed = self.hanging = self.scrapes = 0
        self.metrics_delay_s = 0.0  # how long /metrics takes to answer
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at teardown: hung handlers return
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone before its answer (a timed-out scrape, a cancelled call) is expected here: nothing is
        printed, where socketserver would print a traceback into whichever test runs at that moment."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _Handler(OpenAIHandler):
    server: FaultyServer

    def _hang(self) -> None:
        server = self.server
        with server.lock:
            server.hanging += 1
        server.release.wait()
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/metrics":
            with self.server.lock:
                self.server.scrapes += 1
            time.sleep(self.server.metrics_delay_s)
        super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        if not body.get("stream"):  # the client's probe: token-id prompts are fine here
            self._send(200, json.dumps({"choices": [{"text": "x"}]}).encode())
            return
        with server.lock:
            server.streamed += 1
            good = server.streamed <= server.good_calls
        usage = {"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 0}}
        if not good and server.then == "error":
            self._send(400, json.dumps({"error": {"message": "bad request"}}).encode())
            return
        if not good and server.then == "hang":
            self._hang()
            return
        if not good and server.then == "hang-mid-stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(f"data: {json.dumps({'choices': [{'text': 'a', 'token_ids': [17]}]})}\n\n".encode())
            self.wfile.flush()
            self._hang()
            return
        chunks = [] if not good else [{"choices": [{"text": "a", "token_ids": [17]}]} for _ in range(body["max_tokens"])]
        usage["usage"]["completion_tokens"] = len(chunks)
        stream = "".join(f"data: {json.dumps(c)}\n\n" for c in [*chunks, usage]) + "data: [DONE]\n\n"
        self._send(200, stream.encode(), "text/event-stream")


@pytest.fixture
def faulty() -> Iterator[Any]:
    servers: list[FaultyServer] = []

    def make(good_calls: int, then: str) -> FaultyServer:
        servers.append(FaultyServer(good_calls, then))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def _children(pid: int) -> set[int]:
    """The child processes of `pid` now (every thread's children, from /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended; only its parent's wait is missing


# ---------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("then", ["hang", "hang-mid-stream"])
def test_ctrl_c_ends_a_run_against_a_hung_server_within_5_s_and_keeps_what_it_measured(
        faulty: Any, tmp_path: Path, run_cli: Any, then: str) -> None:
    server = faulty(good_calls=5, then=then)
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "harness.cli", "run", "--engine", "http", "--base-url", server.url, "-b",
            "mars-admission", "-w", "tiny", "--results-dir", str(results)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run_dir = wait_for_calls(results, proc, 5)
        deadline = time.monotonic() + 60
        while server.hanging < 2 and time.monotonic() < deadline:  # calls are stuck in the server now
            time.sleep(0.1)
        assert server.hanging >= 2, "the run sent no further call"
        time.sleep(0.5)
        children = _children(proc.pid)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert took <= 5.0, f"Ctrl-C took {took:.1f} s"
    assert code == 130 and err.strip().splitlines() == ["mars-bench: error: aborted"], err  # the CLI's code for it
    assert not processes_with(str(results).encode()) and not any(_alive(c) for c in children)
    # what was measured is kept, in the tables and a summary that says how far the run got
    assert find_run(results, "latest").status == "interrupted"
    calls = pd.read_parquet(run_dir / "calls.parquet")
    assert len(calls) >= 5 and calls["first_token_s"].notna().all()
    summary = _summary(run_dir)
    done = summary["completed_sessions"]
    assert summary["valid"] is False and summary["num_sessions"] == 16 and done < 16
    assert summary["invalid_reasons"] == [f"interrupted after {done} of 16 sessions"]
    assert len(pd.read_parquet(run_dir / "sessions.parquet")) == 16
    shown = run_cli("results", "show", "latest", "--results-dir", str(results))
    assert f"no (interrupted after {done} of 16 sessions)" in shown.stdout, shown.stdout


# ---------------------------------------------------------------------------------- failed calls
def test_a_stream_without_tokens_is_a_failed_call_and_the_run_is_invalid(faulty: Any, tmp_path: Path,
                                                                        run_cli: Any) -> None:
    server = faulty(good_calls=6, then="no-tokens")
    result = run_cli("run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny",
                     "--results-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr  # the run itself went to its end: invalid, not failed
    out = json.loads(result.stdout)
    run_dir = Path(out["run_dir"])
    summary = _summary(run_dir)
    calls = pd.read_parquet(run_dir / "calls.parquet")
    failed = calls[calls["error"].notna()]
    assert summary["failed"] == len(failed) > 0 and summary["completed"] == 6
    assert (failed["error"] == "the server's stream ended without a token").all()
    assert failed["first_token_s"].isna().all() and failed["finish_s"].isna().all()
    assert summary["mean_ttft_ms"] is not None  # over the 6 calls that streamed, not the failed ones
    # every session whose call failed ended there: incomplete, and the run is invalid saying why
    assert summary["completed_sessions"] < 16 and summary["valid"] is False
    assert f"{len(failed)} calls failed" in summary["invalid_reasons"]
    assert summary["engine_stats"]["calls_failed"] == len(failed)
    shown = run_cli("results", "show", "latest", "--results-dir", str(tmp_path))
    assert "calls failed" in shown.stdout and f"{len(failed)} calls failed" in shown.stdout
    listed = load_results([tmp_path]).runs  # a report lists it, never ranks it
    assert len(listed) == 1 and listed[0].excluded.startswith("invalid: ")
    assert listed[0].excluded.endswith(f"; {len(failed)} calls failed")


def test_request_timeout_fails_a_hung_call_at_the_timeout_and_the_run_goes_on(faulty: Any, tmp_path: Path,
                                                                             run_cli: Any) -> None:
    server = faulty(good_calls=3, then="hang")
    started = time.monotonic()
    watchdog = threading.Timer(60, os.kill, (os.getpid(), signal.SIGINT))  # a timeout that never fires: Ctrl-C
    watchdog.start()
    try:
        result = run_cli("run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny",
                         "--sessions", "4", "--request-timeout", "1.5", "--results-dir", str(tmp_path), "--json")
    finally:
        watchdog.cancel()
    took = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    summary = _summary(run_dir)
    assert summary["failed"] >= 1 and summary["valid"] is False and took < 60
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["kind"] == "call" and e.get("error")]
    assert len(failed) == summary["failed"]
    for call in failed:  # each failed when its time ran out: not before, and not much later
        assert "within 1.5 s (--request-timeout)" in call["error"]
        assert 1.5 <= call["t"] - call["arrival_s"] < 3.0, call
    assert [e["session_id"] for e in events if e["kind"] == "session_failed"] == [c["session_id"] for c in failed]
    assert not [t for t in threading.enumerate() if t.name == "mars-bench-http"]  # the client's loop has ended


def test_a_failed_run_writes_its_tables_and_a_summary_of_what_it_measured(faulty: Any, tmp_path: Path,
                                                                          run_cli: Any) -> None:
    server = faulty(good_calls=6, then="error")
    result = run_cli("run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny",
                     "--results-dir", str(tmp_path))
    assert result.exit_code == 1 and "answered 400" in result.stderr  # a server answering errors ends the run
    run = find_run(tmp_path, "latest")
    assert run.status == "failed" and "answered 400" in run.meta["error"]
    summary = run.summary()
    assert summary is not None and summary["completed"] >= 6 and summary["num_sessions"] == 16
    done = summary["completed_sessions"]
    assert summary["valid"] is False and summary["invalid_reasons"] == [f"failed after {done} of 16 sessions"]
    assert len(pd.read_parquet(run.dir / "calls.parquet")) == summary["completed"]
    assert len(pd.read_parquet(run.dir / "sessions.parquet")) == 16


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_a_bad_request_timeout_is_one_line_exit_2(run_cli: Any, tmp_path: Path, value: str) -> None:
    result = run_cli("run", "--engine", "http", "--base-url", "http://127.0.0.1:9", "-w", "tiny",
                     "--request-timeout", value, "--results-dir", str(tmp_path))
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--request-timeout" in result.stderr


# ------------------------------------------------------------------------------- interrupted sim
def test_an_interrupted_sim_run_reads_as_interrupted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     run_cli: Any) -> None:
    from harness import experiment

    session = experiment._CountingSink.session

    def ctrl_c_after_5(self: Any, t: float, row: dict[str, Any]) -> None:
        session(self, t, row)
        if self.done == 5:
            stop_requested.set()  # what the CLI's SIGINT handler sets; the run stops at its next step

    monkeypatch.setattr(experiment._CountingSink, "session", ctrl_c_after_5)
    try:
        result = run_cli("run", "-b", "vllm", "-w", "swe-smoke", "--sessions", "40", "--results-dir", str(tmp_path))
    finally:
        stop_requested.clear()
    assert result.exit_code == 130
    run = find_run(tmp_path, "latest")
    assert run.status == "interrupted"
    summary = run.summary()
    assert summary is not None and summary["num_sessions"] == 40 and summary["completed_sessions"] == 5
    assert summary["invalid_reasons"] == ["interrupted after 5 of 40 sessions"]
    shown = run_cli("results", "show", "latest", "--results-dir", str(tmp_path)).stdout
    assert "5/40" in shown and "no (interrupted after 5 of 40 sessions)" in shown
    # a run killed before it wrote anything but its event log reads the same
    for name in ("summary.json", "calls.parquet", "sessions.parquet"):
        (run.dir / name).unlink()
    shown = run_cli("results", "show", "latest", "--results-dir", str(tmp_path)).stdout
    assert "5/40" in shown and "no (interrupted after 5 of 40 sessions)" in shown


# --------------------------------------------------------------------- interrupted isolated reference
def test_ctrl_c_during_the_isolated_reference_keeps_the_references_computed(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path, run_cli: Any) -> None:
    from harness import bound
    from harness.engines.sim import run as sim_run

    simulate, alone = sim_run.simulate, []
    monkeypatch.setattr(bound, "simulate", simulate)  # the bound's floors are not counted below

    def ctrl_c_at_the_6th(*args: Any, **kwargs: Any) -> Any:
        alone.append(1)
        if len(alone) == 6:
            raise KeyboardInterrupt  # what the CLI's SIGINT handler raises
        return simulate(*args, **kwargs)

    monkeypatch.setattr(sim_run, "simulate", ctrl_c_at_the_6th)
    argv = ("run", "-b", "vllm", "-w", "swe-smoke", "--sessions", "12", "--results-dir", str(tmp_path))
    result = run_cli(*argv)
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == "mars-bench: error: aborted"
    cache = tmp_path / ".cache" / "isolated.json"
    assert len(json.loads(cache.read_text())) == 5  # the five computed before the Ctrl-C
    alone.clear()
    monkeypatch.setattr(sim_run, "simulate", lambda *a, **k: alone.append(1) or simulate(*a, **k))
    assert run_cli(*argv).exit_code == 0
    assert len(alone) == 7  # only the references still missing
    assert len(json.loads(cache.read_text())) == 12


def test_a_long_isolated_reference_is_kept_as_it_grows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.config import RunConfig
    from harness.engines.sim import run as sim_run
    from harness.engines.sim.testbed import build_setup
    from workloads.source import WorkloadRequest, resolve

    _, sessions = resolve(WorkloadRequest("swe-smoke", sessions=4))
    cache = tmp_path / "isolated.json"
    simulate, on_disk = sim_run.simulate, []

    def look_at_the_cache(*args: Any, **kwargs: Any) -> Any:  # what a kill -9 now would leave
        on_disk.append(len(json.loads(cache.read_text())) if cache.exists() else 0)
        return simulate(*args, **kwargs)

    monkeypatch.setattr(sim_run, "simulate", look_at_the_cache)
    monkeypatch.setattr(sim_run, "KEEP_EVERY_S", 0.0)
    sim_run.isolated_jcts(sessions, build_setup(RunConfig(workload="swe-smoke")), cache=cache)
    assert on_disk == [0, 1, 2, 3] and len(json.loads(cache.read_text())) == 4


def test_the_servers_metrics_are_read_on_the_clients_loop_never_on_the_harnesss_thread(faulty: Any) -> None:
    """A /metrics scrape (~5 ms on vLLM's CPU server, here 0.9 s) never holds up the harness's thread - the
    arrivals due meanwhile, and the TTFT of their calls - and the readings keep coming while the run goes on."""
    from harness.engines.http import METRICS_POLL_S, HttpEngine, HttpTarget, ServerLimits

    server = faulty(good_calls=10, then="error")
    engine = HttpEngine(HttpTarget(server.url), ServerLimits(4096))
    try:
        engine.start()  # the first reading is taken here, before the first arrival
        assert engine.signals() is not None and engine.signals().kv_usage == 0.1
        server.metrics_delay_s = 0.9  # within the scrape's 1 s limit
        server.metrics_page = METRICS_PAGE.replace("} 0.1", "} 0.6")
        started = time.monotonic()
        readings = [engine.signals() for _ in range(200)]
        assert time.monotonic() - started < 0.6  # a blocking scrape would have taken 0.9 s at least
        assert all(r is not None and r.kv_usage == 0.1 for r in readings)  # the newest reading until a new one
        deadline = time.monotonic() + 30
        while engine.signals() is None or engine.signals().kv_usage != 0.6:
            assert time.monotonic() < deadline, "the loop never read the new page"
            time.sleep(METRICS_POLL_S)
        assert server.scrapes >= 2
        server.metrics_delay_s = 1.5  # every scrape fails now (1 s limit): the reading ages and is dropped
        deadline = time.monotonic() + 30
        while engine.signals() is not None:
            assert time.monotonic() < deadline, "a stale reading was kept"
            time.sleep(METRICS_POLL_S)
    finally:
        engine.close()
