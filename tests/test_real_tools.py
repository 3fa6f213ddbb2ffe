"""Real CPU tools: pinned processes that do the tool call's CPU work, queue and timeshare disciplines,
limits and cleanup (harness.real_tools), on a real-time simpy environment."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import pytest
import simpy.rt

from harness.real_tools import RealToolPool, tool_cpus

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
