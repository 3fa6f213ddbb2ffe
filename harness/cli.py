"""The `mars-bench` command line. Every bad input ends as one line on stderr and exit code 2.

A command's module is imported only when that command runs or shows its help, so `mars-bench --help` loads
none, and no command loads another's dependencies (`run` never loads the report's seaborn and matplotlib).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import click

from harness import __version__
from harness.console import fail
from harness.errors import BadInput, EngineFailed, RunsFailed, stop_requested

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# command name -> "module:function" that defines it
COMMANDS = {
    "run": "harness.commands.run:run",
    "compare": "harness.commands.compare:compare",
    "sweep": "harness.commands.sweep:sweep",
    "report": "harness.commands.report:report",
    "calibrate": "harness.commands.calibrate:calibrate",
    "backends": "harness.commands.run:backends",
    "workloads": "harness.commands.workloads:workloads",
    "results": "harness.commands.results:results",
    "model": "harness.commands.model:model",
    "serve": "harness.commands.serve:serve",
}


def docstring_of(target: str) -> str:
    """The docstring of `module:function`, read from the module's source without importing it."""
    module, function = target.split(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"no module {module}")
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    raise LookupError(f"no function {function} in {module}")


class LazyGroup(click.Group):
    """A group whose commands are imported when one is used; its own --help lists them from their source."""

    def __init__(self, *args: object, lazy: Mapping[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            module, function = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), function), name)
        return self.commands.get(name)

    def summary(self, name: str, limit: int) -> str:
        """What `--help` says of a command: the first sentence of its docstring, as click shortens it."""
        if name in self.commands:
            return self.commands[name].get_short_help_str(limit)
        return click.Command(name, help=docstring_of(self.lazy[name])).get_short_help_str(limit)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        with formatter.section("Commands"):
            formatter.write_dl([(name, self.summary(name, limit)) for name in names])


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "-V", "--version", prog_name="mars-bench")
def cli() -> None:
    """mars-bench: benchmark LLM serving policies under agentic load (LLM calls + CPU tool calls).

    \b
    Examples:
      mars-bench run --backend mars --workload swe-smoke
      mars-bench compare --backends vllm,mars --workload paper
      mars-bench backends --gpu h100 --model qwen3-coder-30b-a3b
      mars-bench workloads list
      mars-bench workloads generate paper -o paper.jsonl --seed 1
      mars-bench workloads show paper.jsonl
      mars-bench results list
    """


@cli.command()
def version() -> None:
    """Print the mars-bench version.

    \b
    Example:
      mars-bench version
    """
    click.echo(f"mars-bench {__version__}")


def expand_goodput(argv: list[str]) -> list[str]:
    """vLLM's `--goodput ttft:500 tpot:50` takes several values after one flag; click options take one, so
    each further KEY:VALUE after the flag's first value becomes its own `--goodput`."""
    out: list[str] = []
    state = "normal"  # "value": the flag's first value comes next; "more": further KEY:VALUEs may follow
    for arg in argv:
        if state == "more" and ":" in arg and not arg.startswith("-"):
            out += ["--goodput", arg]
            continue
        out.append(arg)
        if arg == "--goodput":
            state = "value"
        else:
            state = "more" if state == "value" else "normal"
    return out


def _terminate(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM end a run: the engine, servers and tool processes are stopped, what was measured
    is kept, the run is marked interrupted."""
    stop_requested.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: click's errors and BadInput become one line and exit 2, never a traceback."""
    argv = expand_goodput(list(sys.argv[1:] if argv is None else argv))
    stop_requested.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
    try:
        cli.main(args=argv, prog_name="mars-bench", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        fail("aborted")
        return 130
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        fail(f"{e.format_message()}{hint}")
        return EXIT_BAD_INPUT
    except click.ClickException as e:
        fail(e.format_message())
        return EXIT_BAD_INPUT
    except BadInput as e:
        fail(str(e))
        return EXIT_BAD_INPUT
    except (EngineFailed, RunsFailed) as e:
        fail(str(e))
        return EXIT_RUN_FAILED
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
