"""SWE-bench instances -> agent sessions: the real task text, an agent-shaped turn structure.

Where the data comes from (`load_instances`):

* a local file in the dataset's own format: `.parquet` (as published on the Hugging Face hub), `.jsonl`
  (one instance per line) or `.json` (a list of instances); or a directory holding `SPLIT.parquet`,
  `data/SPLIT-*.parquet` (a hub snapshot), `SPLIT.jsonl` or `SPLIT.json`;
* a hub id (`SWE-bench/SWE-bench_Lite`, `SWE-bench/SWE-bench_Verified`, the older `princeton-nlp/...`
  names, or the aliases `lite`, `verified`, `full`): first the Hugging Face hub cache on this machine
  (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), read directly; otherwise the
  `swebench` package's own loader (`swebench.harness.utils.load_swebench_dataset`, extra `swebench`), which
  uses the `datasets` cache and, unless offline, downloads. The `swebench-lite` / `swebench-verified`
  workload presets never download (`offline=True`).

Row fields used (the dataset's columns): `instance_id`, `repo`, `problem_statement`, `hints_text`,
`patch`, `FAIL_TO_PASS`, `PASS_TO_PASS` (JSON-encoded lists of test names, as published; plain lists are
accepted too). The others (`base_commit`, `test_patch`, `version`, `environment_setup_commit`,
`created_at`) are kept out of the session: they do not change the load on a serving system.

How an instance becomes a session (`instance_session`). Assumptions, each a stated modelling choice:

1. **Shared prefix**: a coding agent's system prompt and tool specs, the same for every instance:
   `AGENT_PREFIX_TOKENS` = the `swe` preset's median prefix (3,000 tokens: of the order of a SWE-agent-
   or OpenHands-style system prompt with a handful of tool schemas), prefix id `swebench/agent`.
2. **First turn**: `task_text(instance)`, the problem statement (and the hints, unless `hints=False`) in
   an agent's task template (`TASK_TEMPLATE`), counted with the tokenizer (exact) or the documented
   estimate (`workloads.tokens.CharEstimate`).
3. **Turn structure**, in the order a coding agent works (the steps SWE-agent's and OpenHands' default
   task prompts ask for: find the code, reproduce, edit, rerun): explore the repository (grep / read_file / python calls drawn with the `swe`
   preset's tool weights), read each file the gold patch changes (one read_file per file, at most
   `MAX_READS`), run a reproduction script (python), then edit: one `edit` call per hunk of the gold patch
   (at most `MAX_EDITS`; extra hunks fold into the last edit), with a `run_tests` call after every
   `EDITS_PER_TEST_RUN` edits and after the last, and a `build` call before the first test run when the
   patch touches compiled sources (`.c`, `.pyx`, ...: the package must be rebuilt). A final turn
   submits (no tool). The exploration count is the `swe` preset's turns draw minus the turns the
   instance determines, at least one, so total turns follow the preset unless the patch needs more.
4. **Test-run cost**: the `swe` preset's `run_tests` CPU-time lognormal (its clip bounds) with its
   median set by the instance: `setup + per_test × tests`, tests = len(FAIL_TO_PASS) +
   len(PASS_TO_PASS) (the tests in the files the harness runs, a proxy for what an agent runs), and
   setup / per-test seconds from `REPO_TEST_COST` for the repository (rough figures for each project's
   test setup, not measurements: a django run builds test databases before its first test, a sympy run
   only imports sympy; unknown repositories get `DEFAULT_TEST_COST`). The preset's sigma spans test runs
   of every repository and size; once those are known, half of it (`RESIDUAL_SIGMA_SHARE`) is kept for
   what the agent chooses to run (one test or the whole file). Cores as in the preset.
5. **Edit output**: an edit call's output tokens are the preset's per-call output draw (the reasoning)
   plus the tokens of the hunk's old and new text (what a str_replace-style edit tool is sent).
6. **Everything else** (other outputs, tool CPU times and cores, tool-output tokens, the follow-up
   framing tokens of later turns) is drawn from the `swe` preset's distributions, reused, not copied.
7. **Randomness**: instance i draws from its own stream (seed, hash of its instance id), so a session
   does not depend on which other instances are imported; arrivals are fixed-rate at `rps` in dataset order
   (retime with `--rps/--arrival` at run time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from harness import inputs
from harness.errors import BadInput
from workloads.model import Session, ToolCall, Turn, format_validation_error, require_unique
from workloads.synthetic import LogNormal, SessionSpec, ToolKind, _pick, get_preset
from workloads.tokens import TokenCounter

REQUIRED_FIELDS = ("instance_id", "repo", "problem_statement", "patch")
HUB_DATASETS = {
    "lite": "SWE-bench/SWE-bench_Lite",
    "verified": "SWE-bench/SWE-bench_Verified",
    "full": "SWE-bench/SWE-bench",
}
_ALIASES = {
    **HUB_DATASETS,
    "swebench-lite": HUB_DATASETS["lite"], "swe-bench-lite": HUB_DATASETS["lite"], "swe-bench_lite": HUB_DATASETS["lite"],
    "swebench-verified": HUB_DATASETS["verified"], "swe-bench-verified": HUB_DATASETS["verified"],
    "swe-bench_verified": HUB_DATASETS["verified"],
    "swebench": HUB_DATASETS["full"], "swe-bench": HUB_DATASETS["full"],
}
_OLD_ORG = "princeton-nlp"

PREFIX_ID = "swebench/agent"
MAX_READS = 8
MAX_EDITS = 12
EDITS_PER_TEST_RUN = 3
EXPLORE_TOOLS = ("grep", "read_file", "python")
COMPILED_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hpp", ".pyx", ".pxd", ".pxi", ".f", ".f90")
DEFAULT_RPS = get_preset("swe").rps  # arrivals of an import: the `swe` preset's rate
RESIDUAL_SIGMA_SHARE = 0.5  # of the preset's test-run sigma left once repository and test count are known

TASK_TEMPLATE = """\
<uploaded_files>
/testbed
</uploaded_files>
The repository {repo} is checked out in /testbed. Resolve the following issue:

