"""SWE-bench instances -> sessions: real task text counted by a real tokenizer, an instance-conditioned turn
structure, local and cached data, presets, and one line + exit 2 for every bad file."""

from __future__ import annotations

import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.errors import BadInput
from workloads.model import load_sessions
from workloads.source import WorkloadRequest, resolve
from workloads.swebench import (
    AGENT_PREFIX_TOKENS, EDITS_PER_TEST_RUN, MAX_EDITS, Instance, instance_session, load_instances, parse_patch,
    suite_cost, task_text,
)
from workloads.tokens import CharEstimate, load_tokenizer, save_tokenizer_dir, train_bpe

FIXTURES = Path(__file__).parent / "fixtures" / "swebench"
JSONL, PARQUET = FIXTURES / "instances.jsonl", FIXTURES / "instances.parquet"
IDS = ["django__django-11099", "sympy__sympy-20590", "astropy__astropy-12907"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained on the spot on the fixture text, saved as a model directory."""
    tok = train_bpe([JSONL.read_text()], vocab_size=600)
    return save_tokenizer_dir(tok, tmp_path_factory.mktemp("tok") / "tiny-model")


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def n_tokens(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


def _import(run_cli, out: Path, *args: str) -> list:
    result = run_cli("workloads", "import", "swebench", *args, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    return load_sessions(out)


# ------------------------------------------------------------------------------------------ contents
def test_first_turn_is_the_task_text_counted_by_the_tokenizer(run_cli, tmp_path: Path, tokenizer_dir: Path,
                                                               tok) -> None:
    sessions = _import(run_cli, tmp_path / "w.jsonl", "--dataset", str(PARQUET), "--tokenizer", str(tokenizer_dir))
    by_id = {s.id: s for s in sessions}
    assert sorted(by_id) == sorted(IDS)
    for inst in load_instances(str(JSONL)):
        s = by_id[inst.instance_id]
        text = task_text(inst)
        assert inst.problem_statement.strip() in text and inst.repo in text
        assert s.turns[0].new_tokens == n_tokens(tok, text)
        assert s.prefix_id == "swebench/agent" and s.prefix_tokens == AGENT_PREFIX_TOKENS
        assert s.kind == "swebench" and s.turns[-1].tool is None
    sympy = load_instances(str(JSONL), instance_ids=["sympy__sympy-20590"])[0]
    assert "Printable mixin" in task_text(sympy) and "Printable mixin" not in task_text(sympy, hints=False)
    no_hints = _import(run_cli, tmp_path / "nh.jsonl", "--dataset", str(JSONL), "--tokenizer", str(tokenizer_dir),
                       "--no-hints", "--instances", "sympy__sympy-20590")
    assert no_hints[0].turns[0].new_tokens == n_tokens(tok, task_text(sympy, hints=False))


def test_without_a_tokenizer_counts_are_the_documented_estimate(run_cli, tmp_path: Path) -> None:
    sessions = _import(run_cli, tmp_path / "w.jsonl", "--dataset", str(JSONL))
    for s, inst in zip(sessions, load_instances(str(JSONL))):
        assert s.turns[0].new_tokens == math.ceil(len(task_text(inst)) / 4)


def test_parquet_jsonl_json_and_directories_give_the_same_workload(run_cli, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in JSONL.read_text().splitlines()]
    (tmp_path / "instances.json").write_text(json.dumps(rows))
    snapshot = tmp_path / "snapshot" / "data"
    snapshot.mkdir(parents=True)
    shutil.copy(PARQUET, snapshot / "test-00000-of-00001.parquet")
    outputs = []
    for i, source in enumerate([JSONL, PARQUET, tmp_path / "instances.json", tmp_path / "snapshot"]):
        out = tmp_path / f"{i}.jsonl"
        _import(run_cli, out, "--dataset", str(source), "--seed", "3")
        outputs.append(out.read_bytes())
    assert len(set(outputs)) == 1


def test_import_is_deterministic_and_each_session_independent_of_the_others(run_cli, tmp_path: Path) -> None:
    a = _import(run_cli, tmp_path / "a.jsonl", "--dataset", str(JSONL), "--seed", "7")
    b = _import(run_cli, tmp_path / "b.jsonl", "--dataset", str(JSONL), "--seed", "7")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    c = _import(run_cli, tmp_path / "c.jsonl", "--dataset", str(JSONL), "--seed", "8")
    assert [s.turns for s in a] != [s.turns for s in c]
    ids = tmp_path / "ids.txt"
    ids.write_text("# just one\nastropy__astropy-12907\n")
    one = _import(run_cli, tmp_path / "one.jsonl", "--dataset", str(JSONL), "--seed", "7", "--instances", str(ids))
    assert [s.id for s in one] == ["astropy__astropy-12907"]
    assert one[0].turns == {s.id: s for s in b}["astropy__astropy-12907"].turns
    spaced = _import(run_cli, tmp_path / "r.jsonl", "--dataset", str(JSONL), "--rps", "0.5")
    assert [s.arrival_s for s in spaced] == [0.0, 2.0, 4.0]


# ------------------------------------------------------------------------------------ conditioning
def test_edit_turns_follow_the_gold_patch_and_carry_its_text(tokenizer_dir: Path) -> None:
    counter = load_tokenizer(tokenizer_dir)
    for inst in load_instances(str(JSONL)):
        shape = parse_patch(inst.patch)
        s = instance_session(inst, counter, seed=1)
        tools = [t.tool.name if t.tool else None for t in s.turns]
        edits = [t for t in s.turns if t.tool and t.tool.name == "edit"]
        assert len(edits) == len(shape.hunks)  # django: 2 hunks, sympy and astropy: 1
        for turn, hunk in zip(edits, shape.hunks):
            assert turn.output_tokens > counter.count(hunk.old) + counter.count(hunk.new)
        assert tools.count("read_file") >= len(shape.files)
        assert tools.count("run_tests") == math.ceil(len(shape.hunks) / EDITS_PER_TEST_RUN)
        assert tools.index("run_tests") > max(i for i, t in enumerate(tools) if t == "edit")
        assert "build" not in tools and tools[-1] is None
    assert [len(parse_patch(i.patch).hunks) for i in load_instances(str(JSONL))] == [2, 1, 1]


def _hunk(n: int) -> str:
    return f"@@ -{n},3 +{n},3 @@\n context\n-old {n}\n+new {n}\n context\n"


def test_compiled_sources_add_a_build_and_many_hunks_are_capped() -> None:
    patch = ("diff --git a/pkg/fast.pyx b/pkg/fast.pyx\n--- a/pkg/fast.pyx\n+++ b/pkg/fast.pyx\n"
             + "".join(_hunk(10 * k) for k in range(1, 9))
             + "diff --git a/pkg/slow.py b/pkg/slow.py\n--- a/pkg/slow.py\n+++ b/pkg/slow.py\n"
             + "".join(_hunk(10 * k) for k in range(1, 9)))
    shape = parse_patch(patch)
    assert shape.files == ("pkg/fast.pyx", "pkg/slow.py") and len(shape.hunks) == 16 and shape.compiled
    inst = Instance("org__pkg-1", "org/pkg", "It is slow.", "", patch, ("test_a",), ())
    tools = [t.tool.name if t.tool else None for t in instance_session(inst, CharEstimate()).turns]
    assert tools.count("edit") == MAX_EDITS
    assert tools.count("run_tests") == math.ceil(MAX_EDITS / EDITS_PER_TEST_RUN)
    assert tools.count("build") == 1 and tools.index("build") < tools.index("run_tests")


def test_parse_patch_counts_hunk_lines_so_removed_dashes_are_not_headers() -> None:
    patch = ("diff --git a/a.sql b/a.sql\n--- a/a.sql\n+++ b/a.sql\n@@ -1,2 +1,2 @@\n"
             "--- a comment\n+-- a new comment\n select 1;\n")
    shape = parse_patch(patch)
    assert shape.files == ("a.sql",)
    assert shape.hunks[0].old == "-- a comment\nselect 1;" and shape.hunks[0].new == "-- a new comment\nselect 1;"


def test_a_django_test_run_is_heavier_than_a_sympy_one() -> None:
    django, sympy, _ = load_instances(str(JSONL))
    assert suite_cost(django.repo).seconds(django.tests) > 2 * suite_cost(sympy.repo).seconds(sympy.tests)

    def run_seconds(inst: Instance) -> list[float]:
        return [t.tool.cpu_seconds for seed in range(60) for t in instance_session(inst, CharEstimate(), seed).turns
                if t.tool and t.tool.name == "run_tests"]

    assert np.median(run_seconds(django)) > 2 * np.median(run_seconds(sympy))
    more_tests = Instance("sympy__x", "sympy/sympy", "p", "", sympy.patch, tuple(f"t{i}" for i in range(400)), ())
    assert np.median(run_seconds(more_tests)) > np.median(run_seconds(sympy))


# ------------------------------------------------------------------------------ hub cache, presets
def _hub_cache(root: Path, org: str = "SWE-bench", name: str = "SWE-bench_Lite") -> Path:
    repo = root / f"datasets--{org}--{name}"
    data = repo / "snapshots" / "0123abcd" / "data"
    data.mkdir(parents=True)
    shutil.copy(PARQUET, data / "test-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return root


def test_hub_ids_read_the_hugging_face_cache_without_network(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", org="princeton-nlp")))
    expected = _import(run_cli, tmp_path / "local.jsonl", "--dataset", str(PARQUET))
    for name in ("lite", "SWE-bench/SWE-bench_Lite", "princeton-nlp/SWE-bench_Lite"):
        assert _import(run_cli, tmp_path / "hub.jsonl", "--dataset", name) == expected
    name, sessions = resolve(WorkloadRequest(source="swebench-lite", sessions=2, rps=0.5))
    assert name == "swebench-lite" and [s.id for s in sessions] == IDS[:2] and sessions[1].arrival_s == 2.0


def test_data_presets_take_a_local_file_through_set(tmp_path: Path, tokenizer_dir: Path, tok) -> None:
    name, sessions = resolve(WorkloadRequest(source="swebench-verified", seed=2, sets=(
        f"dataset={JSONL}", f"tokenizer={tokenizer_dir}", "instances=sympy__sympy-20590,django__django-11099")))
    assert name == "swebench-verified" and [s.id for s in sessions] == ["django__django-11099", "sympy__sympy-20590"]
    django = load_instances(str(JSONL))[0]
    assert sessions[0].turns == instance_session(django, load_tokenizer(tokenizer_dir), seed=2).turns
    assert sessions[0].turns[0].new_tokens == n_tokens(tok, task_text(django))


def test_the_swebench_loader_is_used_when_the_data_is_not_cached(tmp_path: Path, monkeypatch) -> None:
    """The swebench package's own loader (faked here: nothing may be downloaded in tests) gets the hub id and
    split; a preset asks it to stay offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def load_swebench_dataset(name: str, split: str = "test", instance_ids=None) -> list[dict]:
        import os

        calls.append((name, split, os.environ.get("HF_HUB_OFFLINE")))
        return [json.loads(line) for line in JSONL.read_text().splitlines()]

    utils = types.ModuleType("swebench.harness.utils")
    utils.load_swebench_dataset = load_swebench_dataset
    for mod, obj in (("swebench", types.ModuleType("swebench")), ("swebench.harness", types.ModuleType("h")),
                     ("swebench.harness.utils", utils)):
        monkeypatch.setitem(sys.modules, mod, obj)
    assert [i.instance_id for i in load_instances("verified", split="test")] == IDS
    resolve(WorkloadRequest(source="swebench-lite"))
    assert calls == [("SWE-bench/SWE-bench_Verified", "test", None), ("SWE-bench/SWE-bench_Lite", "test", "1")]
    assert "HF_HUB_OFFLINE" not in __import__("os").environ


# ----------------------------------------------------------------------------------------- bad input
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows() -> list[dict]:
    return [json.loads(line) for line in JSONL.read_text().splitlines()]


def _truncated(tmp: Path) -> Path:
    lines = JSONL.read_text().splitlines()
    return _write(tmp / "truncated.jsonl", lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n")


def _missing_field(tmp: Path) -> Path:
    rows = _rows()
    del rows[0]["problem_statement"]
    return _write(tmp / "missing.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _bad_tests(tmp: Path) -> Path:
    rows = _rows()
    rows[2]["FAIL_TO_PASS"] = "test_a, test_b"
    return _write(tmp / "tests.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _bad_parquet(tmp: Path) -> Path:
    (tmp / "bad.parquet").write_bytes(PARQUET.read_bytes()[:500])
    return tmp / "bad.parquet"


def _parquet_without_patch(tmp: Path) -> Path:
    table = pq.read_table(PARQUET).drop_columns(["patch"])
    pq.write_table(table, tmp / "nopatch.parquet")
    return tmp / "nopatch.parquet"


def _trajectory_as_dataset(tmp: Path) -> Path:
    src = Path(__file__).parent / "fixtures" / "trajectories" / "mini-swe-agent" / "sympy__sympy-20590"
    return shutil.copy(src / "sympy__sympy-20590.traj.json", tmp / "traj.json")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_truncated, "truncated.jsonl:2: invalid JSON"),
        (_missing_field, "missing.jsonl:1: missing field 'problem_statement'"),
        (_bad_tests, "tests.jsonl:3: field 'FAIL_TO_PASS' must be a JSON-encoded list"),
        (_bad_parquet, "bad.parquet: not a readable parquet file"),
        (_parquet_without_patch, "nopatch.parquet: row 0: missing field 'patch'"),
        (_trajectory_as_dataset, "traj.json: expected a JSON list of SWE-bench instances, got a JSON object"),
        (lambda tmp: _write(tmp / "w.csv", "a,b\n"), "w.csv: unsupported dataset file"),
        (lambda tmp: _write(tmp / "empty.jsonl", "\n"), "empty.jsonl: the dataset has no instances"),
        (lambda tmp: tmp / "nope.parquet", "nope.parquet: no such dataset file"),
        (lambda tmp: tmp, "no 'test' split in the directory"),
    ],
)
def test_bad_dataset_files_give_one_line_naming_the_file(run_cli, tmp_path: Path, make, needle: str) -> None:
    source = make(tmp_path)
    result = run_cli("workloads", "import", "swebench", "--dataset", str(source), "-o", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 2, result.stdout
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dataset", str(JSONL), "--instances", "nope,django__django-11099"], "--instances: not in"),
        (["--dataset", str(JSONL), "--instances", " , "], "no instance ids"),
        (["--dataset", str(JSONL), "--tokenizer", "/nonexistent/tok.json"], "no such file or directory"),
        (["--dataset", str(JSONL), "--tokenizer", str(JSONL)], "not a tokenizers file"),
        (["--dataset", str(JSONL), "--tokenizer", str(FIXTURES)], "has no tokenizer.json"),
        (["--dataset", str(JSONL), "--rps", "0"], "--rps"),
        (["--dataset", "lite"], "--dataset path/to/file.parquet"),
        (["--dataset", str(JSONL)], "Missing option '-o'"),
    ],
)
def test_bad_import_options_give_one_line(run_cli, tmp_path: Path, monkeypatch, args: list[str], needle: str) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # should the swebench extra be installed: never download in tests
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = [] if "Missing" in needle else ["-o", str(tmp_path / "o.jsonl")]
    result = run_cli("workloads", "import", "swebench", *args, *out)
    assert result.exit_code == 2 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        ((), "give it with --set dataset=path/to/file.parquet"),
        (("turns.median=3",), "unknown setting for swebench-lite"),
        ((f"dataset={JSONL}", "hints=maybe"), "hints takes true/false"),
    ],
)
def test_data_presets_without_data_or_with_bad_settings_fail_in_one_line(run_cli, tmp_path: Path, monkeypatch,
                                                                         sets: tuple[str, ...], needle: str) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BadInput, match=needle.replace(".", r"\.")):
        resolve(WorkloadRequest(source="swebench-lite", sets=sets))
    set_args = [a for s in sets for a in ("--set", s)]
    result = run_cli("run", "--backend", "vllm", "--workload", "swebench-lite", *set_args,
                     "--results-dir", str(tmp_path / "res"))
    assert result.exit_code == 2 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ end to end
def test_compare_runs_an_imported_swebench_workload_end_to_end(run_cli, tmp_path: Path, tokenizer_dir: Path) -> None:
    workload = tmp_path / "swebench.jsonl"
    _import(run_cli, workload, "--dataset", str(PARQUET), "--tokenizer", str(tokenizer_dir), "--rps", "0.2")
    out = run_cli("compare", "--backends", "vllm,mars", "--workload", str(workload), "--seeds", "0", "--results-dir",
                  str(tmp_path / "res"), "--out", str(tmp_path / "cmp"), "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert sorted(r["backend"] for r in data["runs"]) == ["mars", "vllm"]
    import pandas as pd

    turns = {s.id: len(s.turns) for s in load_sessions(workload)}
    for run in data["runs"]:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        assert summary["completed_sessions"] == 3 and summary["valid"]
        done = pd.read_parquet(Path(run["run_dir"]) / "sessions.parquet")
        assert dict(zip(done["session_id"], done["turns_done"])) == turns
    preset = run_cli("run", "--backend", "mars", "--workload", "swebench-verified", "--set", f"dataset={JSONL}",
                     "--results-dir", str(tmp_path / "res"))
    assert preset.exit_code == 0, preset.stderr
