"""`mars-bench run` (one run) and `mars-bench backends` (what can be run)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from harness.backends import BACKENDS
from harness.engines.registry import ENGINES
from harness.commands.options import (export_options, json_option, load_options, parse_headers,
                                      results_dir_option, workload_options)
from harness.config import make_config
from harness.console import ProgressReport, console, plural, print_json, table
from harness.engines.sim.cost_model import describe
from harness.experiment import run_experiment
from harness.metrics import percentile_word, with_vllm_names
from harness.results import load_run
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


def _finite(value: float) -> float:
    if math.isnan(value):  # FloatRange lets NaN through (no comparison with NaN fails)
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@click.command()
@click.option("--backend", "-b", default="vllm", show_default=True, help="Serving policy (see `mars-bench backends`).")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="sim", show_default=True, help="Engine to run on.")
@click.option("--vllm-mode", type=click.Choice(["in-process", "server"]), default="in-process", show_default=True,
              help="--engine vllm: the engine in this process, or vLLM's OpenAI server launched for the run.")
@workload_options(default="swe-smoke")
@load_options
@hardware_options
@click.option("--tool-cores", type=click.IntRange(min=1), default=8, show_default=True, help="CPU cores for tools.")
@click.option("--tool-mode", type=click.Choice(["queue", "timeshare"]), default="queue", show_default=True,
              help="queue: one call per core, FIFO wait; timeshare: all start, processor sharing.")
@click.option("--base-url", "base_urls", multiple=True, metavar="URL",
              help="--engine http: the OpenAI-compatible server to attach to (its --model: the served model's name, "
                   "default the first it lists); repeat it for replicas of one model.")
@click.option("--routing", type=click.Choice(["session", "round-robin"]), default="session", show_default=True,
              help="--engine http with several --base-url: a session stays on one replica (its prefix cache), or "
                   "each call goes to the next.")
@click.option("--endpoint", type=click.Choice(["completions", "chat"]), default="completions", show_default=True,
              help="--engine http/sglang, --vllm-mode server: /v1/completions (token-id prompts) or "
                   "/v1/chat/completions (the session's messages and tools).")
@click.option("--header", "headers", multiple=True, metavar="KEY=VALUE",
              help="--engine http/sglang, --vllm-mode server: a header sent with every request (repeatable); "
                   "{session_id} in VALUE is the call's session.")
@click.option("--api-key-env", metavar="VAR", help="--engine http: environment variable holding the API key.")
@click.option("--tokenizer", metavar="DIR", help="--engine http: the served model's tokenizer, for text-only servers.")
@click.option("--prompt-format", type=click.Choice(["auto", "ids", "text"]), default="auto", show_default=True,
              help="--engine http, /v1/completions: prompts as token ids, or as text of exactly their token count "
                   "(--tokenizer; as `vllm bench serve` sends them, the server tokenizing); auto: ids if the server "
                   "takes them.")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True, max=1e9), default=600.0,
              show_default=True, metavar="S", callback=lambda ctx, param, value: _finite(value),
              help="--engine http/sglang, --vllm-mode server: a call not ended within S seconds is a failed call.")
@click.option("--tools", "tools", type=click.Choice(["timed", "real"]), default="timed", show_default=True,
              help="timed: tool calls take their modelled time; real (--engine vllm): pinned processes do the CPU work.")
@click.option("--allow-commands", is_flag=True, help="--tools real: run the workload's recorded tool commands "
              "(each in a temporary directory, under the limits below, every process it starts killed at its end).")
@click.option("--tool-limit-factor", type=click.FloatRange(min=1), default=4.0, show_default=True,
              help="--tools real: a call is killed after FACTOR x its declared CPU seconds + the floor, of CPU or "
                   "wall time (and counts as a failed tool call).")
@click.option("--tool-limit-floor", type=click.FloatRange(min=0, max=86400, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS", help="--tools real: seconds every call gets on top of the factor.")
@click.option("--tool-memory-gib", type=click.FloatRange(min=0, max=4096, min_open=True), default=2.0,
              show_default=True, help="--tools real: address-space limit of each tool process.")
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
@export_options
@results_dir_option
@json_option
def run(backend: str, engine: str, vllm_mode: str, workload: str, sessions: int | None, rps: float | None, arrival: str | None,
        burstiness: float | None, cv: float | None, seed: int, max_concurrency: int | None, warmup_sessions: int, sets: tuple[str, ...], force: bool, gpu: str, model: str, tp: int, profile: str | None,
        tool_cores: int, tool_mode: str, base_urls: tuple[str, ...], routing: str, endpoint: str, headers: tuple[str, ...], api_key_env: str | None, tokenizer: str | None, prompt_format: str, request_timeout: float, tools: str, allow_commands: bool, tool_limit_factor: float, tool_limit_floor: float, tool_memory_gib: float, cpu_stress: int, gpu_share: float, kv_offload_gib: float, chat_rps: float, goodput: tuple[str, ...], alpha: float,
        results_dir: Path, as_json: bool, exports: dict[str, Any]) -> None:
    """Run one backend on one workload; write results/<run_id>/ and print the summary.

    `--set KEY=VALUE` reaches any run setting (e.g. engine_args.max_num_seqs=64,
    engine_args.num_gpu_blocks=2000) or, for other keys, the workload preset (e.g. turns.median=4).

    \b
    Examples:
      mars-bench run --backend vllm --workload swe-smoke
      mars-bench run --backend vllm --workload paper --rps 0.2 --seed 1
      mars-bench run -b vllm -w swe-smoke --rps inf --max-concurrency 4 --warmup-sessions 2
      mars-bench run -b mars -w paper --sessions 100 --rps 0.2 --burstiness 0.5
      mars-bench run -b vllm -w swe --sessions 50 --gpu h200 --tool-cores 16 --tool-mode timeshare
      mars-bench run -b vllm -w swe-smoke --set engine_args.num_gpu_blocks=1000 --json
      mars-bench run -b vllm -w swe-smoke --metric-percentiles 50,99 --result-format vllm --save-detailed
      mars-bench run --engine http --base-url http://127.0.0.1:8000 -b mars-admission -w tiny
      mars-bench run --engine http --base-url http://127.0.0.1:8000 --endpoint chat --tokenizer models/tiny -w tiny
    """
    if kv_offload_gib:
        sets = (f"engine_args.kv_offload_gib={kv_offload_gib}", *sets)
    served_model = None
    if engine == "http" and click.get_current_context().get_parameter_source("model") != ParameterSource.DEFAULT:
        served_model, model = model, None  # on a server, --model names the served model
    config = make_config(
        sets, backend=backend, engine=engine, vllm_mode=vllm_mode, workload=workload, sessions=sessions, rps=rps, arrival=arrival, cv=cv,
        burstiness=burstiness, max_concurrency=max_concurrency, warmup_sessions=warmup_sessions, seed=seed, gpu=gpu, model=model, tp=tp, profile=profile, tool_cores=tool_cores, tool_mode=tool_mode,
        base_url=base_urls[0] if base_urls else None, more_base_urls=base_urls[1:], routing=routing,
        endpoint=endpoint, headers=parse_headers(headers), api_key_env=api_key_env, served_model=served_model,
        tokenizer=tokenizer, prompt_format=prompt_format,
        request_timeout=request_timeout, tools=tools, allow_commands=allow_commands, cpu_stress=cpu_stress,
        tool_limits={"factor": tool_limit_factor, "floor_s": tool_limit_floor, "memory_gib": tool_memory_gib}, gpu_share=gpu_share, chat_rps=chat_rps, goodput=goodput, alpha=alpha,
        force=force, **exports,
    )
    if config.allow_commands and config.tools == "real":
        limits = config.tool_limits
        click.echo(f"mars-bench: warning: --allow-commands runs the shell commands recorded in {config.workload} "
                   f"on this machine (each limited to {limits.factor:g} x its CPU seconds + {limits.floor_s:g} s, "
                   f"{limits.memory_gib:g} GiB)", err=True)
    with ProgressReport("run", "sessions", enabled=not as_json) as progress:
        result = run_experiment(config, results_dir, progress=progress.update)
    summary = {**result.summary.model_dump(mode="json"), **result.bounds}
    record = load_run(result.dir)
    if record.noisy:
        click.echo(f"mars-bench: warning: the host was oversubscribed during this run ({record.host_load()}): "
                   f"it is marked noisy and `report` does not rank it", err=True)
    load = result.stats.get("load_controls")
    if as_json:
        print_json({"run_dir": str(result.dir), "config": config.model_dump(mode="json"), **summary,
                    **({"load_controls": load} if load else {})})
        return
    click.echo(f"{config.backend} on {config.engine}: {workload}")
    click.echo("\n".join(result_lines(summary)))
    if "tool_calls_failed" in result.stats:
        from harness.commands.results import tool_failures  # noqa: PLC0415

        console.print(f"tool calls failed: {tool_failures(result.stats)}")
    if load:
        console.print(load_text(load))
    ran = "simulated" if config.engine == "sim" else f"ran on {config.engine}:"
    console.print(f"results: {result.dir}  ({ran} {result.stats['sim_s']:.0f} s in {result.stats['wall_s']:.1f} s)")


# `vllm bench serve`'s result block (vllm/benchmarks/serve.py): a 50-wide title, `{:<40} {:<10}` rows
_WIDTH = 50
_LATENCIES = (("ttft", "TTFT", "Time to First Token"), ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
              ("itl", "ITL", "Inter-token Latency"), ("e2el", "E2EL", "End-to-end Latency"))


def _row(label: str, value: Any, unit: str = "") -> str:
    """One `{:<40} {:<10}` row; a float to 2 decimals, an undefined figure as `-`."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.2f}"
    else:
        text = str(value)
    return "{:<40} {:<10}".format(label, text + unit).rstrip()


