"""Runs found under result directories, read into frames a report can group.

A run belongs to a *load point*: its workload, its settings and its offered load (rps). "Settings" are the
config values that set a run apart from other runs of the same workload in the same result set (e.g.
`tool_cores=2`), leaving out what a report compares along (backend, seed, rps). Within one load point each
backend has one run per seed; runs that did not complete or are invalid (failed calls), and older runs of a
point run again, are listed but left out of rankings and plots.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness.compare import COMPARED
from harness.errors import BadInput
from harness.metrics import per_session_metrics
from harness.results import RunRecord, read_run
from workloads.source import offered_rps

# Config keys a report compares along, or that follow from others; never part of a run's settings.
NOT_SETTINGS = frozenset({"backend", "seed", "rps", "workload_name", "num_sessions", "force"})
PointKey = tuple[str, str, float]  # (workload, settings, rps)


@dataclass(frozen=True)
class Run:
    """One run and where it sits in the report."""

    record: RunRecord
    workload: str
    settings: str  # "key=value, ..." that sets it apart from other runs of its workload; "" when none
    rps: float  # offered load, sessions/s; NaN when the arrivals came from a trace
    backend: str
    seed: int
    summary: dict[str, Any] | None
    excluded: str = ""  # why the run is left out of rankings; "" when it is ranked

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def included(self) -> bool:
        return not self.excluded

    @property
    def point(self) -> PointKey:
        return (self.workload, self.settings, self.rps)

    def figure(self, key: str) -> float:
        """A summary figure as a float, NaN when undefined."""
        value = (self.summary or {}).get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan


@dataclass
class ResultSet:
    """The runs found under some result directories."""

    roots: tuple[Path, ...]
    runs: list[Run] = field(default_factory=list)

    @property
    def included(self) -> list[Run]:
        return [r for r in self.runs if r.included]

    def frame(self) -> pd.DataFrame:
        return run_frame(self.runs)

    def points(self) -> Iterator[tuple[PointKey, list[Run]]]:
        """Ranked runs by load point, in workload, settings, rps order."""
        by_point: dict[PointKey, list[Run]] = {}
        for run in self.included:
            by_point.setdefault(run.point, []).append(run)
        yield from sorted(by_point.items(), key=lambda item: _point_order(item[0]))

    def panels(self) -> Iterator[tuple[tuple[str, str], list[Run]]]:
        """Ranked runs by (workload, settings): every load point of one setup, the unit a plot shows."""
        by_setup: dict[tuple[str, str], list[Run]] = {}
        for run in self.included:
            by_setup.setdefault((run.workload, run.settings), []).append(run)
        yield from sorted(by_setup.items())


def run_frame(runs: Iterable[Run], figures: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: identity, status and summary figures, NaN where undefined (`figures`: summary keys,
    default the compared ones)."""
    keys = list(figures) if figures is not None else [key for key, _ in COMPARED]
    columns = ["run_id", "dir", "status", "excluded", "valid", "workload", "settings", "rps", "backend", "seed",
               *keys]
    rows = [[r.run_id, str(r.record.dir), r.record.status, r.excluded, (r.summary or {}).get("valid"), r.workload,
             r.settings, r.rps, r.backend, r.seed, *(r.figure(key) for key in keys)] for r in runs]
    return pd.DataFrame(rows, columns=columns)


def point_title(point: PointKey) -> str:
    """`paper · tool_cores=2 · rps 0.1`."""
    workload, settings, rps = point
    return " · ".join(x for x in (workload, settings, load_label(rps)) if x)


def load_label(rps: float) -> str:
    return "trace arrivals" if math.isnan(rps) else f"rps {rps:g}"


def at_load(frame: pd.DataFrame, rps: float) -> pd.DataFrame:
    """The rows of `frame` at load `rps` (NaN: the runs with trace arrivals)."""
    return frame[frame["rps"].isna()] if math.isnan(rps) else frame[frame["rps"] == rps]


def _point_order(key: PointKey) -> tuple[str, str, float]:
    workload, settings, rps = key
    return (workload, settings, math.inf if math.isnan(rps) else rps)


# ------------------------------------------------------------------------------------------ discovery
def discover(root: Path) -> list[RunRecord]:
    """Every run under `root` (a directory holding run.json), at any depth; hidden directories are skipped."""
    root = Path(root)
    if not root.exists():
        raise BadInput(f"{root}: no such directory")
    if not root.is_dir():
        raise BadInput(f"{root}: not a directory")
    found: list[RunRecord] = []
    for here, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if "run.json" in files:
            subdirs[:] = []  # a run's directory holds no further runs
            found.append(read_run(Path(here)))  # a corrupt one too: the report lists it as unreadable
    if not found:
        raise BadInput(f"{root}: no runs found (a run is a directory with a run.json, as `mars-bench run` writes)")
    return found


