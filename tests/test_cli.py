"""The CLI as a user meets it: real output, and one line + exit 2 for every kind of bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.processes import wait_for_calls
from workloads.model import dump_session, load_sessions
from workloads.synthetic import customize, generate, get_preset


def test_version(run_cli) -> None:
    result = run_cli("version")
    assert result.exit_code == 0 and result.stdout.startswith("mars-bench 0.")


def test_generate_is_deterministic_and_show_summarises(run_cli, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert run_cli("workloads", "generate", "paper", "-o", str(a), "--seed", "1").exit_code == 0
    assert run_cli("workloads", "generate", "paper", "-o", str(b), "--seed", "1").exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    assert len(load_sessions(a)) == 400
    shown = run_cli("workloads", "show", str(a))
    assert shown.exit_code == 0
    for label in ("sessions", "400", "first-turn prompt tokens", "tool seconds per call", "run_tests", "p95"):
        assert label in shown.stdout


def test_show_json_matches_the_file(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    run_cli("workloads", "generate", "swe-smoke", "-o", str(path), "--seed", "2")
    data = json.loads(run_cli("workloads", "show", str(path), "--json").stdout)
    sessions = load_sessions(path)
    assert data["sessions"] == len(sessions)
    assert data["calls"] == sum(len(s.turns) for s in sessions)
    assert data["distributions"]["turns per session"]["max"] == max(len(s.turns) for s in sessions)


def test_generate_flags_and_overrides_reach_the_file(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    args = ["--sessions", "12", "--rps", "2", "--arrival", "poisson", "--seed", "4", "--set", "turns.median=20"]
    assert run_cli("workloads", "generate", "swe", "-o", str(path), *args).exit_code == 0
    expected = customize(get_preset("swe"), ["sessions=12", "rps=2", "arrival=poisson", "seed=4", "turns.median=20"])
    assert path.read_text() == "".join(dump_session(s) + "\n" for s in generate(expected))


def test_list_presets(run_cli) -> None:
    out = run_cli("workloads", "list").stdout
    for name in ("swe", "long-context", "cpu-heavy", "chat", "swe-smoke", "paper", "continuum-swe", "infercept-mix",
                 "autellix-programs", "concur-batch"):
        assert name in out


def _bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "arrival_s": 0, "turns": [{"new_tokens": 5, "output_tokens": 0}]}\n')
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["workloads", "show", "nope"], "unknown workload preset 'nope'"),
        (["workloads", "show", "{bad}"], "bad.jsonl:1: turns[0].output_tokens: must be >= 1"),
        (["workloads", "show", "{tmp}/missing.jsonl"], "cannot read workload file"),
        (["workloads", "generate", "paper"], "Missing option '-o'"),
        (["workloads", "generate", "paper", "-o", "{tmp}/x.jsonl", "--sessions", "0"], "--sessions"),
        (["workloads", "generate", "paper", "-o", "{tmp}/x.jsonl", "--rps", "-1"], "--rps"),
        (["workloads", "generate", "paper", "-o", "{tmp}/x.jsonl", "--arrival", "weekly"], "--arrival"),
        (["workloads", "generate", "paper", "-o", "{tmp}/x.jsonl", "--set", "turns"], "expected key=value"),
        (["workloads", "generate", "paper", "-o", "{tmp}/x.jsonl", "--set", "mix.x.y=1"], "unknown setting 'x'"),
        (["workloads", "generate", "paper", "-o", "{tmp}/x.jsonl", "--set", "rps=fast"], "rps"),
        (["workloads", "generate", "{bad}", "-o", "{tmp}/x.jsonl"], "is a file"),
        (["workloads", "show", "{bad}", "--set", "turns.median=3"], "--set applies to presets"),
        (["results", "show", "nope", "--results-dir", "{tmp}"], "no run 'nope'"),
        (["results", "list", "--results-dir", "{bad}"], "--results-dir"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["workloads", "show"], "Missing argument"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path: Path, args: list[str], needle: str) -> None:
    bad = _bad_file(tmp_path)
    result = run_cli(*(a.format(bad=bad, tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mars-bench: error: ")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_console_script_entry_point_exit_codes(tmp_path: Path) -> None:
    """Through a real process: the installed entry point returns 2 on bad input and prints no traceback."""
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "workloads", "show", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mars-bench: error: unknown workload preset 'nope' (known: swe, long-context, " \
                                  "cpu-heavy, chat, swe-smoke, tiny, paper, continuum-swe, infercept-mix, " \
                                  "autellix-programs, concur-batch)"


def test_run_writes_results_and_prints_summary(run_cli, tmp_path: Path) -> None:
    result = run_cli("run", "--backend", "vllm", "--workload", "swe-smoke", "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    # `vllm bench serve`'s result block, its per-call figures in its layout, then the sessions' figures
    block = out[out.index("============ Serving Benchmark Result ============"):]
    # vllm bench's default --percentile-metrics ttft,tpot,itl: no E2EL block
    headings = ["---------------Time to First Token----------------",
                "-----Time per Output Token (excl. 1st token)------",
                "---------------Inter-token Latency----------------",
                "------------------Agent Sessions------------------"]
    assert [line for line in block.splitlines() if line.startswith("-")] == headings
    summary = json.loads(next(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
                         .joinpath("summary.json").read_text())
    for label, key in (("Successful requests:", "completed"), ("Benchmark duration (s):", "duration"),
                       ("Request throughput (req/s):", "request_throughput"), ("Mean TTFT (ms):", "mean_ttft_ms"),
                       ("P99 TPOT (ms):", "p99_tpot_ms"), ("Median ITL (ms):", "median_itl_ms"),
                       ("Peak output token throughput (tok/s):", "max_output_tokens_per_s"),
                       ("Mean JCT (s):", "mean_jct_s"),
                       ("Bound on mean JCT (s):", "bound_mean_jct_s")):
        value = summary[key]
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        assert f"{label:<40} {text}" in block, label
    assert "Failed requests:                         0" in block
    assert re.search(r"sessions completed .* 8/8", out)  # what .ci/run greps the demo's output for
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for name in ("run.json", "events.jsonl", "calls.parquet", "sessions.parquet", "timeline.parquet", "summary.json"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["config"]["backend"] == "vllm"
    shown = run_cli("results", "show", "latest", "--results-dir", str(tmp_path))
    assert shown.exit_code == 0 and "mean JCT" in shown.stdout
    listed = run_cli("results", "list", "--results-dir", str(tmp_path), "--json")
    assert json.loads(listed.stdout)[0]["completed"] == 8


def test_run_is_deterministic_per_seed(run_cli, tmp_path: Path) -> None:
    import pandas as pd

    def sessions_of(seed: str, where: str) -> pd.DataFrame:
        out = run_cli("run", "-w", "swe", "--sessions", "12", "--rps", "0.5", "--seed", seed,
                      "--results-dir", str(tmp_path / where), "--json")
        assert out.exit_code == 0, out.stderr
        return pd.read_parquet(Path(json.loads(out.stdout)["run_dir"]) / "sessions.parquet")

    pd.testing.assert_frame_equal(sessions_of("1", "a"), sessions_of("1", "b"))
    assert not sessions_of("1", "c").equals(sessions_of("2", "d"))


def test_run_set_reaches_engine_args_and_workload(run_cli, tmp_path: Path) -> None:
    out = run_cli("run", "-w", "swe-smoke", "--set", "engine_args.num_gpu_blocks=300", "--set", "turns.median=2",
                  "--results-dir", str(tmp_path), "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["config"]["engine_args"]["num_gpu_blocks"] == 300
    assert data["config"]["workload_sets"] == ["turns.median=2"]
    engine = json.loads((Path(data["run_dir"]) / "summary.json").read_text())["engine_stats"]
    assert engine["num_gpu_blocks"] == 300


def test_backends_prints_kv_capacity(run_cli) -> None:
    out = run_cli("backends", "--gpu", "h100", "--model", "qwen3-coder-30b-a3b", "--json")
    assert out.exit_code == 0
    testbed = json.loads(out.stdout)["testbed"]
    # (79.22 GiB x 0.9 - weights - reserve) / (16 x 98304 B): thousands of blocks, ~130k tokens
    assert testbed["kv_bytes_per_token"] == 2 * 48 * 4 * 128 * 2
    assert 100_000 < testbed["kv_capacity_tokens"] < 160_000
    assert "vllm" in json.loads(out.stdout)["backends"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--backend", "nope"], "unknown backend 'nope'"),
        (["run", "--gpu", "tpu9"], "unknown GPU"),
        (["run", "--model", "gpt-9"], "unknown model"),
        (["run", "--set", "engine_args.max_num_seqs=0"], "engine_args.max_num_seqs"),
        (["run", "--set", "engine_args.bogus=1"], "bogus"),
        (["run", "--goodput", "ttft:fast"], "--goodput"),
        (["run", "--profile", "/nonexistent/p.json"], "no such file"),
        (["run", "--model", "llama-3.1-70b"], "does not fit"),
        (["run", "--tool-mode", "lottery"], "--tool-mode"),
        (["backends", "--tp", "0"], "--tp"),
    ],
)
def test_run_bad_input_is_one_line_and_exit_2(run_cli, tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(*args, "--results-dir", str(tmp_path)) if args[0] == "run" else run_cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # nothing written for bad input


def test_run_with_a_partial_profile_file(run_cli, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"num_gpu_blocks": 500, "step_overhead_s": 0.002}))
    out = run_cli("run", "-w", "swe-smoke", "--profile", str(profile), "--results-dir", str(tmp_path / "r"), "--json")
    assert out.exit_code == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    assert json.loads((run_dir / "summary.json").read_text())["engine_stats"]["num_gpu_blocks"] == 500
    profile.write_text(json.dumps({"num_gpu_blocks": -5}))
    bad = run_cli("run", "-w", "swe-smoke", "--profile", str(profile), "--results-dir", str(tmp_path / "r"))
    assert bad.exit_code == 2 and "num_gpu_blocks" in bad.stderr and str(profile) in bad.stderr


def test_ctrl_c_marks_the_run_interrupted_and_keeps_what_it_measured(tmp_path: Path) -> None:
    import os
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "-w", "paper", "--results-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"},
    )
    try:
        wait_for_calls(tmp_path, proc, 20, timeout_s=120, poll_s=0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and "aborted" in err
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted"
    from harness.results import load_run

    assert len(load_run(run_dir).calls()) >= 20


def test_compare_runs_every_backend_on_the_same_workload(run_cli, tmp_path: Path) -> None:
    out = run_cli("compare", "--backends", "vllm,mars", "-w", "swe", "--sessions", "10", "--rps", "0.5",
                  "--seeds", "1,2", "--results-dir", str(tmp_path), "--out", str(tmp_path / "cmp"), "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    runs = data["runs"]
    assert sorted((r["backend"], r["seed"]) for r in runs) == [("mars", 1), ("mars", 2), ("vllm", 1), ("vllm", 2)]
    by_backend = {r["backend"]: r for r in data["comparison"]}
    assert by_backend["vllm"]["speedup_vs_vllm"] == pytest.approx(1.0)
    vllm_mean = sum(r["mean_jct_s"] for r in runs if r["backend"] == "vllm") / 2
    assert by_backend["vllm"]["mean_jct_s"] == pytest.approx(vllm_mean)
    # identical workloads: the same sessions arrive in every run of a seed
    import pandas as pd

    ids = {(r["backend"], r["seed"]): set(pd.read_parquet(Path(r["run_dir"]) / "sessions.parquet")["session_id"])
           for r in runs}
    assert ids[("vllm", 1)] == ids[("mars", 1)] and ids[("vllm", 2)] == ids[("mars", 2)]
    assert ids[("vllm", 1)] != ids[("vllm", 2)]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert md.startswith("| backend | seeds | mean JCT s") and "| mars | 2 |" in md
    assert (tmp_path / "cmp" / "comparison.csv").is_file() and (tmp_path / "cmp" / "runs.csv").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backends", "vllm,nope"], "unknown backend 'nope'"),
        (["--backends", ""], "--backends"),
        (["--seeds", "1,x"], "--seeds"),
        (["--backends", "vllm,mars", "--reference", "sglang"], "--reference"),
    ],
)
def test_compare_bad_input(run_cli, tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli("compare", *args, "--results-dir", str(tmp_path))
    assert result.exit_code == 2 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_goodput_takes_several_slos_after_one_flag_as_in_vllm(run_cli, tmp_path: Path) -> None:
    out = run_cli("run", "-w", "swe-smoke", "--goodput", "ttft:2000", "tpot:100", "--results-dir", str(tmp_path), "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["goodput_slo"] == {"ttft": 2000.0, "tpot": 100.0}
    assert data["request_goodput"] is not None and data["request_goodput"] <= data["request_throughput"]


# Packages of the extras (and what they pull in): never imported to start the CLI or to show any help.
HEAVY = ("seaborn", "matplotlib", "scipy", "vllm", "ray", "transformers", "torch", "starlette", "uvicorn",
         "aiohttp", "prometheus_client")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules (and pandas/numpy/pydantic) a fresh interpreter holds after running `code`."""
    watched = [*HEAVY, "pandas", "numpy", "pydantic"]
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_cli_and_its_help_loads_no_command() -> None:
    """`import harness.cli` and `mars-bench --help` import no command module: not even pandas, let alone an
    extra's package (a behaviour, not a timing: benchmarks/cli_startup.py has the time)."""
    assert _loaded_after("import harness.cli") == []
    assert _loaded_after("from harness.cli import main\nmain(['--help'])") == []


