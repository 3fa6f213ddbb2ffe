"""The `mars-bench` command line. Every bad input ends as one line on stderr and exit code 2."""

from __future__ import annotations

import signal
import sys
import threading

import click

from harness import __version__
from harness.commands.calibrate import calibrate
from harness.commands.compare import compare
from harness.commands.model import model
from harness.commands.report import report
from harness.commands.results import results
from harness.commands.run import backends, run
from harness.commands.sweep import sweep
from harness.commands.workloads import workloads
from harness.console import fail
from harness.errors import BadInput, EngineFailed, RunsFailed, stop_requested

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "-V", "--version", prog_name="mars-bench")
def cli() -> None:
    """mars-bench: benchmark LLM serving policies under agentic load (LLM calls + CPU tool calls).

    \b
    Examples:
      mars-bench run --backend vllm --workload swe-smoke
      mars-bench backends --gpu h100 --model qwen3-coder-30b-a3b
      mars-bench workloads list
      mars-bench workloads generate paper -o paper.jsonl --seed 1
      mars-bench workloads show paper.jsonl
      mars-bench results list
    """


@cli.command()
def version() -> None:
    """Print the mars-bench version."""
    click.echo(f"mars-bench {__version__}")


for command in (run, compare, sweep, report, calibrate, backends, workloads, results, model):
    cli.add_command(command)


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
