"""The ranking of backends at one load point: harness.compare's statistics over seeds, best first.

Ties share a rank: two backends tie when their ranking figures (goodput, then mean JCT) are equal *as shown*
(harness.compare.as_shown: 3 significant digits, at most 3 decimals); the next rank skips (1, 1, 3). Equal as
shown, not a significance test: a test across seeds makes ties intransitive (A ~ B, B ~ C, A > C), a rank
could not be shared. The 95% confidence interval beside each mean says how far apart the seeds allow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from harness.compare import COMPARED, COUNTS, LATENCIES, as_shown, comparison, format_ratio, format_summary
from harness.report.doc import Table
from harness.report.load import PointKey, Run, point_title, run_frame

_KEYS = ("goodput", "mean_jct_s")  # what a ranking is by, in order
_HEAD = [item for key in (*_KEYS, "x_of_bound") for item in COMPARED if item[0] == key]
# Columns after rank, backend, seeds (and the speedup, after mean JCT): the ranking figures and x of bound first,
# then the other compared figures, vLLM's latencies, and the counts.
_REST = [i for i in COMPARED if i not in _HEAD]
_HIT = [key for key, _ in _REST].index("prefix_cache_hit_rate") + 1
# the Bélády bound on the hit rate of the run's own call order, beside the measured one (harness.cachebound)
SHOWN = [*_HEAD, *_REST[:_HIT], ("belady_prefix_hit_rate", "hit bound"), *_REST[_HIT:], *LATENCIES,
         ("completed_sessions", "sessions done"), ("completed", "calls")]
DEFAULT_REFERENCE = "vllm"  # the speedup's reference when none is chosen and it ran
NOT_LIKE_FOR_LIKE = "(not like for like)"  # marks a leaderboard whose backends ran other seeds or workloads


@dataclass(frozen=True)
class Leaderboard:
    point: PointKey
    ranking: pd.DataFrame  # harness.compare.comparison rows, best first, with a `rank` column
    by_goodput: bool  # False: goodput is undefined for every backend (no isolated JCT), ranked by mean JCT
    mismatch: str = ""  # why the backends here are not compared like for like (see `mismatch`); "" when they are
    reference: str | None = None  # the backend speedups are against; None: no speedup column

    @property
    def title(self) -> str:
        return point_title(self.point)

    @property
    def order(self) -> list[str]:
        """Backends, best first."""
        return list(self.ranking["backend"])

    def table(self) -> Table:
        speed = f"speedup_vs_{self.reference}"
        labels = [label for _, label in SHOWN]
        at = len(_KEYS)  # the speedup column follows the ranking figures
        if self.reference:
            labels.insert(at, f"speedup vs {self.reference}")
        rows = []
        for _, r in self.ranking.iterrows():
            cells = [format_summary(r[key], r[f"{key}_std"], r[f"{key}_ci95"], count=key in COUNTS)
                     for key, _ in SHOWN]
            if self.reference:
                cells.insert(at, format_ratio(r[speed], r[f"{speed}_ci95"], as_range=True))
            rows.append((str(int(r["rank"])), str(r["backend"]), str(int(r["seeds"])), *cells))
        if self.by_goodput:
            note = ("Ranked by goodput/s (highest first), then by mean JCT (lowest first); backends equal in both "
                    "as shown share a rank.")
        else:
            note = ("Ranked by mean JCT (lowest first; goodput is undefined here); backends equal as shown share "
                    "a rank.")
        note += (" Values are mean ± std over seeds [95% confidence interval of the mean, Student t]; "
                 "x of bound is mean JCT over the physical bound (1 = nothing left to gain); hit bound is the most "
                 "prefix-cache hits any eviction gets on the run's own call order (Bélády); latencies per call.")
        if self.reference:
            note += (f" Speedup: {self.reference}'s mean JCT over the backend's, paired per seed, "
                     "[95% confidence interval].")
        if self.mismatch:
            return Table(f"{self.title} {NOT_LIKE_FOR_LIKE}", ("rank", "backend", "seeds", *labels), tuple(rows),
                         numeric_from=2, note=f"Not like for like: the backends ran {self.mismatch}. {note}")
        return Table(self.title, ("rank", "backend", "seeds", *labels), tuple(rows), numeric_from=2, note=note)


def ranks(keys: Sequence[tuple[float, ...]]) -> list[int]:
    """Competition ranks of rows already in order: a row equal to the one before (NaN equal to NaN) shares its
    rank, and the next different row's rank is its position (1, 1, 3)."""
    out: list[int] = []
    for i, key in enumerate(keys):
        same = i > 0 and all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(key, keys[i - 1]))
        out.append(out[-1] if same else i + 1)
    return out


def leaderboard(point: PointKey, runs: Sequence[Run], reference: str | None = None) -> Leaderboard:
    """Backends at `point` ranked by goodput, highest first, then by mean JCT, lowest first (goodput undefined
    for every backend: by mean JCT); ties share a rank. The speedup column is against `reference` (default:
    vllm), none when it did not run here."""
    reference = reference or DEFAULT_REFERENCE
    figures = [key for key, _ in SHOWN]
    frame = run_frame(runs, figures)
    if reference not in set(frame["backend"]):
        reference = None
    table = comparison(frame, reference, figures)
    by_goodput = bool(table["goodput"].notna().any())
    shown = table.assign(_goodput=table["goodput"].map(as_shown), _jct=table["mean_jct_s"].map(as_shown))
    ranked = (shown.sort_values(["_goodput", "_jct"], ascending=[False, True], na_position="last", kind="stable")
              .reset_index(drop=True))
    ranked.insert(0, "rank", ranks(list(zip(ranked["_goodput"], ranked["_jct"]))))
    return Leaderboard(point, ranked.drop(columns=["_goodput", "_jct"]), by_goodput, mismatch(runs), reference)


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
