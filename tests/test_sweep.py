"""`mars-bench sweep`: grid expansion, resuming (also after Ctrl-C), widening, bad input, and the Ray
executor giving the local executor's results."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.config import make_config
from harness.errors import BadInput
from harness.sweep import config_hash, grid_points, set_axes, split_values
from tests.processes import processes_with


def test_values_split_on_top_level_commas_only() -> None:
    assert split_values("ttl,lru") == ["ttl", "lru"]
    assert split_values("[2048,1024],[512,256]") == ["[2048,1024]", "[512,256]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    fixed, axes = set_axes(["mars.window_min=2,4,8", "engine_args.num_gpu_blocks=900", "mars.quanta=[1,2,3,4]"])
    assert fixed == ["engine_args.num_gpu_blocks=900", "mars.quanta=[1,2,3,4]"]
    assert axes == [("mars.window_min", ["2", "4", "8"])]
    for bad in (["mars.window_min=2,,4"], ["=3"], ["a=1,2", "a=3,4"]):
        with pytest.raises(BadInput):
            set_axes(bad)


def _make(values: dict, sets: list[str]):  # noqa: ANN202
    return make_config(tuple(sets), workload="swe-smoke", **values)


def test_grid_is_the_product_of_every_axis_with_stable_ids() -> None:
    points = grid_points(_make, ["vllm", "mars"], [0.5, 1.0], [1, 2, 3], ["engine_args.num_gpu_blocks=800,1600"])
    assert len(points) == 2 * 2 * 3 * 2
    assert len({p.run_id for p in points}) == len(points)
    first = points[0]
    assert first.axes == {"backend": "vllm", "rps": 0.5, "seed": 1, "engine_args.num_gpu_blocks": "800"}
    assert first.config.engine_args.num_gpu_blocks == 800 and first.config.rps == 0.5
    again = grid_points(_make, ["vllm", "mars"], [0.5, 1.0], [1, 2, 3], ["engine_args.num_gpu_blocks=800,1600"])
    assert [p.run_id for p in again] == [p.run_id for p in points]  # the id is the config's, not the time's
    assert config_hash(points[0].config) != config_hash(points[1].config)


def _sweep_args(out: Path, seeds: str = "1,2", *extra: str) -> list[str]:
    return ["sweep", "-b", "vllm,mars", "-w", "swe-smoke", "--rps", "1", "--seeds", seeds, "--out", str(out), *extra]


def _started(out: Path) -> dict[str, str]:
    """run id -> when its run started, for every completed run in the sweep directory."""
    starts = {}
    for meta in out.glob("*/run.json"):
        data = json.loads(meta.read_text())
        if data["status"] == "completed":
            starts[meta.parent.name] = data["started"]
    return starts


def test_a_finished_sweep_is_not_run_again_and_a_wider_one_runs_only_what_is_new(tmp_path: Path,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"
    assert main(_sweep_args(out)) == 0
    first = _started(out)
    assert len(first) == 4
    assert main(_sweep_args(out)) == 0
    assert "4 done before, 0 run now" in capsys.readouterr().out
    assert main(_sweep_args(out, "1,2,3")) == 0  # one more seed: two new runs
    assert "4 done before, 2 run now" in capsys.readouterr().out
    after = _started(out)
    assert len(after) == 6 and all(after[run] == started for run, started in first.items())
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 6 and set(table["status"]) == {"completed"} and table["mean_jct_s"].gt(0).all()
    manifest = json.loads((out / "sweep.json").read_text())
    assert len(manifest["runs"]) == 6 and manifest["spec"]["seeds"] == [1, 2, 3]


def test_dry_run_lists_the_grid_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"
    assert main([*_sweep_args(out), "--dry-run", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["runs"]
    assert len(listed) == 4 and not any(r["done"] for r in listed)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--rps", "0.1,x"], "--rps"),
    (["--set", "mars.window_min=2,,4"], "empty value"),
    (["--engine", "vllm", "-j", "2"], "one real engine at a time"),
    (["-b", "vllm,nosuch"], "nosuch"),
    (["--address", "ray://x:1"], "--executor ray"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                          message: str) -> None:
    assert main(["sweep", "-w", "swe-smoke", "--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_interrupted_sweep_continues_without_redoing_finished_runs(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    # 6 runs of ~1 s each on two workers: Ctrl-C lands with runs finished, in flight and not started
    command = [sys.executable, "-m", "harness.cli", "sweep", "-b", "vllm,mars", "-w", "paper", "--sessions", "60",
               "--rps", "0.3", "--seeds", "1,2,3", "-j", "2", "--out", str(out)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _started(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the sweep ended before it could be interrupted: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert "interrupted:" in stdout.decode() and "Traceback" not in stderr.decode()
    first = _started(out)
    assert 1 <= len(first) < 6
    statuses = [json.loads(p.read_text())["status"] for p in out.glob("*/run.json")]
    assert "running" not in statuses  # the runs in flight were stopped and marked, not abandoned
    assert not processes_with(str(out).encode())  # no worker left behind

    again = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert f"{len(first)} done before, {6 - len(first)} run now" in again.stdout.decode()
    after = _started(out)
    assert len(after) == 6 and all(after[run] == started for run, started in first.items())
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(after)


def test_the_ray_executor_gives_the_local_executors_results(tmp_path: Path) -> None:
    local, ray_dir = tmp_path / "local", tmp_path / "ray"
    assert main(_sweep_args(local, "1,2", "-j", "2")) == 0
    assert main(_sweep_args(ray_dir, "1,2", "--executor", "ray")) == 0
    runs = sorted(p.name for p in local.glob("*/summary.json"))
    assert len(runs) == 4 and runs == sorted(p.name for p in ray_dir.glob("*/summary.json"))
    for run in (p.parent.name for p in local.glob("*/summary.json")):
        pd.testing.assert_frame_equal(pd.read_parquet(local / run / "calls.parquet"),
                                      pd.read_parquet(ray_dir / run / "calls.parquet"))
        a, b = (json.loads((d / run / "summary.json").read_text()) for d in (local, ray_dir))
        for volatile in ("engine_stats",):  # wall-clock time of the run
            a.pop(volatile), b.pop(volatile)
        assert a == b
        assert json.loads((ray_dir / run / "run.json").read_text())["pid"] != os.getpid()  # ran in a Ray worker


def test_a_failed_run_is_reported_the_others_kept_and_it_runs_again_next_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import harness.executors

    real = harness.executors.run_experiment

    def broken_mars(config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if config.backend == "mars" and config.seed == 2:
            raise RuntimeError("engine exploded")
        return real(config, *args, **kwargs)

    out = tmp_path / "sweep"
    monkeypatch.setattr(harness.executors, "run_experiment", broken_mars)
    assert main(_sweep_args(out)) == 1
    captured = capsys.readouterr()
    assert "1 of 4 runs failed" in captured.err and "engine exploded" in captured.err
    assert len(_started(out)) == 3
    monkeypatch.setattr(harness.executors, "run_experiment", real)
    assert main(_sweep_args(out)) == 0
    assert "3 done before, 1 run now" in capsys.readouterr().out


def test_compare_reports_a_failed_run_after_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    import harness.executors

    def broken(config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(harness.executors, "run_experiment", broken)
    assert main(["compare", "-b", "vllm,mars", "-w", "swe-smoke", "--results-dir", str(tmp_path)]) == 1
    assert "10 of 10 runs failed" in capsys.readouterr().err  # 2 backends x the default 5 seeds


PROGRESS_LINE = r"\[sweep\] (\d+)/(\d+) runs, \d+ s elapsed, (ETA (\d+ s|unknown)|done)"


def test_a_sweep_off_a_terminal_prints_plain_progress_lines(tmp_path: Path, run_cli,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No terminal (CI, nohup): plain lines in the output, at the start, every interval and at the end."""
    monkeypatch.setenv("MARS_BENCH_PROGRESS_INTERVAL", "0.01")
    out = run_cli("sweep", "-b", "vllm,mars", "-w", "swe-smoke", "--sessions", "2", "--seeds", "1,2,3",
                  "--out", str(tmp_path / "s"))
    assert out.exit_code == 0, out.stderr
    lines = [m.groups() for m in re.finditer(PROGRESS_LINE, out.stdout)]
    assert len(lines) >= 2, out.stdout
    assert lines[0][:2] == ("0", "6") and lines[-1][:3] == ("6", "6", "done")
    assert out.stderr == ""  # stderr keeps to errors and warnings
    assert out.stdout.index("[sweep] 6/6 runs") < out.stdout.index("sweep: 6 completed runs")  # then the table