def _float(value: Any) -> Any:
    """vLLM prints its peak concurrency with `{:<10.2f}`."""
    return float(value) if isinstance(value, int) else value


def _heading(title: str, fill: str = "-") -> str:
    return "{s:{c}^{n}}".format(s=title, c=fill, n=_WIDTH)


def result_lines(summary: Mapping[str, Any]) -> list[str]:
    """A run's summary as `vllm bench serve` prints its result: the per-call figures in its block layout and
    labels (a call is vLLM's request), a block per chosen --percentile-metrics with a row per chosen
    --metric-percentiles, then the agent sessions' figures in the same layout."""
    s = with_vllm_names(summary)
    lines = [
        _heading(" Serving Benchmark Result ", "="),
        _row("Successful requests:", s.get("completed")),
        _row("Failed requests:", s.get("failed", 0)),
        _row("Benchmark duration (s):", s.get("duration")),
        _row("Total input tokens:", s.get("total_input_tokens")),
        _row("Total generated tokens:", s.get("total_output_tokens")),
        _row("Request throughput (req/s):", s.get("request_throughput")),
    ]
    if s.get("goodput_slo"):
        lines.append(_row("Request goodput (req/s):", s.get("request_goodput")))
    lines += [
        _row("Output token throughput (tok/s):", s.get("output_throughput")),
        _row("Peak output token throughput (tok/s):", s.get("max_output_tokens_per_s")),
        _row("Peak concurrent requests:", _float(s.get("max_concurrent_requests"))),
        _row("Total token throughput (tok/s):", s.get("total_token_throughput")),
    ]
    chosen = s.get("percentile_metrics")
    percentiles = s.get("metric_percentiles")
    for key, name, header in _LATENCIES:
        if chosen is not None and key not in chosen:
            continue
        lines += [_heading(header), _row(f"Mean {name} (ms):", s.get(f"mean_{key}_ms")),
                  _row(f"Median {name} (ms):", s.get(f"median_{key}_ms"))]
        words = [percentile_word(float(p)) for p in percentiles] if percentiles is not None else ["99"]
        lines += [_row(f"P{word} {name} (ms):", s.get(f"p{word}_{key}_ms")) for word in words]
    alpha = s.get("goodput_alpha")
    hit = s.get("prefix_cache_hit_rate")
    good = s.get("goodput_fraction")
    reasons = "; ".join(s.get("invalid_reasons") or [])
    lines += [
        _heading("Agent Sessions"),
        # `.ci/run` greps the demo's output for "sessions completed .* 8/8"
        _row("Agent sessions completed / arrived:", f"{s.get('completed_sessions', 0)}/{s.get('num_sessions', 0)}"),
        _row("Mean JCT (s):", s.get("mean_jct_s")),
        _row("Median JCT (s):", s.get("median_jct_s")),
        _row("P95 JCT (s):", s.get("p95_jct_s")),
        _row("P99 JCT (s):", s.get("p99_jct_s")),
        _row("Bound on mean JCT (s):", s.get("bound_mean_jct_s")),
        _row("Mean JCT, x of bound:", s.get("x_of_bound"), "x" if s.get("x_of_bound") is not None else ""),
        _row("Mean slowdown (x isolated JCT):", s.get("mean_slowdown")),
        _row("Session throughput (sessions/s):", s.get("session_throughput")),
        _row("  bound: GPU or tool pool (sessions/s):", s.get("throughput_bound")),
        _row("  tool pool: busy cores offered / cores:", _offered(s)),
        _row(f"Goodput (sessions/s, slowdown <= {alpha:g}):" if alpha is not None else "Goodput (sessions/s):",
             s.get("goodput")),
        _row("Good sessions (%):", None if good is None else good * 100),
        _row("Prefix cache hit rate (%):", None if hit is None else hit * 100),
        _row("  bound: Bélády, this call order (%):", _percent(s.get("belady_prefix_hit_rate"))),
        _row("  bound: infinite cache (%):", _percent(s.get("ideal_prefix_hit_rate"))),
        _row("Preemptions:", s.get("preemptions")),
        _row("Mean tool wait (s):", s.get("mean_tool_wait_s")),
        _row("Mean admission wait (s):", s.get("mean_admission_wait_s")),
        _row("Valid run:", "yes" if s.get("valid") else f"no{': ' + reasons if reasons else ''}"),
        "=" * _WIDTH,
    ]
    return lines


def _percent(rate: float | None) -> float | None:
    return None if rate is None else rate * 100


def _offered(s: Mapping[str, Any]) -> str | None:
    """`9.72 / 8` (busy cores the arrival rate asks of the tool pool / its cores), None when unknown."""
    offered, workers = s.get("tool_offered_cores"), s.get("tool_workers")
    return None if offered is None or workers is None else f"{offered:.2f} / {workers}"


def load_text(load: dict[str, Any]) -> str:
    """The load controls' line under a run's summary: what was warm-up, how far the concurrency cap bit."""
    parts = []
    if load.get("warmup_sessions"):
        parts.append(f"{plural(load['warmup_sessions'], 'warm-up session')} run first and not measured "
                     f"(measured arrivals start at {load['warmup_end_s']:.1f} s)")
    if load.get("max_concurrency") is not None:
        parts.append(f"at most {load['max_concurrency']} sessions in flight (reached {load['max_sessions_in_flight']})")
    return "load: " + "; ".join(parts)


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
