"""Several backends on the identical workload and seeds: one run each, then a comparison table with
each figure's mean over seeds and its 95% confidence interval, and the speedup against a reference backend
(paired: computed per seed, then averaged, with its own interval).

The statistics here (`t975`, `mean_ci`, `paired_ratio`) are the only implementation: the CLI, the
benchmarks and the README tables all use them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import RunConfig
from harness.errors import RunsFailed
from harness.executors import Finished, execute

# Figures the comparison reports per backend: (summary key, column label).
COMPARED: tuple[tuple[str, str], ...] = (
    ("mean_jct_s", "mean JCT s"),
    ("p50_jct_s", "p50 JCT s"),
    ("p95_jct_s", "p95 JCT s"),
    ("session_throughput", "sessions/s"),
    ("goodput", "goodput/s"),
    ("mean_slowdown", "mean slowdown"),
    ("x_of_bound", "x of bound"),
    ("prefix_cache_hit_rate", "cache hit"),
    ("preemptions", "preemptions"),
)

# Per-call latencies as `vllm bench serve` reports them, in milliseconds: (summary key, column label); the
# median is its p50 (and always in the summary), p99 its default --metric-percentiles.
LATENCIES: tuple[tuple[str, str], ...] = tuple(
    (f"{key}_{name}_ms", f"{name.upper()} {p} ms") for name in ("ttft", "tpot", "itl")
    for key, p in (("median", "p50"), ("p99", "p99")))

# Figures that count things: a run's value is an integer, and a mean over seeds prints as one when it is one.
COUNTS = frozenset({"preemptions", "completed_sessions", "num_sessions", "completed", "recomputed_tokens"})


# Student t quantiles t(0.975, df) for df = 1..30 (scipy.stats.t.ppf(0.975, df), 6 decimals; scipy is not a
# core dependency). Beyond 30 degrees of freedom: a Cornish-Fisher expansion around the normal 1.959964,
# within 1e-5 of the exact quantile there and tending to it.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959963985


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and the half-width of its 95% confidence interval: mean ± ci95. With fewer than two
    finite values the interval is undefined (NaN), never 0."""

    mean: float
    ci95: float
    n: int


def mean_ci(values: Iterable[float | None]) -> Estimate:
    """Mean and 95% confidence half-width (t(0.975, n-1) * sample std / sqrt(n)) of the finite values;
    None and NaN are left out. No finite value: mean NaN; one: the value, interval NaN."""
    xs = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(xs)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    variance = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return Estimate(mean, t975(n - 1) * math.sqrt(variance / n), n)


def paired_ratio(numerator: pd.Series, denominator: pd.Series) -> Estimate:
    """numerator[seed] / denominator[seed] over the seeds both have (series indexed by seed), then mean ± ci95:
    a speedup is `paired_ratio(reference JCT, backend JCT)`, a throughput ratio `paired_ratio(this, other)`."""
    num, den = numerator.groupby(level=0).mean(), denominator.groupby(level=0).mean()
    seeds = [s for s in num.index if s in den.index]
    ratios = []
    for seed in seeds:
        a, b = float(num[seed]), float(den[seed])
        ratios.append(a / b if b != 0 and math.isfinite(a) and math.isfinite(b) else math.nan)
    return mean_ci(ratios)


@dataclass(frozen=True)
class RunRow:
    backend: str
    seed: int
    run_dir: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class _Job:
    index: int  # position in the caller's list
    config: RunConfig
    run_id: str = ""  # "": a new time-stamped run id


