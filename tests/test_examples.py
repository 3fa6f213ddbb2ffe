"""Every command a user is shown runs as shown: each `mars-bench ...` line in README.md's code blocks and in
each command's --help examples.

A source's commands run in order in a fresh directory, as a reader types them (later ones use what earlier
ones wrote: `generate -o paper.jsonl`, then `show paper.jsonl`); `tests/fixtures/` is there as in a clone.
They run small without changing what they exercise: a simulated run, compare or sweep gets `--sessions 2`.
A command that needs what a test machine may lack is matched by NEEDS, which says what it needs; it is still
parsed (the command exists, every flag and value is accepted), and runs where it can: the real-engine
commands in the `engine` test, where vLLM is installed; a sweep on a remote Ray cluster as `--dry-run`, which
validates every run of the grid as the sweep does.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from harness.cli import cli, expand_goodput, main
from tests.test_cli import all_commands

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

# What a command needs beyond a CPU and the core install, by a pattern in its text; the first match counts.
# "parse": only parsed here; "engine": runs in the engine test (vLLM's CPU build); "dry-run": runs with --dry-run.
NEEDS: list[tuple[str, str, str]] = [
    (r"^mars-bench serve ", "parse", "a server to stand in front of (tests/test_serve_vllm.py runs the gateway "
                                    "before a real vLLM server)"),
    (r"--engine sglang", "parse", "SGLang, whose kernels need a GPU"),
    (r"--model Qwen/", "parse", "a GPU and the model's weights"),
    (r"--base-url", "parse", "a server someone runs (tests/test_http_engine.py attaches to a real vLLM server)"),
    (r"--dataset verified|-w swebench-lite(?!.*dataset=)", "parse", "the SWE-bench data (`hf download`)"),
    (r"--engine vllm|^mars-bench calibrate |--profile tiny-cpu\.json", "engine", "vLLM (the `vllm` extra)"),
    (r"^mars-bench model make-tiny ", "setup", "run in both tests: the real-engine commands load its model"),
    (r"--executor ray .*--address", "dry-run", "a Ray cluster at that address"),
]
SMALL = ("run", "compare", "sweep")  # commands that get --sessions 2


class ExampleFailed(AssertionError):
    pass


@dataclass(frozen=True)
class Example:
    text: str  # as shown, continuation lines joined
    kind: str  # "run", or the kind of its NEEDS entry
    args: list[str]  # as run: after `mars-bench`, made small

    @classmethod
    def of(cls, text: str) -> Example:
        kind = next((k for pattern, k, _ in NEEDS if re.search(pattern, text)), "run")
        words = shlex.split(text, comments=True)
        assert words[0] == "mars-bench", text
        return cls(text, kind, small(words[1:], kind))


def small(args: list[str], kind: str) -> list[str]:
    """The command at test size: --sessions 2 for runs, one repeat for calibration, --dry-run where needed."""
    args = list(args)
    if args[0] in SMALL and kind != "parse":
        if "--sessions" in args:
            args[args.index("--sessions") + 1] = "2"
        else:
            args += ["--sessions", "2"]
    if args[0] == "calibrate" and "--repeats" not in args:
        args += ["--repeats", "1"]
    if kind == "dry-run":
        args.append("--dry-run")
    return args


def command_lines(lines: Iterable[str]) -> list[str]:
    """The lines that start with `mars-bench `, each joined with its `\\` continuation lines."""
    found: list[str] = []
    pending: list[str] = []
    for raw in lines:
        line = raw.strip()
        if pending or line.startswith("mars-bench "):
            pending.append(line.removesuffix("\\").strip())
            if not line.endswith("\\"):
                found.append(" ".join(pending))
                pending = []
    return found


def readme_commands(markdown: str) -> list[str]:
    """The `mars-bench` commands in the fenced code blocks of a Markdown text."""
    inside, lines = False, []
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return command_lines(lines)


def help_commands(command: click.Command) -> list[str]:
    """The example commands of a command's help text."""
    return command_lines((command.help or "").splitlines())


def parse(args: list[str]) -> None:
    """What click checks before a command runs: the command exists, its flags and values are accepted."""
    group: click.Command = cli
    rest = expand_goodput(args)
    while isinstance(group, click.Group):
        name, group, rest = group.resolve_command(click.Context(group), rest)
    with group.make_context(name, rest):
        pass


