"""Figures over the runs of one setup (a workload with its settings, all its load points): JCT distribution,
JCT against load, the throughput-latency frontier and the slowdown distribution.

Every backend keeps its colour, line style and marker (style.looks) in every figure, so seven lines stay
apart; series that coincide (identical backends at a light load) would still hide each other, so a panel
names them in a note (`coinciding`)."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter

from harness.report.doc import Figure
from harness.report.load import Run, at_load, load_label, run_frame
from harness.report import style
from harness.report.style import Colour, Look, backend_order, legend_outside, looks, new_figure, save, themed

LOG_SPREAD = 30  # a value axis spanning more than this factor is drawn on a log scale
COINCIDE_TOLERANCE = 0.02  # CDFs nowhere further apart than this (fraction of sessions) coincide


@dataclass(frozen=True)
class Setup:
    """The ranked runs of one workload and settings, and where its figures go."""

    workload: str
    settings: str
    runs: list[Run]
    colours: dict[str, Colour]
    out_dir: Path

    @property
    def title(self) -> str:
        return " · ".join(x for x in (self.workload, self.settings) if x)

    @property
    def slug(self) -> str:
        """A file-name prefix; settings are summarised by a hash, they can be long."""
        digest = f"-{hashlib.sha1(self.settings.encode()).hexdigest()[:6]}" if self.settings else ""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.workload) + digest

    @property
    def backends(self) -> list[str]:
        return sorted({r.backend for r in self.runs}, key=backend_order)

    @property
    def loads(self) -> list[float]:
        """Load points, lowest first; trace arrivals (NaN) last."""
        values = {r.rps for r in self.runs}
        return sorted(values, key=lambda v: (math.isnan(v), v))

    @property
    def looks(self) -> dict[str, Look]:
        """Every backend's colour, line style and marker (from the whole report's palette: the same in every
        setup's figures)."""
        return looks(self.colours)

    def finish(self, fig: MplFigure, kind: str, heading: str, caption: str, extra: Sequence[Line2D] = (),
               backends: Sequence[str] | None = None, legend: bool = True, markers: bool = True) -> Figure:
        """Legend (`backends`, default all of the setup's, plus `extra`; `markers`: False where markers mean
        something else than the backend), heading, and the PNG written."""
        if legend:
            every = self.looks
            shown = {b: every[b] for b in (self.backends if backends is None else backends)}
            if not markers:
                shown = {b: Look({**look, "marker": None}) for b, look in shown.items()}
            legend_outside(fig, shown, extra=extra)
        style.heading(fig, f"{heading}: {self.title}")
        return save(fig, self.out_dir, f"{kind}-{self.slug}", f"{heading}: {self.title}", caption)


def grid(count: int) -> tuple[int, int]:
    """Rows and columns for `count` panels: at most three a row, rows as full as they can be (4 panels: 2 x 2,
    not 3 + 1), so no row is left mostly empty."""
    rows = math.ceil(count / 3)
    return rows, math.ceil(count / rows)


def facets(count: int, height: float = 3.4, **shared: bool) -> tuple[MplFigure, list[Axes]]:
    """A figure with `count` panels in a `grid`; a panel the grid has to spare is removed."""
    rows, cols = grid(count)
    fig = new_figure(height * rows + 0.6)
    axes = list(fig.subplots(rows, cols, squeeze=False, **shared).flat)
    for ax in axes[count:]:
        fig.delaxes(ax)
    return fig, axes[:count]


def auto_log(ax: Axes, values: pd.Series, axis: str = "x") -> None:
    """A log scale when the positive values span more than LOG_SPREAD."""
    positive = values[values > 0].dropna()
    if len(positive) and positive.max() / positive.min() > LOG_SPREAD:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 1, 10, 100 rather than 10^0, 10^1, 10^2
        (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(plain)
        # minor labels as plain numbers, and only where they fit (less than a decade shown), not "3x10^1 4x10^1"
        (ax.xaxis if axis == "x" else ax.yaxis).set_minor_formatter(LogFormatter(minor_thresholds=(1, 0.4)))


def coinciding(samples: Mapping[str, np.ndarray], tolerance: float = COINCIDE_TOLERANCE) -> list[list[str]]:
    """Groups (two or more, in `samples`' order) of series whose distributions coincide: their empirical CDFs
    are nowhere more than `tolerance` apart (the Kolmogorov-Smirnov distance, a fraction of sessions) from
    the group's first series'. Drawn as CDFs, such curves hide each other."""
    sorted_ = {name: np.sort(np.asarray(v, dtype=float)) for name, v in samples.items() if len(v)}
    groups: list[list[str]] = []
    for name, values in sorted_.items():
        for group in groups:
            if ks_distance(sorted_[group[0]], values) <= tolerance:
                group.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest vertical gap between the empirical CDFs of two sorted samples."""
    at = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, at, side="right") / len(a)
                               - np.searchsorted(b, at, side="right") / len(b))))


def note_coinciding(ax: Axes, groups: Sequence[Sequence[str]], total: int) -> None:
    """Name the coinciding series in the panel's lower right corner."""
    if not groups:
        return
    lines = []
    for group in groups:
        what = f"all {total} backends" if len(group) == total else " = ".join(group)
        lines.append(textwrap.fill(f"{what}: same curve", 34))
    ax.text(0.98, 0.04, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
            color="0.2", bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})


