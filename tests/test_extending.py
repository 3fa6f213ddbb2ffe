"""docs/extending.md's worked baseline, applied to a copy of the project exactly as the page says: one new file
and one registry line, nothing else; the new backend then runs, takes its settings, keeps the layers and
changes decisions."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_layers import read_tree, violations

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"


def doc_blocks() -> tuple[str, str, str]:
    """(path of the new file, its code, the registry line) as docs/extending.md gives them."""
    text = DOC.read_text()
    file_match = re.search(r"<!-- extending: file (\S+) -->\s*```python\n(.*?)```", text, re.S)
    line_match = re.search(r"<!-- extending: registry line -->\s*```python\n(.*?)```", text, re.S)
    assert file_match and line_match, "docs/extending.md lost its marked example blocks"
    registry = line_match.group(1).rstrip("\n")
    assert "\n" not in registry, "the registry example must be one line"
    return file_match.group(1), file_match.group(2), registry


def add_to_registry(backends: str, line: str) -> str:
    """The registry line placed as the last entry of the BACKENDS tuple."""
    end = backends.index("\n    )\n}\n")
    return backends[:end] + "\n" + line + backends[end:]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's packages with the documented baseline added."""
    root = tmp_path_factory.mktemp("extended")
    for package in ("harness", "workloads", "baselines", "mars_impl"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    path, code, line = doc_blocks()
    assert not (root / path).exists()
    (root / path).write_text(code)
    registry = root / "harness" / "backends.py"
    registry.write_text(add_to_registry(registry.read_text(), line))
    return root


def changed_files(root: Path) -> tuple[list[str], list[str]]:
    """(new files, changed files) of the copy against the project."""
    new, changed = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        original = ROOT / rel
        if not original.exists():
            new.append(str(rel))
        elif original.read_text() != path.read_text():
            changed.append(str(rel))
    return new, changed


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=root, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def test_the_example_is_one_new_file_and_one_registry_line(project: Path) -> None:
    new, changed = changed_files(project)
    assert new == [doc_blocks()[0]] and changed == ["harness/backends.py"]
    diff = [d for d in difflib.unified_diff((ROOT / "harness/backends.py").read_text().splitlines(),
                                            (project / "harness/backends.py").read_text().splitlines(), lineterm="", n=0)
            if d[:1] in "+-" and not d.startswith(("+++", "---"))]
    assert diff == ["+" + doc_blocks()[2]]


def test_the_new_baseline_keeps_the_layers(project: Path) -> None:
    assert violations(read_tree(project)) == []


def test_the_new_baseline_runs_takes_settings_and_changes_decisions(project: Path, tmp_path: Path) -> None:
    listed = cli(project, "backends", "--json")
    assert listed.returncode == 0, listed.stderr
    backends = json.loads(listed.stdout)["backends"]
    assert backends["shortest-first"]["engines"] == ["sim", "vllm"]
    assert backends["shortest-first"]["description"].startswith("shortest prompt first")

    def run(*args: str) -> dict:
        out = cli(project, "run", "-w", "swe-smoke", "--sessions", "16", "--rps", "8", "--seed", "1",
                  "--set", "engine_args.max_num_batched_tokens=1024",
                  "--results-dir", str(tmp_path), "--json", *args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    vllm = run("-b", "vllm")
    shortest = run("-b", "shortest-first")
    longest = run("-b", "shortest-first", "--set", "shortest_first.longest_first=true")
    assert shortest["config"]["shortest_first"] == {"longest_first": False}
    assert longest["config"]["shortest_first"] == {"longest_first": True}
    assert shortest["completed_sessions"] == vllm["completed_sessions"] == 16
    # the order of waiting calls is the policy's: under load the three orders give three different runs
    assert len({vllm["mean_jct_s"], shortest["mean_jct_s"], longest["mean_jct_s"]}) == 3
    bad = cli(project, "run", "-b", "shortest-first", "--set", "shortest_first.longest_first=maybe")
    assert bad.returncode == 2 and "shortest_first.longest_first" in bad.stderr and "Traceback" not in bad.stderr
