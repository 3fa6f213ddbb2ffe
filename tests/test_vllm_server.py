"""`--engine vllm --vllm-mode server`: vLLM's OpenAI server launched with the plugin, serving a run, and
gone afterwards - after a normal end, after Ctrl-C, and when the server dies mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.engines.vllm.server import parse_metrics, server_command
from harness.results import find_run
from harness.tables import CALL_COLUMNS
from tests.processes import processes_with, wait_for_calls

pytestmark = pytest.mark.engine

PRESSURE = ("--set", "engine_args.num_gpu_blocks=50", "--set", "engine_args.block_size=32")


def server_pids(run: Path) -> list[int]:
    """The server's processes: its command line names the run directory (its logs are there)."""
    return processes_with(str(run).encode())


def start_run(model: Path, results: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "harness.cli", "run", "--engine", "vllm", "--vllm-mode", "server", "--model",
           str(model), "-b", "mars", "-w", "tiny", *PRESSURE, "--results-dir", str(results)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_server_command_line_and_metrics_parsing() -> None:
    argv = server_command({"model": "m", "enforce_eager": True, "async_scheduling": False,
                           "additional_config": {"a": 1}, "block_size": 32}, 8000)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in argv and "--no-async-scheduling" in argv
    assert argv[argv.index("--additional-config") + 1] == '{"a": 1}' and argv[argv.index("--port") + 1] == "8000"
    text = ('# HELP x\nvllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
            'vllm:num_requests_running{engine="0"} 3.0\nvllm:num_preemptions_total{engine="0"} 7.0\n')
    assert parse_metrics(text) == {"kv_usage": 0.25, "running": 3.0, "preemptions": 7.0}


def test_a_run_against_the_server_then_the_server_is_gone(run_cli, tiny_model_dir: Path, tmp_path: Path) -> None:
    res = run_cli("run", "--engine", "vllm", "--vllm-mode", "server", "--model", str(tiny_model_dir), "-b", "mars",
                  "-w", "tiny", *PRESSURE, "--results-dir", str(tmp_path), "--json")
    assert res.exit_code == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    run = Path(out["run_dir"])
    assert out["completed_sessions"] == 16
    calls = pd.read_parquet(run / "calls.parquet")
    assert list(calls.columns) == list(CALL_COLUMNS) and len(calls) == 68
    assert (calls[calls["turn"] > 0]["cached_tokens"] > 0).mean() > 0.5  # vLLM's prompt_tokens_details
    stats = json.loads((run / "summary.json").read_text())["engine_stats"]
    assert stats["vllm_mode"] == "server" and stats["vllm_prefix_cache_hits"] > 0
    assert (run / "server.log").stat().st_size > 0 and (run / "steps.jsonl").stat().st_size > 0
    assert not server_pids(run)


def test_chat_against_the_launched_server_carries_the_session_metadata(run_cli, tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    res = run_cli("run", "--engine", "vllm", "--vllm-mode", "server", "--model", str(tiny_model_dir), "-b", "mars",
                  "-w", "tiny", "--sessions", "2", "--endpoint", "chat", "--header", "X-Request-Source=mars",
                  "--set", "engine_args.block_size=32", "--results-dir", str(tmp_path), "--json")
    assert res.exit_code == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    run = Path(out["run_dir"])
    assert out["completed_sessions"] == 2
    calls = pd.read_parquet(run / "calls.parquet")
    assert calls["error"].isna().all() and (calls[calls["turn"] > 0]["cached_tokens"] > 0).any()
    stats = json.loads((run / "summary.json").read_text())["engine_stats"]
    assert stats["vllm_mode"] == "server" and stats["vllm_prefix_cache_hits"] > 0
    # the plugin scheduled the chat requests as the sessions' calls: their metadata arrived in vllm_xargs
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    scheduled = {c for step in steps for c in json.dumps(step).split('"') if c.startswith("tiny-0-")}
    assert {c.split("#")[0] for c in scheduled} == {"tiny-0-00000", "tiny-0-00001"}
    assert not server_pids(run)


def test_ctrl_c_stops_the_server_and_keeps_the_measured_calls(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = start_run(tiny_model_dir, tmp_path)
    run = wait_for_calls(tmp_path, proc, 5)
    assert server_pids(run)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert len(find_run(tmp_path, "latest").calls()) >= 5
    assert not server_pids(run)


def test_a_server_killed_mid_run_fails_the_run_with_a_clear_message(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = start_run(tiny_model_dir, tmp_path)
    run = wait_for_calls(tmp_path, proc, 5)
    for pid in server_pids(run):
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    message = err.decode()
    assert proc.returncode == 1 and "Traceback" not in message, message[-2000:]
    assert "vLLM server" in message and "server.log" in message
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "failed" and "vLLM server" in meta["error"]
    assert len(find_run(tmp_path, "latest").calls()) >= 5
    time.sleep(1)
    assert not server_pids(run)
