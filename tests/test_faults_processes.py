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

from harness.cli import main
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
