"""The ranking of backends at one load point: harness.compare's mean ± std over seeds, best first."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from harness.compare import COMPARED, comparison, format_spread
from harness.report.doc import Table
from harness.report.load import PointKey, Run, point_title, run_frame

_KEYS = ("goodput", "mean_jct_s")  # what a ranking is by, in order
SHOWN = [item for key in _KEYS for item in COMPARED if item[0] == key] + [i for i in COMPARED if i[0] not in _KEYS]
RANK_DIGITS = 3  # goodputs equal to this many significant digits rank by mean JCT
NOT_LIKE_FOR_LIKE = "(not like for like)"  # marks a leaderboard whose backends ran other seeds or workloads


@dataclass(frozen=True)
class Leaderboard:
    point: PointKey
    ranking: pd.DataFrame  # harness.compare.comparison rows, best first, with a `rank` column
    by_goodput: bool  # False: goodput is undefined for every backend (no isolated JCT), ranked by mean JCT
    mismatch: str = ""  # why the backends here are not compared like for like (see `mismatch`); "" when they are

    @property
    def title(self) -> str:
        return point_title(self.point)

    @property
    def order(self) -> list[str]:
        """Backends, best first."""
        return list(self.ranking["backend"])

    def table(self) -> Table:
        columns = ("rank", "backend", "seeds", *(label for _, label in SHOWN))
        rows = tuple(
            (str(int(r["rank"])), str(r["backend"]), str(int(r["seeds"])),
             *(format_spread(r[key], r[f"{key}_std"]) for key, _ in SHOWN))
            for _, r in self.ranking.iterrows()
        )
        if self.by_goodput:
            note = (f"Ranked by goodput/s (highest first; equal to {RANK_DIGITS} significant digits: by mean JCT). "
                    "Values are mean ± std over seeds.")
        else:
            note = "Ranked by mean JCT (lowest first): goodput is undefined here. Values are mean ± std over seeds."
        if self.mismatch:
            return Table(f"{self.title} {NOT_LIKE_FOR_LIKE}", columns, rows, numeric_from=2,
                         note=f"Not like for like: the backends ran {self.mismatch}. {note}")
        return Table(self.title, columns, rows, numeric_from=2, note=note)


def _significant(value: float) -> float:
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, RANK_DIGITS - 1 - math.floor(math.log10(abs(value))))


def leaderboard(point: PointKey, runs: Sequence[Run]) -> Leaderboard:
    """Backends at `point` ranked by goodput, highest first (ties and undefined goodput: mean JCT, lowest first)."""
    table = comparison(run_frame(runs), reference=None)
    by_goodput = bool(table["goodput"].notna().any())
    ranked = (table.assign(_goodput=table["goodput"].map(_significant))
              .sort_values(["_goodput", "mean_jct_s"], ascending=[False, True], na_position="last", kind="stable")
              .drop(columns="_goodput").reset_index(drop=True))
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    return Leaderboard(point, ranked, by_goodput, mismatch(runs))


def mismatch(runs: Sequence[Run]) -> str:
    """Why the backends of one load point are not compared like for like, "" when they are: some backend ran
    other seeds than another (vllm over seeds 0 and 1, mars over seed 1 alone), or for one seed other
    sessions (a workload file rewritten between the runs)."""
    seeds: dict[str, set[int]] = {}
    for run in runs:
        seeds.setdefault(run.backend, set()).add(run.seed)
    if len({frozenset(s) for s in seeds.values()}) > 1:
        return "different seeds (" + "; ".join(f"{b} {', '.join(map(str, sorted(s)))}" for b, s in seeds.items()) + ")"
    for seed in sorted(set().union(*seeds.values())):
        workloads: dict[frozenset[tuple[str, int]], list[str]] = {}
        for run in runs:
            if run.seed == seed:
                workloads.setdefault(_sessions_of(run), []).append(run.backend)
        if len(workloads) > 1:
            return f"different workloads for seed {seed} (" + "; ".join(
                f"{', '.join(backends)}: {len(sessions)} sessions" for sessions, backends in workloads.items()) + ")"
    return ""


def _sessions_of(run: Run) -> frozenset[tuple[str, int]]:
    """The run's workload as its sessions ran it: (session id, number of turns) of each."""
    frame = run.record.sessions()
    return frozenset(zip(frame["session_id"].astype(str), frame["num_turns"].astype(int)))
