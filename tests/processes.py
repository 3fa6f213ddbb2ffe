"""Helpers for tests that run mars-bench as a child process and check what it leaves behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def processes_with(marker: bytes) -> list[int]:
    """Live processes (other than this one) whose command line contains `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def wait_for_calls(results: Path, proc: subprocess.Popen, n: int, timeout_s: float = 180,
                   poll_s: float = 0.5) -> Path:
    """The run directory under `results` once its event log holds `n` finished calls; fails if the child
    exits first (with its stderr) or nothing comes in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = list(results.glob("*/events.jsonl"))
        if runs and runs[0].read_text().count('"kind":"call"') >= n:
            return runs[0].parent
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the run exited with {proc.returncode} first: "
                                 f"{err.decode() if isinstance(err, bytes) else err}"[-2000:])
        time.sleep(poll_s)
    raise AssertionError(f"the run wrote no {n} calls in {timeout_s:.0f} s")
