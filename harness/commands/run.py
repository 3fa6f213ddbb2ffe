"""`mars-bench run` (one run) and `mars-bench backends` (what can be run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.backends import BACKENDS
from harness.engines.registry import ENGINES
from harness.commands.options import json_option, results_dir_option, workload_options
from harness.config import make_config
from harness.console import console, print_json, table
from harness.engines.sim.cost_model import describe
from harness.experiment import run_experiment
from harness.metrics import summary_table_rows
from harness.engines.sim.testbed import build_profile

F = Callable[..., Any]


def hardware_options(func: F) -> F:
    """--gpu/--model/--tp/--profile: the served model and the hardware it runs on."""
    for option in reversed([
        click.option("--gpu", default="h100", show_default=True, help="GPU of the simulated testbed."),
        click.option("--model", default="qwen3-coder-30b-a3b", show_default=True, metavar="NAME|DIR",
                     help="Served model: a catalog name or a HuggingFace model directory."),
        click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel GPUs."),
        click.option("--profile", type=click.Path(dir_okay=False), help="Cost-model profile JSON (from calibrate)."),
    ]):
        func = option(func)
    return func


@click.command()
@click.option("--backend", "-b", default="vllm", show_default=True, help="Serving policy (see `mars-bench backends`).")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="sim", show_default=True, help="Engine to run on.")
@click.option("--vllm-mode", type=click.Choice(["in-process", "server"]), default="in-process", show_default=True,
              help="--engine vllm: the engine in this process, or vLLM's OpenAI server launched for the run.")
@workload_options(default="swe-smoke")
@hardware_options
@click.option("--tool-cores", type=click.IntRange(min=1), default=8, show_default=True, help="CPU cores for tools.")
@click.option("--tool-mode", type=click.Choice(["queue", "timeshare"]), default="queue", show_default=True,
              help="queue: one call per core, FIFO wait; timeshare: all start, processor sharing.")
@click.option("--base-url", help="--engine http: the OpenAI-compatible server to attach to (its --model: "
              "the served model's name, default the first it lists).")
@click.option("--api-key-env", metavar="VAR", help="--engine http: environment variable holding the API key.")
@click.option("--tokenizer", metavar="DIR", help="--engine http: the served model's tokenizer, for text-only servers.")
@click.option("--tools", "tools", type=click.Choice(["timed", "real"]), default="timed", show_default=True,
              help="timed: tool calls take their modelled time; real (--engine vllm): pinned processes do the CPU work.")
@click.option("--allow-commands", is_flag=True, help="--tools real: run the workload's recorded tool commands.")
@click.option("--cpu-stress", type=click.IntRange(min=0), default=0, show_default=True,
              help="Cores taken by background CPU stressors.")
@click.option("--gpu-share", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
              help="Share of the GPU left to the engine by a co-tenant.")
@click.option("--kv-offload-gib", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Host-memory KV tier (GiB) that retention can offload to; 0 = none.")
@click.option("--chat-rps", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Background chat requests per second sharing the engine (GPU contention, not measured).")
@click.option("--goodput", multiple=True, metavar="KEY:MS", help="vLLM-style SLOs for request goodput, e.g. ttft:500.")
@click.option("--alpha", type=float, default=3.0, show_default=True, help="Goodput: sessions with slowdown <= alpha.")
@results_dir_option
@json_option
def run(backend: str, engine: str, vllm_mode: str, workload: str, sessions: int | None, rps: float | None, arrival: str | None,
        cv: float | None, seed: int, sets: tuple[str, ...], force: bool, gpu: str, model: str, tp: int, profile: str | None,
        tool_cores: int, tool_mode: str, base_url: str | None, api_key_env: str | None, tokenizer: str | None, tools: str, allow_commands: bool, cpu_stress: int, gpu_share: float, kv_offload_gib: float, chat_rps: float, goodput: tuple[str, ...], alpha: float,
        results_dir: Path, as_json: bool) -> None:
    """Run one backend on one workload; write results/<run_id>/ and print the summary.

    `--set KEY=VALUE` reaches any run setting (e.g. engine_args.max_num_seqs=64,
    engine_args.num_gpu_blocks=2000) or, for other keys, the workload preset (e.g. turns.median=4).

    \b
    Examples:
      mars-bench run --backend vllm --workload swe-smoke
      mars-bench run --backend vllm --workload paper --rps 0.2 --seed 1
      mars-bench run -b vllm -w swe --sessions 50 --gpu h200 --tool-cores 16 --tool-mode timeshare
      mars-bench run -b vllm -w swe-smoke --set engine_args.num_gpu_blocks=1000 --json
      mars-bench run --engine http --base-url http://127.0.0.1:8000 -b mars-admission -w tiny
    """
    if kv_offload_gib:
        sets = (f"engine_args.kv_offload_gib={kv_offload_gib}", *sets)
    served_model = None
    if engine == "http" and click.get_current_context().get_parameter_source("model") != ParameterSource.DEFAULT:
        served_model, model = model, None  # on a server, --model names the served model
    config = make_config(
        sets, backend=backend, engine=engine, vllm_mode=vllm_mode, workload=workload, sessions=sessions, rps=rps, arrival=arrival, cv=cv,
        seed=seed, gpu=gpu, model=model, tp=tp, profile=profile, tool_cores=tool_cores, tool_mode=tool_mode,
        base_url=base_url, api_key_env=api_key_env, served_model=served_model, tokenizer=tokenizer,
        tools=tools, allow_commands=allow_commands, cpu_stress=cpu_stress, gpu_share=gpu_share, chat_rps=chat_rps, goodput=goodput, alpha=alpha,
        force=force,
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json) as bars:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done)

        result = run_experiment(config, results_dir, progress=progress)
    summary = result.summary.model_dump(mode="json")
    if as_json:
        print_json({"run_dir": str(result.dir), "config": config.model_dump(mode="json"), **summary})
        return
    console.print(table(f"{config.backend} on {config.engine}: {workload}", ["metric", "value"],
                        summary_table_rows(summary)))
    ran = "simulated" if config.engine == "sim" else f"ran on {config.engine}:"
    console.print(f"results: {result.dir}  ({ran} {result.stats['sim_s']:.0f} s in {result.stats['wall_s']:.1f} s)")


@click.command()
@hardware_options
@click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=8192, show_default=True)
@json_option
def backends(gpu: str, model: str, tp: int, profile: str | None, max_num_batched_tokens: int, as_json: bool) -> None:
    """List backends and engines, and the simulated testbed of --gpu x --model (KV capacity, step times).

    \b
    Examples:
      mars-bench backends
      mars-bench backends --gpu h100 --model qwen3-coder-30b-a3b
      mars-bench backends --gpu h100 --model llama-3.1-70b --tp 4 --json
    """
    config = make_config((), gpu=gpu, model=model, tp=tp, profile=profile,
                         engine_args={"max_num_batched_tokens": max_num_batched_tokens})
    testbed = describe(build_profile(config))
    if as_json:
        print_json({"backends": {n: {"description": b.description, "engines": list(b.engines)} for n, b in BACKENDS.items()},
                    "engines": {n: e.description for n, e in ENGINES.items()}, "testbed": testbed})
        return
    console.print(table("backends", ["backend", "engines", "description"],
                        [(n, ", ".join(b.engines), b.description) for n, b in BACKENDS.items()], numeric_from=9))
    console.print(table("engines", ["engine", "description"], [(n, e.description) for n, e in ENGINES.items()],
                        numeric_from=9))
    rows = [
        ("weights per GPU (GiB)", testbed["weight_bytes_per_gpu"] / 2**30),
        ("KV bytes per token", int(testbed["kv_bytes_per_token"])),
        ("KV blocks", testbed["num_kv_blocks"]), ("block size (tokens)", testbed["block_size"]),
        ("KV capacity (tokens)", testbed["kv_capacity_tokens"]),
        ("decode step, 1 seq at 8k context (ms)", testbed["decode_bs1_ctx8k_ms"]),
        ("decode step, 64 seqs at 8k context (ms)", testbed["decode_bs64_ctx8k_ms"]),
        ("prefill step, 2048 tokens (ms)", testbed["prefill_2048_ms"]),
    ]
    console.print(table(f"simulated testbed: {model} on {tp} x {gpu}", ["", "value"], rows))