<issue_description>
{problem_statement}
</issue_description>
{hints}
Change non-test files under /testbed so that the issue is resolved; the tests are taken care of. Explore \
the repository first, reproduce the problem with a script, fix it, rerun the script and the relevant tests, \
think about edge cases, then submit.
"""
HINTS_TEMPLATE = "\nHints from the issue discussion:\n<hints>\n{hints_text}\n</hints>\n"


@dataclass(frozen=True)
class SuiteCost:
    """Seconds of one core for a test run: `setup_s` once, then `per_test_s` per test."""

    setup_s: float
    per_test_s: float

    def seconds(self, tests: int) -> float:
        return self.setup_s + self.per_test_s * max(tests, 1)


# Assumed figures (see the module docstring, point 4): what sets each project's test-run cost apart.
REPO_TEST_COST: dict[str, SuiteCost] = {
    "django/django": SuiteCost(8.0, 0.02),  # runtests.py creates test databases, runs migrations first
    "sympy/sympy": SuiteCost(1.5, 0.04),  # imports sympy, then pure-Python symbolic tests
    "astropy/astropy": SuiteCost(5.0, 0.03),  # heavy import, pytest plugins
    "matplotlib/matplotlib": SuiteCost(4.0, 0.12),  # image-comparison tests render figures
    "scikit-learn/scikit-learn": SuiteCost(4.0, 0.08),  # tests fit estimators
    "sphinx-doc/sphinx": SuiteCost(3.0, 0.25),  # many tests build a small documentation project
    "pydata/xarray": SuiteCost(4.0, 0.03),
    "pytest-dev/pytest": SuiteCost(1.5, 0.08),  # pytester runs inner pytest sessions
    "pylint-dev/pylint": SuiteCost(3.0, 0.05),
    "mwaskom/seaborn": SuiteCost(3.0, 0.06),
    "psf/requests": SuiteCost(1.0, 0.02),
    "pallets/flask": SuiteCost(1.0, 0.01),
}
DEFAULT_TEST_COST = SuiteCost(3.0, 0.05)


# ------------------------------------------------------------------------------------------ instances
@dataclass(frozen=True)
class Instance:
    """The fields of one SWE-bench row that shape its session."""

    instance_id: str
    repo: str
    problem_statement: str
    hints_text: str
    patch: str
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]

    @property
    def tests(self) -> int:
        return len(self.fail_to_pass) + len(self.pass_to_pass)


def _test_list(row: Mapping[str, Any], field: str, where: str) -> tuple[str, ...]:
    value = row.get(field)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = inputs.parse_json(value, where)
        except BadInput:
            raise BadInput(f"{where}: field '{field}' must be a JSON-encoded list of test names") from None
    if hasattr(value, "tolist"):  # a numpy array from a parquet list column
        value = value.tolist()
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise BadInput(f"{where}: field '{field}' must be a list of test names")
    return tuple(value)


def instance_from_row(row: Any, where: str) -> Instance:
    """Validate one dataset row; `where` (`file:line` or `file: row N`) starts every error message."""
    if not isinstance(row, Mapping):
        raise BadInput(f"{where}: expected a SWE-bench instance (a JSON object), got {type(row).__name__}")
    for field in REQUIRED_FIELDS:
        if field not in row or row[field] is None:
            raise BadInput(f"{where}: missing field '{field}'")
        if not isinstance(row[field], str):
            raise BadInput(f"{where}: field '{field}' must be a string")
    if not row["instance_id"]:
        raise BadInput(f"{where}: field 'instance_id' must not be empty")
    hints = row.get("hints_text") or ""
    if not isinstance(hints, str):
        raise BadInput(f"{where}: field 'hints_text' must be a string")
    return Instance(
        instance_id=row["instance_id"], repo=row["repo"], problem_statement=row["problem_statement"],
        hints_text=hints, patch=row["patch"],
        fail_to_pass=_test_list(row, "FAIL_TO_PASS", where), pass_to_pass=_test_list(row, "PASS_TO_PASS", where),
    )


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    yield from inputs.iter_jsonl(path)


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    data = inputs.read_json(path)
    if not isinstance(data, list):
        kind = {dict: "object", str: "string"}.get(type(data), type(data).__name__)
        raise BadInput(f"{path}: expected a JSON list of SWE-bench instances, got a JSON {kind}")
    for i, row in enumerate(data):
        yield f"{path}: instance {i}", row


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(inputs.read_parquet_rows(path)):
        yield f"{path}: row {i}", row


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _split_files(directory: Path, split: str) -> list[Path]:
    """The files of `split` in a dataset directory (a hub snapshot or a folder of exported splits)."""
    for pattern in (f"{split}.parquet", f"data/{split}-*.parquet", f"{split}-*.parquet", f"{split}.jsonl",
                    f"{split}.json"):
        found = sorted(directory.glob(pattern))
        if found:
            return found
    return []


def read_rows(path: str | Path, split: str = "test") -> list[tuple[str, Any]]:
    """(where, row) pairs of a local dataset file or directory, in file order."""
    path = Path(path)
    if path.is_dir():
        files = _split_files(path, split)
        if not files:
            raise BadInput(f"{path}: no '{split}' split in the directory (expected {split}.parquet, "
                           f"data/{split}-*.parquet, {split}.jsonl or {split}.json)")
    elif path.is_file():
        files = [path]
    else:
        raise BadInput(f"{path}: no such dataset file")
    rows: list[tuple[str, Any]] = []
    for file in files:
        reader = _READERS.get(file.suffix)
        if reader is None:
            raise BadInput(f"{file}: unsupported dataset file (expected .parquet, .jsonl or .json)")
        try:
            rows.extend(reader(file))
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"{file}: cannot read dataset file ({getattr(e, 'strerror', None) or e})") from None
    return rows


def hub_id(name: str) -> str | None:
    """The hub id a dataset name stands for, or None when it is not a hub name (a path)."""
    if name.lower() in _ALIASES:
        return _ALIASES[name.lower()]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.endswith((".json", ".jsonl", ".parquet")):
        return name
    return None


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repositories (its own environment variables, same order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "huggingface" / "hub"


def find_cached(repo_id: str, split: str = "test") -> list[Path]:
    """The parquet files of `split` in the hub cache's snapshot of dataset `repo_id` (also under its old
    `princeton-nlp` name); [] if not downloaded. The snapshot `refs/main` points at wins."""
    owner, _, name = repo_id.partition("/")
    for org in dict.fromkeys((owner, _OLD_ORG)):
        repo_dir = hub_cache_dir() / f"datasets--{org}--{name}"
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                            reverse=True)
        ref = repo_dir / "refs" / "main"
        if ref.is_file():
            main = snapshots / ref.read_text().strip()
            candidates = [main] + [c for c in candidates if c != main]
        for snapshot in candidates:
            files = [f for f in _split_files(snapshot, split) if f.suffix == ".parquet"]
            if files:
                return files
    return []


@contextlib.contextmanager
def _offline_env() -> Iterator[None]:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for the duration (read by `datasets` when it is imported)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class DatasetUnavailable(BadInput):
    """A hub dataset that is neither in the cache nor loadable (no swebench package, offline, unknown id)."""


def _load_with_swebench(repo_id: str, split: str, offline: bool) -> list[tuple[str, Any]]:
    """Rows through the `swebench` package's own loader (extra `swebench`)."""
    hint = "give a local file with --dataset path/to/file.parquet (the dataset's data/test-*.parquet)"
    env = _offline_env() if offline else contextlib.nullcontext()
    with env:
        try:
            from swebench.harness.utils import load_swebench_dataset
        except ImportError:
            raise DatasetUnavailable(
                f"{repo_id}: not in the Hugging Face cache ({hub_cache_dir()}) and the swebench package is not "
                f"installed (pip install -e '.[swebench]'); {hint}") from None
        try:
            rows = load_swebench_dataset(repo_id, split)
        except Exception as e:  # datasets/hub errors: offline, not found, no such split
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
            raise DatasetUnavailable(f"{repo_id} (split {split}): cannot load the dataset ({detail}); {hint}") from None
    return [(f"{repo_id} ({split}): row {i}", dict(row)) for i, row in enumerate(rows)]


