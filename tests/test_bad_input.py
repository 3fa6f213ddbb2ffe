"""Bad input of every kind ends as one line and exit code 2, never a traceback (DESIGN 8; README "Failure
behaviour"): unreadable files (binary, invalid UTF-8, JSON nested 100k deep, truncated), numbers that are not
finite or not sane (Infinity, 1e308, true for an int, a tiny rate that overflows, a zero divisor), absurd
sizes, paths that cannot be written, and corrupt run directories, which `results` and `report` list as one
flagged row while they go on with the rest. A hypothesis fuzz test holds "exit 0 or 2, never a traceback"
over workload lines and CLI numbers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.inputs import MAX_LINE_BYTES
from workloads.source import MAX_SESSIONS

TURN = {"new_tokens": 10, "output_tokens": 5}


def _session(**fields: object) -> dict:
    return {"id": "s", "arrival_s": 0, "turns": [TURN], **fields}


def one_line(result, needle: str = "") -> str:
    """Assert the result is bad input: exit 2, one line on stderr naming the problem, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mars-bench: error: "), lines[0]
    assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------- unreadable files
def _binary(path: Path) -> None:
    path.write_bytes(bytes(range(255, -1, -1)) * 4)  # starts 0xff: never UTF-8


def _invalid_utf8(path: Path) -> None:
    path.write_bytes(json.dumps(_session()).encode()[:-2] + b'\xff\xfe"}\n')


def _deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")


def _deep_object(path: Path) -> None:
    path.write_text('{"a":' * 100_000 + "1" + "}" * 100_000 + "\n")


def _huge_int(path: Path) -> None:
    path.write_text(json.dumps(_session()).replace('"arrival_s": 0', '"arrival_s": ' + "9" * 5000) + "\n")


def _truncated(path: Path) -> None:
    path.write_text(json.dumps(_session())[:20] + "\n" + json.dumps(_session(id="t")) + "\n")


def _long_line(path: Path) -> None:
    with path.open("wb") as f:
        f.write(b'{"id": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')


UNREADABLE: dict[str, tuple[Callable[[Path], None], str]] = {
    "binary": (_binary, "not UTF-8 text"),
    "invalid-utf8": (_invalid_utf8, "not UTF-8 text"),
    "deep-list": (_deep, "JSON nested too deeply"),
    "deep-object": (_deep_object, "JSON nested too deeply"),
    "huge-int": (_huge_int, "invalid JSON"),
    "truncated": (_truncated, ":1: invalid JSON"),
}