def expand(args: list[str]) -> list[str]:
    """Shell globs (`results/sweep-paper-*/`) as the shell would expand them."""
    out: list[str] = []
    for arg in args:
        matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?[") else []
        out += matches or [arg]
    return out


def run_examples(source: str, commands: list[str], engine: bool = False) -> int:
    """Run `commands` in order in the current directory, in the main test (engine False: real-engine commands
    only parsed) or the engine test (only the real-engine commands and their set-up run). Raises
    ExampleFailed naming the first that fails; returns how many ran."""
    ran = 0
    for text in commands:
        example = Example.of(text)
        try:
            parse(example.args)
        except click.ClickException as e:
            raise ExampleFailed(f"{source}: `{text}` does not parse: {e.format_message()}") from None
        runs = example.kind in ("engine", "setup") if engine else example.kind in ("run", "dry-run", "setup")
        if not runs:
            continue
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            code = main(expand(example.args))
        if code != 0:
            raise ExampleFailed(f"{source}: `{text}` exited {code} (ran as `mars-bench {shlex.join(example.args)}`): "
                                f"{stderr.getvalue().strip()}")
        ran += 1
    return ran


def sources() -> list[tuple[str, list[str]]]:
    """(name, commands): README.md, then each command's --help."""
    found = [("README.md", readme_commands(README.read_text()))]
    found += [(f"mars-bench {' '.join(path)} --help", help_commands(command)) for path, command in all_commands(cli)]
    return [(name, commands) for name, commands in found if commands]


SOURCES = sources()


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory with the clone's test fixtures, as the current directory; processes the commands
    start (a launched vLLM server loads the policy plugin) import this checkout's code, as in its own venv."""
    (tmp_path / "tests").symlink_to(REPO / "tests", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


@pytest.mark.parametrize(("source", "commands"), SOURCES, ids=[name for name, _ in SOURCES])
def test_every_example_runs(workspace: Path, source: str, commands: list[str]) -> None:
    run_examples(source, commands)


@pytest.mark.engine
def test_every_real_engine_example_runs(workspace: Path) -> None:
    """The real-engine commands of every source, in one directory and each distinct one once: `calibrate
    --help` shows the README's calibration, which takes a minute."""
    done: set[tuple[str, ...]] = set()
    ran = 0
    for source, commands in SOURCES:
        fresh = [c for c in commands if tuple(Example.of(c).args) not in done]
        ran += run_examples(source, fresh, engine=True)
        done |= {tuple(Example.of(c).args) for c in fresh if Example.of(c).kind in ("engine", "setup")}
    assert ran >= 6


def test_the_readme_commands_are_found() -> None:
    """The extraction sees the README's blocks (a broken one would pass every command by finding none)."""
    commands = readme_commands(README.read_text())
    assert "mars-bench run --backend mars --workload swe-smoke" in commands
    assert len(commands) >= 30
    assert all(c.startswith("mars-bench ") and not c.endswith("\\") for c in commands)


def test_every_command_has_a_real_example() -> None:
    """Each command's --help shows at least one line that runs that very command."""
    for path, command in all_commands(cli):
        words = "mars-bench " + " ".join(path)
        examples = help_commands(command)
        assert any(e == words or e.startswith(words + " ") for e in examples), f"`{words} --help` has no example"


PLANTED = {  # a README with one bad line, and what is wrong with it
    "unknown backend": "```bash\nmars-bench run --backend nope --workload swe-smoke\n```",
    "misspelt flag on a continuation line": "```bash\nmars-bench run -w swe \\\n    --sesions 5\n```",
    "setting the dry run rejects": "```bash\nmars-bench sweep -b mars -w paper --set retention=ttl,lru --dry-run\n```",
    "bad value in a command only parsed": "```bash\nmars-bench run --engine sglang -b sglang --tool-cores 0\n```",
    "a file no earlier line wrote": "```bash\nmars-bench workloads generate swe -o a.jsonl\nmars-bench workloads show b.jsonl\n```",
}


@pytest.mark.parametrize("markdown", PLANTED.values(), ids=PLANTED.keys())
def test_a_broken_readme_command_fails(workspace: Path, markdown: str) -> None:
    """The same test code as for README.md, fed a README with one bad line, fails."""
    with pytest.raises(ExampleFailed):
        run_examples("planted", readme_commands(markdown))


def test_a_broken_help_example_fails(workspace: Path) -> None:
    @click.command()
    def planted() -> None:
        """A command whose example went stale.

        \b
        Example:
          mars-bench compare --backends vllm,mars --seed 3
        """

    with pytest.raises(ExampleFailed):
        run_examples("planted --help", help_commands(planted))