def run_grid(configs: Sequence[RunConfig], results_dir: Path, jobs: int = 1,
             progress: Callable[[int, int], None] | None = None) -> list[RunRow]:
    """Run every config (`jobs` at a time); rows come back in config order. A failed run raises RunsFailed
    once the others are done; Ctrl-C stops the runs in flight and raises KeyboardInterrupt."""
    finished: dict[int, RunRow] = {}
    errors: list[str] = []

    def on_done(job: _Job, result: Finished | None, error: str | None) -> None:
        if result is None:
            errors.append(f"{job.config.backend} seed {job.config.seed}: {error}")
        else:
            finished[job.index] = RunRow(job.config.backend, job.config.seed, result.run_dir, result.summary)
        if progress:
            progress(len(finished) + len(errors), len(configs))

    execute([_Job(i, c) for i, c in enumerate(configs)], results_dir, on_done, jobs=jobs)
    if errors:
        raise RunsFailed(f"{len(errors)} of {len(configs)} runs failed (first: {errors[0]})")
    return [finished[i] for i in range(len(configs))]


def runs_frame(rows: Sequence[RunRow]) -> pd.DataFrame:
    """One row per run with the compared figures."""
    return pd.DataFrame([
        {"backend": r.backend, "seed": r.seed, "run_dir": r.run_dir, **{k: r.summary.get(k) for k, _ in COMPARED}}
        for r in rows
    ])


def comparison(runs: pd.DataFrame, reference: str | None, figures: Sequence[str] | None = None) -> pd.DataFrame:
    """Per backend: the number of seeds, each figure's mean over seeds, its 95% confidence half-width
    (`<figure>_ci95`, NaN with one seed) and standard deviation (`<figure>_std`, population, as the report's
    leaderboard shows it), and the speedup of mean JCT against `reference`: its mean JCT / this backend's per
    seed, then mean (`speedup_vs_<reference>`) ± `speedup_vs_<reference>_ci95` over the paired seeds.
    `figures`: the summary keys compared (default: COMPARED's); `runs` has a column for each."""
    keys = list(figures) if figures is not None else [k for k, _ in COMPARED]
    numeric = runs[["backend", "seed", *keys]].copy()
    numeric[keys] = numeric[keys].astype(float)
    rows = []
    for backend, group in numeric.groupby("backend", sort=False):
        row: dict[str, Any] = {"backend": backend, "seeds": int(group["seed"].count())}
        for key in keys:
            est = mean_ci(group[key])
            row[key] = est.mean
            row[f"{key}_ci95"] = est.ci95
            row[f"{key}_std"] = float(group[key].std(ddof=0)) if group[key].notna().any() else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    if reference is not None and reference in set(numeric["backend"]):
        ref = numeric[numeric["backend"] == reference].set_index("seed")["mean_jct_s"]
        speedups = [paired_ratio(ref, group.set_index("seed")["mean_jct_s"])
                    for _, group in numeric.groupby("backend", sort=False)]
        out[f"speedup_vs_{reference}"] = [e.mean for e in speedups]
        out[f"speedup_vs_{reference}_ci95"] = [e.ci95 for e in speedups]
    return out


def ci_footer(table: pd.DataFrame) -> str:
    """What ± means in a comparison, and over how many seeds (one seed: no interval, values alone)."""
    counts = sorted({int(n) for n in table["seeds"]}) if len(table) else [0]
    seeds = "/".join(map(str, counts)) + (" seed" if counts == [1] else " seeds")
    if max(counts) < 2:
        return (f"Values from {seeds}: a 95% confidence interval needs at least two seeds, so each value "
                "is shown alone.")
    note = f"Values are mean ± 95% confidence interval over {seeds} (± is the Student-t half-width)."
    if min(counts) < 2:
        note += " A backend with one seed shows its value alone (no interval)."
    return note