def load_instances(dataset: str, split: str = "test", instance_ids: Sequence[str] | None = None,
                   offline: bool = False) -> list[Instance]:
    """The instances of a dataset file, directory or hub id (see the module docstring), in dataset order,
    restricted to `instance_ids` when given."""
    path = Path(dataset).expanduser()
    repo_id = None if path.exists() else hub_id(dataset)
    if repo_id is None:
        rows = read_rows(path, split)
    else:
        cached = find_cached(repo_id, split)
        rows = ([r for f in cached for r in _read_parquet(f)] if cached
                else _load_with_swebench(repo_id, split, offline))
    instances = [instance_from_row(row, where) for where, row in rows]
    if not instances:
        raise BadInput(f"{dataset}: the dataset has no instances")
    require_unique((inst.instance_id for inst in instances), "instance_id", dataset)
    if instance_ids:
        wanted = set(instance_ids)
        known = {inst.instance_id for inst in instances}
        missing = [i for i in dict.fromkeys(instance_ids) if i not in known]
        if missing:
            more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            raise BadInput(f"--instances: not in {dataset}: {', '.join(missing[:5])}{more}")
        instances = [inst for inst in instances if inst.instance_id in wanted]
    return instances


def parse_instance_ids(value: str | None) -> list[str] | None:
    """`--instances`: a comma-separated list of ids, or a file with one id per line (# comments) or a JSON list."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        text = inputs.read_text(path, str(path))
        if text.lstrip().startswith("["):
            ids = inputs.parse_json(text, str(path))
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise BadInput(f"{path}: expected a JSON list of instance ids")
        else:
            ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    else:
        ids = value.split(",")
    ids = [i.strip() for i in ids if i.strip()]
    if not ids:
        raise BadInput(f"--instances {value!r}: no instance ids")
    return ids


# ------------------------------------------------------------------------------------------- patches
@dataclass(frozen=True)
class Hunk:
    old: str  # context and removed lines: what a str_replace edit replaces
    new: str  # context and added lines: what it writes


@dataclass(frozen=True)
class PatchShape:
    files: tuple[str, ...]
    hunks: tuple[Hunk, ...]

    @property
    def compiled(self) -> bool:
        return any(f.endswith(COMPILED_SUFFIXES) for f in self.files)


_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def parse_patch(patch: str) -> PatchShape:
    """Files and hunks of a unified diff (`git diff` output). Hunk bodies are consumed by the line counts
    of their `@@` header, so removed lines that begin with `--` are never taken for file headers."""
    files: list[str] = []
    hunks: list[Hunk] = []
    lines = patch.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            files.append(line.rsplit(" b/", 1)[-1])
        elif line.startswith("+++ ") and not line.startswith("+++ /dev/null") and not files:
            files.append(line[4:].removeprefix("b/"))
        m = _HUNK_HEADER.match(line)
        if m:
            old_left = int(m.group(1)) if m.group(1) is not None else 1
            new_left = int(m.group(2)) if m.group(2) is not None else 1
            old, new = [], []
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0):
                body = lines[i]
                tag, text = body[:1], body[1:]
                if tag == "\\":  # "\ No newline at end of file"
                    pass
                elif tag == "-":
                    old.append(text)
                    old_left -= 1
                elif tag == "+":
                    new.append(text)
                    new_left -= 1
                else:  # context (a blank line is context whose leading space was stripped)
                    old.append(text)
                    new.append(text)
                    old_left -= 1
                    new_left -= 1
                i += 1
            hunks.append(Hunk("\n".join(old), "\n".join(new)))
            continue
        i += 1
    return PatchShape(tuple(files), tuple(hunks))


# ------------------------------------------------------------------------------------------ sessions
def agent_spec() -> SessionSpec:
    """The `swe` preset's session kind: every distribution the import draws from."""
    return get_preset("swe").mix["swe"]


