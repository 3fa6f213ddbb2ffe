"""`sweep --executor ray --address` against an existing cluster: a `ray start --head` this test starts on
loopback (free ports, its own temp dir and HOME, everything it started killed in teardown), token auth on,
the package shipped to the workers by runtime_env; and the one-line errors, within 30 s, for an address where
nothing answers and for a cluster that refuses this client's auth."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.executors import PACKAGES, runtime_env
from harness.ray_check import split_address
from harness.results import git_state

ROOT = Path(__file__).resolve().parent.parent
MARK = "MARS_BENCH_RAY_TEST"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked(token: str) -> list[int]:
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # loopback only, no node IP
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def head() -> Iterator[dict]:
    """A Ray head on 127.0.0.1 with token auth (as a cluster with a token starts); yields its address, HOME and token."""
    temp = Path(tempfile.mkdtemp(prefix="mbray", dir="/tmp"))  # short: Ray's socket paths live under it
    home = temp / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(uuid.uuid4().hex + uuid.uuid4().hex)  # what the head checks
    token = uuid.uuid4().hex  # marks the head's processes
    port = _free_port()
    ray_cli = Path(sys.executable).parent / "ray"
    command = [str(ray_cli), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
               "--temp-dir", str(temp / "t"), "--include-dashboard=false", "--num-cpus", "2",
               "--disable-usage-stats", "--ray-client-server-port", str(_free_port()),
               "--dashboard-agent-listen-port", str(_free_port())]
    # PYTHONPATH dropped: the workers get this checkout's code only through runtime_env
    proc = subprocess.Popen(command, cwd=temp, env=_env(home, RAY_AUTH_MODE="token", **{MARK: token}), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=(temp / "head.log").open("wb"),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, (temp / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "home": home, "temp": temp}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # --block: `ray start` stops what it started
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for pid in _marked(token):  # and whatever outlived it (workers, agents), descendants all
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _sweep(out: Path, address: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "harness.cli", "sweep", "-b", "vllm,mars", "-w", "swe-smoke", "--seeds", "1",
               "--executor", "ray", "--address", address, "--out", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, stdout.decode(), stderr.decode())


def _one_line_exit_2(result: subprocess.CompletedProcess, *needles: str) -> None:
    err = result.stderr.strip()
    assert result.returncode == 2, err[-2000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in err, err


def test_a_sweep_runs_on_an_existing_cluster_with_the_package_shipped(head: dict, tmp_path: Path) -> None:
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head["home"] / ".ray" / "auth_token"))
    result = _sweep(tmp_path / "sweep", head["address"], env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/run.json")]
    assert len(runs) == 2 and {r["status"] for r in runs} == {"completed"}
    # the workers imported the uploaded copy (no git tree): the driver's git state came with it
    assert all(r["git"] == git_state() for r in runs)


def test_a_cluster_that_refuses_the_auth_fails_in_one_line_naming_the_fix(head: dict, tmp_path: Path) -> None:
    for env, needle in ((_env(tmp_path), "sent no token"),
                        (_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex), "refused")):
        started = time.monotonic()
        result = _sweep(tmp_path / "sweep", head["address"], env, timeout=60)
        assert time.monotonic() - started < 30
        _one_line_exit_2(result, needle, "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
        assert not (tmp_path / "sweep").exists() or not list((tmp_path / "sweep").glob("*/run.json"))


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_answers_fails_in_one_line_within_30_s(tmp_path: Path, scheme: str) -> None:
    started = time.monotonic()
    result = _sweep(tmp_path / "sweep", f"{scheme}127.0.0.1:{_free_port()}", _env(tmp_path), timeout=60)
    assert time.monotonic() - started < 30
    _one_line_exit_2(result, "no Ray cluster answers", "ray start --head")


def test_addresses_are_split_as_ray_reads_them() -> None:
    assert split_address("10.0.0.1:6380") == ("10.0.0.1", 6380, False)
    assert split_address("ray://head:10001") == ("head", 10001, True)
    assert split_address("head") == ("head", 6379, False)
    assert split_address("[::1]:7000") == ("::1", 7000, False)


def test_the_runtime_env_ships_every_package_of_the_project() -> None:
    env = runtime_env()
    names = sorted(Path(m).name for m in env["py_modules"])
    include = {p.rstrip("*") for p in
               __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert names == sorted(PACKAGES) == sorted(include)
    assert all(Path(m).parent == ROOT for m in env["py_modules"])  # this checkout's, not an installed copy
    assert "__pycache__" in env["excludes"] and json.loads(env["env_vars"]["MARS_BENCH_GIT"]) == git_state()
