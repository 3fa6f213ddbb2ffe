"""The results directory: streamed events, final status on success, error, Ctrl-C and kill; reading back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import BadInput
from harness.results import RunWriter, find_run, list_runs, load_run, make_run_id
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS


def call_row(sid: str, turn: int, t0: float) -> dict:
    return {
        "session_id": sid, "turn": turn, "arrival_s": t0, "first_scheduled_s": t0 + 0.1, "first_token_s": t0 + 0.2,
        "finish_s": t0 + 1.0, "prompt_tokens": 100, "output_tokens": 9, "cached_tokens": 50,
        "recomputed_tokens": 0, "preemptions": 0, "itl_s": [0.1] * 8, "error": None,
    }


def session_row(sid: str, arrival: float, finish: float | None) -> dict:
    return {
        "session_id": sid, "arrival_s": arrival, "admitted_s": arrival, "finish_s": finish if finish is not None else float("nan"),
        "completed": finish is not None, "num_turns": 2, "turns_done": 2 if finish is not None else 1,
        "prompt_tokens": 200, "output_tokens": 18, "llm_s": 2.0, "tool_s": 1.0, "tool_wait_s": 0.0,
        "isolated_jct_s": 3.0,
        "floor_jct_s": 2.5,
        "pool_jct_s": 2.5,
    }


def test_run_json_is_written_first_and_updated_last(tmp_path: Path) -> None:
    with RunWriter(tmp_path, "r1", {"backend": "vllm", "workload": "swe-smoke"}, seed=7) as run:
        meta = json.loads((run.dir / "run.json").read_text())
        assert meta["status"] == "running" and meta["seed"] == 7 and meta["config"]["backend"] == "vllm"
        assert meta["versions"]["python"] and meta["hardware"]["cpus"] >= 1 and "commit" in meta["git"]
        run.call(1.0, call_row("a", 0, 0.0))
        # flushed immediately: readable while the run still goes
        assert json.loads((run.dir / "events.jsonl").read_text())["kind"] == "call"
        calls = pd.DataFrame([call_row("a", 0, 0.0), call_row("a", 1, 2.0)])
        sessions = pd.DataFrame([session_row("a", 0.0, 3.0)])
        run.finish(calls, sessions, {"mean_jct_s": 3.0})
    record = load_run(tmp_path / "r1")
    assert record.status == "completed" and record.meta["finished"]
    assert list(record.calls().columns) == list(CALL_COLUMNS)
    assert list(record.sessions().columns) == list(SESSION_COLUMNS)
    assert record.calls()["itl_s"].iloc[1].tolist() == [0.1] * 8
    assert record.summary() == {"mean_jct_s": 3.0}


@pytest.mark.parametrize(("exc", "status"), [(RuntimeError("engine died"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_exception_marks_status_and_keeps_events(tmp_path: Path, exc: BaseException, status: str) -> None:
    with pytest.raises(type(exc)):
        with RunWriter(tmp_path, "r", {}, seed=1) as run:
            run.call(1.0, call_row("a", 0, 0.0))
            raise exc
    record = load_run(tmp_path / "r")
    assert record.status == status
    assert len(record.calls()) == 1  # rebuilt from the event log
    if status == "failed":
        assert record.meta["error"] == "RuntimeError: engine died"


def test_killed_run_is_readable_and_reported_interrupted(tmp_path: Path) -> None:
    """A process killed mid-run (no chance to clean up) leaves its events; the tables are rebuilt from them."""
    script = textwrap.dedent(f"""
        import os, signal
        from harness.results import RunWriter
        from tests.test_results import call_row, session_row
        run = RunWriter({str(tmp_path)!r}, "killed", {{"backend": "mars"}}, seed=1)
        run.call(1.0, call_row("a", 0, 0.0))
        run.session(1.5, session_row("a", 0.0, 1.5))
        run.call(2.0, call_row("b", 0, 1.0))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], timeout=60)
    assert proc.returncode == -9
    record = load_run(tmp_path / "killed")
    assert record.status == "interrupted"
    assert list(record.calls()["session_id"]) == ["a", "b"]
    sessions = record.sessions()
    assert sessions["completed"].tolist() == [True] and sessions["finish_s"].tolist() == [1.5]


def test_find_run_by_id_prefix_path_and_latest(tmp_path: Path) -> None:
    for name in ("20260101-000000-vllm-x-s1", "20260102-000000-mars-x-s1"):
        with RunWriter(tmp_path, name, {}, seed=1):
            pass
    assert [r.run_id for r in list_runs(tmp_path)] == ["20260101-000000-vllm-x-s1", "20260102-000000-mars-x-s1"]
    assert find_run(tmp_path, "20260102").run_id.endswith("mars-x-s1")
    assert find_run(tmp_path, str(tmp_path / "20260101-000000-vllm-x-s1")).run_id.startswith("20260101")
    assert find_run(tmp_path, "latest").run_id in {r.run_id for r in list_runs(tmp_path)}
    with pytest.raises(BadInput, match="ambiguous"):
        find_run(tmp_path, "2026")
    with pytest.raises(BadInput, match="no run 'zzz'"):
        find_run(tmp_path, "zzz")


def test_run_ids_are_unique(tmp_path: Path) -> None:
    first = make_run_id("mars", "paper", 1, tmp_path)
    (tmp_path / first).mkdir()
    second = make_run_id("mars", "paper", 1, tmp_path)
    assert first != second and first.endswith("mars-paper-s1")
