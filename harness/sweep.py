"""Grids of runs: axes expanded into run configs, each run written under one sweep directory with an id
made from its config, so a finished run is never run again and an interrupted sweep continues where it
stopped. Runs go to a local process pool or to a Ray cluster.

SWEEP_DIR/
  sweep.json          the grid: axes, fixed settings, run ids (extended when a sweep is widened)
  sweep.csv           one row per run: its axis values, status and figures
  .sweep.lock         held (flock, exclusive) by the sweep running here, its pid inside
  .sweep.workers      held (flock, shared) by that sweep's pool workers while they live
  <run_id>/           one run directory each (harness.results), id = <backend>-<workload>-...-<config hash>
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import math
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.compare import COMPARED
from harness.config import RunConfig
from harness.errors import BadInput
from harness.proctree import alive
from harness.results import RunRecord, load_run

LOCK = ".sweep.lock"
LOCK_GRACE_S = 2.0  # how long a lock left by a dead sweep may take to be let go by its dying workers
WORKERS_LOCK = ".sweep.workers"


def split_values(text: str) -> list[str]:
    """'a,b,[1,2]' -> ['a', 'b', '[1,2]']: commas inside brackets, braces or quotes do not split."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def set_axes(sets: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """`--set k=v` stays a fixed setting; `--set k=v1,v2` becomes an axis (one run per value)."""
    fixed: list[str] = []
    axes: list[tuple[str, list[str]]] = []
    for text in sets:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set {text!r}: expected key=value or key=v1,v2,..., e.g. --set mars.window_min=2,4")
        values = split_values(raw)
        if any(not v for v in values):
            raise BadInput(f"--set {text!r}: an empty value in the list")
        if len(values) == 1:
            fixed.append(text)
        elif any(k == key.strip() for k, _ in axes):
            raise BadInput(f"--set {key.strip()}: given as an axis twice")
        else:
            axes.append((key.strip(), values))
    return fixed, axes


def json_digest(data: Any, digits: int) -> str:
    """The first `digits` hex digits of the SHA-256 of `data` as canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:digits]


def config_hash(config: RunConfig) -> str:
    """Ten hex digits of the config's canonical JSON: equal configs, equal runs. The real tools' limits are
    left out unless tools are real (they change nothing else), so ids made before they existed still hold."""
    data = config.model_dump(mode="json")
    if data.get("tools") != "real":
        data.pop("tool_limits", None)
    return json_digest(data, 10)


def _slug(value: Any) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in str(value)).strip("-")


@dataclass(frozen=True)
class GridPoint:
    """One run of the grid: its config, its values on the sweep's axes and its run id."""

    config: RunConfig
    axes: dict[str, Any]
    run_id: str


def grid_points(make: Callable[[dict[str, Any], list[str]], RunConfig], backends: Sequence[str],
                rps: Sequence[float | None], seeds: Sequence[int], sets: Sequence[str]) -> list[GridPoint]:
    """Every combination of backend x rps x seed x `--set` axis values, in that nesting order.
    `make(values, sets)` builds one run's config from its backend/rps/seed values and `--set` texts."""
    fixed, axes = set_axes(sets)
    points: list[GridPoint] = []
    for backend, r, seed, *picked in itertools.product(backends, rps, seeds, *[vals for _, vals in axes]):
        chosen = [f"{key}={value}" for (key, _), value in zip(axes, picked, strict=True)]
        config = make({"backend": backend, "rps": r, "seed": seed}, [*fixed, *chosen])
        workload = Path(config.workload).stem
        name = [backend, workload, *(["rps" + _slug(r)] if r is not None else []), f"s{seed}",
                *[_slug(value) for value in picked], config_hash(config)]
        axis_values = {"backend": backend, "rps": "inf" if r is not None and math.isinf(r) else r, "seed": seed,
                       **{key: value for (key, _), value in zip(axes, picked, strict=True)}}
        points.append(GridPoint(config, axis_values, "-".join(name)))
    seen: dict[str, GridPoint] = {}
    for p in points:
        seen.setdefault(p.run_id, p)
    return list(seen.values())


def is_completed(run_dir: Path) -> bool:
    """Whether a run directory holds a completed run, read without touching it."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status") == "completed" and \
            (run_dir / "summary.json").is_file()
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def finished_run(sweep_dir: Path, point: GridPoint) -> RunRecord | None:
    """The point's completed run in `sweep_dir`, or None. A run left behind unfinished (failed, interrupted,
    killed) is removed so it runs again from the start."""
    path = sweep_dir / point.run_id
    if not (path / "run.json").is_file():
        if path.exists():
            shutil.rmtree(path)
        return None
    try:
        record = load_run(path)
    except BadInput:
        record = None
    if record is not None and record.status == "completed" and (path / "summary.json").is_file():
        return record
    if record is not None and record.status == "running":  # another sweep on this directory runs it now
        raise BadInput(f"{path} is being run by process {record.meta.get('pid')}: one sweep per directory at a time")
    shutil.rmtree(path)
    return None


def runs_table(sweep_dir: Path, points: Sequence[GridPoint]) -> pd.DataFrame:
    """One row per grid point: its axis values, run id, status and the compared figures."""
    rows = []
    for point in points:
        path = sweep_dir / point.run_id
        status, summary = "not run", {}
        if (path / "run.json").is_file():
            try:
                record = load_run(path)
                status, summary = record.status, record.summary() or {}
            except BadInput as e:  # a corrupt run is one flagged row
                status = f"unreadable: {e}"
        rows.append({**point.axes, "run_id": point.run_id, "status": status,
                     **{key: summary.get(key) for key, _ in COMPARED}})
    return pd.DataFrame(rows)


def write_manifest(sweep_dir: Path, points: Sequence[GridPoint], spec: dict[str, Any]) -> None:
    """sweep.json: the grid's spec and run ids, merged with those of earlier sweeps into this directory."""
    path = sweep_dir / "sweep.json"
    runs: dict[str, Any] = {}
    if path.is_file():
        try:
            runs = dict(json.loads(path.read_text()).get("runs", {}))
        except (ValueError, AttributeError, RecursionError):
            runs = {}
    runs.update({p.run_id: p.axes for p in points})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**spec, "runs": runs}, indent=2, default=str) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[Path]:
    """Hold `sweep_dir` for this sweep; yields the file its pool workers hold shared (harness.executors).
    Refused with one line while another sweep, or a worker of an earlier one (whose sweep was killed),
    still lives: flock locks go with the processes holding them, so nothing stale is left to clean up."""
    try:
        fd = os.open(sweep_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BadInput(f"{sweep_dir}: cannot write in it ({e.strerror or e})") from None
    try:
        owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
        _try_lock(fd, sweep_dir, owner)
        workers = os.open(sweep_dir / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(workers, sweep_dir, owner)
        finally:
            os.close(workers)  # released: this sweep's workers take it shared
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield sweep_dir / WORKERS_LOCK
    finally:
        os.close(fd)


def _try_lock(fd: int, sweep_dir: Path, owner: str) -> None:
    """Lock `fd` exclusively or refuse; when the sweep that held it is gone, its workers (dying with it, see
    harness.executors) get a moment to let go."""
    gone = owner.isdigit() and not alive(int(owner))
    deadline = time.monotonic() + (LOCK_GRACE_S if gone else 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
        except OSError:  # storage without locks (some network file systems): nothing to hold, go on
            return
        raise BadInput(f"{sweep_dir} is in use by sweep process {owner}"
                       f"{' (gone, but its worker processes still run)' if gone else ''}: "
                       f"one sweep per directory at a time") from None