@pytest.mark.parametrize("command", [["workloads", "show"], ["run", "--results-dir", "{tmp}/r", "-w"]])
@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_an_unreadable_workload_file_is_one_line(run_cli, tmp_path: Path, command: list[str], kind: str) -> None:
    make, needle = UNREADABLE[kind]
    path = tmp_path / "w.jsonl"
    make(path)
    one_line(run_cli(*(a.format(tmp=tmp_path) for a in command), str(path)), needle)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_line_longer_than_the_cap_is_refused_without_reading_it_whole(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    _long_line(path)
    one_line(run_cli("workloads", "show", str(path)), "w.jsonl:1: line longer than 64 MiB")


def test_a_file_larger_than_the_cap_is_refused(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.inputs

    monkeypatch.setattr(harness.inputs, "MAX_FILE_BYTES", 2**20)  # the cap's logic, on a small file
    (tmp_path / "p.json").write_text(json.dumps({"flops_per_s": 1e14, "pad": "x" * 2**20}))
    one_line(run_cli("backends", "--profile", str(tmp_path / "p.json")), "p.json: larger than the 1 MiB")


@pytest.mark.parametrize("kind", ["binary", "invalid-utf8", "deep-object", "huge-int"])
def test_an_unreadable_profile_or_model_config_is_one_line(run_cli, tmp_path: Path, kind: str) -> None:
    make, needle = UNREADABLE[kind]
    make(tmp_path / "p.json")
    one_line(run_cli("backends", "--profile", str(tmp_path / "p.json")), needle)
    model = tmp_path / "model"
    model.mkdir()
    make(model / "config.json")
    one_line(run_cli("backends", "--model", str(model)), needle)


@pytest.mark.parametrize("kind", ["binary", "deep-object", "truncated"])
def test_unreadable_swebench_rows_and_trajectories_are_one_line(run_cli, tmp_path: Path, kind: str) -> None:
    make, needle = UNREADABLE[kind]
    make(tmp_path / "rows.jsonl")
    one_line(run_cli("workloads", "import", "swebench", "--dataset", str(tmp_path / "rows.jsonl"),
                     "-o", str(tmp_path / "o.jsonl")), needle.lstrip(":1"))
    make(tmp_path / "run.traj")
    one_line(run_cli("workloads", "import", "trajectories", str(tmp_path / "run.traj"), "--format", "swe-agent",
                     "-o", str(tmp_path / "o.jsonl")), needle.lstrip(":1"))


def test_a_garbage_parquet_dataset_is_one_line(run_cli, tmp_path: Path) -> None:
    _binary(tmp_path / "rows.parquet")
    one_line(run_cli("workloads", "import", "swebench", "--dataset", str(tmp_path / "rows.parquet"),
                     "-o", str(tmp_path / "o.jsonl")), "not a readable parquet file")


def test_a_trajectory_with_a_negative_duration_is_refused_not_zeroed(run_cli, tmp_path: Path) -> None:
    source = Path(__file__).parent / "fixtures" / "trajectories" / "swe-agent"
    traj = next(source.rglob("*.traj"))
    data = json.loads(traj.read_text())
    step = next(s for s in data["trajectory"] if "execution_time" in s)
    step["execution_time"] = -1e308
    (tmp_path / "bad.traj").write_text(json.dumps(data))
    one_line(run_cli("workloads", "import", "trajectories", str(tmp_path / "bad.traj"), "--format", "swe-agent",
                     "-o", str(tmp_path / "o.jsonl")), "execution_time' is -1e+308, outside [0,")


# ------------------------------------------------------------------------------------- numbers, finite and sane
@pytest.mark.parametrize(("line", "needle"), [
    ('{"id": "s", "arrival_s": Infinity, "turns": [{"new_tokens": 1, "output_tokens": 1}]}', "arrival_s: must be a finite"),
    ('{"id": "s", "arrival_s": NaN, "turns": [{"new_tokens": 1, "output_tokens": 1}]}', "arrival_s: must be a finite"),
    ('{"id": "s", "arrival_s": 1e308, "turns": [{"new_tokens": 1, "output_tokens": 1}]}', "arrival_s: must be <= 1e+07"),
    ('{"id": "s", "arrival_s": 0, "turns": [{"new_tokens": true, "output_tokens": 1}]}', "turns[0].new_tokens: must be an integer, not"),
    ('{"id": "s", "arrival_s": 0, "turns": [{"new_tokens": 1, "output_tokens": 1e400}]}', "turns[0].output_tokens: must be a finite"),
    ('{"id": "s", "arrival_s": 0, "turns": [{"new_tokens": 1e12, "output_tokens": 1}]}', "turns[0].new_tokens: must be <= 10000000"),
    ('{"id": "s", "arrival_s": 0, "turns": [{"new_tokens": 1, "output_tokens": 1, "tool": {"name": "t", '
     '"cpu_seconds": Infinity}}, {"new_tokens": 1, "output_tokens": 1}]}', "turns[0].tool.cpu_seconds: must be a finite"),
    ('{"id": "s", "arrival_s": 0, "turns": [{"new_tokens": 1, "output_tokens": 1, "tool": {"name": "t", '
     '"cpu_seconds": 1, "cores": true}}, {"new_tokens": 1, "output_tokens": 1}]}', "turns[0].tool.cores: must be an integer"),
    ('[1, 2]', "expected a JSON object"),
])
def test_workload_numbers_must_be_finite_and_sane(run_cli, tmp_path: Path, line: str, needle: str) -> None:
    (tmp_path / "w.jsonl").write_text(line + "\n")
    one_line(run_cli("workloads", "show", str(tmp_path / "w.jsonl")), f"w.jsonl:1: {needle}")


@pytest.mark.parametrize(("profile", "needle"), [
    ({"flops_per_s": 1e-300}, "flops_per_s: 1e-300 is outside the physical range"),
    ({"hbm_bytes_per_s": 1e-300}, "hbm_bytes_per_s: 1e-300 is outside"),
    ({"step_overhead_s": 1e300}, "step_overhead_s: 1e+300 is outside"),
    ({"flops_per_s": "Infinity"}, "flops_per_s: must be a finite number"),
    ({"num_layers": True}, "num_layers: must be a number, not true/false"),
])
def test_absurd_profile_values_are_refused(run_cli, tmp_path: Path, profile: dict, needle: str) -> None:
    text = json.dumps(profile).replace('"Infinity"', "Infinity")
    (tmp_path / "p.json").write_text(text)
    one_line(run_cli("run", "-w", "tiny", "--profile", str(tmp_path / "p.json"), "--results-dir", str(tmp_path / "r")),
             needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("key", "value"), [("num_attention_heads", 0), ("hidden_size", 0), ("num_hidden_layers", 0),
                                            ("num_attention_heads", True), ("num_hidden_layers", 10**12)])
def test_a_model_config_with_a_zero_or_absurd_shape_is_one_line(run_cli, tmp_path: Path, key: str, value) -> None:
    config = {"hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 4096,
              "vocab_size": 1000, key: value}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    one_line(run_cli("backends", "--model", str(tmp_path / "m")), f"config.json: {key} must be an integer in")


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "-w", "tiny", "--sessions", "1" * 23], "--sessions"),
    (["workloads", "generate", "tiny", "-o", "{tmp}/x.jsonl", "--sessions", "1" * 23], "--sessions"),
    (["compare", "-b", "vllm,vllm", "-w", "tiny"], "--backends: vllm given more than once"),
    (["run", "-w", "tiny", "--cpu-stress", "8"], "cpu_stress: 8 stress cores leave none of the 8 tool cores"),
    (["run", "-w", "tiny", "--tool-cores", "2", "--cpu-stress", "5"], "leave none of the 2 tool cores"),
    (["run", "-w", "tiny", "--set", "engine_args.max_num_seqs=true"], "max_num_seqs: must be an integer"),
    (["run", "-w", "tiny", "--set", "mars.window_min=true"], "mars.window_min: Input should be a valid integer"),
    (["run", "-w", "tiny", "--set", "continuum.ttl_s=Infinity"], "continuum.ttl_s: must be a finite number"),
    (["run", "-w", "tiny", "--set", "engine_args.num_gpu_blocks=1e12"], "num_gpu_blocks"),
    (["run", "-w", "tiny", "--chat-rps", "1e308"], "chat_rps: must be <= 1000"),
    (["run", "-w", "tiny", "--gpu-share", "nan"], "gpu_share: must be a finite number"),
    (["run", "-w", "tiny", "--set", "rps=1e-300"], "arrival at"),
    (["run", "-w", "tiny", "--set", "turns.median=1e300"], "turns.median: must be <= 1e+09"),
    (["run", "-w", "tiny", "--set", "output_tokens.high=1e9", "--set", "output_tokens.median=2e7", "--set",
      "output_tokens.low=2e7"], "workload tiny: session 0: output_tokens: must be <= 10000000"),
    (["run", "-w", "tiny", "--set", "x=" + "[" * 50_000], "x: unknown field"),
    (["run", "-w", "tiny", "--seed", "-1"], "--seed"),
])
def test_absurd_cli_numbers_are_one_line(run_cli, tmp_path: Path, args: list[str], needle: str) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    one_line(run_cli(*args, *([] if args[0] == "workloads" else ["--results-dir", str(tmp_path / "r")])), needle)
    assert not (tmp_path / "r").exists() and not (tmp_path / "x.jsonl").exists()


