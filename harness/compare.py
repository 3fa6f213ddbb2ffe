"""Several backends on the identical workload and seeds: one run each, then a comparison table with
the spread over seeds and the speedup against a reference backend."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    ("prefix_cache_hit_rate", "cache hit"),
    ("preemptions", "preemptions"),
)


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


def comparison(runs: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """Per backend: mean and standard deviation over seeds of each figure, and the speedup of mean JCT
    against `reference` (its mean JCT / this backend's, per seed, then averaged)."""
    keys = [k for k, _ in COMPARED]
    numeric = runs[["backend", "seed", *keys]].copy()
    numeric[keys] = numeric[keys].astype(float)
    grouped = numeric.groupby("backend", sort=False)[keys]
    table = grouped.mean()
    spread = grouped.std(ddof=0).add_suffix("_std")
    out = pd.concat([table, spread], axis=1)
    out.insert(0, "seeds", numeric.groupby("backend", sort=False)["seed"].count())
    if reference is not None and reference in set(numeric["backend"]):
        ref = numeric[numeric["backend"] == reference].set_index("seed")["mean_jct_s"]
        speedups = {}
        for backend, group in numeric.groupby("backend", sort=False):
            per_seed = ref.reindex(group["seed"]).to_numpy() / group["mean_jct_s"].to_numpy()
            finite = [x for x in per_seed if math.isfinite(x)]
            speedups[backend] = sum(finite) / len(finite) if finite else math.nan
        out["speedup_vs_" + reference] = pd.Series(speedups)
    return out.reset_index()


def markdown(table: pd.DataFrame, reference: str | None) -> str:
    """The comparison as a Markdown table: value ± spread over seeds."""
    headers = ["backend", "seeds", *[label for _, label in COMPARED]]
    speed_col = f"speedup_vs_{reference}" if reference else None
    if speed_col and speed_col in table:
        headers.append(f"speedup vs {reference}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        cells = [str(row["backend"]), str(int(row["seeds"]))]
        for key, _ in COMPARED:
            cells.append(format_spread(row[key], row[f"{key}_std"]))
        if speed_col and speed_col in table:
            cells.append(f"{row[speed_col]:.2f}x" if math.isfinite(row[speed_col]) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_spread(value: float, std: float) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    digits = 3 if abs(value) < 10 else 1
    if std and math.isfinite(std) and std > 0:
        return f"{value:.{digits}f} ± {std:.{digits}f}"
    return f"{value:.{digits}f}"
