"""Real CPU tools (`--tools real`, real engine only): every tool call runs as processes pinned to the tool
cores and does the turn's CPU work for real, so tools and the engine contend for the machine as they do
in production.

A call of `cpu_seconds` on `cores` cores starts `cores` worker processes (clamped to the pool, work
conserved as in harness.tools), each burning `cpu_seconds` of its own CPU time (a busy loop on
`time.process_time`, so the work is exact however the OS shares the cores), or, when the workload
records a command and `--allow-commands` is given, runs that command through the shell. Disciplines as
in harness.tools: `queue` (one FIFO, or the tool-order policy's order of it, harness.policy.tools; the
head starts when enough tool cores are free, nobody overtakes) and `timeshare` (everything starts at once; the OS shares the cores). `--cpu-stress K` adds K busy
processes on the same cores for the whole run.

Every process is pinned (`os.sched_setaffinity`) to the tool CPUs, runs in its own session, under an
address-space limit (`ToolLimits.memory_gib`) and a CPU-time limit (RLIMIT_CPU). A recorded command also
runs in a temporary working directory (removed after the call) under a wall-time limit, both limits
`ToolLimits.seconds(cpu_seconds)` = factor x its declared CPU seconds + a floor. A command that reaches
a limit is killed there and its call counts as failed (`tool_calls_failed`, `tool_calls_killed`); as in
agent frameworks (a timed-out command returns an error to the agent), the session goes on with its next
turn. When a call ends, every process it started is killed - its group, its descendants (the pool
process is a child subreaper, so an orphaned `setsid` grandchild stays findable) and anything carrying
the call's environment marker (harness.proctree) - and so is everything left when the pool closes: at
the end of the run, on an error, on Ctrl-C.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

from harness import proctree
from harness.config import ToolLimits
from harness.policy.tools import ToolOrder, ToolRequest
from harness.tools import Ema, ToolCompletion, ToolMode, in_order

POLL_S = 0.005  # how often running tools are checked for completion
BURN = "import sys, time\nend = time.process_time() + float(sys.argv[1])\nwhile time.process_time() < end:\n    pass\n"
SPIN = "while True:\n    pass\n"
# SIGXCPU (RLIMIT_CPU's soft limit) ended the process, or the command the shell ran (128 + signal)
_CPU_LIMIT_CODES = (-signal.SIGXCPU, 128 + signal.SIGXCPU)


def tool_cpus(requested: int, available: Sequence[int] | None = None) -> list[int]:
    """The CPUs tools are pinned to: the last `requested` of the process's CPUs, keeping the first one for
    the engine when there is more than one (all of them on a one-CPU machine)."""
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    pool = cpus[1:] if len(cpus) > 1 else cpus
    return pool[-requested:] if requested < len(pool) else pool


@dataclass
class _Call:
    job_id: Hashable
    cpu_seconds: float
    cores: int  # requested
    workers: int  # granted (clamped to the pool)
    submitted_s: float
    command: str | None
    event: simpy.Event
    request: ToolRequest
    started_s: float | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # a recorded command's: its environment marker, every descendant seen so far, its deadline and workspace
    mark: str = ""
    seen: dict[int, int | None] = field(default_factory=dict)  # pid -> its start time
    # on the run's real-time clock (env.now), which never runs ahead of the wall clock: a command gets at least
    # its limit in wall seconds, and the duration recorded for it (env.now - started_s) is never below it
    deadline: float = math.inf
    workdir: str | None = None
    killed: str | None = None  # "wall-time limit" when the pool killed it


class RealToolPool:
    """Runs tool calls as pinned processes on a (real-time) simpy environment; the interface of
    harness.runner.TimedTools (harness.runner.ToolRunner), and the signals of harness.tools.ToolPool."""

    def __init__(self, env: simpy.Environment, cores: int, mode: ToolMode = "queue", stress_cores: int = 0,
                 allow_commands: bool = False, ema_alpha: float = 0.2, cpus: Sequence[int] | None = None,
                 order: ToolOrder | None = None, limits: ToolLimits | None = None) -> None:
        self.env = env
        self.limits = limits or ToolLimits()
        self._mark = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # this pool's prefix of the call markers
        # orphaned descendants of tool commands are reparented to this process, so they can be found and reaped
        self._subreaper = allow_commands and proctree.become_subreaper()
        self.order = order
        self._seq = 0
        self.mode = mode
        self.cpus = list(cpus) if cpus is not None else tool_cpus(cores)
        self.cores = len(self.cpus)
        if mode == "queue" and stress_cores >= self.cores:
            raise ValueError(f"{stress_cores} stress processes leave none of the {self.cores} tool CPUs "
                             f"({self.cpus}) for tool calls in queue mode; use fewer or --tool-mode timeshare")
        self.workers = self.cores - stress_cores if mode == "queue" else self.cores
        self.allow_commands = allow_commands
        self.pool = self  # TimedTools' shape: the runner reads the signals from `.pool`
        self._ema = Ema(ema_alpha)
        self._queue: deque[_Call] = deque()
        self._running: list[_Call] = []
        self._busy = 0
        self._stressors = [self._spawn([sys.executable, "-c", SPIN]) for _ in range(stress_cores)]
        self._wake: simpy.Event = env.event()
        self.completed = 0
        self.failed = 0
        self.killed = 0  # failed calls the pool killed at a limit
        env.process(self._loop())

    # ----------------------------------------------------------------------------- signals
    @property
    def inflight(self) -> int:
        return len(self._queue) + len(self._running)

    @property
    def busy_cores(self) -> float:
        return float(self._busy)

    @property
    def ema_wait_s(self) -> float:
        return self._ema.value if self._ema.value is not None else 0.0

    # ----------------------------------------------------------------------------- calls
    def run(self, job_id: Hashable, cpu_seconds: float, cores: int, command: str | None = None, session_id: str = "",
            tool: str = "") -> simpy.Event:
        event = self.env.event()
        request = ToolRequest(job_id, session_id, tool, cores, self.env.now, self._seq)
        self._seq += 1
        call = _Call(job_id, cpu_seconds, cores, min(cores, self.workers), self.env.now, command, event, request)
        self._queue.append(call)
        self._start_heads()
        if not self._wake.triggered:
            self._wake.succeed()
        return event

    def _start_heads(self) -> None:
        if self.order is not None and self.mode == "queue" and len(self._queue) > 1 and self._busy < self.workers:
            self._queue = in_order(self.order, self._queue, self.env.now)
        while self._queue and (self.mode == "timeshare" or self._queue[0].workers <= self.workers - self._busy):
            call = self._queue.popleft()
            call.started_s = self.env.now
            if self.mode == "queue":
                self._ema.update(call.started_s - call.submitted_s)
            work = call.cpu_seconds * call.cores / call.workers
            if call.command is not None and self.allow_commands:
                limit = self.limits.seconds(call.cpu_seconds)
                call.mark = f"{self._mark}-{call.request.seq}"
                call.workdir = tempfile.mkdtemp(prefix="mars-bench-tool-")
                call.deadline = self.env.now + limit
                call.procs = [self._spawn(["/bin/sh", "-c", call.command], cpu_limit=limit, cwd=call.workdir,
                                          env={**os.environ, proctree.MARK_VAR: call.mark})]
            else:  # the busy loop can't overrun its work; the CPU limit stops a hung one
                call.procs = [self._spawn([sys.executable, "-c", BURN, f"{work:.6f}"],
                                          cpu_limit=self.limits.seconds(work)) for _ in range(call.workers)]
            self._busy += call.workers
            self._running.append(call)

    def _spawn(self, argv: list[str], cpu_limit: float | None = None, cwd: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cpus = set(self.cpus)
        memory = int(self.limits.memory_gib * 2**30)

        def confine() -> None:  # in the child, before exec
            os.sched_setaffinity(0, cpus)
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            if cpu_limit is not None:  # SIGXCPU at the limit, SIGKILL a second later if it is caught
                limit = max(1, math.ceil(cpu_limit))
                resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))

        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=confine, cwd=cwd, env=env)  # noqa: PLW1509

    def _watch(self, call: _Call) -> None:
        """Note the command's descendants (so one that escapes its group is still known) and kill it at its
        wall-time limit."""
        for proc in call.procs:
            for pid in proctree.descendants(proc.pid) - call.seen.keys():
                call.seen[pid] = proctree.start_time(pid)
        if self.env.now >= call.deadline and any(p.poll() is None for p in call.procs):
            call.killed = "wall-time limit"
            self._end(call)

    def _end(self, call: _Call) -> None:
        """Kill whatever the call left running: its process groups, its descendants, its marked processes;
        remove its workspace."""
        left: set[int] = set()
        if call.mark:  # found before the group dies: its members' children are still theirs then
            left = {pid for proc in call.procs for pid in proctree.descendants(proc.pid)} | proctree.marked(call.mark)
            left |= {pid for pid, started in call.seen.items() if proctree.start_time(pid) == started}  # not reused
        for proc in call.procs:
            _kill_group(proc)
        if call.mark:
            proctree.kill_all(left | proctree.marked(call.mark), popened=[p.pid for p in call.procs])
            call.seen.clear()
        for proc in call.procs:
            proc.wait()
        if call.workdir is not None:
            shutil.rmtree(call.workdir, ignore_errors=True)
            call.workdir = None

    def _loop(self) -> Any:
        env = self.env
        while True:
            if not self._running:
                self._wake = env.event()
                yield self._wake
                continue
            # the next look POLL_S from now on the wall clock: a look that took longer than POLL_S (a loaded
            # host) would otherwise leave the run's clock behind the wall clock, further with every look, and the
            # waits and durations recorded on it short
            yield env.timeout(POLL_S + _behind(env))
            for call in self._running:
                if call.mark:
                    self._watch(call)
            done = [c for c in self._running if all(p.poll() is not None for p in c.procs)]
            for call in done:
                self._running.remove(call)
                self._end(call)
                self._busy -= call.workers
                self.completed += 1
                failed = call.killed is not None or any(p.returncode != 0 for p in call.procs)
                self.failed += failed
                self.killed += call.killed is not None or any(p.returncode in _CPU_LIMIT_CODES for p in call.procs)
                assert call.started_s is not None
                if self.mode == "timeshare":
                    self._ema.update(max(0.0, env.now - call.submitted_s - call.cpu_seconds * call.cores / call.workers))
                if self.order is not None:
                    self.order.on_tool_end(call.request, env.now - call.started_s, env.now)
                call.event.succeed(ToolCompletion(call.job_id, call.cores, call.cpu_seconds, call.submitted_s,
                                                  call.started_s, env.now, call.started_s - call.submitted_s,
                                                  failed=_failure(call) if failed else None))
            if done:
                self._start_heads()

    def stats(self) -> dict[str, Any]:
        return {"tools": "real", "tool_cpus": self.cpus, "tool_calls_run": self.completed,
                "tool_calls_failed": self.failed, "tool_calls_killed": self.killed,
                "tool_limits": self.limits.model_dump()}

    def close(self) -> None:
        """Kill every process the pool started (tools, their descendants, stressors); safe to call twice."""
        for call in self._running:
            self._end(call)
        for proc in self._stressors:
            _kill_group(proc)
            proc.wait()
        if self.allow_commands:  # anything still marked by one of this pool's calls
            proctree.kill_all(proctree.marked(self._mark))
        if self._subreaper:  # orphans of the engine's own processes go back to init
            proctree.become_subreaper(False)
            self._subreaper = False
        self._running.clear()
        self._stressors = []


def _behind(env: simpy.Environment) -> float:
    """How far a real-time environment's clock is behind the wall clock (0 for any other)."""
    if not isinstance(env, simpy.rt.RealtimeEnvironment):
        return 0.0
    return max(0.0, (time.monotonic() - env.real_start) / env.factor + env.env_start - env.now)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group a pool process leads (its own session), if it still runs."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _failure(call: _Call) -> str:
    """Why a call failed, in a few words."""
    if call.killed is not None:
        return f"killed at its {call.killed}"
    codes = [p.returncode for p in call.procs if p.returncode != 0]
    if any(code in _CPU_LIMIT_CODES for code in codes):
        return "killed at its CPU-time limit"
    return f"exit status {codes[0]}"
