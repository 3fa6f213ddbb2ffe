"""`mars-bench workloads ...`: list presets, generate workload files, show their distributions, and import
real workloads (SWE-bench instances, recorded agent trajectories, serving datasets and traces)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import track

from harness.commands.options import json_option, seed_option, workload_options, workload_request
from harness.inputs import prepare_output_file
from harness.console import console, plural, print_json, table
from workloads import swebench, traces
from workloads.model import save_sessions
from workloads.source import is_file_source, preset_spec, resolve
from workloads.stats import describe
from workloads.synthetic import PRESETS, generate
from workloads.tokens import load_tokenizer


@click.group()
def workloads() -> None:
    """Agent workloads: synthetic presets, JSONL workload files, imports of real agent workloads.

    \b
    Examples:
      mars-bench workloads list
      mars-bench workloads show paper
      mars-bench workloads generate paper -o paper.jsonl --seed 1
    """


@workloads.command("list")
@json_option
def list_presets(as_json: bool) -> None:
    """List the synthetic workload presets.

    \b
    Examples:
      mars-bench workloads list
      mars-bench workloads list --json
    """
    data = {n: {"description": p.description, "sessions": p.instances, "rps": swebench.DEFAULT_RPS, "arrival": "fixed"}
            for n, p in swebench.DATA_PRESETS.items()}
    if as_json:
        print_json({**{name: spec.model_dump(mode="json", include={"description", "sessions", "rps", "arrival"})
                       for name, spec in PRESETS.items()}, **data})
        return
    rows = [(n, s.description, s.sessions, s.rps, s.arrival, ", ".join(s.mix)) for n, s in PRESETS.items()]
    rows += [(n, d["description"], d["sessions"], d["rps"], d["arrival"], "swebench") for n, d in data.items()]
    console.print(table("workload presets", ["preset", "description", "sessions", "rps", "arrival", "kinds"], rows,
                        numeric_from=2))


@workloads.command()
@workload_options(default=None)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSONL file to write.")
def generate_cmd(workload: str, sessions: int | None, rps: float | None, arrival: str | None,
                 burstiness: float | None, cv: float | None, seed: int, sets: tuple[str, ...], force: bool,
                 output: Path) -> None:
    """Generate a workload file from a preset (deterministic for a seed); missing folders of -o are created.

    \b
    Examples:
      mars-bench workloads generate paper -o paper.jsonl --seed 1
      mars-bench workloads generate swe -o swe.jsonl --sessions 50 --rps 0.1 --arrival poisson
      mars-bench workloads generate swe -o long.jsonl --set task_tokens.median=20000
    """
    if is_file_source(workload):
        raise click.BadParameter(f"{workload!r} is a file; generate takes a preset ({', '.join(PRESETS)})",
                                 param_hint="PRESET")
    if workload in swebench.DATA_PRESETS:
        name, found = resolve(workload_request(workload, sessions, rps, arrival, cv, seed, sets, burstiness, force))
        save_sessions(found, output)
        console.print(f"wrote {plural(len(found), 'session')} ({name}, seed {seed}) to {output}")
        return
    spec = preset_spec(workload_request(workload, sessions, rps, arrival, cv, seed, sets, burstiness, force))
    prepare_output_file(output, "-o")  # before generating: a bad path must not cost the work
    sessions_out = list(track(generate(spec), total=spec.sessions, description="generating", console=console,
                              transient=True, disable=spec.sessions < 2000))
    save_sessions(sessions_out, output)
    console.print(f"wrote {plural(len(sessions_out), 'session')} ({spec.name}, seed {spec.seed}) to {output}")


generate_cmd.name = "generate"


@workloads.command()
@workload_options(default=None)
@json_option
def show(workload: str, sessions: int | None, rps: float | None, arrival: str | None, burstiness: float | None,
         cv: float | None, seed: int, sets: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Show the distribution summary of a preset or workload file.

    \b
    Examples:
      mars-bench workloads show paper
      mars-bench workloads generate paper -o paper.jsonl --seed 1
      mars-bench workloads show paper.jsonl --json
    """
    name, items = resolve(workload_request(workload, sessions, rps, arrival, cv, seed, sets, burstiness, force))
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