def load_results(roots: Sequence[Path], include_noisy: bool = False) -> ResultSet:
    """The runs under `roots`, each placed at its load point; a directory given twice counts once. Runs on an
    oversubscribed host (run.json `noisy`) are not ranked unless `include_noisy`."""
    records: dict[Path, RunRecord] = {}
    for root in roots:
        for record in discover(root):
            records.setdefault(record.dir.resolve(), record)
    runs: list[Run] = []
    by_workload: dict[str, list[RunRecord]] = {}
    for record in records.values():
        try:
            record.check()
            by_workload.setdefault(workload_name(record.config), []).append(record)
        except BadInput as e:
            runs.append(_unreadable(record, str(e)))
    for workload, group in by_workload.items():
        labels = settings_labels([r.config for r in group])
        for record, label in zip(group, labels, strict=True):
            try:
                runs.append(_place(record, workload, label, include_noisy))
            except (BadInput, ValueError, TypeError) as e:  # a run.json whose values are not what run writes
                runs.append(_unreadable(record, f"{record.dir / 'run.json'}: {e}"))
    runs = _supersede(runs)
    runs.sort(key=lambda r: (*_point_order(r.point), r.backend, r.seed, str(r.record.meta.get("started"))))
    return ResultSet(tuple(Path(r) for r in roots), runs)


def _place(record: RunRecord, workload: str, settings: str, include_noisy: bool = False) -> Run:
    config = record.config
    seed = config.get("seed", record.meta.get("seed", 0))
    status = record.status
    summary = record.summary()
    excluded = "" if status == "completed" else f"status {status}"
    if not excluded and summary is None:
        excluded = "no summary.json"
    if not excluded and summary is not None and summary.get("valid") is False:  # e.g. calls failed: its figures are not the backend's
        excluded = f"invalid: {'; '.join(summary.get('invalid_reasons') or []) or 'see summary.json'}"
    if not excluded and record.noisy and not include_noisy:
        excluded = f"noisy host: {record.host_load()} (--include-noisy ranks it)"
    return Run(record, workload, settings, offered_rps(config), str(config.get("backend", "?")), int(seed),
               summary, excluded)


def _unreadable(record: RunRecord, problem: str) -> Run:
    """A corrupt run: listed, flagged, never ranked."""
    return Run(record, "?", "", math.nan, "?", -1, None, excluded=f"unreadable: {problem}")


def _supersede(runs: list[Run]) -> list[Run]:
    """Of several ranked runs of one point, backend and seed, only the newest stays ranked."""
    newest: dict[tuple, Run] = {}
    for run in runs:
        if not run.included:
            continue
        key = (*run.point, run.backend, run.seed)
        if key not in newest or _started(run) > _started(newest[key]):
            newest[key] = run
    out = []
    for run in runs:
        winner = newest.get((*run.point, run.backend, run.seed))
        if run.included and winner is not run:
            run = replace(run, excluded=f"superseded by {winner.run_id}")
        out.append(run)
    return out


def _started(run: Run) -> tuple[str, str, str]:
    return (str(run.record.meta.get("started")), run.run_id, str(run.record.dir))


# ------------------------------------------------------------------------------------------- settings
def workload_name(config: dict[str, Any]) -> str:
    name = config.get("workload_name")
    return str(name) if name else Path(str(config.get("workload", "?"))).stem


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as dotted keys -> JSON text of each leaf value."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = json.dumps(value, sort_keys=True)
    return out


def common_config(configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The part of the configs that every one of them shares, nested as they are."""
    flats = [flatten(c) for c in configs]
    shared = {k: v for k, v in flats[0].items() if all(f.get(k) == v for f in flats[1:])} if flats else {}
    out: dict[str, Any] = {}
    for key, text in shared.items():
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(text)
    return out


def settings_labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """For each config, the values of the keys that differ between the configs ("" when none do)."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats) - NOT_SETTINGS)
    varying = [k for k in keys if len({f.get(k) for f in flats}) > 1]
    return [", ".join(f"{k}={_shown(f.get(k))}" for k in varying) for f in flats]


def config_differences(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(key, values in a, values in b) for every setting whose values differ between two sets of configs."""
    fa, fb = [flatten(c) for c in a], [flatten(c) for c in b]
    keys = sorted(set().union(*fa, *fb) - NOT_SETTINGS)
    out = []
    for key in keys:
        va, vb = sorted({_shown(f.get(key)) for f in fa}), sorted({_shown(f.get(key)) for f in fb})
        if va != vb:
            out.append((key, ", ".join(va), ", ".join(vb)))
    return out


def _shown(text: str | None) -> str:
    """A flattened value as people write it on the command line: strings unquoted, missing as '-'."""
    if text is None:
        return "-"
    value = json.loads(text)
    return value if isinstance(value, str) else text


# --------------------------------------------------------------------------------------------- tables
def session_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Per-session metrics (harness.metrics: jct_s, slowdown, ...) of the runs, tagged with their point."""
    frames = []
    for run in runs:
        sessions = per_session_metrics(run.record.sessions())
        frames.append(sessions.assign(run_id=run.run_id, workload=run.workload, settings=run.settings, rps=run.rps,
                                      backend=run.backend, seed=run.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def representatives(runs: Sequence[Run]) -> list[Run]:
    """Per backend, the run at the highest load point with the lowest seed: the one whose timelines are shown."""
    loads = [r.rps for r in runs if not math.isnan(r.rps)]
    top = max(loads) if loads else math.nan
    chosen: dict[str, Run] = {}
    for run in runs:
        if (run.rps == top or (math.isnan(top) and math.isnan(run.rps))) and \
                (run.backend not in chosen or run.seed < chosen[run.backend].seed):
            chosen[run.backend] = run
    return list(chosen.values())