def jct_cdf(setup: Setup, sessions: pd.DataFrame) -> Figure:
    done = sessions[sessions["completed"]]
    style = setup.looks
    with themed():
        fig, axes = facets(len(setup.loads), sharey=True)
        for ax, rps in zip(axes, setup.loads, strict=True):
            here = at_load(done, rps)
            samples = {b: np.sort(here.loc[here["backend"] == b, "jct_s"].dropna().to_numpy(dtype=float))
                       for b in setup.backends}
            for backend, x in samples.items():
                if len(x):
                    y = np.arange(1, len(x) + 1) / len(x)
                    ax.plot(x, y, drawstyle="steps-post", lw=1.8, ms=5, markevery=0.12, **style[backend])
            note_coinciding(ax, coinciding(samples), sum(1 for x in samples.values() if len(x)))
            auto_log(ax, done["jct_s"])
            ax.set(title=load_label(rps), xlabel="JCT (s)", ylim=(0, 1.02))
        for ax in axes[::grid(len(axes))[1]]:
            ax.set_ylabel("fraction of sessions")
        return setup.finish(fig, "jct-cdf", "JCT distribution",
                            "Job completion time (arrival to last token, backlog included) of every completed session, "
                            f"all seeds pooled. Backends whose curves coincide (nowhere more than {COINCIDE_TOLERANCE:.0%} of "
                            "sessions apart) are named in the panel: only one of them shows.")