def test_no_command_imports_an_extra_to_start() -> None:
    """Every command module (what `mars-bench CMD --help` and a command's start load) leaves the extras'
    packages to the functions that use them."""
    code = ("import click\nfrom harness.cli import cli\nfrom tests.test_cli import all_commands\n"
            "list(all_commands(cli))")
    assert not set(_loaded_after(code)) & set(HEAVY)


def all_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under `group` (loading each), with its words after `mars-bench`."""
    ctx = click.Context(group, info_name="mars-bench")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))


def test_help_lists_each_command_with_its_own_first_sentence() -> None:
    """The top-level --help reads each command's summary from its source; it is the command's own."""
    from harness.cli import LazyGroup, cli

    assert isinstance(cli, LazyGroup)
    for name in cli.lazy:
        assert cli.summary(name, 60) == cli.get_command(click.Context(cli), name).get_short_help_str(60), name


@pytest.mark.parametrize(("extra", "module", "args"), [
    ("report", "seaborn", ["report", "{tmp}", "--out", "{tmp}/report"]),
    ("calibrate", "scipy", ["calibrate", "--model", "llama-3.1-8b", "-o", "{tmp}/p.json"]),
])
def test_a_missing_extra_is_one_line_with_the_pip_command(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          extra: str, module: str, args: list[str]) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    result = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert module in line and f"pip install -e '.[{extra}]'" in line


def test_one_seed_default_for_run_compare_and_sweep(run_cli, tmp_path: Path) -> None:
    """The same backend on the same workload gives the same numbers whichever command ran it with defaults:
    run and sweep use seed 0, compare five seeds from seed 0 (tests/test_compare.py)."""
    ran = json.loads(run_cli("run", "-b", "vllm", "-w", "swe-smoke", "--results-dir", str(tmp_path / "r"),
                             "--json").stdout)
    compared = json.loads(run_cli("compare", "-b", "vllm,mars", "-w", "swe-smoke", "--results-dir",
                                  str(tmp_path / "c"), "--json").stdout)
    swept = json.loads(run_cli("sweep", "-b", "vllm", "-w", "swe-smoke", "--results-dir", str(tmp_path / "s"),
                               "--dry-run", "--json").stdout)
    (vllm,) = [r for r in compared["runs"] if r["backend"] == "vllm" and r["seed"] == 0]
    assert ran["config"]["seed"] == vllm["seed"] == int(swept["runs"][0]["seed"]) == 0
    assert ran["mean_jct_s"] == vllm["mean_jct_s"]
    only_seeds = run_cli("compare", "--seed", "3", "--results-dir", str(tmp_path))
    assert only_seeds.exit_code == 2 and "--seeds" in only_seeds.stderr  # compare takes --seeds alone


@pytest.mark.parametrize("setting", ["retention=ttl,lru", "mars.retention=ttl,lru", "turns.median=2,x"])
def test_sweep_dry_run_rejects_what_the_sweep_rejects(run_cli, tmp_path: Path, setting: str) -> None:
    """A dry run validates every run of the grid as the sweep does: the same line, exit 2, nothing written."""
    args = ["sweep", "-b", "mars", "-w", "swe-smoke", "--sessions", "2", "--set", setting,
            "--results-dir", str(tmp_path)]
    dry, real = run_cli(*args, "--dry-run"), run_cli(*args)
    assert dry.exit_code == real.exit_code == 2, (dry.stderr, real.stderr)
    assert dry.stderr == real.stderr and len(dry.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