# ------------------------------------------------------------------------------------------ import
@workloads.group("import")
def import_group() -> None:
    """Import real workloads: SWE-bench instances, recorded agent trajectories, and the serving datasets and
    traces of vllm bench and AIPerf (mooncake, sharegpt, burstgpt, vllm-multiturn, aiperf).

    \b
    Examples:
      mars-bench workloads import swebench --dataset tests/fixtures/swebench/instances.parquet -o swebench.jsonl
      mars-bench workloads import trajectories tests/fixtures/trajectories/swe-agent --format swe-agent -o sa.jsonl
      mars-bench workloads import mooncake tests/fixtures/datasets/mooncake_trace.jsonl -o mooncake.jsonl
    """


tokenizer_option = click.option(
    "--tokenizer", type=click.Path(path_type=Path), metavar="PATH",
    help="tokenizer.json or a HuggingFace model directory of the served model (exact token counts); "
         "default: an estimate of 4 characters per token.")
import_rps_option = click.option("--rps", type=click.FloatRange(min=0, min_open=True), default=swebench.DEFAULT_RPS,
                                 show_default=True, help="Arrival rate of the sessions (fixed spacing, file order).")
output_option = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
                             help="JSONL workload file to write.")


@import_group.command("swebench")
@click.option("--dataset", required=True, metavar="NAME_OR_PATH",
              help="A .parquet/.jsonl/.json file or directory of SWE-bench instances, or a hub id "
                   "(lite, verified, SWE-bench/SWE-bench_Verified, ...) when cached or downloadable.")
@click.option("--split", default="test", show_default=True, help="Dataset split.")
@click.option("--instances", metavar="IDS|FILE", help="Only these instances: comma-separated ids, or a file of ids.")
@tokenizer_option
@seed_option
@import_rps_option
@click.option("--hints/--no-hints", default=True, show_default=True, help="Append hints_text to the task.")
@click.option("--prefix-tokens", type=click.IntRange(min=0), default=swebench.AGENT_PREFIX_TOKENS, show_default=True,
              help="Shared prefix: the agent's system prompt and tool specs, in tokens.")
@output_option
def import_swebench(dataset: str, split: str, instances: str | None, tokenizer: Path | None, seed: int, rps: float,
                    hints: bool, prefix_tokens: int, output: Path) -> None:
    """Turn SWE-bench instances into a workload file: the real problem statements, tokenized, in an
    agent-shaped turn structure drawn from the `swe` preset and conditioned on each instance (repository,
    patch size, tests to run). Deterministic for a seed; see workloads/swebench.py for every assumption.

    \b
    Examples:
      mars-bench workloads import swebench --dataset tests/fixtures/swebench/instances.parquet -o swebench.jsonl
      mars-bench workloads import swebench --dataset tests/fixtures/swebench/instances.jsonl \\
          --instances django__django-11099 --seed 1 -o one.jsonl
      mars-bench workloads import swebench --dataset verified --tokenizer ~/models/Qwen3-Coder-30B-A3B -o v.jsonl
    """
    counter = load_tokenizer(tokenizer)
    found = swebench.load_instances(dataset, split, swebench.parse_instance_ids(instances))
    sessions = swebench.import_swebench(found, counter, seed=seed, rps=rps, hints=hints, prefix_tokens=prefix_tokens)
    save_sessions(sessions, output)
    console.print(f"wrote {plural(len(sessions), 'session')} ({len(found)} SWE-bench instances from {dataset}, seed {seed}; "
                  f"tokens: {counter.name}) to {output}")


@import_group.command("trajectories")
@click.argument("path", metavar="PATH")
@click.option("--format", "fmt", type=click.Choice(list(traces.FORMATS)), required=True,
              help="The agent that wrote the trajectories.")
