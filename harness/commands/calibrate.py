"""`mars-bench calibrate`: fit the sim's cost model to a real engine and write a profile for `--profile`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from harness.calibrate import FITTED, Interrupted, calibrate_engine, samples_frame
from harness.commands.extras import require_extra
from harness.config import make_config
from harness.console import ProgressReport, console, print_json, table
from harness.results import DEFAULT_RESULTS_DIR


@click.command()
@click.option("--engine", type=click.Choice(["vllm"]), default="vllm", show_default=True, help="Engine to measure.")
@click.option("--model", required=True, metavar="DIR|HUB_ID", help="The model the engine serves.")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Profile JSON to write (load it with `--profile`).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Engine settings as for `run`, e.g. engine_args.block_size=32 (repeatable).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Times each batch runs (the fit takes the median).")
@click.option("--samples", type=click.Path(dir_okay=False, path_type=Path), help="Also write every measured step (CSV).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def calibrate(engine: str, model: str, out: Path, sets: tuple[str, ...], repeats: int, samples: Path | None,
              as_json: bool) -> None:
    """Measure controlled batches on the real engine and fit the cost model's coefficients to them.

    Prefills of several sizes, chunked long prompts, decode batches of several sizes and context lengths,
    and decodes mixed with a prefill each run on the engine; every step's time is fitted by least squares.
    The profile carries the fitted coefficients and the engine's KV block count and block size: runs with
    `--profile FILE` simulate this engine, and real runs with it report slowdown and goodput. Nothing is
    written (exit 1) when the repeats of a batch disagree or a fitted coefficient is unphysical - the marks
    of a loaded machine. Progress: steps measured of those planned, with an ETA (a plain line every 15 s
    when stdout is not a terminal); Ctrl-C keeps the steps measured so far in the --samples file (else
    OUT.partial-samples.csv) and writes no profile.

    \b
    Examples:
      mars-bench model make-tiny models/tiny
      mars-bench calibrate --model models/tiny -o tiny-cpu.json --samples steps.csv \\
          --set engine_args.num_gpu_blocks=50 --set engine_args.block_size=32
      mars-bench run -b mars -w tiny --model models/tiny --profile tiny-cpu.json \\
          --set engine_args.num_gpu_blocks=50 --set engine_args.block_size=32
    """
    config = make_config(sets, engine=engine, model=model)
    require_extra("calibrate", ("scipy",), "mars-bench calibrate (its least-squares fit)")
    started = time.perf_counter()
    if not as_json:
        click.echo("[calibrate] starting the engine (its start-up lines follow; minutes on a CPU)")
    try:
        with ProgressReport("calibrate", "steps", enabled=not as_json) as progress:
            result = calibrate_engine(config, DEFAULT_RESULTS_DIR / ".cache" / "vllm", repeats=repeats,
                                      progress=progress.update)
    except Interrupted as stop:
        keep = samples or out.with_name(out.name + ".partial-samples.csv")
        keep.parent.mkdir(parents=True, exist_ok=True)
        samples_frame(None, stop.samples).to_csv(keep, index=False)
        click.echo(f"interrupted after {stop.timed} of ~{stop.planned} steps: no profile written; the "
                   f"{len(stop.samples)} steps measured are in {keep}")
        raise

    profile, measured = result.profile, result.samples
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(out)
    if samples is not None:
        samples_frame(profile, measured).to_csv(samples, index=False)
    elapsed = time.perf_counter() - started
    geometry = {k: getattr(profile, k) for k in ("num_gpu_blocks", "block_size", "max_num_batched_tokens")}
    if as_json:
        print_json({"profile": str(out), "elapsed_s": elapsed, "steps": len(measured), "geometry": geometry,
                    "fitted": {k: getattr(profile, k) for k in (*FITTED, "idle_wake_s")}, "errors": result.errors,
                    "host_load": result.host_load})
        return
    console.print(table("fitted coefficients", ["coefficient", "value"],
                        [(k, getattr(profile, k)) for k in (*FITTED, "idle_wake_s")]))
    console.print(table(f"fit error per kind of step ({len(measured)} steps measured; the fit uses each batch's median)",
                        ["kind", "batches", "mean |err| %", "p90 |err| %", "max |err| %"],
                        [(k, v["steps"], v["mean_abs_pct"], v["p90_abs_pct"], v["max_abs_pct"])
                         for k, v in result.errors.items()]))
    if result.host_load.get("noisy"):
        click.echo(f"mars-bench: warning: other processes took {result.host_load['others_cpus']:.2f} of "
                   f"{result.host_load['cpus']} CPUs during the calibration: its timings may be theirs", err=True)
    console.print(f"wrote {out} ({geometry['num_gpu_blocks']} KV blocks of {geometry['block_size']} tokens) "
                  f"in {elapsed:.1f} s; simulate this engine with --profile {out}")

