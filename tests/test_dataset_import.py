"""`mars-bench workloads import mooncake|sharegpt|burstgpt|vllm-multiturn|aiperf`: the fixtures in
tests/fixtures/datasets/ (hand-written in each public format) round-trip into sessions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from workloads.model import Session, load_sessions

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def est(text: str) -> int:
    """The importers' default token estimate: 4 characters per token, rounded up."""
    return math.ceil(len(text) / 4)


def _import(run_cli, tmp_path: Path, fmt: str, name: str, *args: str) -> tuple[list[Session], str]:
    out = tmp_path / f"{fmt}.jsonl"
    result = run_cli("workloads", "import", fmt, str(FIXTURES / name), "-o", str(out), *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    # load_sessions sorts by arrival; the files are written in file order, which these fixtures keep
    return [Session.model_validate_json(line) for line in out.read_text().splitlines()], result.stdout


def _prompt(session: Session) -> int:
    return session.prompt_tokens(0)


def test_mooncake_keeps_lengths_times_and_shared_blocks(run_cli, tmp_path: Path) -> None:
    sessions, _ = _import(run_cli, tmp_path, "mooncake", "mooncake_trace.jsonl")
    rows = [json.loads(line) for line in (FIXTURES / "mooncake_trace.jsonl").read_text().splitlines()]
    assert len(sessions) == len(rows)
    for s, row in zip(sessions, rows):
        assert len(s.turns) == 1
        assert _prompt(s) == row["input_length"] and s.turns[0].output_tokens == row["output_length"]
        assert s.arrival_s == pytest.approx(row["timestamp"] / 1000)
    by_id = {s.id: s for s in sessions}
    # rows 0, 1, 3 start with block 0: row 1 shares two blocks with row 0, row 3 three
    assert by_id["mooncake-000001"].prefix_id == by_id["mooncake-000000"].prefix_id == by_id["mooncake-000003"].prefix_id
    assert by_id["mooncake-000001"].prefix_tokens == 2 * 512
    assert by_id["mooncake-000003"].prefix_tokens == 3 * 512
    assert by_id["mooncake-000000"].prefix_tokens == 1200 - 1  # its whole prompt is shared, one token kept new
    assert by_id["mooncake-000002"].prefix_tokens == by_id["mooncake-000005"].prefix_tokens == 512
    assert by_id["mooncake-000002"].prefix_id != by_id["mooncake-000000"].prefix_id
    assert by_id["mooncake-000004"].prefix_id is None  # block 7 appears once


def test_sharegpt_makes_multi_turn_sessions(run_cli, tmp_path: Path) -> None:
    sessions, _ = _import(run_cli, tmp_path, "sharegpt", "sharegpt.json", "--rps", "0.5")
    data = json.loads((FIXTURES / "sharegpt.json").read_text())
    assert [s.id for s in sessions] == [c["id"] for c in data]
    assert [s.arrival_s for s in sessions] == [0.0, 2.0, 4.0]
    first, follow_up, merged = sessions
    conv = data[0]["conversations"]
    assert first.prefix_tokens == est(conv[0]["value"]) and first.prefix_id.startswith("sharegpt/")
    assert [(t.new_tokens, t.output_tokens) for t in first.turns] == [
        (est(conv[1]["value"]), est(conv[2]["value"])), (est(conv[3]["value"]), est(conv[4]["value"]))]
    assert first.turns[0].tool is not None and first.turns[0].tool.cpu_seconds == 0 and first.turns[-1].tool is None
    # a leading gpt message is dropped, and so is the last user message that got no reply
    assert len(follow_up.turns) == 1 and follow_up.turns[0].new_tokens == est("What temperature?")
    # two human messages in a row are one user turn
    conv = data[2]["conversations"]
    assert len(merged.turns) == 3
    assert merged.turns[1].new_tokens == est(conv[2]["value"] + "\n" + conv[3]["value"])


def test_burstgpt_keeps_token_counts_and_times_and_leaves_out_failures(run_cli, tmp_path: Path) -> None:
    sessions, stdout = _import(run_cli, tmp_path, "burstgpt", "burstgpt.csv")
    with (FIXTURES / "burstgpt.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["Response tokens"]) > 0]
    assert len(sessions) == len(rows) == 5 and "left out 1 failed request" in stdout
    assert len(stdout.strip().splitlines()) == 1  # piped, a message longer than the console stays one line
    start = float(rows[0]["Timestamp"])
    for s, row in zip(sessions, rows):
        assert _prompt(s) == int(row["Request tokens"]) and s.turns[0].output_tokens == int(row["Response tokens"])
        assert s.arrival_s == pytest.approx(float(row["Timestamp"]) - start)


def test_vllm_multiturn_conversations(run_cli, tmp_path: Path) -> None:
    sessions, _ = _import(run_cli, tmp_path, "vllm-multiturn", "vllm_multiturn.json")
    data = json.loads((FIXTURES / "vllm_multiturn.json").read_text())
    assert [s.id for s in sessions] == ["hiWPlMD", "k2LmQzX"]
    msgs = data[0]["messages"]
    assert [(t.new_tokens, t.output_tokens) for t in sessions[0].turns] == [
        (est(msgs[i]["content"]), est(msgs[i + 1]["content"])) for i in range(0, 6, 2)]
    # turn 2's prompt holds the whole history: every earlier user message and reply
    assert sessions[0].prompt_tokens(2) == sum(est(m["content"]) for m in msgs[:5])
    assert sessions[1].prefix_tokens == est("Answer as briefly as possible.")


def test_aiperf_multi_turn_single_turn_and_trace(run_cli, tmp_path: Path) -> None:
    multi, _ = _import(run_cli, tmp_path, "aiperf", "aiperf_multi_turn.jsonl", "--output-tokens", "77")
    assert [s.id for s in multi] == ["chat_1", "chat_2"]
    assert [t.output_tokens for t in multi[0].turns] == [120, 80]
    assert [t.output_tokens for t in multi[1].turns] == [60, 77, 40]  # the turn without output_length
    assert multi[1].prefix_tokens == est("You are a terse assistant. Answer in one sentence.")
    assert multi[1].turns[0].new_tokens == est("Explain neural networks.")

    single, _ = _import(run_cli, tmp_path / "s", "aiperf", "aiperf_single_turn.jsonl")
    assert [s.arrival_s for s in single] == [0.0, 1.2, 1.8, 4.5]
    assert single[2].turns[0].new_tokens == est("What is 2+2?\nAnswer with a number.")
    assert single[3].turns[0].output_tokens == 256  # --output-tokens' default

    trace, _ = _import(run_cli, tmp_path / "t", "aiperf", "aiperf_mooncake_trace.jsonl")
    assert [_prompt(s) for s in trace] == [655, 672, 1140]
    assert [s.arrival_s for s in trace] == [0.0, 10.535, 27.482]
    assert {s.prefix_id for s in trace} == {"mooncake/46"} and trace[2].prefix_tokens == 1024


def test_an_imported_trace_runs_on_its_own_timestamps(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "mc.jsonl"
    assert run_cli("workloads", "import", "mooncake", str(FIXTURES / "mooncake_trace.jsonl"), "-o", str(out)).exit_code == 0
    result = run_cli("run", "-b", "vllm", "-w", str(out), "--arrival", "trace", "--results-dir", str(tmp_path / "r"),
                     "--json")
    assert result.exit_code == 0, result.stdout
    import pandas as pd

    sessions = pd.read_parquet(Path(json.loads(result.stdout)["run_dir"]) / "sessions.parquet")
    assert sorted(sessions["arrival_s"]) == sorted(s.arrival_s for s in load_sessions(out))
    assert sessions["completed"].all()


@pytest.mark.parametrize(("fmt", "name", "text", "needle"), [
    ("mooncake", "t.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
                            '{"timestamp": 5, "input_length": 600, "output_length": 2, "hash_ids": [1]}\n',
     "t.jsonl:2: 1 hash_ids cover 512 tokens, fewer than input_length 600"),
    ("mooncake", "t.jsonl", '{"timestamp": 0, "input_length": 10, "hash_ids": [1]}\n', "t.jsonl:1: missing field 'output_length'"),
    ("mooncake", "t.jsonl", '{"timestamp": 9, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
                            '{"timestamp": 3, "input_length": 10, "output_length": 2, "hash_ids": [2]}\n',
     "t.jsonl:2: timestamps must not decrease"),
    ("sharegpt", "s.json", '[{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]}]',
     "s.json[0].conversations[1]: field 'from' must be one of"),
    ("sharegpt", "s.json", '{"id": "a"}', "expected a JSON list of ShareGPT conversations"),
    ("burstgpt", "b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,ChatGPT,ten,3,13,API log\n",
     "b.csv:2: column 'Request tokens' must be a number, got 'ten'"),
    ("burstgpt", "b.csv", "time,tokens\n1,2\n", "not a BurstGPT CSV: missing column(s) Timestamp"),
    ("vllm-multiturn", "v.json", '[{"id": "a", "messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}]',
     "v.json[0].messages[1]: field 'role' must be one of user, assistant, system, got 'bot'"),
    ("aiperf", "a.jsonl", '{"text": "hi"}\n{"prompt": "hi"}\n', "a.jsonl:2: not an AIPerf record"),
    ("aiperf", "a.jsonl", '{"session_id": "s", "turns": [{"text": "hi", "output_length": 0}]}\n',
     "a.jsonl:1: turns[0]: field 'output_length' must be an integer >= 1"),
])
def test_a_bad_row_is_one_line_naming_it_and_exit_2(run_cli, tmp_path: Path, fmt: str, name: str, text: str,
                                                    needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = run_cli("workloads", "import", fmt, str(path), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_aiperf_turn_delays_become_the_users_think_time(run_cli, tmp_path: Path) -> None:
    multi, _ = _import(run_cli, tmp_path, "aiperf", "aiperf_multi_turn.jsonl", "--think-s", "1.5")
    assert multi[0].turns[0].tool.name == "user" and multi[0].turns[0].tool.cpu_seconds == 2.0  # its delay: 2000 ms
    assert [t.tool.cpu_seconds for t in multi[1].turns[:-1]] == [1.5, 1.5]  # no delay given: --think-s


def test_think_time_passes_on_the_clock_and_takes_no_tool_core(run_cli, tmp_path: Path) -> None:
    """Three conversations at once on one tool core: each waits out its own think time; none queues."""
    sessions, _ = _import(run_cli, tmp_path, "sharegpt", "sharegpt.json", "--think-s", "4")
    gaps = {s.id: 4.0 * (len(s.turns) - 1) for s in sessions}
    result = run_cli("run", "-b", "vllm", "-w", str(tmp_path / "sharegpt.jsonl"), "--rps", "inf", "--tool-cores", "1",
                     "--results-dir", str(tmp_path / "r"), "--json")
    assert result.exit_code == 0, result.stdout
    import pandas as pd

    table = pd.read_parquet(Path(json.loads(result.stdout)["run_dir"]) / "sessions.parquet").set_index("session_id")
    assert table["completed"].all()
    for sid, gap in gaps.items():
        assert table.loc[sid, "tool_s"] == pytest.approx(gap) and table.loc[sid, "tool_wait_s"] == 0
        assert table.loc[sid, "finish_s"] - table.loc[sid, "arrival_s"] >= gap
    # the two conversations with think time overlap: on one core they would have run one after the other
    assert (table["finish_s"] - table["arrival_s"]).max() < sum(gaps.values())


def test_show_counts_think_time_apart_from_tool_load(run_cli, tmp_path: Path) -> None:
    sessions, _ = _import(run_cli, tmp_path, "sharegpt", "sharegpt.json", "--think-s", "3")
    result = run_cli("workloads", "show", str(tmp_path / "sharegpt.jsonl"), "--json")
    assert result.exit_code == 0, result.stdout
    info = json.loads(result.stdout)
    assert info["tool_calls"] == 0 and info["tools"] == {}
    assert info["distributions"]["user think seconds per gap"]["mean"] == 3.0
    assert info["calls"] == sum(len(s.turns) for s in sessions)
