"""Figures over time of one representative run per backend: the engine's state (KV, GPU, tool pool,
admission) and a per-session timeline of where each session spent its time."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.console import fmt
from harness.metrics import per_session_metrics
from harness.report.doc import Figure
from harness.report.load import Run, load_label
from harness.report.plots import Setup
from harness.report.style import backend_order, heading, new_figure, save, themed

MAX_BINS = 150  # timelines are averaged into at most this many time bins by default
PANEL_BINS = 80  # in the engine-state figure's small panels (~250 px wide), at most this many
MIN_SAMPLES = 2  # a run whose timeline has fewer samples is left out of the engine-state figure (no line)
SPARSE_SAMPLES = 30  # below this many samples a run's every sample is marked (a short run reads as such)

# Phases of a session in the per-session timeline: (name, colour).
PHASES = (("admission wait", "#b8b8b8"), ("LLM queue wait", "#f2a541"), ("LLM compute", "#3569b5"),
          ("tool", "#4e9f50"))
_PHASE_COLOUR = dict(PHASES)


def binned(timeline: pd.DataFrame, max_bins: int = MAX_BINS) -> pd.DataFrame:
    """The timeline averaged into at most `max_bins` equal time bins: KV usage and GPU busy in %, tool calls and sessions as means.

    GPU busy is the growth of the cumulative `gpu_busy_s` over each bin divided by the bin's width.
    """
    t = timeline["t"].to_numpy(dtype=float)
    end = float(t.max())
    count = max(1, min(max_bins, len(t)))
    edges = np.linspace(0.0, end if end > 0 else 1.0, count + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, count - 1)
    columns = [c for c in ("kv_usage", "tool_inflight", "active_sessions", "admission_window") if c in timeline]
    # a bin without a sample keeps the state of the one before (the sim samples sparsely while nothing changes)
    means = timeline[columns].astype(float).groupby(which).mean().reindex(range(count)).ffill()
    out = pd.DataFrame({"t": (edges[:-1] + edges[1:]) / 2})
    out = pd.concat([out, means.reset_index(drop=True)], axis=1)
    out["kv_usage"] = out["kv_usage"] * 100
    busy = np.interp(edges, t, timeline["gpu_busy_s"].to_numpy(dtype=float))
    out["gpu_busy"] = np.clip(np.diff(busy) / np.diff(edges), 0, 1) * 100
    return out


def engine_state(setup: Setup, runs: Sequence[Run]) -> Figure | None:
    """Small multiples: one row per backend, one column per quantity (KV usage, GPU busy, tool calls in
    flight, admitted sessions with MARS's window), the same axes down each column. A short timeline (under
    SPARSE_SAMPLES samples) has each sample marked, and the caption says how few there are; runs with fewer
    than MIN_SAMPLES are left out (named in the caption); None when no run is left."""
    runs = sorted((r for r in runs if not r.record.timeline().empty), key=lambda r: backend_order(r.backend))
    short = [r for r in runs if len(r.record.timeline()) < MIN_SAMPLES]
    runs = [r for r in runs if r not in short]
    if not runs:
        return None
    panels = (("kv_usage", "KV cache used (%)"), ("gpu_busy", "GPU busy (%)"),
              ("tool_inflight", "tool calls (run + queued)"), ("active_sessions", "sessions admitted"))
    cores = {r.record.config.get("tool_cores") for r in runs} - {None}
    with themed():
        fig = new_figure(1.3 * len(runs) + 1.0)
        axes = fig.subplots(len(runs), len(panels), sharex=True, sharey="col", squeeze=False)
        windowed = False
        for row, run in zip(axes, runs, strict=True):
            frame, colour = binned(run.record.timeline(), PANEL_BINS), setup.colours[run.backend]
            marker = "o" if len(run.record.timeline()) < SPARSE_SAMPLES else None
            for ax, (key, _) in zip(row, panels, strict=True):
                if key in ("kv_usage", "gpu_busy"):
                    ax.fill_between(frame["t"], frame[key], color=colour, alpha=0.35, lw=0)
                ax.plot(frame["t"], frame[key], color=colour, lw=1.2, marker=marker, ms=3.5)
                ax.tick_params(labelsize=8)
            if "admission_window" in frame and frame["admission_window"].notna().any():
                row[3].plot(frame["t"], frame["admission_window"], color="0.2", lw=1.1, ls="--")
                windowed = True
            for value in cores:
                row[2].axhline(value, color="0.2", ls=":", lw=1.1)
            row[0].set_ylabel(run.backend, color=colour, fontweight="bold", fontsize=10)
        for ax, (_, label) in zip(axes[0], panels, strict=True):
            ax.set_title(label, fontsize=10)
        for ax in axes[:, 0]:
            ax.set_ylim(0, 100)
        for ax in axes[:, 1]:
            ax.set_ylim(0, 105)
        for ax in axes[:, 2:].flat:
            ax.set_ylim(bottom=0)
        for ax in axes[-1]:
            ax.set_xlabel("time since start (s)", fontsize=9)
        extra = [Line2D([], [], color="0.2", ls="--", lw=1.1, label="admission window")] if windowed else []
        extra += [Line2D([], [], color="0.2", ls=":", lw=1.1, label="tool cores")] if cores else []
        if extra:  # only what the figure draws
            fig.legend(handles=extra, loc="outside lower center", ncols=len(extra), frameon=False)
        first = runs[0]
        left_out = (f" Left out, too few timeline samples (under {MIN_SAMPLES}): "
                    + ", ".join(f"{r.backend} ({len(r.record.timeline())})" for r in short) + ".") if short else ""
        sparse = [r for r in runs if len(r.record.timeline()) < SPARSE_SAMPLES]
        if sparse:
            left_out += (" Short runs, every sample marked: "
                         + ", ".join(f"{r.backend} ({len(r.record.timeline())} samples)" for r in sparse) + ".")
        return setup.finish(
            fig, "engine-state", "Engine state over time",
            f"One run per backend (a row each) at the highest load point ({load_label(first.rps)}, lowest seed), "
            f"averaged into at most {PANEL_BINS} time bins; every column shares its axes. Dashed: the admission "
            f"window of backends with admission control (MARS); dotted: the tool pool's cores.{left_out}",
            legend=False)


def longest_sessions(run: Run, count: int = 4) -> list[str]:
    """The ids of the `count` sessions of `run` with the largest JCT."""
    sessions = per_session_metrics(run.record.sessions())
    return list(sessions.sort_values("jct_s", ascending=False, na_position="last")["session_id"].head(count))


def session_timeline(setup: Setup, runs: Sequence[Run], session_ids: Sequence[str], chosen_from: str) -> Figure:
    """Gantt bars of the chosen sessions in each backend's representative run (same seed: same sessions), a
    panel per backend, two panels a row. Each panel has its own time axis: a backend whose sessions take
    30 times longer would squeeze the others into a sliver of a shared one."""
    runs = sorted(runs, key=lambda r: backend_order(r.backend))
    ids = list(session_ids)
    cols = 1 if len(runs) == 1 else 2
    rows = math.ceil(len(runs) / cols)
    with themed():
        fig = new_figure(rows * (0.36 * len(ids) + 0.75) + 0.9)
        grid = fig.subplots(rows, cols, sharey=True, squeeze=False)
        axes = list(grid.flat)
        for ax in axes[len(runs):]:
            fig.delaxes(ax)
        for ax, run in zip(axes, runs, strict=False):
            longest = _session_bars(ax, run, ids)
            ax.set_xlim(0, max(longest, 1.0) * 1.22)  # broken_barh does not autoscale; room for the JCT labels
            ax.set_title(f"{run.backend} ({load_label(run.rps)}, seed {run.seed})", color=setup.colours[run.backend],
                         fontweight="bold", loc="left", fontsize=10)
            ax.tick_params(axis="x", labelsize=8)
        for ax in axes[max(0, len(runs) - cols):len(runs)]:
            ax.set_xlabel("time since the session arrived (s)", fontsize=9)
        handles = [Patch(color=colour, label=name) for name, colour in PHASES]
        fig.legend(handles=handles, title="phase", loc="outside right center", frameon=False)
        heading(fig, f"Per-session timeline: {setup.title}")
        return save(fig, setup.out_dir, f"sessions-{setup.slug}", f"Per-session timeline: {setup.title}",
                    f"Sessions {chosen_from}, each from its arrival; every backend's panel has its own time axis "
                    "(compare lengths by the JCT written after each bar). Admission wait: arrival to admission; LLM "
                    "queue wait: a call's arrival to its first scheduled step; LLM compute: first step to last "
                    "token; tool: a call's end to the next call (tool queue and run).")


def _session_bars(ax: Axes, run: Run, ids: Sequence[str]) -> float:
    """One row per session, its phases as bars on a clock that starts at the session's arrival; the latest
    end drawn (seconds on that clock)."""
    calls, sessions = run.record.calls(), run.record.sessions().set_index("session_id")
    labels = []
    longest = 0.0
    for row, session_id in enumerate(ids):
        if session_id not in sessions.index:
            labels.append(session_id)
            ax.text(0, row, "  not in this run", va="center", fontsize=8, color="0.4")
            continue
        session = sessions.loc[session_id]
        start = float(session["arrival_s"])
        labels.append(f"{session_id}\n(arrived {fmt(start)} s)")
        spans: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in PHASES}
        _span(spans["admission wait"], start, session["admitted_s"], start)
        turns = calls[calls["session_id"] == session_id].sort_values("turn")
        arrivals = list(turns["arrival_s"].astype(float))[1:] + [math.nan]
        for call, next_arrival in zip(turns.itertuples(), arrivals, strict=True):
            _span(spans["LLM queue wait"], call.arrival_s, call.first_scheduled_s, start)
            _span(spans["LLM compute"], call.first_scheduled_s, call.finish_s, start)
            _span(spans["tool"], call.finish_s, next_arrival, start)
        for name, bars in spans.items():
            ax.broken_barh(bars, (row - 0.34, 0.68), facecolors=_PHASE_COLOUR[name], linewidth=0)
            longest = max([longest, *(x + width for x, width in bars)])
        jct = float(session["finish_s"]) - start
        if math.isfinite(jct):
            ax.annotate(f" JCT {fmt(jct)} s", (jct, row), va="center", fontsize=8, color="0.25")
    ax.set_yticks(range(len(ids)), labels, fontsize=8)
    ax.set_ylim(len(ids) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    return longest


def _span(into: list[tuple[float, float]], start: float, end: float, origin: float) -> None:
    """Append (start - origin, width) when both ends are known and the span is not empty."""
    if math.isfinite(start) and math.isfinite(end) and end > start:
        into.append((float(start) - origin, float(end) - float(start)))
