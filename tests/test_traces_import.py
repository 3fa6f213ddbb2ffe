"""Recorded trajectories -> sessions: per call the tokens of the messages since the previous call and of the
model's output, tool durations from the recorded timestamps, one parser per format, bad files in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workloads.model import load_sessions
from workloads.synthetic import get_preset
from workloads.traces import classify_command
from workloads.tokens import save_tokenizer_dir, train_bpe

FIXTURES = Path(__file__).parent / "fixtures" / "trajectories"
SWE_AGENT = FIXTURES / "swe-agent" / "django__django-11099" / "django__django-11099.traj"
OPENHANDS = FIXTURES / "openhands" / "sessions" / "astropy__astropy-12907"
MINI = FIXTURES / "mini-swe-agent" / "sympy__sympy-20590" / "sympy__sympy-20590.traj.json"


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [p.read_text() for p in sorted(FIXTURES.rglob("*.json*")) + [SWE_AGENT]]
    directory = save_tokenizer_dir(train_bpe(texts, vocab_size=700), tmp_path_factory.mktemp("tok"))
    return directory / "tokenizer.json"


@pytest.fixture(scope="module")
def count(tokenizer_file: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _import(run_cli, path: Path, fmt: str, out: Path, *args: str) -> list:
    result = run_cli("workloads", "import", "trajectories", str(path), "--format", fmt, "-o", str(out), *args)
    assert result.exit_code == 0, result.stderr
    return load_sessions(out)


def _tools(session) -> list:
    return [(t.tool.name, t.tool.cpu_seconds, t.tool.cores) if t.tool else None for t in session.turns]


def _content(message: dict) -> str:
    c = message["content"]
    return c if isinstance(c, str) else "".join(part["text"] for part in c)


def _calls_text(message: dict) -> str:
    return "".join(c["function"]["name"] + c["function"]["arguments"] for c in message.get("tool_calls") or [])


# --------------------------------------------------------------------------------------- the formats
def test_swe_agent_traj(run_cli, tmp_path: Path, tokenizer_file: Path, count) -> None:
    (s,) = _import(run_cli, SWE_AGENT, "swe-agent", tmp_path / "w.jsonl", "--tokenizer", str(tokenizer_file))
    history = json.loads(SWE_AGENT.read_text())["history"]
    system, task = history[0], history[1]
    assistants = [m for m in history if m["role"] == "assistant"]
    observations = [m for m in history if m["role"] == "tool"]
    assert s.id == "django__django-11099" and s.kind == "swe-agent" and len(s.turns) == 4
    assert s.prefix_tokens == count(system["content"])
    assert [t.new_tokens for t in s.turns] == [count(_content(task))] + [count(_content(o)) for o in observations[:3]]
    assert [t.output_tokens for t in s.turns] == [count(m["content"] + _calls_text(m)) for m in assistants]
    # durations: the trajectory's execution_time; the last call's tool (submit) never reaches the model
    assert _tools(s) == [("read_file", 0.2134, 1), ("edit", 0.1862, 1), ("run_tests", 3.4178, 1), None]


def test_openhands_event_directory(run_cli, tmp_path: Path, tokenizer_file: Path, count) -> None:
    (s,) = _import(run_cli, OPENHANDS / "events", "openhands", tmp_path / "w.jsonl", "--tokenizer", str(tokenizer_file))
    events = {int(p.stem): json.loads(p.read_text()) for p in (OPENHANDS / "events").glob("*.json")}
    assert s.id == "astropy__astropy-12907" and s.kind == "openhands" and len(s.turns) == 4
    system = events[0]["args"]
    assert s.prefix_tokens == count(system["content"] + json.dumps(system["tools"]))
    # turn 0: the user's task and the recalled workspace context; later: the observations since the last call
    assert [t.new_tokens for t in s.turns] == [
        count(events[1]["args"]["content"]) + count(events[3]["content"]),
        count(events[6]["content"]), count(events[8]["content"]),
        count(events[10]["content"]) + count(events[12]["content"]),
    ]
    # output: the model response of each call, counted once even when it made two tool calls (events 9, 11)
    responses = [events[i]["tool_call_metadata"]["model_response"]["choices"][0]["message"] for i in (5, 7, 9, 13)]
    assert [t.output_tokens for t in s.turns] == [count(m["content"] + _calls_text(m)) for m in responses]
    # durations: observation timestamp - action timestamp; the two runs of call 3 are one test-run call
    assert _tools(s) == [("grep", 0.4, 1), ("edit", 0.2, 1), ("run_tests", 7.4, 1), None]


def test_mini_swe_agent_traj(run_cli, tmp_path: Path, tokenizer_file: Path, count) -> None:
    (s,) = _import(run_cli, MINI, "mini-swe-agent", tmp_path / "w.jsonl", "--tokenizer", str(tokenizer_file))
    messages = json.loads(MINI.read_text())["messages"]
    assert s.id == "sympy__sympy-20590" and s.kind == "mini-swe-agent" and len(s.turns) == 5
    assert s.prefix_tokens == count(messages[0]["content"])
    assert [t.new_tokens for t in s.turns] == [count(m["content"]) for m in messages[1:10:2]]
    assert [t.output_tokens for t in s.turns] == [count(m["content"]) for m in messages[2:11:2]]
    assert _tools(s) == [("grep", 0.12, 1), ("edit", 0.05, 1), ("python", 1.8, 1), ("run_tests", 12.4, 1), None]


def test_directories_are_searched_and_formats_share_nothing(run_cli, tmp_path: Path) -> None:
    for fmt, single in (("swe-agent", SWE_AGENT), ("openhands", OPENHANDS / "events"), ("mini-swe-agent", MINI)):
        root = FIXTURES / fmt
        assert _import(run_cli, root, fmt, tmp_path / "dir.jsonl") == _import(run_cli, single, fmt, tmp_path / "one.jsonl")
    # the same agent configuration (system prompt) gives the same shared prefix id
    twice = tmp_path / "twice"
    for name in ("a", "b"):
        (twice / name).mkdir(parents=True)
        shutil.copy(MINI, twice / name / "run.traj.json")
    a, b = _import(run_cli, twice, "mini-swe-agent", tmp_path / "t.jsonl", "--rps", "0.5")
    assert (a.id, b.id) == ("run", "run-2") and a.prefix_id == b.prefix_id and b.arrival_s == 2.0


def test_openhands_event_lists_history_objects_and_output_jsonl_are_one_stream(run_cli, tmp_path: Path) -> None:
    events = [json.loads(p.read_text()) for p in sorted((OPENHANDS / "events").glob("*.json"), key=lambda p: int(p.stem))]
    (tmp_path / "events.json").write_text(json.dumps(events))
    (tmp_path / "record.json").write_text(json.dumps({"instance_id": "astropy__astropy-12907", "history": events}))
    (tmp_path / "output.jsonl").write_text(json.dumps({"instance_id": "astropy__astropy-12907", "history": events}) + "\n")
    (expected,) = _import(run_cli, OPENHANDS, "openhands", tmp_path / "dir.jsonl")
    for name in ("events.json", "record.json", "output.jsonl"):
        (s,) = _import(run_cli, tmp_path / name, "openhands", tmp_path / "o.jsonl")
        assert s.turns == expected.turns and s.prefix_tokens == expected.prefix_tokens


def test_untimed_tools_are_drawn_from_the_tool_kind_model(run_cli, tmp_path: Path) -> None:
    data = json.loads(MINI.read_text())
    for m in data["messages"]:
        m.get("extra", {}).pop("timestamp", None)
    untimed = tmp_path / "untimed.traj.json"
    untimed.write_text(json.dumps(data))
    runs = [_import(run_cli, untimed, "mini-swe-agent", tmp_path / f"{seed}.jsonl", "--seed", str(seed))[0]
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and _tools(runs[0]) != _tools(runs[2])
    spec = get_preset("swe").mix["swe"]
    for tool in (t.tool for t in runs[0].turns if t.tool):
        kind = spec.tools[tool.name]
        assert kind.cpu_seconds.low <= tool.cpu_seconds <= kind.cpu_seconds.high and tool.cores in kind.cores
    assert [t.new_tokens for t in runs[0].turns] == [t.new_tokens for t in runs[2].turns]


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("cd /testbed && python -m pytest tests/test_x.py -q", "run_tests"),
        ("python tests/runtests.py auth_tests", "run_tests"),
        ("bin/test sympy/core", "run_tests"),
        ("pip install -e . && python setup.py build_ext -i", "build"),
        ("make -j4", "build"),
        ("str_replace_editor str_replace /a.py", "edit"),
        ("sed -i 's/a/b/' f.py", "edit"),
        ("cat > /tmp/r.py <<'EOF'\nprint(1)\nEOF", "edit"),
        ("str_replace_editor view /a.py", "read_file"),
        ("cat -n setup.py", "read_file"),
        ("python reproduce.py", "python"),
        ("grep -rn foo .", "grep"),
        ("find_file models.py", "grep"),
        ("ls -la", "grep"),
        ("submit", None),
        ("", None),
    ],
)
def test_commands_are_classified_into_the_preset_tool_kinds(command: str, kind: str | None) -> None:
    assert classify_command(command) == kind


# ----------------------------------------------------------------------------------------- bad input
def _copy_json(tmp: Path, src: Path, name: str, edit) -> Path:
    data = json.loads(src.read_text())
    edit(data)
    (tmp / name).write_text(json.dumps(data))
    return tmp / name


def _truncated(tmp: Path) -> Path:
    text = SWE_AGENT.read_text()
    (tmp / "cut.traj").write_text(text[: len(text) // 2])
    return tmp / "cut.traj"


def _openhands_bad_event(tmp: Path) -> Path:
    events = shutil.copytree(OPENHANDS / "events", tmp / "events")
    (events / "7.json").write_text(json.dumps({"id": 7, "timestamp": "2025-03-04T10:00:05", "source": "agent"}))
    return events


def _openhands_bad_time(tmp: Path) -> Path:
    events = shutil.copytree(OPENHANDS / "events", tmp / "events")
    event = json.loads((events / "6.json").read_text())
    event["timestamp"] = "yesterday"
    (events / "6.json").write_text(json.dumps(event))
    return events


@pytest.mark.parametrize(
    ("fmt", "make", "needle"),
    [
        ("swe-agent", _truncated, "cut.traj: invalid JSON"),
        ("swe-agent", lambda tmp: shutil.copy(MINI, tmp / "mini.traj"), "mini.traj: missing field 'history'"),
        ("swe-agent", lambda tmp: _copy_json(tmp, SWE_AGENT, "x.traj", lambda d: d["history"][3].pop("role")),
         "x.traj: history[3]: missing field 'role'"),
        ("swe-agent", lambda tmp: _copy_json(tmp, SWE_AGENT, "x.traj", lambda d: d.pop("trajectory")),
         "x.traj: missing field 'trajectory'"),
        ("swe-agent", lambda tmp: OPENHANDS.parent, "no swe-agent trajectories in the directory"),
        ("mini-swe-agent", lambda tmp: shutil.copy(SWE_AGENT, tmp / "s.json"), "s.json: missing field 'messages'"),
        ("mini-swe-agent", lambda tmp: _copy_json(tmp, MINI, "m.json", lambda d: d["messages"][4].update(content=7)),
         "m.json: messages[4]: field 'content' must be a string"),
        ("mini-swe-agent", lambda tmp: _copy_json(tmp, MINI, "m.json", lambda d: d.update(
            messages=[m for m in d["messages"] if m["role"] != "assistant"])), "m.json: no LLM calls"),
        ("mini-swe-agent", lambda tmp: _copy_json(tmp, MINI, "m.json", lambda d: d.update(trajectory_format="x")),
         "is not a mini-swe-agent format"),
        ("openhands", lambda tmp: SWE_AGENT, "history[0]: neither 'action' nor 'observation'"),
        ("openhands", lambda tmp: shutil.copy(MINI, tmp / "m.json"), "m.json: missing field 'history'"),
        ("openhands", _openhands_bad_event, "events/7.json: neither 'action' nor 'observation'"),
        ("openhands", _openhands_bad_time, "events/6.json: field 'timestamp' is not an ISO 8601 time"),
        ("openhands", lambda tmp: tmp / "missing", "missing: no such file or directory"),
    ],
)
def test_bad_trajectory_files_give_one_line_naming_the_file(run_cli, tmp_path: Path, fmt: str, make,
                                                            needle: str) -> None:
    source = make(tmp_path)
    result = run_cli("workloads", "import", "trajectories", str(source), "--format", fmt, "-o", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 2, result.stdout
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_format_is_a_usage_error(run_cli, tmp_path: Path) -> None:
    result = run_cli("workloads", "import", "trajectories", str(MINI), "--format", "aider", "-o", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--format" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ end to end
def test_compare_runs_imported_trajectories_end_to_end(run_cli, tmp_path: Path, tokenizer_file: Path) -> None:
    lines = []
    for fmt in ("swe-agent", "openhands", "mini-swe-agent"):
        out = tmp_path / f"{fmt}.jsonl"
        _import(run_cli, FIXTURES / fmt, fmt, out, "--tokenizer", str(tokenizer_file))
        lines.append(out.read_text())
    workload = tmp_path / "traces.jsonl"
    workload.write_text("".join(lines))
    result = run_cli("compare", "--backends", "vllm,mars", "--workload", str(workload), "--rps", "0.5", "--seeds", "0",
                     "--results-dir", str(tmp_path / "res"), "--out", str(tmp_path / "cmp"), "--json")
    assert result.exit_code == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert sorted(r["backend"] for r in runs) == ["mars", "vllm"]
    import pandas as pd

    turns = {s.id: len(s.turns) for s in load_sessions(workload)}
    for run in runs:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        assert summary["completed_sessions"] == 3 and summary["valid"]
        done = pd.read_parquet(Path(run["run_dir"]) / "sessions.parquet")
        assert dict(zip(done["session_id"], done["turns_done"])) == turns
