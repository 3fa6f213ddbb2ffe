"""The workload model: prompt arithmetic, JSONL round trip, and one-line errors naming file:line:field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import BadInput
from workloads.model import Session, ToolCall, Turn, dump_session, load_sessions, save_sessions


def session(sid: str = "s1", arrival: float = 0.0) -> Session:
    return Session(
        id=sid,
        arrival_s=arrival,
        prefix_id="agent",
        prefix_tokens=100,
        turns=(
            Turn(new_tokens=50, output_tokens=10, tool=ToolCall(name="grep", cpu_seconds=0.5)),
            Turn(new_tokens=30, output_tokens=20, tool=ToolCall(name="run_tests", cpu_seconds=4.0, cores=2)),
            Turn(new_tokens=5, output_tokens=7),
        ),
    )


def test_prompt_grows_append_only() -> None:
    s = session()
    assert s.prompt_tokens(0) == 100 + 50
    assert s.prompt_tokens(1) == 100 + 50 + 10 + 30
    assert s.prompt_tokens(2) == 100 + 50 + 10 + 30 + 20 + 5
    assert s.total_prompt_tokens == 150 + 190 + 215
    assert s.total_output_tokens == 37
    assert s.tool_cpu_seconds == 4.5


def test_last_turn_cannot_call_a_tool() -> None:
    with pytest.raises(ValueError, match="last turn"):
        Session(id="x", arrival_s=0, turns=(Turn(new_tokens=1, output_tokens=1, tool=ToolCall(name="t", cpu_seconds=1)),))


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    sessions = [session("a", 0.0), session("b", 2.5)]
    save_sessions(sessions, path)
    assert load_sessions(path) == sessions
    first = json.loads(path.read_text().splitlines()[0])
    assert first["schema_version"] == 1


def _write_lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _good(sid: str) -> dict:
    return json.loads(dump_session(session(sid)))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["turns"][1]["tool"].update(cpu_seconds=-1), "w.jsonl:2: turns[1].tool.cpu_seconds: must be >= 0"),
        (lambda d: d["turns"][0].pop("output_tokens"), "w.jsonl:2: turns[0].output_tokens: missing required field"),
        (lambda d: d.update(colour="red"), "w.jsonl:2: colour: unknown field"),
        (lambda d: d["turns"][0].update(new_tokens="many"), "w.jsonl:2: turns[0].new_tokens: Input should be a valid integer"),
        (lambda d: d.update(arrival_s=-3), "w.jsonl:2: arrival_s: must be >= 0"),
        (lambda d: d.update(schema_version=7), "w.jsonl:2: unsupported schema_version 7"),
    ],
)
def test_bad_field_names_file_line_and_field(tmp_path: Path, mutate, expected: str) -> None:
    bad = _good("b")
    mutate(bad)
    path = _write_lines(tmp_path, [json.dumps(_good("a")), json.dumps(bad)])
    with pytest.raises(BadInput) as info:
        load_sessions(path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / expected.split(":", 1)[0]))
    assert message.endswith(expected.split(":", 1)[1]) or expected.split(":", 1)[1] in message
    assert "\n" not in message


def test_bad_json_names_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [json.dumps(_good("a")), "", '{"id": "b", "turns": ['])
    with pytest.raises(BadInput, match=r"w\.jsonl:3: invalid JSON"):
        load_sessions(path)


def test_duplicate_ids_and_empty_file_rejected(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [json.dumps(_good("a")), json.dumps(_good("a"))])
    with pytest.raises(BadInput, match="duplicate session id 'a'"):
        load_sessions(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(BadInput, match="no sessions"):
        load_sessions(empty)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot read workload file"):
        load_sessions(tmp_path / "nope.jsonl")


def test_a_float_bound_prints_like_a_person_writes_it() -> None:
    from pydantic import ValidationError

    from harness.config import RunConfig
    from workloads.model import format_validation_error

    with pytest.raises(ValidationError) as caught:
        RunConfig(gpu_share=0)
    assert format_validation_error(caught.value) == "gpu_share: must be > 0"  # not "> 0.0"