def _with_load(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs at a finite offered load: trace arrivals (NaN) and all-at-once arrivals (inf) have no place on
    a load axis."""
    return frame[np.isfinite(frame["rps"].astype(float))]


def _dodge(loads: Sequence[float], count: int) -> list[float]:
    """Horizontal offsets (in load units) for `count` series, so error bars at the same load stand apart."""
    steps = np.diff(sorted(set(loads)))
    width = 0.25 * (float(steps.min()) if len(steps) else max(abs(loads[0]), 1.0) * 0.2)
    return [width * (i / max(count - 1, 1) - 0.5) if count > 1 else 0.0 for i in range(count)]


def jct_vs_load(setup: Setup) -> Figure | None:
    """Mean and p95 JCT against the offered load; None when no run had a finite one (trace or all-at-once
    arrivals only)."""
    frame = _with_load(run_frame(setup.runs, ["mean_jct_s", "p95_jct_s", "bound_mean_jct_s"]))
    if frame.empty:
        return None
    style = setup.looks
    backends = [b for b in setup.backends if b in set(frame["backend"])]
    offsets = dict(zip(backends, _dodge(list(frame["rps"]), len(backends)), strict=True))
    extra: list[Line2D] = []
    with themed():
        fig, axes = facets(2, height=4.4)
        for ax, (key, label) in zip(axes, (("mean_jct_s", "mean JCT (s)"), ("p95_jct_s", "p95 JCT (s)")), strict=True):
            for backend in backends:
                stats = frame[frame["backend"] == backend].groupby("rps")[key].agg(["mean", _spread]).sort_index()
                ax.errorbar(stats.index + offsets[backend], stats["mean"], yerr=stats["_spread"], lw=1.6, ms=6,
                            capsize=3, elinewidth=1.1, **style[backend])
            if key == "mean_jct_s":
                floor = frame.groupby("rps")["bound_mean_jct_s"].mean().dropna().sort_index()
                if len(floor):  # a marker at each load, so one load point shows too
                    ax.plot(floor.index, floor.to_numpy(), color="black", ls=(0, (1, 1)), lw=2, marker="_", ms=16)
                    extra = [Line2D([], [], color="black", ls=(0, (1, 1)), lw=2, marker="_", ms=16,
                                    label="bound (no policy\nhas a lower mean)")]
            auto_log(ax, pd.concat([frame[key], frame["bound_mean_jct_s"]]) if key == "mean_jct_s" else frame[key],
                     axis="y")
            ax.set(title=f"{label.split(' (')[0]} vs load", xlabel="offered load (sessions/s)", ylabel=label)
            ax.set_xticks(sorted(frame["rps"].unique()))
        return setup.finish(fig, "jct-vs-load", "JCT vs load",
                            "Mean over seeds; error bars: ± 1 standard deviation over seeds. The backends at one load "
                            "are drawn side by side, a little apart, so their bars do not cover each other. Dotted: "
                            "the run's physical bound on the mean JCT (harness.bound), where the runs computed one.",
                            extra=extra, backends=backends)


def frontier(setup: Setup) -> Figure | None:
    """Throughput against mean JCT through each backend's load points; None without a finite load point
    (trace or all-at-once arrivals only)."""
    frame = _with_load(run_frame(setup.runs))
    if frame.empty:
        return None
    stats = frame.groupby(["backend", "rps"])[["mean_jct_s", "session_throughput"]].agg(["mean", _spread])
    markers = dict(zip(sorted(frame["rps"].unique()), itertools.cycle("osD^vP*X"), strict=False))
    style = setup.looks
    with themed():
        fig = new_figure(5.2)
        ax = fig.subplots()
        drawn = [b for b in setup.backends if b in stats.index.get_level_values(0)]
        for backend in drawn:
            rows = stats.loc[backend].sort_index()
            look = style[backend]
            x, y = rows[("mean_jct_s", "mean")], rows[("session_throughput", "mean")]
            ax.plot(x, y, color=look["color"], ls=look["ls"], lw=1.8)
            for rps, row in rows.iterrows():
                ax.errorbar(row[("mean_jct_s", "mean")], row[("session_throughput", "mean")],
                            xerr=row[("mean_jct_s", "_spread")], yerr=row[("session_throughput", "_spread")],
                            color=look["color"], marker=markers[rps], ms=7, capsize=3, lw=1.1)
        auto_log(ax, frame["mean_jct_s"])
        ax.set(xlabel="mean JCT (s)", ylabel="session throughput (sessions/s)")
        ax.set_title("better: up and left", loc="left", fontsize=10, color="0.3")
        loads = [Line2D([], [], ls="", marker=m, color="0.3", label=f"rps {rps:g}") for rps, m in markers.items()]
        bounds = [v for v in (r.figure("throughput_bound") for r in setup.runs) if not math.isnan(v)]
        if bounds:  # the testbed's capacity (harness.cachebound), the same at every load
            ax.axhline(float(np.mean(bounds)), color="black", ls=(0, (1, 1)), lw=2)
            loads.append(Line2D([], [], color="black", ls=(0, (1, 1)), lw=2, label="throughput bound"))
        return setup.finish(fig, "frontier", "Throughput vs latency",
                            "One line per backend through its load points (line style: backend; marker: offered "
                            "load); error bars: ± 1 std over seeds. Dotted: the throughput bound, the sessions/s the "
                            "GPU or the tool pool can sustain at most (whichever is less).", extra=loads,
                            markers=False, backends=drawn)


def _spread(values: pd.Series) -> float:
    """Standard deviation over seeds as harness.compare reports it (population std, 0 for one seed)."""
    return float(values.std(ddof=0)) if len(values) else 0.0


def slowdown(setup: Setup, sessions: pd.DataFrame, alpha: float) -> Figure | None:
    """Slowdown (JCT / isolated JCT) per backend; None when no session has an isolated JCT. The x axis names
    the backends, so the figure has no backend legend, only the goodput bound's."""
    done = sessions[sessions["completed"] & sessions["slowdown"].notna()]
    if done.empty:
        return None
    with themed():
        fig, axes = facets(len(setup.loads), height=3.6, sharey=True)
        for ax, rps in zip(axes, setup.loads, strict=True):
            here = at_load(done, rps)
            shown = [b for b in setup.backends if b in set(here["backend"])]
            if not shown:
                ax.text(0.5, 0.5, "no session with an isolated JCT", ha="center", transform=ax.transAxes)
                ax.set(title=load_label(rps), xticks=[])
                continue
            with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                warnings.filterwarnings("ignore", "vert: bool", MatplotlibDeprecationWarning)
                sns.boxplot(data=here, x="backend", y="slowdown", hue="backend", order=shown, hue_order=shown,
                            palette={b: setup.colours[b] for b in shown}, ax=ax, legend=False, width=0.6,
                            fliersize=2, linewidth=1, saturation=1)
            ax.axhline(alpha, ls="--", color="0.3", lw=1.2)
            ax.set(title=load_label(rps), xlabel="", ylabel="")
            tilted = len(shown) > 4  # names end under their box, none running into the next
            ax.set_xticks(range(len(shown)), shown, fontsize=9, rotation=30 if tilted else 0,
                          ha="right" if tilted else "center", rotation_mode="anchor")
        auto_log(axes[0], pd.Series(np.append(done["slowdown"].to_numpy(), alpha)), axis="y")
        for ax in axes[::grid(len(axes))[1]]:
            ax.set_ylabel("slowdown (JCT / isolated)")
        bound = Line2D([], [], ls="--", color="0.3", lw=1.2, label=f"goodput bound\nα = {alpha:g}")
        fig.legend(handles=[bound], loc="outside right center", frameon=False)
        return setup.finish(fig, "slowdown", "Slowdown distribution",
                            "Per completed session, all seeds pooled; boxes: quartiles, whiskers: 1.5 IQR. Sessions "
                            "below the dashed line count towards goodput.", legend=False)
