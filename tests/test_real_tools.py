"""Real CPU tools: pinned processes that do the tool call's CPU work, queue and timeshare disciplines,
limits and cleanup (harness.real_tools), on a real-time simpy environment."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import pytest
import simpy.rt

from harness.config import ToolLimits
from harness.real_tools import RealToolPool, tool_cpus
from tests.processes import processes_with

CPU = sorted(os.sched_getaffinity(0))[-1:]  # one CPU: the disciplines are visible on any machine


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_calls(mode: str, calls: list[tuple[float, str | None]], allow_commands: bool = False):
    env = simpy.rt.RealtimeEnvironment(strict=False)
    pool = RealToolPool(env, 1, mode, allow_commands=allow_commands, cpus=CPU)  # type: ignore[arg-type]
    events = [pool.run(i, seconds, 1, command) for i, (seconds, command) in enumerate(calls)]
    env.run(env.all_of(events))
    pool.close()
    return [e.value for e in events], pool


def test_tool_cpus_keep_the_first_cpu_for_the_engine() -> None:
    assert tool_cpus(8, [0, 1, 2, 3]) == [1, 2, 3]
    assert tool_cpus(2, [0, 1, 2, 3]) == [2, 3]
    assert tool_cpus(4, [5]) == [5]


def test_queue_mode_runs_calls_one_per_core_in_order_and_burns_their_cpu() -> None:
    before = child_cpu_seconds()
    done, pool = run_calls("queue", [(0.3, None), (0.3, None), (0.1, None)])
    burned = child_cpu_seconds() - before
    assert [c.job_id for c in sorted(done, key=lambda c: c.finished_s)] == [0, 1, 2]
    assert done[0].wait_s == 0 and done[1].started_s >= done[0].finished_s - 0.02  # FIFO, one core
    assert done[2].wait_s >= 0.5  # waited for both
    assert 0.65 <= burned <= 1.5  # the work really ran: 0.7 s of CPU (plus interpreter start-up)
    assert pool.completed == 3 and pool.failed == 0 and pool.ema_wait_s > 0


def test_waits_and_durations_stay_on_the_wall_clock_when_each_look_is_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded host one look at the running calls can take longer than the pool's 5 ms poll; the run's clock
    must not fall behind the wall clock then (it did, and a call that waited 0.6 s was recorded as waiting
    0.01 s). Each look is made 20 ms slow here."""
    import subprocess

    poll = subprocess.Popen.poll

    def slow_poll(self: subprocess.Popen[bytes]) -> int | None:
        time.sleep(0.02)  # a look takes 4x the poll period
        return poll(self)

    monkeypatch.setattr(subprocess.Popen, "poll", slow_poll)
    started = time.monotonic()
    done, _ = run_calls("queue", [(0.3, None), (0.3, None), (0.1, None)])
    wall = time.monotonic() - started
    assert done[0].finished_s - done[0].started_s >= 0.29  # 0.3 s of CPU on one core takes 0.3 s at least
    assert done[2].wait_s >= 0.58  # it waited for both
    assert max(c.finished_s for c in done) >= 0.69 and max(c.finished_s for c in done) <= wall + 0.05


def test_timeshare_mode_starts_everything_and_the_os_shares_the_core() -> None:
    done, _ = run_calls("timeshare", [(0.3, None), (0.3, None)])
    assert all(c.wait_s == 0 for c in done)
    assert min(c.finished_s - c.started_s for c in done) >= 0.45  # two on one core: each takes ~0.6 s


def test_recorded_commands_run_pinned_to_the_tool_cpus(tmp_path: Path) -> None:
    out = tmp_path / "affinity"
    command = f"{sys.executable} -c \"import os; open('{out}', 'w').write(repr(sorted(os.sched_getaffinity(0))))\""
    done, _ = run_calls("queue", [(0.1, command)], allow_commands=True)
    assert out.read_text() == repr(CPU) and done[0].finished_s > done[0].started_s
    out.unlink()
    run_calls("queue", [(0.1, command)])  # without --allow-commands the command never runs
    assert not out.exists()


def test_close_kills_running_tools_and_stressors() -> None:
    env = simpy.rt.RealtimeEnvironment(strict=False)
    pool = RealToolPool(env, 1, "timeshare", stress_cores=1, cpus=CPU)
    pool.run("long", 60.0, 1)
    env.run(until=0.3)
    procs = [p for c in pool._running for p in c.procs] + list(pool._stressors)
    assert len(procs) == 2 and all(p.poll() is None for p in procs)
    pool.close()
    assert all(p.returncode is not None for p in procs)  # reaped: no orphan left behind


def test_queue_mode_refuses_stressors_that_take_every_tool_cpu() -> None:
    env = simpy.rt.RealtimeEnvironment(strict=False)
    with pytest.raises(ValueError, match="leave none"):
        RealToolPool(env, 1, "queue", stress_cores=1, cpus=CPU)


