"""Figures over the runs of one setup (a workload with its settings, all its load points): JCT distribution,
JCT against load, the throughput-latency frontier and the slowdown distribution."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import warnings
from collections.abc import Sequence
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
from harness.report.style import Colour, backend_order, legend_outside, new_figure, save, themed

LOG_SPREAD = 30  # a value axis spanning more than this factor is drawn on a log scale


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

    def finish(self, fig: MplFigure, kind: str, heading: str, caption: str, extra: Sequence[Line2D] = (),
               backends: Sequence[str] | None = None) -> Figure:
        """Legend (`backends`, default all of the setup's, plus `extra`), heading, and the PNG written."""
        colours = {b: self.colours[b] for b in (self.backends if backends is None else backends)}
        legend_outside(fig, colours, extra=extra)
        fig.suptitle(f"{heading}: {self.title}", fontweight="bold")
        return save(fig, self.out_dir, f"{kind}-{self.slug}", f"{heading}: {self.title}", caption)


def facets(count: int, width: float = 4.4, height: float = 3.4, **shared: bool) -> tuple[MplFigure, list[Axes]]:
    """A figure with `count` panels, at most three a row; unused panels are hidden."""
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = new_figure(width * cols + 1.6, height * rows + 0.5)
    axes = list(fig.subplots(rows, cols, squeeze=False, **shared).flat)
    for ax in axes[count:]:
        ax.set_visible(False)
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


def jct_cdf(setup: Setup, sessions: pd.DataFrame) -> Figure:
    done = sessions[sessions["completed"]]
    with themed():
        fig, axes = facets(len(setup.loads), sharey=True)
        for ax, rps in zip(axes, setup.loads, strict=True):
            sns.ecdfplot(data=at_load(done, rps), x="jct_s", hue="backend", hue_order=setup.backends,
                         palette=setup.colours, ax=ax, legend=False, linewidth=2)
            auto_log(ax, done["jct_s"])
            ax.set(title=load_label(rps), xlabel="JCT (s)", ylabel="fraction of sessions")
        return setup.finish(fig, "jct-cdf", "JCT distribution",
                            "Job completion time (arrival to last token, backlog included) of every completed session, "
                            "all seeds pooled.")


def jct_vs_load(setup: Setup) -> Figure:
    frame = run_frame(setup.runs).dropna(subset=["rps"])
    style = "band" if frame["rps"].nunique() > 1 else "bars"
    with themed():
        fig, axes = facets(2, width=5.2, height=3.8)
        for ax, (key, label) in zip(axes, (("mean_jct_s", "mean JCT (s)"), ("p95_jct_s", "p95 JCT (s)")), strict=True):
            sns.lineplot(data=frame, x="rps", y=key, hue="backend", hue_order=setup.backends, palette=setup.colours,
                         errorbar=_band, err_style=style, marker="o", linewidth=2, ax=ax, legend=False)
            auto_log(ax, frame[key], axis="y")
            ax.set(title=f"{label.split(' (')[0]} vs load", xlabel="offered load (sessions/s)", ylabel=label)
        return setup.finish(fig, "jct-vs-load", "JCT vs load",
                            "Mean over seeds; the shaded band (or bar) is ± 1 standard deviation over seeds.")


def frontier(setup: Setup) -> Figure:
    frame = run_frame(setup.runs).dropna(subset=["rps"])
    stats = frame.groupby(["backend", "rps"])[["mean_jct_s", "session_throughput"]].agg(["mean", _spread])
    markers = dict(zip(sorted(frame["rps"].unique()), itertools.cycle("osD^vP*X"), strict=False))
    with themed():
        fig = new_figure(8.4, 4.8)
        ax = fig.subplots()
        for backend in [b for b in setup.backends if b in stats.index.get_level_values(0)]:
            rows = stats.loc[backend].sort_index()
            x, y = rows[("mean_jct_s", "mean")], rows[("session_throughput", "mean")]
            ax.plot(x, y, color=setup.colours[backend], lw=2)
            for rps, row in rows.iterrows():
                ax.errorbar(row[("mean_jct_s", "mean")], row[("session_throughput", "mean")],
                            xerr=row[("mean_jct_s", "_spread")], yerr=row[("session_throughput", "_spread")],
                            color=setup.colours[backend], marker=markers[rps], ms=7, capsize=3, lw=1.2)
        auto_log(ax, frame["mean_jct_s"])
        ax.set(title="Throughput vs latency (better: up and left)", xlabel="mean JCT (s)",
               ylabel="session throughput (sessions/s)")
        loads = [Line2D([], [], ls="", marker=m, color="0.3", label=f"rps {rps:g}") for rps, m in markers.items()]
        return setup.finish(fig, "frontier", "Throughput vs latency",
                            "One line per backend through its load points (marker: offered load); error bars: "
                            "± 1 std over seeds.", extra=loads)


def _spread(values: pd.Series) -> float:
    """Standard deviation over seeds as harness.compare reports it (population std, 0 for one seed)."""
    return float(values.std(ddof=0)) if len(values) else 0.0


def _band(values: pd.Series) -> tuple[float, float]:
    """seaborn errorbar: mean ± the same spread as the tables."""
    return values.mean() - _spread(values), values.mean() + _spread(values)


def slowdown(setup: Setup, sessions: pd.DataFrame, alpha: float) -> Figure | None:
    """Slowdown (JCT / isolated JCT) per backend; None when no session has an isolated JCT."""
    done = sessions[sessions["completed"] & sessions["slowdown"].notna()]
    if done.empty:
        return None
    with themed():
        fig, axes = facets(len(setup.loads), width=max(3.0, 0.9 * len(setup.backends) + 1.4), sharey=True)
        for ax, rps in zip(axes, setup.loads, strict=True):
            with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                warnings.filterwarnings("ignore", "vert: bool", MatplotlibDeprecationWarning)
                sns.boxplot(data=at_load(done, rps), x="backend", y="slowdown", hue="backend", order=setup.backends,
                            hue_order=setup.backends, palette=setup.colours, ax=ax, legend=False, width=0.6,
                            fliersize=2, linewidth=1, saturation=1)
            ax.axhline(alpha, ls="--", color="0.3", lw=1.2)
            ax.set(title=load_label(rps), xlabel="", ylabel="slowdown (JCT / isolated JCT)")
            ax.tick_params(axis="x", rotation=30 if len(setup.backends) > 3 else 0)
        auto_log(axes[0], pd.Series(np.append(done["slowdown"].to_numpy(), alpha)), axis="y")
        bound = Line2D([], [], ls="--", color="0.3", lw=1.2, label=f"goodput bound α = {alpha:g}")
        return setup.finish(fig, "slowdown", "Slowdown distribution",
                            "Per completed session, all seeds pooled; boxes: quartiles, whiskers: 1.5 IQR. Sessions "
                            "below the dashed line count towards goodput.", extra=[bound])
