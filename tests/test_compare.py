"""The comparison's statistics: mean ± 95% confidence interval over seeds (Student t), the paired speedup,
one seed (no interval, never a made-up 0), and compare's default of five seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from harness.commands.options import DEFAULT_SEEDS, parse_seeds
from harness.compare import (
    COMPARED,
    ci_footer,
    comparison,
    format_ci,
    format_ratio,
    markdown,
    mean_ci,
    paired_ratio,
    t975,
)
from harness.errors import BadInput


def test_t_quantiles_are_students() -> None:
    assert t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t975(4) == pytest.approx(2.7764, abs=1e-4)
    assert t975(30) == pytest.approx(2.0423, abs=1e-4)
    assert t975(31) == pytest.approx(2.0395, abs=1e-4)  # beyond the table: no jump to the normal 1.96
    assert t975(10_000) == pytest.approx(1.9602, abs=1e-4)
    with pytest.raises(ValueError):
        t975(0)


def test_t_quantiles_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 61), 100, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-5), df


def test_ci_of_a_known_sample() -> None:
    est = mean_ci([1, 2, 3, 4, 5])
    # sample std sqrt(2.5) = 1.5811, / sqrt(5) = 0.7071, x t(0.975, 4) = 2.7764
    assert (est.mean, est.n) == (3.0, 5)
    assert est.ci95 == pytest.approx(1.9632, abs=1e-4)
    assert mean_ci([2.0, 2.0, 2.0]).ci95 == 0.0  # no spread: a true 0
    assert mean_ci([1, None, math.nan, 3]).n == 2  # undefined figures are left out


def test_one_seed_has_no_interval() -> None:
    one = mean_ci([7.5])
    assert one.mean == 7.5 and one.n == 1 and math.isnan(one.ci95)
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.ci95)


def test_speedup_is_paired_by_seed() -> None:
    ref = pd.Series([10.0, 20.0, 30.0, 99.0], index=[1, 2, 3, 4])  # seed 4: the other side lacks it
    this = pd.Series([15.0, 5.0, 10.0], index=[3, 1, 2])  # other order: matched by seed, not position
    exact = paired_ratio(ref, this)
    assert exact.n == 3 and exact.mean == pytest.approx(2.0) and exact.ci95 == pytest.approx(0.0)
    varied = paired_ratio(pd.Series([10.0, 20.0, 30.0], index=[1, 2, 3]), pd.Series([5.0, 10.0, 10.0], index=[1, 2, 3]))
    # ratios 2, 2, 3: mean 2.333, sample std 0.5774, half-width 4.3027 * 0.5774 / sqrt(3) = 1.4342
    assert varied.mean == pytest.approx(7 / 3) and varied.ci95 == pytest.approx(1.4342, abs=1e-4)


def _runs(jct: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for backend, values in jct.items():
        for seed, value in enumerate(values):
            rows.append({"backend": backend, "seed": seed, "run_dir": "",
                         **{k: 1.0 for k, _ in COMPARED}, "mean_jct_s": value})
    return pd.DataFrame(rows)


def test_comparison_gives_mean_ci_and_paired_speedup() -> None:
    table = comparison(_runs({"vllm": [10, 20, 30, 40, 50], "mars": [5, 10, 15, 20, 25]}), reference="vllm")
    vllm, mars = (table.set_index("backend").loc[b] for b in ("vllm", "mars"))
    assert vllm["seeds"] == 5 and vllm["mean_jct_s"] == 30
    assert vllm["mean_jct_s_ci95"] == pytest.approx(19.632, abs=1e-3)  # 10 x the [1..5] sample
    assert mars["speedup_vs_vllm"] == pytest.approx(2.0) and mars["speedup_vs_vllm_ci95"] == pytest.approx(0.0)
    assert vllm["session_throughput_ci95"] == 0.0  # equal on every seed
    text = markdown(table, "vllm")
    assert "| vllm | 5 | 30.0 ± 19.6 |" in text and "| 2.00x |" in text
    assert "mean ± 95% confidence interval over 5 seeds" in text


def test_comparison_over_one_seed_shows_values_alone() -> None:
    table = comparison(_runs({"vllm": [10], "mars": [5]}), reference="vllm")
    assert table["mean_jct_s_ci95"].isna().all() and table["speedup_vs_vllm_ci95"].isna().all()
    text = markdown(table, "vllm")
    assert "±" not in text.split("\n\n")[0]  # no interval in the table, and no "± 0.0"
    assert "| mars | 1 | 5.00 |" in text and "| 2.00x |" in text
    assert "needs at least two seeds" in ci_footer(table)
    assert format_ratio(2.0, math.nan) == "2.00x" and format_ratio(math.nan, 0.1) == "-"
    assert format_ci(7.5, math.nan) == "7.50" and format_ci(math.nan, 1.0) == "-"


def test_ci_cells_keep_three_significant_digits() -> None:
    assert format_ci(104.94, 73.31) == "105 ± 73"
    assert format_ci(61.93, 42.52) == "61.9 ± 42.5"
    assert format_ci(0.19012, 0.0071) == "0.190 ± 0.007"
    assert format_ci(0.0, 0.0) == "0.00"


@pytest.mark.parametrize(("text", "seeds"), [("0-4", [0, 1, 2, 3, 4]), ("1,2,3", [1, 2, 3]), ("0-2,7", [0, 1, 2, 7]),
                                             ("5", [5]), ("-1", [-1])])
def test_seeds_take_lists_and_ranges(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["4-2", "1,1", "0-2,2", "x", "1-x", ""])
def test_bad_seeds_are_refused(text: str) -> None:
    with pytest.raises(BadInput, match="--seeds"):
        parse_seeds(text)


def test_compare_defaults_to_five_seeds_with_a_ci(run_cli, tmp_path: Path) -> None:
    assert parse_seeds(DEFAULT_SEEDS) == [0, 1, 2, 3, 4]
    out = run_cli("compare", "-b", "vllm,mars", "-w", "swe-smoke", "--sessions", "2", "--results-dir", str(tmp_path),
                  "--out", str(tmp_path / "cmp"), "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["seeds"] == [0, 1, 2, 3, 4] and data["confidence"] == 0.95
    assert sorted({r["seed"] for r in data["runs"]}) == [0, 1, 2, 3, 4] and len(data["runs"]) == 10
    for row in data["comparison"]:
        assert row["seeds"] == 5 and row["mean_jct_s_ci95"] is not None and "speedup_vs_vllm_ci95" in row
    csv = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert {"mean_jct_s_ci95", "speedup_vs_vllm_ci95"} <= set(csv.columns)
    shown = run_cli("compare", "-b", "vllm,mars", "-w", "swe-smoke", "--sessions", "2", "--seeds", "3",
                    "--results-dir", str(tmp_path))
    assert shown.exit_code == 0 and "needs at least two seeds" in shown.stdout and " ± " not in shown.stdout


def test_compare_off_a_terminal_prints_progress_and_the_same_cells_as_its_markdown(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    monkeypatch.setenv("MARS_BENCH_PROGRESS_INTERVAL", "0.01")
    out = run_cli("compare", "-b", "vllm,continuum-dy", "-w", "swe-smoke", "--sessions", "2", "--seeds", "1,2",
                  "--results-dir", str(tmp_path), "--out", str(tmp_path / "cmp"))
    assert out.exit_code == 0, out.stderr
    progress = re.findall(r"\[compare\] (\d+)/4 runs, \d+ s elapsed, (?:ETA \d+ s|ETA unknown|done)", out.stdout)
    assert progress[0] == "0" and progress[-1] == "4", out.stdout
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    for line in md.splitlines()[2:4]:  # every cell of each Markdown row appears, whole, in the terminal row
        cells = [c.strip() for c in line.strip("|").split("|")]
        shown = next(row for row in out.stdout.splitlines() if row.startswith(f"│ {cells[0]} "))
        assert [c.strip() for c in shown.strip("│").split("│")] == cells