def test_real_tools_need_a_real_engine(run_cli, tmp_path: Path) -> None:
    res = run_cli("run", "-b", "vllm", "-w", "swe-smoke", "--tools", "real", "--results-dir", str(tmp_path))
    assert res.exit_code == 2 and "needs a real engine" in res.stderr


# ----------------------------------------------------------------------------- limits and cleanup of commands
def run_limited(calls: list[tuple[float, str]], limits: ToolLimits, mode: str = "queue", until: float | None = None):
    """Run recorded commands under `limits`; returns (completions or None if cut at `until`, pool)."""
    env = simpy.rt.RealtimeEnvironment(strict=False)
    pool = RealToolPool(env, 1, mode, allow_commands=True, cpus=CPU, limits=limits)  # type: ignore[arg-type]
    events = [pool.run(i, seconds, 1, command) for i, (seconds, command) in enumerate(calls)]
    try:
        env.run(env.all_of(events) if until is None else until)
    finally:
        pool.close()
    return ([e.value for e in events] if until is None else None), pool


def test_a_command_that_busy_loops_past_its_limit_is_killed_there_and_counts_as_failed(tmp_path: Path) -> None:
    marker = f"spin-{tmp_path.name}"
    command = f"{sys.executable} -c 'while True: pass' {marker}"
    limits = ToolLimits(factor=2, floor_s=0.6)  # declared 0.2 CPU-s: killed at 2 x 0.2 + 0.6 = 1.0 s
    done, pool = run_limited([(0.2, command), (0.1, "true")], limits)
    spun = done[0].finished_s - done[0].started_s
    assert 0.95 <= spun <= 1.6, spun
    assert done[0].failed == "killed at its wall-time limit" and done[1].failed is None  # the next call still ran
    assert pool.failed == 1 and pool.killed == 1 and pool.stats()["tool_calls_killed"] == 1
    assert not processes_with(marker.encode())


def test_a_setsid_child_of_a_command_is_gone_after_the_call(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # the shell starts a child in a new session (out of the call's process group) and exits at once
    command = (f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & "
               f"while [ ! -s {pidfile} ]; do sleep 0.01; done")
    done, pool = run_limited([(0.1, command)], ToolLimits())
    pid = int(pidfile.read_text())
    assert done[0].failed is None and pool.failed == 0
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped, not left to init


def test_a_command_still_running_at_the_end_of_the_run_is_killed_with_its_descendants(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    command = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & sleep 60"
    run_limited([(30.0, command)], ToolLimits(), until=0.5)
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists()


def test_a_command_runs_in_a_temporary_workspace_removed_after_it(tmp_path: Path) -> None:
    out = tmp_path / "cwd"
    done, _ = run_limited([(0.1, f"pwd > {out}; touch scratch")], ToolLimits())
    workspace = Path(out.read_text().strip())
    assert done[0].failed is None and workspace.name.startswith("mars-bench-tool-") and not workspace.exists()


def test_a_command_over_its_memory_limit_fails() -> None:
    grab = f"{sys.executable} -c 'bytearray(600 << 20)'"
    done, pool = run_limited([(0.1, grab), (0.1, "exit 3")], ToolLimits(memory_gib=0.5))
    assert done[0].failed == "exit status 1" and done[1].failed == "exit status 3" and pool.failed == 2


def test_allow_commands_warns_in_one_line_naming_the_workload(run_cli, tmp_path: Path) -> None:
    res = run_cli("run", "-b", "vllm", "-w", "swe-smoke", "--tools", "real", "--allow-commands",
                  "--tool-limit-factor", "3", "--results-dir", str(tmp_path))
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "swe-smoke" in warnings[0] and "3 x its CPU seconds" in warnings[0]


def test_the_readme_command_workload_runs_as_documented() -> None:
    """tests/fixtures/commands.jsonl under the README example's limits: the busy loop is killed at 3 x 0.2 +
    5 s, the allocation fails, the setsid child is gone, the others succeed."""
    from workloads.model import load_sessions

    fixture = Path(__file__).parent / "fixtures" / "commands.jsonl"
    tools = [t.tool for s in load_sessions(fixture) for t in s.turns if t.tool is not None]
    marker = "sleep 600"
    done, pool = run_limited([(t.cpu_seconds, t.command) for t in tools], ToolLimits(factor=3, floor_s=5, memory_gib=1))
    assert [c.failed for c in done] == [None, "killed at its wall-time limit", None, "exit status 1"]
    assert 5.5 <= done[1].finished_s - done[1].started_s <= 6.5
    assert pool.failed == 2 and pool.killed == 1
    assert not processes_with(marker.encode())
