"""`mars-bench run --engine vllm`: the agent runner on the real in-process vLLM engine (CPU build, tiny
model, forced KV pressure), written in the same results schema as simulated runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.results import find_run
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS
from tests.processes import processes_with, wait_for_calls

pytestmark = pytest.mark.engine

PRESSURE = ("--set", "engine_args.num_gpu_blocks=50", "--set", "engine_args.block_size=32")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.mark.parametrize("backend", ["vllm", "mars"])
def test_a_real_run_completes_with_the_sim_schema(run_cli, tiny_model_dir: Path, results: Path, backend: str) -> None:
    res = run_cli("run", "--engine", "vllm", "--model", str(tiny_model_dir), "-b", backend, "-w", "tiny",
                  *PRESSURE, "--results-dir", str(results), "--json")
    assert res.exit_code == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    run = Path(out["run_dir"])
    assert out["completed_sessions"] == out["num_sessions"] == 16
    calls, sessions = pd.read_parquet(run / "calls.parquet"), pd.read_parquet(run / "sessions.parquet")
    assert list(calls.columns) == list(CALL_COLUMNS) and list(sessions.columns) == list(SESSION_COLUMNS)
    # every call ran on the engine for its output length, streamed token by token
    assert (calls["output_tokens"] > 0).all() and (calls["finish_s"] >= calls["first_token_s"]).all()
    assert (calls["itl_s"].map(len) == calls["output_tokens"] - 1).all()
    # vLLM's own prefix-cache hits: later turns reuse the session's context
    later = calls[calls["turn"] > 0]
    assert (later["cached_tokens"] > 0).mean() > 0.5
    stats = json.loads((run / "summary.json").read_text())["engine_stats"]
    assert stats["vllm_version"].startswith("0.32") and stats["num_gpu_blocks"] == 49 and stats["block_size"] == 32
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == stats["engine_steps"] or len(steps) > 0.9 * stats["engine_steps"]
    assert {cid.split("#")[0] for s in steps for cid, *_ in s["scheduled"]} == set(sessions["session_id"])


def test_results_commands_read_a_real_run(run_cli, results: Path) -> None:
    run = find_run(results, "latest")
    res = run_cli("results", "show", str(run.dir))
    assert res.exit_code == 0 and "vllm" in res.stdout


def test_the_engine_needs_a_model_directory(run_cli, tmp_path: Path) -> None:
    res = run_cli("run", "--engine", "vllm", "--model", "qwen3-coder-30b-a3b", "-b", "vllm", "-w", "tiny",
                  "--results-dir", str(tmp_path))
    assert res.exit_code == 2 and "make-tiny" in res.stderr and "Traceback" not in res.stderr


def test_sglang_is_not_a_vllm_policy(run_cli, tiny_model_dir: Path, tmp_path: Path) -> None:
    res = run_cli("run", "--engine", "vllm", "--model", str(tiny_model_dir), "-b", "sglang", "-w", "tiny",
                  "--results-dir", str(tmp_path))
    assert res.exit_code == 2 and "does not run on engine 'vllm'" in res.stderr


def _tool_processes() -> list[int]:
    """Live processes running the real-tool busy loop (harness.real_tools.BURN)."""
    return processes_with(b"process_time")


def test_real_tools_run_beside_the_real_engine_and_leave_nothing_behind(run_cli, tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    res = run_cli("run", "--engine", "vllm", "--model", str(tiny_model_dir), "-b", "mars", "-w", "tiny",
                  "--tools", "real", "--tool-cores", "1", "--cpu-stress", "0", *PRESSURE,
                  "--results-dir", str(tmp_path), "--json")
    assert res.exit_code == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    stats = json.loads((Path(out["run_dir"]) / "summary.json").read_text())["engine_stats"]
    sessions = pd.read_parquet(Path(out["run_dir"]) / "sessions.parquet")
    assert out["completed_sessions"] == 16 and stats["tools"] == "real"
    assert stats["tool_calls_run"] == 52 and stats["tool_calls_failed"] == 0  # the tiny preset's 52 tool calls
    assert (sessions["tool_s"] > 0).all()
    assert not _tool_processes()


def test_ctrl_c_stops_the_run_keeps_what_was_measured_and_kills_the_tools(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "harness.cli", "run", "--engine", "vllm", "--model", str(tiny_model_dir), "-b",
           "mars", "-w", "tiny", "--tools", "real", "--tool-cores", "1", *PRESSURE, "--results-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = wait_for_calls(tmp_path, proc, 5, timeout_s=120)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"Traceback" not in err, err.decode()[-2000:]
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "interrupted"
    record = find_run(tmp_path, "latest")
    assert len(record.calls()) >= 5  # what was measured before Ctrl-C is kept
    assert not _tool_processes()