@tokenizer_option
@seed_option
@import_rps_option
@output_option
def import_trajectories(path: str, fmt: str, tokenizer: Path | None, seed: int, rps: float, output: Path) -> None:
    """Replay recorded agent runs: per LLM call the new prompt tokens (messages since the previous call),
    the output tokens, and the tool that ran with its recorded duration (else the `swe` preset's model of
    that tool). PATH is a trajectory file or a directory searched recursively; see workloads/traces.py.

    \b
    Examples:
      mars-bench workloads import trajectories tests/fixtures/trajectories/swe-agent --format swe-agent -o sa.jsonl
      mars-bench workloads import trajectories tests/fixtures/trajectories/openhands --format openhands -o oh.jsonl
      mars-bench model make-tiny models/tiny
      mars-bench workloads import trajectories tests/fixtures/trajectories/mini-swe-agent --format mini-swe-agent \\
          --tokenizer models/tiny -o mini.jsonl
    """
    counter = load_tokenizer(tokenizer)
    sessions = traces.import_trajectories(path, fmt, counter, seed=seed, rps=rps)
    save_sessions(sessions, output)
    console.print(f"wrote {plural(len(sessions), 'session')} ({fmt} trajectories from {path}, seed {seed}; "
                  f"tokens: {counter.name}) to {output}")


# ----------------------------------------------------------------------- serving datasets and traces
def _dataset_command(fmt: str, description: str, example: str) -> None:
    """`workloads import FORMAT FILE -o OUT.jsonl` for one format of workloads.datasets (imported lazily)."""

    @import_group.command(fmt, help=f"""Import a {description} as a workload file. Traces keep their own
    timestamps (replayed by `--arrival trace`, a workload file's default); conversations arrive every
    1/--rps seconds in file order. See workloads/datasets.py for how each format maps onto sessions.

    \b
    Example:
      {example}
    """)
    @click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
    @tokenizer_option
    @click.option("--rps", type=click.FloatRange(min=0, min_open=True),
                  help=f"Arrival rate, fixed spacing in file order (default: a trace's timestamps, else "
                       f"{swebench.DEFAULT_RPS:g}).")
    @click.option("--output-tokens", type=click.IntRange(min=1), default=256, show_default=True,
                  help="Output tokens of a turn whose record gives none (AIPerf text without output_length).")
    @click.option("--think-s", type=click.FloatRange(min=0), default=0.0, show_default=True,
                  help="Conversations: the user's think time between a reply and the next message, in seconds, "
                       "where the record gives none (AIPerf turn delays are kept).")
    @output_option
    def command(path: Path, tokenizer: Path | None, rps: float | None, output_tokens: int, think_s: float,
                output: Path) -> None:
        from workloads import datasets  # noqa: PLC0415 (lazy: keep start-up fast)

        counter = load_tokenizer(tokenizer)
        skipped: list[str] = []
        sessions = datasets.import_dataset(path, fmt, counter, rps, swebench.DEFAULT_RPS, output_tokens, skipped,
                                           think_s)
        save_sessions(sessions, output)
        turns = sum(len(s.turns) for s in sessions)
        note = f"; left out {plural(len(skipped), 'failed request')} (0 response tokens)" if skipped else ""
        console.print(f"wrote {plural(len(sessions), 'session')} ({plural(turns, 'turn')}, {fmt} from {path}; "
                      f"tokens: {counter.name}{note}) to {output}")


for _fmt, _description, _example in (
    ("mooncake", "Mooncake trace (JSONL: timestamp, input_length, output_length, hash_ids)",
     "mars-bench workloads import mooncake tests/fixtures/datasets/mooncake_trace.jsonl -o mooncake.jsonl"),
    ("sharegpt", "ShareGPT conversation file (JSON: id, conversations of from/value)",
     "mars-bench workloads import sharegpt tests/fixtures/datasets/sharegpt.json -o sharegpt.jsonl"),
    ("burstgpt", "BurstGPT trace (CSV: Timestamp, Model, Request tokens, Response tokens, ...)",
     "mars-bench workloads import burstgpt tests/fixtures/datasets/burstgpt.csv -o burstgpt.jsonl"),
    ("vllm-multiturn", "vLLM benchmarks/multi_turn conversation file (JSON: id, messages of role/content)",
     "mars-bench workloads import vllm-multiturn tests/fixtures/datasets/vllm_multiturn.json -o mt.jsonl"),
    ("aiperf", "AIPerf custom dataset (JSONL: single_turn, multi_turn or mooncake_trace records)",
     "mars-bench workloads import aiperf tests/fixtures/datasets/aiperf_multi_turn.jsonl -o aiperf.jsonl"),
):
    _dataset_command(_fmt, _description, _example)
