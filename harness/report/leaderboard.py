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


@dataclass(frozen=True)
class Leaderboard:
    point: PointKey
    ranking: pd.DataFrame  # harness.compare.comparison rows, best first, with a `rank` column
    by_goodput: bool  # False: goodput is undefined for every backend (no isolated JCT), ranked by mean JCT

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
    return Leaderboard(point, ranked, by_goodput)
