"""Process trees read from /proc, for stopping everything a subprocess started.

A process group is not enough: a child that calls `setsid` (a daemonising test runner, `nohup ... &`) leaves
it, and once its parent exits it is reparented away from us. Two things keep such descendants findable:

* `become_subreaper()` (prctl PR_SET_CHILD_SUBREAPER): orphaned descendants are reparented to this process
  instead of init, so their pids stay ours (not reused) until we reap them;
* a marker in the environment (`MARK_VAR=<token>`) that every descendant inherits, found again by reading
  `/proc/<pid>/environ` - a descendant that both clears its environment and escapes before it was seen by
  `descendants()` is the one case this misses.

Linux only (the real tools need sched_setaffinity anyway); elsewhere the functions find nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterable
from pathlib import Path

MARK_VAR = "MARS_BENCH_TOOL_CALL"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_PROC = Path("/proc")


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper(on: bool = True) -> bool:
    """Orphaned descendants of this process are reparented to it (not to init), or no longer with `on`
    False; False where unsupported."""
    return _prctl(PR_SET_CHILD_SUBREAPER, int(on))


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """The kernel sends `sig` to this process when its parent dies; False where unsupported."""
    return _prctl(PR_SET_PDEATHSIG, int(sig))


def children(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's), from /proc/<pid>/task/*/children."""
    out: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(p) for p in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (not `pid` itself)."""
    seen: set[int] = set()
    todo = children(pid)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(children(p))
    return seen


def marked(prefix: str) -> set[int]:
    """Live processes whose environment holds MARK_VAR with a value starting with `prefix`."""
    needle = f"{MARK_VAR}={prefix}".encode()
    found: set[int] = set()
    try:
        entries = [e for e in os.listdir(_PROC) if e.isdigit()]
    except OSError:
        return found
    for entry in entries:
        try:
            environ = (_PROC / entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(needle) for var in environ.split(b"\0")):
            found.add(int(entry))
    return found


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot): with the pid, names one process even after pid reuse."""
    try:
        return int((_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_all(pids: Iterable[int], popened: Iterable[int] = ()) -> None:
    """SIGKILL each process, then reap those that are this process's children, except `popened` (reaped by
    their subprocess.Popen, whose returncode would read 0 if we took their status first)."""
    me = os.getpid()
    targets = [p for p in set(pids) if p != me]
    leave = set(popened)
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    for pid in targets:
        if pid not in leave and _parent(pid) == me:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def reap_orphans(pids: Iterable[int]) -> None:
    """Collect the exit status of those of `pids` that are zombie children of this process (descendants
    reparented to this subreaper that exited by themselves)."""
    me = os.getpid()
    for pid in set(pids):
        if _parent(pid) == me:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _parent(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        return int(stat.rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None
