"""`mars-bench workloads ...`: list presets, generate workload files, show their distributions."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import track

from harness.commands.options import json_option, workload_options, workload_request
from harness.console import console, print_json, table
from workloads.model import save_sessions
from workloads.source import is_file_source, preset_spec, resolve
from workloads.stats import describe
from workloads.synthetic import PRESETS, generate


@click.group()
def workloads() -> None:
    """Agent workloads: synthetic presets and JSONL workload files."""


@workloads.command("list")
@json_option
def list_presets(as_json: bool) -> None:
    """List the synthetic workload presets.

    \b
    Example:
      mars-bench workloads list
    """
    if as_json:
        print_json({name: spec.model_dump(mode="json", include={"description", "sessions", "rps", "arrival"})
                    for name, spec in PRESETS.items()})
        return
    rows = [(n, s.description, s.sessions, s.rps, s.arrival, ", ".join(s.mix)) for n, s in PRESETS.items()]
    console.print(table("workload presets", ["preset", "description", "sessions", "rps", "arrival", "kinds"], rows,
                        numeric_from=2))


@workloads.command()
@workload_options(default=None)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSONL file to write.")
def generate_cmd(workload: str, sessions: int | None, rps: float | None, arrival: str | None, cv: float | None,
                 seed: int | None, sets: tuple[str, ...], output: Path) -> None:
    """Generate a workload file from a preset (deterministic for a seed).

    \b
    Examples:
      mars-bench workloads generate paper -o paper.jsonl --seed 1
      mars-bench workloads generate swe -o swe.jsonl --sessions 50 --rps 0.1 --arrival poisson
      mars-bench workloads generate swe -o long.jsonl --set task_tokens.median=20000
    """
    if is_file_source(workload):
        raise click.BadParameter(f"{workload!r} is a file; generate takes a preset ({', '.join(PRESETS)})",
                                 param_hint="PRESET")
    spec = preset_spec(workload_request(workload, sessions, rps, arrival, cv, seed, sets))
    sessions_out = list(track(generate(spec), total=spec.sessions, description="generating", console=console,
                              transient=True, disable=spec.sessions < 2000))
    save_sessions(sessions_out, output)
    console.print(f"wrote {len(sessions_out)} sessions ({spec.name}, seed {spec.seed}) to {output}")


generate_cmd.name = "generate"


@workloads.command()
@workload_options(default=None)
@json_option
def show(workload: str, sessions: int | None, rps: float | None, arrival: str | None, cv: float | None,
         seed: int | None, sets: tuple[str, ...], as_json: bool) -> None:
    """Show the distribution summary of a preset or workload file.

    \b
    Examples:
      mars-bench workloads show paper
      mars-bench workloads show paper.jsonl
    """
    name, items = resolve(workload_request(workload, sessions, rps, arrival, cv, seed, sets))
    info = describe(items)
    if as_json:
        print_json({"workload": name, **info})
        return
    overview = [
        ("sessions", info["sessions"]), ("LLM calls", info["calls"]), ("tool calls", info["tool_calls"]),
        ("session kinds", ", ".join(f"{k} {v}" for k, v in info["kinds"].items())),
        ("first turns over 50k tokens", info["long_sessions_over_50k"]),
        ("arrival span (s)", info["arrival_span_s"]), ("arrival rate (sessions/s)", info["arrival_rate"]),
        ("offered tool load (busy cores)", info["offered_tool_cores"]),
    ]
    console.print(table(f"workload {name}", ["", "value"], overview))
    rows = [(label, d["mean"], d["p50"], d["p95"], d["max"]) for label, d in info["distributions"].items()]
    console.print(table(None, ["distribution", "mean", "p50", "p95", "max"], rows))
    tools = sorted(info["tools"].items(), key=lambda kv: -kv[1])
    console.print(table(None, ["tool", "calls"], tools))