def markdown(table: pd.DataFrame, reference: str | None) -> str:
    """The comparison as a Markdown table, mean ± 95% CI over seeds, and a footer saying what ± means."""
    headers = ["backend", "seeds", *[label for _, label in COMPARED]]
    speed_col = f"speedup_vs_{reference}" if reference else None
    if speed_col and speed_col in table:
        headers.append(f"speedup vs {reference}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(table_cells(row, reference)) + " |")
    return "\n".join(lines) + "\n\n" + ci_footer(table) + "\n"


def table_cells(row: pd.Series, reference: str | None) -> list[str]:
    """One comparison row as text: backend, seeds, each figure as mean ± ci95, the speedup (if any) alike."""
    cells = [str(row["backend"]), str(int(row["seeds"]))]
    cells += [format_ci(row[key], row[f"{key}_ci95"], count=key in COUNTS) for key, _ in COMPARED]
    speed_col = f"speedup_vs_{reference}" if reference else None
    if speed_col and speed_col in row:
        cells.append(format_ratio(row[speed_col], row[f"{speed_col}_ci95"]))
    return cells


def format_ratio(value: float, ci95: float, as_range: bool = False) -> str:
    """A speedup or ratio: `1.87x ± 0.21`, or with `as_range` its 95% interval as `1.87x [1.66, 2.08]`; `1.87x`
    without an interval, `-` when undefined."""
    if value is None or not math.isfinite(value):
        return "-"
    if ci95 is not None and math.isfinite(ci95) and ci95 > 0:
        return f"{value:.2f}x [{value - ci95:.2f}, {value + ci95:.2f}]" if as_range else f"{value:.2f}x ± {ci95:.2f}"
    return f"{value:.2f}x"


def shown_decimals(value: float, count: bool = False) -> int:
    """Decimals a figure is printed with: 3 significant digits, at most 3 decimals (`105`, `61.9`, `0.190`);
    a count (COUNTS) with none when its value is a whole number, else one (a mean over seeds: `0.2`)."""
    if count:
        return 0 if math.isfinite(value) and value == round(value) else 1
    magnitude = math.floor(math.log10(abs(value))) if value else 0
    return min(3, max(0, 2 - magnitude))


def as_shown(value: float, count: bool = False) -> float:
    """The value as printed (`shown_decimals`): leaderboard ties are values equal as shown."""
    if value is None or not math.isfinite(value):
        return math.nan
    return float(f"{value:.{shown_decimals(value, count)}f}")


def format_ci(value: float, ci95: float, count: bool = False) -> str:
    """`mean ± ci95` with the mean to 3 significant digits (at most 3 decimals) and the interval to the same
    decimals: `105 ± 73`, `61.9 ± 42.5`, `0.190 ± 0.007`; the value alone when the interval is undefined
    (one seed) or 0; `-` when the value is undefined. A count prints as a whole number when it is one."""
    if value is None or not math.isfinite(value):
        return "-"
    digits = shown_decimals(value, count)
    if ci95 is not None and math.isfinite(ci95) and ci95 > 0:
        digits = max(digits, 1) if count else digits  # a count's interval is rarely whole: 0.2 ± 0.6
        return f"{value:.{digits}f} ± {ci95:.{digits}f}"
    return f"{value:.{digits}f}"


def format_summary(value: float, std: float, ci95: float, count: bool = False) -> str:
    """A figure over seeds as the leaderboard shows it: `mean ± std [low, high]`, the bracket being the 95%
    confidence interval of the mean (Student t, `mean_ci`), all to the mean's shown decimals: `17.2 ± 0.5
    [16.6, 17.8]`. The value alone when the seeds agree (std 0) or there is one seed; `-` when undefined."""
    if value is None or not math.isfinite(value):
        return "-"
    digits = shown_decimals(value, count)
    if count and std and math.isfinite(std) and std > 0 and abs(value) < 100:
        digits = max(digits, 1)  # a mean of counts is not a count: 7.4 ± 7.6; from 100 on, whole numbers say it
    text = f"{value:.{digits}f}"
    if std is not None and math.isfinite(std) and std > 0:
        text += f" ± {std:.{digits}f}"
        if ci95 is not None and math.isfinite(ci95):
            text += f" [{value - ci95:.{digits}f}, {value + ci95:.{digits}f}]"
    return text


def format_spread(value: float, std: float) -> str:
    """`value ± spread` (a std or a CI half-width); the value alone when the spread is 0 or undefined."""
    if value is None or not math.isfinite(value):
        return "-"
    digits = 3 if abs(value) < 10 else 1
    if std and math.isfinite(std) and std > 0:
        return f"{value:.{digits}f} ± {std:.{digits}f}"
    return f"{value:.{digits}f}"