def test_progress_lines_come_every_interval_with_an_eta() -> None:
    from harness.console import ProgressReport

    lines: list[str] = []
    with ProgressReport("sweep", "runs", interval_s=0.02, terminal=False, echo=lines.append) as progress:
        progress.update("runs", 0, 40)
        progress.update("runs", 10, 40)
        time.sleep(0.2)
    assert lines[0] == "[sweep] 0/40 runs, 0 s elapsed, ETA unknown"
    assert len(lines) >= 4  # the start, several ticks, the end
    # 10 runs done, 30 to go: an ETA in seconds, never unknown or done
    assert all(re.fullmatch(r"\[sweep\] 10/40 runs, \d s elapsed, ETA \d+ s", line) for line in lines[1:]), lines
    quiet: list[str] = []
    with ProgressReport("sweep", "runs", enabled=False, interval_s=0.01, terminal=False, echo=quiet.append) as p:
        p.update("runs", 1, 2)
        time.sleep(0.05)
    assert quiet == []  # --json: no progress at all


def test_tool_limits_are_part_of_a_run_id_only_when_tools_are_real() -> None:
    timed = [make_config((), workload="swe-smoke", tool_limits={"factor": f}) for f in (2, 5)]
    real = [make_config((), workload="swe-smoke", tools="real", tool_limits={"factor": f}) for f in (2, 5)]
    assert config_hash(timed[0]) == config_hash(timed[1])
    assert config_hash(real[0]) != config_hash(real[1])
    assert "tool_limits" in timed[0].model_dump()  # still recorded in run.json
