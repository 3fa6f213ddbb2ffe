"""The load controls of run/compare/sweep: --max-concurrency, --rps inf, --warmup-sessions, --burstiness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workloads.arrivals import arrival_times, burstiness_of


def _run(run_cli, tmp_path: Path, *args: str) -> tuple[dict, Path]:
    result = run_cli("run", "--results-dir", str(tmp_path), "--json", *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    return data, Path(data["run_dir"])


def _most_in_flight(sessions: pd.DataFrame) -> int:
    """Most sessions between their hand-over to the system (admitted, for a backend without admission
    control) and their end, at any instant; an end frees its slot before a start at the same instant."""
    events = sorted([(t, 1) for t in sessions["admitted_s"]] + [(t, -1) for t in sessions["finish_s"]])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_max_concurrency_is_never_exceeded_and_is_reached(run_cli, tmp_path: Path) -> None:
    args = ("-b", "vllm", "-w", "swe-smoke", "--sessions", "12", "--rps", "inf")
    _, free_dir = _run(run_cli, tmp_path / "free", *args)
    capped, capped_dir = _run(run_cli, tmp_path / "capped", *args, "--max-concurrency", "3")
    free = pd.read_parquet(free_dir / "sessions.parquet")
    sessions = pd.read_parquet(capped_dir / "sessions.parquet")
    calls = pd.read_parquet(capped_dir / "calls.parquet")
    assert _most_in_flight(free) > 3  # without the cap the burst puts more in flight: the cap is what binds
    assert _most_in_flight(sessions) == 3
    assert sessions["completed"].all() and len(sessions) == 12
    # no call of a fourth session runs while three are in flight: calls lie inside their session's window
    windows = sessions.set_index("session_id")[["admitted_s"]]
    joined = calls.join(windows, on="session_id")
    assert (joined["arrival_s"] >= joined["admitted_s"]).all()
    # JCT counts from the scheduled arrival (t=0), the client-queue wait included
    assert (sessions["arrival_s"] == 0).all() and sessions["admitted_s"].max() > 0
    assert capped["load_controls"]["max_sessions_in_flight"] == 3
    assert capped["mean_jct_s"] == pytest.approx((sessions["finish_s"] - sessions["arrival_s"]).mean())


def test_max_concurrency_holds_in_front_of_an_admission_controller(run_cli, tmp_path: Path) -> None:
    _, run_dir = _run(run_cli, tmp_path, "-b", "mars", "-w", "swe-smoke", "--rps", "inf", "--max-concurrency", "2")
    sessions = pd.read_parquet(run_dir / "sessions.parquet")
    assert _most_in_flight(sessions) <= 2 and sessions["completed"].all()


def test_rps_inf_puts_every_arrival_at_zero_and_run_json_stays_json(run_cli, tmp_path: Path) -> None:
    data, run_dir = _run(run_cli, tmp_path, "-b", "vllm", "-w", "swe-smoke", "--rps", "inf")
    sessions = pd.read_parquet(run_dir / "sessions.parquet")
    assert len(sessions) > 1 and (sessions["arrival_s"] == 0).all()
    for name in ("run.json", "summary.json"):
        text = (run_dir / name).read_text()
        assert "Infinity" not in text and "NaN" not in text.replace('"NaN"', "")
        json.loads(text)
    assert json.loads((run_dir / "run.json").read_text())["config"]["rps"] == "inf"
    assert data["config"]["rps"] == "inf"


def test_rps_inf_is_all_zeros_for_every_process() -> None:
    for process in ("fixed", "poisson", "gamma"):
        assert not arrival_times(process, 50, math.inf, np.random.default_rng(0)).any()


def test_warmup_sessions_run_first_and_are_not_measured(run_cli, tmp_path: Path) -> None:
    args = ("-b", "vllm", "-w", "swe-smoke", "--rps", "inf")
    plain, plain_dir = _run(run_cli, tmp_path / "plain", *args)
    warm, warm_dir = _run(run_cli, tmp_path / "warm", *args, "--warmup-sessions", "3")
    sessions = pd.read_parquet(warm_dir / "sessions.parquet")
    calls = pd.read_parquet(warm_dir / "calls.parquet")
    plain_sessions = pd.read_parquet(plain_dir / "sessions.parquet")
    assert not sessions["session_id"].str.startswith("warmup").any()
    assert not calls["session_id"].str.startswith("warmup").any()
    assert sorted(sessions["session_id"]) == sorted(plain_sessions["session_id"])
    assert warm["num_sessions"] == plain["num_sessions"] and warm["completed"] == plain["completed"]
    end = warm["load_controls"]["warmup_end_s"]
    assert end > 0 and warm["load_controls"]["warmup_sessions"] == 3
    assert np.allclose(sessions["arrival_s"], end, atol=1e-6)  # the measured burst starts after the warm-up
    assert calls["arrival_s"].min() >= end - 1e-6
    summary = json.loads((warm_dir / "summary.json").read_text())
    assert summary["load_controls"]["warmup_sessions"] == 3
    events = [json.loads(line) for line in (warm_dir / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events[:2]] == ["warmup_started", "warmup_done"]


def test_without_the_new_flags_nothing_is_written_about_them(run_cli, tmp_path: Path) -> None:
    data, run_dir = _run(run_cli, tmp_path, "-b", "vllm", "-w", "tiny")
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert not {"burstiness", "max_concurrency", "warmup_sessions"} & set(config)
    assert "load_controls" not in data


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_burstiness_gaps_have_vllms_mean_and_cv(burstiness: float) -> None:
    rate = 2.0
    times = arrival_times("gamma", 200_000, rate, np.random.default_rng(7), burstiness=burstiness)
    gaps = np.diff(np.concatenate([[0.0], times]))  # vllm bench draws a gap before the first request too
    assert gaps.mean() == pytest.approx(1 / rate, rel=1e-9)  # rescaled: the schedule spans exactly N/rate
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.03)


def test_burstiness_schedule_spans_n_over_rate_as_vllm_bench() -> None:
    for n, rate in ((10, 0.5), (400, 3.0)):
        times = arrival_times("gamma", n, rate, np.random.default_rng(n), burstiness=0.5)
        assert times[-1] == pytest.approx(n / rate, rel=1e-12) and times[0] > 0
        assert np.all(np.diff(times) >= 0)
    fixed = arrival_times("gamma", 5, 2.0, np.random.default_rng(0), burstiness=math.inf)
    assert fixed == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5])  # vllm bench: burstiness inf = constant gaps


def test_burstiness_one_is_poisson() -> None:
    gamma = np.diff(arrival_times("gamma", 100_001, 1.5, np.random.default_rng(1), burstiness=1.0))
    poisson = np.diff(arrival_times("poisson", 100_001, 1.5, np.random.default_rng(2)))
    quantiles = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    assert np.quantile(gamma, quantiles) == pytest.approx(np.quantile(poisson, quantiles), rel=0.05)
    # an exponential's median is ln 2 times its mean; a gamma of another shape's is not
    assert np.median(gamma) / gamma.mean() == pytest.approx(math.log(2), rel=0.02)
    assert np.median(poisson) / poisson.mean() == pytest.approx(math.log(2), rel=0.02)


def test_cv_is_the_same_shape_on_our_schedule() -> None:
    by_cv = np.diff(arrival_times("gamma", 100_001, 1.0, np.random.default_rng(3), cv=2.0))
    by_b = np.diff(arrival_times("gamma", 100_001, 1.0, np.random.default_rng(3), burstiness=0.25))
    assert by_cv.std() / by_cv.mean() == pytest.approx(by_b.std() / by_b.mean(), rel=0.05)
    assert arrival_times("gamma", 3, 1.0, np.random.default_rng(3), cv=2.0)[0] == 0.0
    assert burstiness_of(0.5, None) == 4.0 and burstiness_of(None, None) == 1.0


def test_burstiness_flag_reaches_the_arrivals(run_cli, tmp_path: Path) -> None:
    out = {}
    for b in ("0.2", "50"):
        path = tmp_path / f"b{b}.jsonl"
        result = run_cli("workloads", "generate", "tiny", "--sessions", "400", "--rps", "1", "--burstiness", b,
                         "-o", str(path))
        assert result.exit_code == 0, result.stdout
        arrivals = [json.loads(line)["arrival_s"] for line in path.read_text().splitlines()]
        gaps = np.diff(arrivals)
        out[b] = gaps.std() / gaps.mean()
    assert out["0.2"] > 1.5 and out["50"] < 0.3


@pytest.mark.parametrize(("args", "needle"), [
    (["--burstiness", "2", "--arrival", "fixed"], "--burstiness shapes gamma arrivals"),
    (["--burstiness", "4", "--cv", "0.5"], "not both"),
    (["--rps", "fast"], "neither a positive number nor inf"),
    (["--rps", "0"], "must be > 0"),
    (["--max-concurrency", "0"], "--max-concurrency"),
])
def test_bad_load_flags_are_one_line_and_exit_2(run_cli, tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli("run", "-w", "tiny", "--results-dir", str(tmp_path), *args)
    assert result.exit_code == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_compare_and_sweep_take_the_load_controls(run_cli, tmp_path: Path) -> None:
    result = run_cli("compare", "-b", "vllm,mars", "-w", "tiny", "--seeds", "0", "--rps", "inf",
                     "--max-concurrency", "2", "--warmup-sessions", "1", "--results-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    result = run_cli("sweep", "-b", "vllm", "-w", "tiny", "--rps", "1,inf", "--max-concurrency", "2",
                     "--results-dir", str(tmp_path), "--out", str(tmp_path / "sw"), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "sw" / "sweep.json").read_text())["spec"]
    assert manifest["max_concurrency"] == 2 and "inf" in manifest["rps"]
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "sw").glob("*/run.json")]
    assert len(configs) == 2 and all(c["max_concurrency"] == 2 for c in configs)


def test_the_load_line_says_what_shaped_the_run(run_cli, tmp_path: Path) -> None:
    result = run_cli("run", "-b", "vllm", "-w", "swe-smoke", "--rps", "inf", "--max-concurrency", "3",
                     "--warmup-sessions", "1", "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("load:"))
    assert "1 warm-up session run first and not measured" in line and "at most 3 sessions in flight (reached 3)" in line
    plain = run_cli("run", "-b", "vllm", "-w", "swe-smoke", "--results-dir", str(tmp_path))
    assert "load:" not in plain.stdout


def test_background_chat_starts_with_the_measured_sessions_after_a_warmup(run_cli, tmp_path: Path) -> None:
    warm, _ = _run(run_cli, tmp_path, "-b", "vllm", "-w", "swe-smoke", "--warmup-sessions", "2", "--chat-rps", "5")
    plain, _ = _run(run_cli, tmp_path / "p", "-b", "vllm", "-w", "swe-smoke", "--chat-rps", "5")
    summary = json.loads((Path(warm["run_dir"]) / "summary.json").read_text())
    plain_summary = json.loads((Path(plain["run_dir"]) / "summary.json").read_text())
    # the same background requests run in both: none is lost to the warm-up
    assert summary["engine_stats"]["background_calls"] == plain_summary["engine_stats"]["background_calls"] > 0
    assert summary["load_controls"]["warmup_calls"] > 0  # the warm-up's calls are counted apart