AGENT_PREFIX_TOKENS = int(agent_spec().prefix_tokens.median)


def task_text(inst: Instance, hints: bool = True) -> str:
    """The first user message: the task template around the problem statement (and hints)."""
    hint_block = HINTS_TEMPLATE.format(hints_text=inst.hints_text.strip()) if hints and inst.hints_text.strip() else ""
    return TASK_TEMPLATE.format(repo=inst.repo, problem_statement=inst.problem_statement.strip(), hints=hint_block)


def suite_cost(repo: str) -> SuiteCost:
    return REPO_TEST_COST.get(repo, DEFAULT_TEST_COST)


def stream_key(text: str) -> int:
    """A stable 64-bit key for a random stream (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@dataclass(frozen=True)
class _Step:
    tool: str | None  # tool kind called after this LLM call
    extra_output: int = 0  # output tokens on top of the preset's draw (the text of an edit)


def _plan(inst: Instance, shape: PatchShape, spec: SessionSpec, counter: TokenCounter,
          rng: np.random.Generator) -> list[_Step]:
    """The sequence of LLM calls and the tool after each (module docstring, point 3)."""
    hunks = list(shape.hunks) or [Hunk("", "")]
    if len(hunks) > MAX_EDITS:
        rest = hunks[MAX_EDITS - 1:]
        hunks = hunks[: MAX_EDITS - 1] + [Hunk("\n".join(h.old for h in rest), "\n".join(h.new for h in rest))]
    reads = min(max(len(shape.files), 1), MAX_READS)
    test_runs = -(-len(hunks) // EDITS_PER_TEST_RUN)
    fixed = reads + 1 + len(hunks) + test_runs + int(shape.compiled) + 1
    explore = max(1, spec.turns.sample_int(rng, minimum=1) - fixed)
    weights = {k: spec.tools[k].weight for k in EXPLORE_TOOLS}
    steps = [_Step(_pick(rng, weights)) for _ in range(explore)]
    steps += [_Step("read_file")] * reads + [_Step("python")]
    built = False
    for start in range(0, len(hunks), EDITS_PER_TEST_RUN):
        for h in hunks[start:start + EDITS_PER_TEST_RUN]:
            steps.append(_Step("edit", counter.count(h.old) + counter.count(h.new)))
        if shape.compiled and not built:
            steps.append(_Step("build"))
            built = True
        steps.append(_Step("run_tests"))
    return steps + [_Step(None)]


def _tool_call(name: str, inst: Instance, spec: SessionSpec, rng: np.random.Generator) -> ToolCall:
    kind: ToolKind = spec.tools[name]
    cpu: LogNormal = kind.cpu_seconds
    if name == "run_tests":
        cpu = cpu.model_copy(update={"median": suite_cost(inst.repo).seconds(inst.tests),
                                     "sigma": cpu.sigma * RESIDUAL_SIGMA_SHARE})
    return ToolCall(name=name, cpu_seconds=round(cpu.sample(rng) * spec.cpu_scale, 4), cores=_pick(rng, kind.cores))


def instance_session(inst: Instance, counter: TokenCounter, seed: int = 0, hints: bool = True,
                     prefix_tokens: int = AGENT_PREFIX_TOKENS, spec: SessionSpec | None = None) -> Session:
    """One instance as one session (arrival 0; `import_swebench` spaces them out)."""
    try:
        return _instance_session(inst, counter, seed, hints, prefix_tokens, spec or agent_spec())
    except ValidationError as e:  # an instance beyond the workload model's ranges (workloads.model)
        raise BadInput(f"instance {inst.instance_id}: {format_validation_error(e)}") from None


def _instance_session(inst: Instance, counter: TokenCounter, seed: int, hints: bool, prefix_tokens: int,
                      spec: SessionSpec) -> Session:
    rng = np.random.default_rng([seed, stream_key(inst.instance_id)])
    steps = _plan(inst, parse_patch(inst.patch), spec, counter, rng)
    turns: list[Turn] = []
    new_tokens = counter.count(task_text(inst, hints))
    for step in steps:
        output = spec.output_tokens.sample_int(rng, minimum=1) + step.extra_output
        tool = _tool_call(step.tool, inst, spec, rng) if step.tool else None
        turns.append(Turn(new_tokens=new_tokens, output_tokens=output, tool=tool))
        if tool is not None:
            new_tokens = spec.tools[tool.name].output_tokens.sample_int(rng) + spec.followup_tokens.sample_int(rng)
    return Session(id=inst.instance_id, arrival_s=0.0, prefix_id=PREFIX_ID if prefix_tokens else None,
                   prefix_tokens=prefix_tokens, turns=tuple(turns), kind="swebench")


def import_swebench(instances: Sequence[Instance], counter: TokenCounter, seed: int = 0, rps: float = DEFAULT_RPS,
                    hints: bool = True, prefix_tokens: int = AGENT_PREFIX_TOKENS) -> list[Session]:
    """Sessions of `instances`, arriving every 1/rps seconds in dataset order."""
    if rps <= 0:
        raise BadInput(f"--rps must be > 0, got {rps}")
    spec = agent_spec()
    return [instance_session(inst, counter, seed, hints, prefix_tokens, spec).with_arrival(round(i / rps, 6))
            for i, inst in enumerate(instances)]


# ------------------------------------------------------------------------------- workload presets
@dataclass(frozen=True)
class DataPreset:
    """A `--workload` preset built from SWE-bench data found on this machine (never downloaded)."""

    name: str
    hub_id: str
    description: str
    instances: int  # in the published test split


DATA_PRESETS: dict[str, DataPreset] = {
    "swebench-lite": DataPreset("swebench-lite", HUB_DATASETS["lite"],
                                "SWE-bench Lite instances as sessions (needs the data: --set dataset=FILE)", 300),
    "swebench-verified": DataPreset("swebench-verified", HUB_DATASETS["verified"],
                                    "SWE-bench Verified instances as sessions (needs the data: --set dataset=FILE)",
                                    500),
}
PRESET_SETTINGS = ("dataset", "split", "instances", "tokenizer", "hints", "prefix_tokens")


def preset_sessions(name: str, settings: Mapping[str, Any], seed: int = 0) -> list[Session]:
    """The sessions of preset `name` (arrival 0): `settings` are its `--set` values (PRESET_SETTINGS)."""
    from workloads.tokens import load_tokenizer

    preset = DATA_PRESETS[name]
    unknown = [k for k in settings if k not in PRESET_SETTINGS]
    if unknown:
        raise BadInput(f"--set {unknown[0]}: unknown setting for {name} (known: {', '.join(PRESET_SETTINGS)})")
    split = str(settings.get("split", "test"))
    instances = settings.get("instances")
    ids = parse_instance_ids(",".join(map(str, instances)) if isinstance(instances, list) else
                             None if instances is None else str(instances))
    counter = load_tokenizer(settings.get("tokenizer"))
    dataset = settings.get("dataset")
    try:
        found = load_instances(str(dataset) if dataset is not None else preset.hub_id, split, ids, offline=True)
    except DatasetUnavailable:
        raise BadInput(
            f"{name}: no {preset.hub_id} data on this machine (looked in the Hugging Face cache {hub_cache_dir()}); "
            f"give it with --set dataset=path/to/file.parquet (the dataset's data/{split}-*.parquet), or import it: "
            f"mars-bench workloads import swebench --dataset path/to/file.parquet -o W.jsonl") from None
    hints = settings.get("hints", True)
    prefix = settings.get("prefix_tokens", AGENT_PREFIX_TOKENS)
    if not isinstance(hints, bool) or not isinstance(prefix, int) or prefix < 0:
        raise BadInput(f"{name}: --set hints takes true/false and prefix_tokens a count >= 0")
    spec = agent_spec()
    return [instance_session(inst, counter, seed, hints, prefix, spec) for inst in found]
