"""Faults around processes and measurement noise: sweep workers that must die with their sweep, a sweep
directory still held by live workers, host load that makes a real-engine run noise, and calibration steps
that cannot be fitted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import calibrate, hostload
from harness.cli import main
from harness.config import make_config
from harness.sweep import WORKERS_LOCK, sweep_lock
from tests.processes import processes_with

ROOT = Path(__file__).resolve().parent.parent


def _wait(condition, timeout_s: float, poll_s: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


# ----------------------------------------------------------------------------------------- sweep workers
def test_sigkill_to_a_sweep_leaves_no_worker_alive(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    marker = str(out).encode()  # forked pool workers keep the parent's command line
    command = [sys.executable, "-m", "harness.cli", "sweep", "-b", "vllm,mars", "-w", "paper", "--sessions", "60",
               "--rps", "0.3", "--seeds", "1,2,3", "-j", "2", "--out", str(out)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, cwd=ROOT)
    try:
        started = _wait(lambda: proc.poll() is not None or (
            len(processes_with(marker)) >= 3 and any(out.glob("*/run.json"))), 120)
        assert started and proc.poll() is None, f"no workers running: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: nobody forwards anything to the workers
        proc.wait(timeout=10)
        assert _wait(lambda: not processes_with(marker), 5), processes_with(marker)
        with sweep_lock(out):  # and the directory is free again
            pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


HOLDERS = {
    "a live sweep": "from harness.sweep import sweep_lock\nwith sweep_lock(Path(sys.argv[1])):\n"
                    "    print('ready', flush=True); time.sleep(120)\n",
    "a live worker of a killed sweep": "from harness.executors import _worker_init\n"
                                       "(Path(sys.argv[1]) / '.sweep.lock').write_text('999999999\\n')\n"
                                       "_worker_init(os.getppid(), str(Path(sys.argv[1]) / sys.argv[2]))\n"
                                       "print('ready', flush=True); time.sleep(120)\n",
}


@pytest.mark.parametrize("holder", list(HOLDERS))
def test_a_sweep_directory_held_by_live_processes_is_refused_in_one_line(
        holder: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    script = "import os, sys, time\nfrom pathlib import Path\n" + HOLDERS[holder]
    proc = subprocess.Popen([sys.executable, "-c", script, str(out), WORKERS_LOCK], stdout=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        args = ["sweep", "-b", "vllm", "-w", "swe-smoke", "--rps", "1", "--seeds", "1", "--out", str(out)]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "in use by sweep process" in err and len(err.splitlines()) == 1
        assert ("gone, but its worker processes still run" in err) == ("worker" in holder)
        assert not list(out.glob("*/run.json"))  # nothing ran
    finally:
        proc.kill()
        proc.wait()
    assert main(args) == 0  # the holder gone, the same command runs


# ----------------------------------------------------------------------------------------- host load
def synthetic_sampler(others_cpus: float, own_cpus: float, steal_cpus: float = 0.0, cpus: int = 2,
                      load1: float = 1.0):
    """A sampler of a machine where, every second, others, we and the hypervisor take those CPUs."""
    tick = [0]

    def read() -> hostload.Sample:
        t = tick[0]
        tick[0] += 1
        busy = round(100 * t * (others_cpus + own_cpus))
        steal = round(100 * t * steal_cpus)
        return hostload.Sample(wall_s=float(t), load1=load1 + t, cpus=cpus, total_ticks=100 * cpus * t + 1000,
                               busy_ticks=busy, steal_ticks=steal, own_ticks=round(100 * t * own_cpus))

    return read


@pytest.mark.parametrize("others, steal, noisy", [
    (1.5, 0.0, True),  # another tenant busy on 1.5 of the 2 CPUs
    (0.3, 0.3, True),  # little load, but the hypervisor steals: 0.6 > 0.5
    (0.2, 0.0, False),  # a quiet machine: an editor, a shell
    (0.5, 0.0, False),  # exactly the bound is not above it
])
def test_a_run_is_noisy_when_others_take_more_than_a_quarter_of_the_machine(others: float, steal: float,
                                                                            noisy: bool) -> None:
    read = synthetic_sampler(others, own_cpus=1.0, steal_cpus=steal)
    load = hostload.figures([read() for _ in range(4)])
    assert load["others_cpus"] == pytest.approx(others) and load["own_cpus"] == pytest.approx(1.0)
    assert load["steal_cpus"] == pytest.approx(steal) and load["load1_max"] == 4.0
    assert load["noisy"] is noisy


def test_our_own_load_never_makes_a_run_noisy() -> None:
    load = hostload.figures([synthetic_sampler(0.0, own_cpus=2.0, load1=8.0)() for _ in range(1)])
    assert load == {}  # one sample measures nothing
    read = synthetic_sampler(0.1, own_cpus=1.9, load1=8.0)  # we keep both CPUs busy, load average high
    assert hostload.figures([read(), read(), read()])["noisy"] is False


def test_the_real_sampler_counts_our_cpu_time_as_ours() -> None:
    first = hostload.read_sample()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    child = subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                            "while time.process_time() < end: pass"], check=True)  # a reaped child counts too
    last = hostload.read_sample()
    assert first is not None and last is not None and child.returncode == 0
    tick = os.sysconf("SC_CLK_TCK")
    own = (last.own_ticks - first.own_ticks) / tick
    assert 0.55 <= own <= 1.5, own  # 0.6 s of CPU: ours and our child's (plus its start-up)
    assert last.busy_ticks - first.busy_ticks >= (last.own_ticks - first.own_ticks) - 0.1 * tick
    assert last.cpus >= 1 and hostload.figures([first, last])["cpus"] == last.cpus


@pytest.mark.parametrize("noisy", [True, False])
def test_a_real_engine_run_records_the_host_load_and_noisy_runs_are_not_ranked(
        noisy: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from harness.report.load import load_results
    from tests.test_http_engine import FakeServer

    monkeypatch.setattr(hostload, "read_sample", synthetic_sampler(1.8 if noisy else 0.1, own_cpus=0.2))
    server = FakeServer(good_calls=10_000, then_status=None)
    try:
        assert main(["run", "--engine", "http", "--base-url", server.url, "-b", "vllm", "-w", "tiny",
                     "--sessions", "2", "--results-dir", str(tmp_path)]) == 0
    finally:
        server.server_close()
    err = capsys.readouterr().err
    assert ("oversubscribed" in err) is noisy
    meta = json.loads(next(tmp_path.glob("*/run.json")).read_text())
    assert meta["noisy"] is noisy and meta["host_load"]["others_cpus"] == pytest.approx(1.8 if noisy else 0.1)
    assert main(["results", "show", "latest", "--results-dir", str(tmp_path)]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if "noisy" in line]
    assert len(shown) == 1 and ("yes (others 1.80" if noisy else "no (others 0.10") in shown[0]
    ranked = load_results([tmp_path]).runs[0]
    assert ranked.included is not noisy and ("noisy host" in ranked.excluded) is noisy
    assert load_results([tmp_path], include_noisy=True).runs[0].included


def test_a_simulated_run_measures_no_host_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostload, "read_sample", synthetic_sampler(1.9, own_cpus=0.1))
    assert main(["run", "-b", "vllm", "-w", "swe-smoke", "--results-dir", str(tmp_path)]) == 0
    meta = json.loads(next(tmp_path.glob("*/run.json")).read_text())
    assert "noisy" not in meta and "host_load" not in meta  # sim time is not host time


# ----------------------------------------------------------------------------------------- calibration
def _steps(times: dict[tuple[int, ...], list[float]]) -> list[calibrate.Sample]:
    """Samples: for each batch (prompt lengths of one prefill step), one sample per repeat time."""
    return [calibrate.Sample(tuple((n, 0) for n in batch), t, t) for batch, ts in times.items() for t in ts]


def _profile(**values: float):  # noqa: ANN202
    from harness.engines.sim.testbed import build_profile

    base = build_profile(make_config((), model="qwen3-coder-30b-a3b"))
    return base.model_copy(update={"flops_per_s": 1e14, "hbm_bytes_per_s": 3e12, "step_overhead_s": 0.003,
                                   "seq_overhead_s": 1e-5, "idle_wake_s": 0.002, **values})


QUIET = {(16,): [0.010, 0.011, 0.0105], (64,): [0.020, 0.021, 0.019], (256,): [0.05, 0.052, 0.049]}
LOADED = {(16,): [0.010, 0.13, 0.011], (64,): [0.020, 0.11, 0.09], (256,): [0.05, 0.12, 0.049]}


def test_calibration_with_repeatable_steps_and_physical_coefficients_passes() -> None:
    spread, batches = calibrate.repeat_spread(_steps(QUIET))
    assert batches == 3 and spread < 0.15
    calibrate.check(_profile(), _steps(QUIET))


def test_calibration_refuses_steps_whose_repeats_disagree() -> None:
    with pytest.raises(calibrate.Unfit, match=r"repeats of the same batch differ by \d+% .*bound 50%"):
        calibrate.check(_profile(), _steps(LOADED), {"cpus": 2, "others_cpus": 1.9, "steal_cpus": 0.0,
                                                      "load1_max": 12.0})
    one_stall = {**QUIET, (16,): [0.010, 0.5, 0.011]}  # one stalled batch of three: the median passes it
    calibrate.check(_profile(), _steps(one_stall))


@pytest.mark.parametrize("name, value", [("hbm_bytes_per_s", 1.17e29), ("idle_wake_s", 0.271),
                                         ("step_overhead_s", 0.0428), ("flops_per_s", 1e3)])
def test_calibration_refuses_a_coefficient_outside_its_physical_range(name: str, value: float) -> None:
    with pytest.raises(calibrate.Unfit, match=f"fitted {name} = .* outside its physical range"):
        calibrate.check(_profile(**{name: value}), _steps(QUIET))


def test_an_unfit_calibration_is_one_line_exit_1_and_writes_no_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import harness.commands.calibrate as command

    def unfit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calibrate.check(_profile(idle_wake_s=0.271), _steps(QUIET))

    monkeypatch.setattr(command, "calibrate_engine", unfit)
    monkeypatch.setattr(command, "require_extra", lambda *a: None)
    out = tmp_path / "p.json"
    assert main(["calibrate", "--model", "m", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "idle_wake_s = 0.271" in err and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------------------- failed tool calls
def test_a_failed_tool_call_is_logged_and_its_session_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's side of a killed command (harness.real_tools reports it as ToolCompletion.failed): a
    `tool_failed` event with the reason, and the session takes its next turn to the end."""
    import dataclasses

    import harness.experiment
    from harness.runner import TimedTools

    class FailingTools(TimedTools):
        def run(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            inner, outer = super().run(*args, **kwargs), self.env.event()
            inner.callbacks.append(lambda ev: outer.succeed(
                dataclasses.replace(ev.value, failed="killed at its wall-time limit")))
            return outer

    monkeypatch.setattr(harness.experiment, "TimedTools", FailingTools)  # the run's tool pool (make_tools)
    assert main(["run", "-b", "vllm", "-w", "swe-smoke", "--sessions", "2", "--results-dir", str(tmp_path)]) == 0
    run_dir = next(tmp_path.glob("*/events.jsonl")).parent
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["kind"] == "tool_failed"]
    assert failed and all(e["reason"] == "killed at its wall-time limit" and e["session_id"] for e in failed)
    assert json.loads((run_dir / "summary.json").read_text())["completed_sessions"] == 2


def test_results_show_counts_the_failed_tool_calls_of_a_real_tools_run(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "-b", "vllm", "-w", "swe-smoke", "--sessions", "2", "--results-dir", str(tmp_path)]) == 0
    assert main(["results", "show", "latest", "--results-dir", str(tmp_path)]) == 0
    assert "tool calls failed" not in capsys.readouterr().out  # modelled tools cannot fail
    path = next(tmp_path.glob("*/summary.json"))
    summary = json.loads(path.read_text())
    summary["engine_stats"].update(tool_calls_run=14, tool_calls_failed=2, tool_calls_killed=1)  # as RealToolPool
    path.write_text(json.dumps(summary))
    assert main(["results", "show", "latest", "--results-dir", str(tmp_path)]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if "tool calls failed" in line]
    assert len(shown) == 1 and "2 of 14 (1 killed at a limit)" in shown[0]