# ------------------------------------------------------------------------------------------------ size caps
@pytest.mark.parametrize("args", [["workloads", "generate", "tiny", "-o", "{tmp}/x.jsonl"], ["run", "-w", "tiny"],
                                  ["workloads", "show", "tiny"]])
def test_sizes_beyond_the_cap_need_force(run_cli, tmp_path: Path, args: list[str]) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    one_line(run_cli(*args, "--sessions", str(MAX_SESSIONS + 1)), f"more than the cap of {MAX_SESSIONS:,}")
    one_line(run_cli(*args, "--set", f"sessions={MAX_SESSIONS + 1}"), "add --force")


def test_force_lifts_the_cap(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import workloads.source

    monkeypatch.setattr(workloads.source, "MAX_SESSIONS", 3)  # the cap's logic, at a size a test can generate
    out = tmp_path / "x.jsonl"
    one_line(run_cli("workloads", "generate", "tiny", "-o", str(out), "--sessions", "4"), "cap of 3")
    result = run_cli("workloads", "generate", "tiny", "-o", str(out), "--sessions", "4", "--force")
    assert result.exit_code == 0, result.stderr
    assert len(out.read_text().splitlines()) == 4
    result = run_cli("run", "-w", "tiny", "--sessions", "4", "--force", "--results-dir", str(tmp_path / "r"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["config"]["force"] is True


# ------------------------------------------------------------------------------------------ unwritable paths
def _under_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "results"


UNWRITABLE = [pytest.param(_under_a_file, "afile is a file", id="under-a-file"),
              pytest.param(lambda tmp: Path("/proc/mars-bench-results"), "--results-dir /proc/mars-bench-results",
                           id="under-proc")]


@pytest.mark.parametrize(("where", "needle"), UNWRITABLE)
def test_an_unwritable_results_dir_is_refused_before_anything_is_computed(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where, needle: str) -> None:
    import harness.experiment

    computed = []
    monkeypatch.setattr(harness.experiment, "isolated_jcts", lambda *a, **k: computed.append(1) or {})
    one_line(run_cli("run", "-w", "tiny", "--sessions", "2", "--results-dir", str(where(tmp_path))), needle)
    assert computed == []


def test_compare_checks_its_paths_before_any_run(run_cli, tmp_path: Path) -> None:
    bad = _under_a_file(tmp_path)
    one_line(run_cli("compare", "-b", "vllm,mars", "-w", "tiny", "--sessions", "2", "--seeds", "0",
                     "--results-dir", str(tmp_path / "r"), "--out", str(bad)), "--out")
    assert not list((tmp_path / "r").glob("*-tiny-*"))  # no run was made for nothing
    one_line(run_cli("compare", "-b", "vllm,mars", "-w", "tiny", "--sessions", str(MAX_SESSIONS + 1), "--seeds", "0",
                     "--results-dir", str(tmp_path / "r2")), "add --force")
    assert not (tmp_path / "r2").exists()  # refused before anything was written


def test_generate_makes_missing_folders_and_refuses_a_file_in_the_way(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir" / "x.jsonl"
    result = run_cli("workloads", "generate", "tiny", "--sessions", "2", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert len(out.read_text().splitlines()) == 2
    one_line(run_cli("workloads", "generate", "tiny", "-o", str(_under_a_file(tmp_path) / "x.jsonl")), "afile is a file")
    one_line(run_cli("workloads", "generate", "tiny", "-o", str(tmp_path)), "is a directory")
    one_line(run_cli("workloads", "generate", "tiny", "-o", "/proc/mars-bench-x.jsonl"), "cannot write")
    assert not Path("/proc/mars-bench-x.jsonl.tmp").exists()


# ------------------------------------------------------------------------------------- corrupt run directories
def _truncate_summary(run: Path) -> None:
    (run / "summary.json").write_text((run / "summary.json").read_text()[:40])


def _garbage_parquet(run: Path) -> None:
    _binary(run / "sessions.parquet")


def _run_json_list(run: Path) -> None:
    (run / "run.json").write_text("[1, 2]")


def _config_not_a_dict(run: Path) -> None:
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "config": [1]}))


def _garbage_events(run: Path) -> None:
    for name in ("summary.json", "calls.parquet", "sessions.parquet"):
        (run / name).unlink()
    _binary(run / "events.jsonl")


def _deep_run_json(run: Path) -> None:
    _deep_object(run / "run.json")


CORRUPT = {"truncated-summary": (_truncate_summary, "summary.json: invalid JSON"),
           "garbage-parquet": (_garbage_parquet, "sessions.parquet: not a readable parquet file"),
           "run-json-list": (_run_json_list, "run.json: expected a JSON object, got a JSON list"),
           "config-not-dict": (_config_not_a_dict, "run.json: 'config' must be a JSON object"),
           "garbage-events": (_garbage_events, "events.jsonl:1: not UTF-8 text"),
           "deep-run-json": (_deep_run_json, "run.json: JSON nested too deeply")}


@pytest.fixture(scope="module")
def good_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs (vllm and mars on tiny), made once."""
    from harness.cli import main

    root = tmp_path_factory.mktemp("runs")
    for backend in ("vllm", "mars"):
        assert main(["run", "-b", backend, "-w", "tiny", "--sessions", "2", "--results-dir", str(root), "--json"]) == 0
    return root


def _with_corrupt(good: Path, tmp: Path, kinds: list[str]) -> Path:
    root = tmp / "results"
    shutil.copytree(good, root)
    template = next(p for p in sorted(root.iterdir()) if (p / "run.json").is_file())
    for kind in kinds:
        run = root / f"zz-{kind}"
        shutil.copytree(template, run)
        meta = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**meta, "run_id": f"zz-{kind}"}))
        CORRUPT[kind][0](run)
    return root


def test_results_list_flags_each_corrupt_run_and_lists_the_rest(run_cli, good_runs: Path, tmp_path: Path) -> None:
    root = _with_corrupt(good_runs, tmp_path, list(CORRUPT))
    result = run_cli("results", "list", "--results-dir", str(root), "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["run_id"]: r for r in json.loads(result.stdout)}
    good = [r for r in rows.values() if not r["run_id"].startswith("zz-")]
    assert len(good) == 2 and all(r["status"] == "completed" and r["completed"] == 2 for r in good)
    for kind, (_, needle) in CORRUPT.items():
        assert rows[f"zz-{kind}"]["status"].startswith("unreadable: "), rows.get(f"zz-{kind}")
        assert needle in rows[f"zz-{kind}"]["status"]
    shown = run_cli("results", "list", "--results-dir", str(root))
    assert shown.exit_code == 0 and shown.stdout.count("unreadable") == len(CORRUPT)


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_results_show_of_a_corrupt_run_is_one_line(run_cli, good_runs: Path, tmp_path: Path, kind: str) -> None:
    root = _with_corrupt(good_runs, tmp_path, [kind])
    one_line(run_cli("results", "show", str(root / f"zz-{kind}"), "--results-dir", str(root)), CORRUPT[kind][1])
    if kind not in ("run-json-list", "deep-run-json"):  # the others keep their run id in run.json
        one_line(run_cli("results", "show", f"zz-{kind}", "--results-dir", str(root)), CORRUPT[kind][1])
    good = next(p.name for p in root.iterdir() if (p / "run.json").is_file() and not p.name.startswith("zz-"))
    assert run_cli("results", "show", good, "--results-dir", str(root)).exit_code == 0  # the others still show


@pytest.mark.filterwarnings("ignore")
def test_report_lists_corrupt_runs_as_unreadable_and_ranks_the_rest(run_cli, good_runs: Path, tmp_path: Path) -> None:
    pytest.importorskip("seaborn")
    root = _with_corrupt(good_runs, tmp_path, ["truncated-summary", "garbage-parquet", "run-json-list",
                                               "config-not-dict"])
    baseline = _with_corrupt(good_runs, tmp_path / "base", ["garbage-parquet", "run-json-list"])
    result = run_cli("report", str(root), "--out", str(tmp_path / "rep"), "--compare-to", str(baseline), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    excluded = {r["dir"]: r["excluded"] for r in data["runs"]}
    for kind in ("truncated-summary", "garbage-parquet", "run-json-list", "config-not-dict"):
        assert excluded[str(root / f"zz-{kind}")].startswith("unreadable: "), excluded
        assert CORRUPT[kind][1] in excluded[str(root / f"zz-{kind}")]
    ranked = [r for r in data["runs"] if not r["excluded"]]
    assert sorted(r["backend"] for r in ranked) == ["mars", "vllm"]
    assert data["regressions"]["matched"] == 2  # the baseline's two good runs, its corrupt ones left out
    assert "unreadable" in (tmp_path / "rep" / "report.md").read_text()


def test_an_event_log_cut_by_a_kill_is_still_read(good_runs: Path, tmp_path: Path) -> None:
    from harness.results import read_events

    root = _with_corrupt(good_runs, tmp_path, [])
    events = next(root.glob("*/events.jsonl"))
    whole = read_events(events)
    text = events.read_text()
    events.write_text(text[: len(text) - 30])  # the last event cut in the middle
    assert read_events(events) == whole[:-1]


# ------------------------------------------------------------------------------------------------ fuzz
_FIELDS = st.sampled_from(["id", "arrival_s", "turns", "prefix_id", "prefix_tokens", "kind", "schema_version"])
_NUMBERS = st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.none(), st.text(max_size=5))
_JSON = st.recursive(_NUMBERS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=8)


def _turn():
    return st.fixed_dictionaries({"new_tokens": _NUMBERS, "output_tokens": _NUMBERS},
                                 optional={"tool": st.fixed_dictionaries({"name": st.text(max_size=3),
                                                                          "cpu_seconds": _NUMBERS},
                                                                         optional={"cores": _NUMBERS})})


_LINES = st.one_of(
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=4), "arrival_s": _NUMBERS,
                           "turns": st.lists(_turn(), min_size=1, max_size=3)},
                          optional={"prefix_id": _NUMBERS, "prefix_tokens": _NUMBERS}).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(_FIELDS, _JSON, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=40),  # mostly not UTF-8
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr)
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINES, min_size=1, max_size=3))
def test_fuzz_workload_lines_exit_0_or_2(run_cli, tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _no_traceback(run_cli("workloads", "show", str(path)))


_CLI_NUMBER = st.one_of(st.integers(min_value=-(10**25), max_value=10**25).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["inf", "-inf", "nan", "1e308", "1e-308", "0", "-0", "1e400", "true", "", "0x10"]))
_CLI_FLAGS = st.sampled_from(["--sessions", "--cv", "--seed", "--tool-cores", "--cpu-stress", "--gpu-share",
                              "--kv-offload-gib", "--chat-rps", "--alpha", "--tp"])
_CLI_SETS = st.sampled_from(["sessions", "rps", "cv", "turns.median", "turns.sigma", "task_tokens.median",
                             "output_tokens.high", "engine_args.max_num_seqs", "engine_args.num_gpu_blocks",
                             "engine_args.gpu_memory_utilization", "timeline_interval_s", "tool_cores"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=_CLI_FLAGS, value=_CLI_NUMBER, key=_CLI_SETS, set_value=_CLI_NUMBER)
def test_fuzz_cli_numbers_exit_0_or_2(run_cli, tmp_path: Path, flag: str, value: str, key: str, set_value: str) -> None:
    """A tiny run (at most 2 sessions of the `tiny` preset unless a value makes it bigger, which the cap and
    the ranges refuse) with one odd flag value and one odd --set value."""
    sessions = [] if flag == "--sessions" else ["--sessions", "2"]
    sets = ["--set", f"{key}={set_value}"] if key != "sessions" else []
    _no_traceback(run_cli("run", "-w", "tiny", *sessions, flag, value, *sets, "--results-dir", str(tmp_path / "r"),
                          "--json"))
