"""benchmarks/reproduction.py: its table has a row per claim, and every figure it prints is computed from
the runs it made (recomputed here from the runs' summary.json and events.jsonl)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from harness.compare import format_ci, format_ratio, mean_ci
from workloads.synthetic import PRESETS, generate, get_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduction  # noqa: E402


def _table(lines: list[str], header_start: str) -> list[list[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_every_paper_names_a_known_preset_backend_and_testbed() -> None:
    from harness.backends import BACKENDS
    from harness.engines.sim.hardware import GPUS, MODELS

    for paper in reproduction.PAPERS.values():
        assert paper.workload in PRESETS and paper.backend in BACKENDS
        assert paper.gpu in GPUS and paper.model in MODELS
        assert paper.claims and all(c.metric in ("jct", "throughput") and 1 <= c.low <= c.high for c in paper.claims)


@pytest.mark.parametrize("name", ["continuum-swe", "infercept-mix", "autellix-programs", "concur-batch"])
def test_paper_presets_have_their_papers_shape(name: str) -> None:
    sessions = list(generate(get_preset(name)))
    kinds = {s.kind for s in sessions}
    assert len(kinds) == len(get_preset(name).mix)  # every kind of the mix occurs
    if name == "infercept-mix":  # GPT-J's context window: 2,048 tokens for nearly every session
        total = [s.prefix_tokens + sum(t.new_tokens + t.output_tokens for t in s.turns) for s in sessions]
        assert sorted(total)[int(0.9 * len(total))] <= 2048
    if name == "autellix-programs":  # heavy-tailed program lengths: the longest far above the median
        turns = sorted(len(s.turns) for s in sessions)
        assert turns[-1] >= 10 * turns[len(turns) // 2]
    if name == "concur-batch":
        assert all(s.arrival_s == 0 for s in sessions)


def test_table_figures_come_from_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    reproduction.main(["--papers", "concur,autellix", "--seeds", "1,2", "--sessions", "6", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    claims = _table(lines, "| paper | backend vs vllm")
    assert [row[0] for row in claims] == ["concur", "autellix"]

    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for run_json in out.glob("*/run.json"):
        config = json.loads(run_json.read_text())["config"]
        summary = json.loads((run_json.parent / "summary.json").read_text())
        runs.setdefault((config["workload"], config["backend"]), {})[config["seed"]] = summary
    assert len(runs) == 4 and all(len(by_seed) == 2 for by_seed in runs.values())

    for row in claims:
        paper = reproduction.PAPERS[row[0]]
        this, ref = runs[(paper.workload, paper.backend)], runs[(paper.workload, "vllm")]
        ratios = [this[s]["session_throughput"] / ref[s]["session_throughput"] for s in (1, 2)]
        estimate = mean_ci(ratios)
        assert row[4] == f"sessions/s ratio {format_ratio(estimate.mean, estimate.ci95)}"
        low = estimate.mean - (estimate.ci95 if math.isfinite(estimate.ci95) else 0)
        expected = "yes" if low > 1 and estimate.mean > 1.01 else "no"
        assert row[6].startswith(expected)

    details = _table(lines, "| paper | backend | mean JCT s")
    assert [(r[0], r[1]) for r in details] == [("concur", "vllm"), ("concur", "concur"),
                                               ("autellix", "vllm"), ("autellix", "autellix")]
    for row in details:
        paper = reproduction.PAPERS[row[0]]
        by_seed = runs[(paper.workload, row[1])].values()
        for column, key in ((2, "mean_jct_s"), (3, "session_throughput")):
            estimate = mean_ci([s[key] for s in by_seed])
            assert row[column] == format_ci(estimate.mean, estimate.ci95)


def test_evidence_is_read_from_the_event_log(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    events = [
        {"kind": "call", "t": 1, "turn": 0, "arrival_s": 0.0, "first_scheduled_s": 1.0, "prompt_tokens": 100,
         "cached_tokens": 0, "recomputed_tokens": 500, "preemptions": 1},
        {"kind": "call", "t": 5, "turn": 1, "arrival_s": 4.0, "first_scheduled_s": 7.0, "prompt_tokens": 200,
         "cached_tokens": 150, "recomputed_tokens": 0, "preemptions": 0},
        {"kind": "session", "t": 6, "session_id": "a"},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    got = reproduction.evidence(run)
    assert got["queue_wait_s"] == 2.0 and got["resumed_hit"] == 0.75
    assert got["recomputed_ktok"] == 0.5 and got["preemptions"] == 1.0 and math.isnan(got["pinned"])
