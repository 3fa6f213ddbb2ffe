"""`report` says when a leaderboard does not compare like for like: backends over other seeds or workloads."""

from __future__ import annotations

from pathlib import Path

from harness.report.leaderboard import NOT_LIKE_FOR_LIKE


def _run(run_cli, results: Path, backend: str, seed: int, workload: str = "swe-smoke") -> None:
    out = run_cli("run", "-b", backend, "-w", workload, "--sessions", "2", "--seed", str(seed),
                  "--results-dir", str(results))
    assert out.exit_code == 0, out.stderr


def _report(run_cli, results: Path, out: Path):
    result = run_cli("report", str(results), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    return result


def test_backends_over_different_seeds_are_warned_about_and_marked(run_cli, tmp_path: Path) -> None:
    for backend, seed in (("vllm", 0), ("vllm", 1), ("mars", 1)):
        _run(run_cli, tmp_path / "results", backend, seed)
    result = _report(run_cli, tmp_path / "results", tmp_path / "report")
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mars-bench: warning: ") and "different seeds (mars 1; vllm 0, 1)" in line
    assert f"swe-smoke · rps 1 {NOT_LIKE_FOR_LIKE}" in result.stdout
    assert "Not like for like: the backends ran different seeds" in (tmp_path / "report" / "report.md").read_text()


def test_a_workload_file_rewritten_between_runs_is_warned_about(run_cli, tmp_path: Path) -> None:
    workload = tmp_path / "w.jsonl"
    for backend, sessions in (("vllm", "3"), ("mars", "4")):
        assert run_cli("workloads", "generate", "swe-smoke", "-o", str(workload), "--sessions", sessions).exit_code == 0
        out = run_cli("run", "-b", backend, "-w", str(workload), "--results-dir", str(tmp_path / "results"))
        assert out.exit_code == 0, out.stderr
    result = _report(run_cli, tmp_path / "results", tmp_path / "report")
    assert "different workloads for seed 0 (mars: 4 sessions; vllm: 3 sessions)" in result.stderr


def test_like_for_like_has_no_warning(run_cli, tmp_path: Path) -> None:
    for backend in ("vllm", "mars"):
        for seed in (0, 1):
            _run(run_cli, tmp_path / "results", backend, seed)
    result = _report(run_cli, tmp_path / "results", tmp_path / "report")
    assert result.stderr == "" and NOT_LIKE_FOR_LIKE not in result.stdout
