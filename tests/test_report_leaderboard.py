"""The leaderboard's figures: ties share a rank (equal as shown; the next rank skips), mean ± std with the 95%
confidence interval computed by hand, counts as integers, vLLM's latencies, and the speedup against the
reference backend. On real runs where the issue saw it go wrong: vllm and sglang identical on swe-smoke."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from harness.compare import COMPARED, as_shown, comparison, format_ratio, format_summary
from harness.config import RunConfig
from harness.experiment import run_experiment
from harness.report.leaderboard import leaderboard, ranks
from harness.report.load import load_results


def test_equal_rows_share_a_rank_and_the_next_rank_skips() -> None:
    nan = math.nan
    assert ranks([(1.0, 2.0), (1.0, 2.0), (1.0, 3.0), (0.5, 1.0), (0.5, 1.0), (0.5, 1.0), (0.4, 9.0)]) == \
        [1, 1, 3, 4, 4, 4, 7]
    assert ranks([(nan, 2.0), (nan, 2.0), (nan, 2.5)]) == [1, 1, 3]  # undefined goodput equals undefined
    assert ranks([(0.3, 1.0), (0.2, 1.0), (0.1, 1.0)]) == [1, 2, 3]


def test_ties_are_values_equal_as_shown() -> None:
    assert as_shown(17.24) == as_shown(17.21) == 17.2  # both print as 17.2
    assert as_shown(17.24) != as_shown(17.26)
    assert as_shown(0.0502) == as_shown(0.0498) == 0.05
    assert as_shown(2.0, count=True) == 2.0 and as_shown(0.25, count=True) == 0.2
    assert math.isnan(as_shown(math.nan))


def test_mean_std_and_ci_cells_against_hand_computed_values() -> None:
    # seeds 1, 2, 3: mean 2, population std sqrt(2/3) = 0.8165, sample std 1,
    # 95% half-width t(0.975, 2) * 1 / sqrt(3) = 4.302653 / 1.7320508 = 2.48414
    table = comparison(_runs({"a": [1.0, 2.0, 3.0]}), reference=None)
    row = table.iloc[0]
    assert row["mean_jct_s"] == 2.0
    assert row["mean_jct_s_std"] == pytest.approx(0.816497, abs=1e-6)
    assert row["mean_jct_s_ci95"] == pytest.approx(2.484138, abs=1e-6)
    assert format_summary(row["mean_jct_s"], row["mean_jct_s_std"], row["mean_jct_s_ci95"]) == \
        "2.00 ± 0.82 [-0.48, 4.48]"
    assert format_summary(17.2, 0.5, 0.62) == "17.2 ± 0.5 [16.6, 17.8]"
    assert format_summary(0.05, 0.0, 0.0) == "0.050"  # seeds agree: the value alone
    assert format_summary(3.5, math.nan, math.nan) == "3.50"  # one seed
    assert format_summary(math.nan, 1.0, 1.0) == "-"


def test_counts_print_as_integers() -> None:
    assert format_summary(0.0, 0.0, 0.0, count=True) == "0"
    assert format_summary(1200.0, 0.0, math.nan, count=True) == "1200"
    # a mean count over seeds that is not whole gets one decimal, its spread too
    assert format_summary(0.2, 0.4, 0.555, count=True) == "0.2 ± 0.4 [-0.4, 0.8]"
    assert format_summary(3.0, 1.0, 2.5, count=True) == "3.0 ± 1.0 [0.5, 5.5]"
    assert format_summary(2431.0, 38.9, 48.3, count=True) == "2431 ± 39 [2383, 2479]"  # no 2431.0 for a count


def test_speedup_cells_are_ratios_with_an_interval() -> None:
    assert format_ratio(1.8712, 0.21, as_range=True) == "1.87x [1.66, 2.08]"
    assert format_ratio(1.0, 0.0, as_range=True) == "1.00x" and format_ratio(1.0, math.nan, as_range=True) == "1.00x"
    assert format_ratio(math.nan, 0.1, as_range=True) == "-"


def _runs(jcts: dict[str, list[float]]) -> pd.DataFrame:
    """A runs frame with one figure, mean JCT, per backend and seed (the others undefined)."""
    frame = pd.DataFrame([{"backend": b, "seed": i, "mean_jct_s": v} for b, vs in jcts.items()
                          for i, v in enumerate(vs)])
    return frame.assign(**{k: math.nan for k, _ in COMPARED if k != "mean_jct_s"})


@pytest.fixture(scope="module")
def point(tmp_path_factory: pytest.TempPathFactory):
    """vllm and sglang (identical decisions on swe-smoke) and mars, two seeds each, at one load point."""
    root = tmp_path_factory.mktemp("results")
    for backend in ("vllm", "sglang", "mars"):
        for seed in (1, 2):
            run_experiment(RunConfig(backend=backend, workload="swe-smoke", rps=1.0, seed=seed), root)
    ((key, runs),) = list(load_results([root]).points())
    summaries = {}
    for run in runs:
        summaries.setdefault(run.backend, []).append(json.loads((Path(run.record.dir) / "summary.json").read_text()))
    return key, runs, summaries


def test_identical_backends_share_a_rank_on_real_runs(point) -> None:
    key, runs, summaries = point
    board = leaderboard(key, runs)
    table = board.table()
    rank = dict(zip(board.order, board.ranking["rank"]))
    assert rank["vllm"] == rank["sglang"]
    others = [r for b, r in rank.items() if b not in ("vllm", "sglang")]
    assert all(r in (rank["vllm"], 3) for r in others)  # tied too, or third: rank 2 is skipped
    assert "share a rank" in table.note and "95% confidence interval" in table.note


def test_the_leaderboard_shows_latencies_counts_bound_and_the_speedup(point) -> None:
    key, runs, summaries = point
    table = leaderboard(key, runs).table()
    column = {name: i for i, name in enumerate(table.columns)}
    for name in ("TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "ITL p50 ms", "ITL p99 ms",
                 "x of bound", "speedup vs vllm", "preemptions", "sessions done", "calls"):
        assert name in column, name
    rows = {r[column["backend"]]: r for r in table.rows}
    assert rows["vllm"][column["speedup vs vllm"]] == "1.00x"
    ratios = [v["mean_jct_s"] / m["mean_jct_s"] for v, m in zip(summaries["vllm"], summaries["mars"])]
    assert rows["mars"][column["speedup vs vllm"]].startswith(f"{sum(ratios) / 2:.2f}x")
    assert rows["mars"][column["sessions done"]] == "8"  # a count: no decimals
    preemptions = sum(s["preemptions"] for s in summaries["vllm"]) / 2
    if preemptions == int(preemptions):
        assert rows["vllm"][column["preemptions"]].split(" ")[0] == str(int(preemptions))
    ttft = [s["median_ttft_ms"] for s in summaries["mars"]]  # vLLM's median is its p50
    assert rows["mars"][column["TTFT p50 ms"]].startswith(format_summary(sum(ttft) / 2, 1, math.nan).split(" ")[0])
    without = leaderboard(key, [r for r in runs if r.backend != "vllm"]).table()
    assert not any(c.startswith("speedup") for c in without.columns)  # no reference ran: no column
    other = leaderboard(key, runs, reference="mars").table()
    assert "speedup vs mars" in other.columns
