"""Two result sets side by side (e.g. two versions of a policy): which figures got worse, which got better.

Runs are matched by (workload, settings, rps, backend, seed); settings are read within each set, so two sets
that differ in one setting everywhere (the thing being compared) still match. Per backend and load point,
the mean over the matched seeds of each watched figure is compared: a change in the bad direction larger than
max(5% of the baseline, the seed spread) is a regression, one as large in the good direction an improvement.
The seed spread is the larger of the two sets' standard deviations over those seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.compare import COMPARED, format_spread
from harness.errors import RunsFailed
from harness.report.doc import Table
from harness.report.load import PointKey, ResultSet, config_differences, point_title, run_frame

# Watched figures: summary key -> True when lower is better.
WATCHED: dict[str, bool] = {"mean_jct_s": True, "p95_jct_s": True, "session_throughput": False, "goodput": False}
MIN_CHANGE = 0.05  # relative change below which nothing is flagged
MATCH_KEYS = ["workload", "settings", "rps", "backend", "seed"]
_LABELS = dict(COMPARED)


class RegressionsFound(RunsFailed):
    """`--fail-on-regression` with regressions: one line and exit code 1, as when runs fail."""


@dataclass(frozen=True)
class Change:
    point: PointKey
    backend: str
    metric: str  # summary key
    baseline: float
    current: float
    seeds: int
    threshold: float  # the smallest change that is flagged

    @property
    def delta(self) -> float:
        return self.current - self.baseline

    @property
    def worse_by(self) -> float:
        """The change in the bad direction (negative: it got better)."""
        return self.delta if WATCHED[self.metric] else -self.delta

    @property
    def percent(self) -> float:
        return self.delta / abs(self.baseline) * 100 if self.baseline else math.inf

    def cells(self) -> tuple[str, ...]:
        sign = "+" if self.delta >= 0 else ""
        return (point_title(self.point), self.backend, _LABELS[self.metric], format_spread(self.baseline, 0),
                format_spread(self.current, 0), f"{sign}{format_spread(self.delta, 0)}", f"{sign}{self.percent:.1f}%",
                format_spread(self.threshold, 0), str(self.seeds))


@dataclass(frozen=True)
class Regressions:
    current: str  # how the two sets are named in the report
    baseline: str
    regressions: list[Change]
    improvements: list[Change]
    matched: int  # runs matched in both sets
    only_current: pd.DataFrame  # unmatched runs (run_frame rows)
    only_baseline: pd.DataFrame
    differences: list[tuple[str, str, str]]  # (setting, values in baseline, values in current)

    _COLUMNS = ("load point", "backend", "figure", "baseline", "current", "change", "change %", "threshold", "seeds")

    def tables(self) -> list[Table]:
        note = (f"A change counts when larger than max({MIN_CHANGE:.0%} of the baseline, the spread over seeds) "
                "(the threshold column); values are means over the matched seeds.")
        out = [Table(f"Regressions ({len(self.regressions)})", self._COLUMNS,
                     tuple(c.cells() for c in self.regressions), numeric_from=3, note=note),
               Table(f"Improvements ({len(self.improvements)})", self._COLUMNS,
                     tuple(c.cells() for c in self.improvements), numeric_from=3)]
        if self.differences:
            out.append(Table("Settings that differ between the two sets", ("setting", "baseline", "current"),
                             tuple(self.differences), numeric_from=3))
        unmatched = [("current", r) for _, r in self.only_current.iterrows()] + \
                    [("baseline", r) for _, r in self.only_baseline.iterrows()]
        if unmatched:
            out.append(Table(f"Unmatched runs ({len(unmatched)})", ("only in", "run", "load point", "backend", "seed"),
                             tuple((side, str(r["run_id"]), point_title((r["workload"], r["settings"], r["rps"])),
                                    str(r["backend"]), str(r["seed"])) for side, r in unmatched), numeric_from=4))
        return out


def compare_sets(current: ResultSet, baseline: ResultSet) -> Regressions:
    """Regressions and improvements of `current` against `baseline` (both: their ranked runs)."""
    a, b = run_frame(current.included), run_frame(baseline.included)
    matched = a.merge(b, on=MATCH_KEYS, suffixes=("", "_base"))
    changes = [
        change
        for (workload, settings, rps, backend), group in matched.groupby(MATCH_KEYS[:-1], sort=True, dropna=False)
        for metric in WATCHED
        if (change := _change((workload, settings, rps), backend, metric, group)) is not None
    ]
    return Regressions(
        current=", ".join(map(str, current.roots)), baseline=", ".join(map(str, baseline.roots)),
        regressions=[c for c in changes if c.worse_by > c.threshold],
        improvements=[c for c in changes if -c.worse_by > c.threshold],
        matched=len(matched), only_current=_unmatched(a, b), only_baseline=_unmatched(b, a),
        differences=config_differences([r.record.config for r in baseline.included],
                                       [r.record.config for r in current.included]),
    )


def _unmatched(runs: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Rows of `runs` with no run of `other` at the same key."""
    marked = runs.merge(other[MATCH_KEYS], on=MATCH_KEYS, how="left", indicator=True)
    return marked.loc[marked["_merge"] == "left_only", list(runs.columns)]


def _change(point: PointKey, backend: str, metric: str, group: pd.DataFrame) -> Change | None:
    now, then = group[metric].astype(float), group[f"{metric}_base"].astype(float)
    if now.isna().any() or then.isna().any():
        return None
    spread = max(float(now.std(ddof=0)), float(then.std(ddof=0)))
    threshold = max(MIN_CHANGE * abs(float(then.mean())), spread)
    return Change(point, backend, metric, float(then.mean()), float(now.mean()), len(group), threshold)


def summary_line(result: Regressions) -> str:
    return (f"{len(result.regressions)} regression(s), {len(result.improvements)} improvement(s) against "
            f"{result.baseline} ({result.matched} runs matched, "
            f"{len(result.only_current) + len(result.only_baseline)} unmatched)")


def fail_if_any(result: Regressions) -> None:
    if result.regressions:
        raise RegressionsFound(summary_line(result))
