"""Option sets shared by several commands, so every command speaks the same vocabulary (DESIGN 9)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from harness.errors import BadInput
from harness.results import DEFAULT_RESULTS_DIR
from workloads.arrivals import ARRIVAL_PROCESSES
from workloads.source import MAX_SESSIONS, WorkloadRequest
from workloads.synthetic import MAX_SESSIONS_HARD

F = Callable[..., Any]

# The seed of every command that takes one: run's and workloads' --seed, sweep's --seeds, the importers'
# --seed; also the presets' and RunConfig's own. One default, so the same backend on the same workload gives
# the same numbers whichever command ran it.
DEFAULT_SEED = 0
# compare's --seeds (and the policy-quality benchmark's): five seeds, enough for a 95% confidence interval,
# starting at DEFAULT_SEED, so a compare's seed-0 runs are the runs `run` makes by default.
DEFAULT_SEEDS = f"{DEFAULT_SEED}-{DEFAULT_SEED + 4}"

seed_option = click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_SEED, show_default=True,
                           help="Random seed.")
# --sessions of every command: above MAX_SESSIONS only with --force, above MAX_SESSIONS_HARD never.
SESSIONS = click.IntRange(min=1, max=MAX_SESSIONS_HARD)
force_option = click.option("--force", is_flag=True,
                            help=f"Allow workloads of more than {MAX_SESSIONS:,} sessions.")


def seeds_option(default: str = str(DEFAULT_SEED)) -> Callable[[F], F]:
    """--seeds, parsed by `parse_seeds`."""
    return click.option("--seeds", default=default, show_default=True, metavar="LIST",
                        help="Seeds, comma-separated and/or ranges (1,2,3 or 0-4): one run per backend and seed.")


class Rate(click.ParamType):
    """An arrival rate: a positive number, or `inf` (every session at t=0, as vllm bench's --request-rate inf)."""

    name = "RATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            rate = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a positive number nor inf", param, ctx)
        if not rate > 0:  # also refuses nan
            self.fail(f"{value!r} must be > 0 (or inf)", param, ctx)
        return rate


RATE = Rate()


def load_options(func: F) -> F:
    """--max-concurrency/--warmup-sessions: how the harness, as the client, drives the system (vllm bench's
    --max-concurrency and --num-warmups)."""
    for option in reversed([
        click.option("--max-concurrency", type=click.IntRange(min=1), metavar="N",
                     help="Most sessions in flight at once; an arriving session waits for one to end "
                          "(its JCT still counts from its arrival)."),
        click.option("--warmup-sessions", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
                     help="Sessions run before the measured ones (copies of the first N), not measured."),
    ]):
        func = option(func)
    return func


def export_options(func: F) -> F:
    """--percentile-metrics/--metric-percentiles/--label/--metadata/--save-detailed/--result-format, vllm bench
    serve's reporting and export flags; the command receives them as one `exports` dict of RunConfig fields."""

    @functools.wraps(func)
    def wrapper(*args: Any, percentile_metrics: str, metric_percentiles: str, label: str | None,
                metadata: tuple[str, ...], save_detailed: bool, result_format: str, **kwargs: Any) -> Any:
        from harness.metrics import parse_metric_percentiles, parse_percentile_metrics  # noqa: PLC0415

        kwargs["exports"] = {
            "percentile_metrics": parse_percentile_metrics(percentile_metrics),
            "metric_percentiles": parse_metric_percentiles(metric_percentiles),
            "label": label, "metadata": parse_metadata(metadata), "save_detailed": save_detailed,
            "result_format": result_format,
        }
        return func(*args, **kwargs)

    for option in reversed([
        click.option("--percentile-metrics", default="ttft,tpot,itl", show_default=True, metavar="LIST",
                     help="Per-call metrics to give percentiles of: ttft, tpot, itl, e2el (vllm bench's flag)."),
        click.option("--metric-percentiles", default="99", show_default=True, metavar="LIST",
                     help="Those percentiles, comma-separated, e.g. 50,90,99.9 (vllm bench's flag)."),
        click.option("--label", help="A label for the run, kept in run.json (vllm bench's --label)."),
        click.option("--metadata", multiple=True, metavar="KEY=VALUE",
                     help="A note kept in run.json and the vLLM result (repeatable)."),
        click.option("--save-detailed", is_flag=True,
                     help="Also write calls_detailed.jsonl: one line per call with vllm bench's per-request "
                          "fields (and the per-request lists in the vLLM result)."),
        click.option("--result-format", type=click.Choice(["mars", "vllm"]), default="mars", show_default=True,
                     help="vllm: also write vllm_result.json, the JSON `vllm bench serve --save-result` writes."),
    ]):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def parse_metadata(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--metadata KEY=VALUE` items as a dict, split at the first `=` and stripped, as vllm bench does."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"--metadata: {item!r} is not KEY=VALUE")
        if key in out:
            raise BadInput(f"--metadata: {key} given twice")
        out[key] = value.strip()
    return out


# an HTTP header's name (RFC 9110 token) and a value that cannot break the request (no line breaks)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_headers(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--header KEY=VALUE` items as a dict, split at the first `=` and stripped, as `vllm bench serve` parses
    its --header; a name or value HTTP cannot carry is refused here, not mid-run."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:  # named by what comes before any ':' - the rest may be a credential
            name = item.split(":", 1)[0].strip()[:60]
            raise BadInput(f"--header {name}: not KEY=VALUE (as vllm bench serve's --header, e.g. "
                           "--header X-Priority=high)")
        if not _HEADER_NAME.fullmatch(key):
            raise BadInput(f"--header: {key!r} is not a valid header name")
        if any(c in value for c in "\r\n\0"):
            raise BadInput(f"--header {key}: the value must not hold a line break")
        if key.lower() in (k.lower() for k in out):
            raise BadInput(f"--header: {key} given twice")
        out[key] = value
    return out


def workload_options(default: str | None = "swe-smoke", seed: bool = True) -> Callable[[F], F]:
    """--workload/--sessions/--rps/--arrival/--burstiness/--cv/--seed/--set/--force. `default` None makes the source an argument;
    `seed` False leaves out --seed (for commands that take --seeds)."""

    def decorate(func: F) -> F:
        options = [
            click.option("--sessions", type=SESSIONS, help="Number of sessions (default: the preset's)."),
            click.option("--rps", type=RATE, help="Session arrival rate per second; inf: all at t=0."),
            click.option("--arrival", type=click.Choice(ARRIVAL_PROCESSES), help="Arrival process."),
            click.option("--burstiness", type=click.FloatRange(min=0, min_open=True), metavar="B",
                         help="Arrivals as vllm bench's --request-rate/--burstiness make them: gamma gaps of shape "
                              "B (CV 1/sqrt(B); 1 = Poisson, inf = fixed), rescaled to span N/rps."),
            click.option("--cv", type=click.FloatRange(min=0, min_open=True),
                         help="Gamma arrivals by the gaps' CV (shape 1/cv^2), first at t=0, not rescaled."),
            *([seed_option] if seed else []),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any preset parameter (repeatable)."),
            force_option,
        ]
        if default is None:
            options.insert(0, click.argument("workload", metavar="PRESET|FILE"))
        else:
            options.insert(0, click.option("--workload", "-w", default=default, show_default=True, metavar="PRESET|FILE",
                                           help="Workload preset name or JSONL file."))
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def workload_request(workload: str, sessions: int | None, rps: float | None, arrival: str | None,
                     cv: float | None, seed: int | None, sets: tuple[str, ...],
                     burstiness: float | None = None, force: bool = False) -> WorkloadRequest:
    return WorkloadRequest(source=workload, sessions=sessions, rps=rps, arrival=arrival, cv=cv, burstiness=burstiness,
                           seed=seed, sets=tuple(sets), force=force)


def parse_list(text: str, name: str, cast: type = str) -> list:
    """A comma-separated option value (`--backends vllm,mars`, `--seeds 1,2,3`) as a list of `cast`."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise BadInput(f"{name}: give a comma-separated list")
    repeated = sorted({x for x in items if items.count(x) > 1})
    if repeated:
        raise BadInput(f"{name}: {', '.join(repeated)} given more than once")
    try:
        return [cast(x) for x in items]
    except ValueError:
        raise BadInput(f"{name}: {text!r} is not a comma-separated list of {cast.__name__}s") from None


def parse_seeds(text: str, name: str = "--seeds") -> list[int]:
    """Seeds as a comma-separated list of integers and inclusive ranges: `1,2,3`, `0-4`, `0-2,7`. A seed given
    twice is refused (a paired comparison matches runs by seed)."""
    seeds: list[int] = []
    for item in parse_list(text, name):
        low, sep, high = item.partition("-")
        try:
            seeds += list(range(int(low), int(high) + 1)) if sep and low else [int(item)]
        except ValueError:
            raise BadInput(f"{name}: {item!r} is neither a seed nor a range like 0-4") from None
        if sep and low and int(high) < int(low):
            raise BadInput(f"{name}: the range {item!r} is empty (write the lower seed first)")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise BadInput(f"{name}: seed {', '.join(map(str, repeated))} given more than once")
    return seeds


results_dir_option = click.option(
    "--results-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RESULTS_DIR,
    show_default=True, help="Where runs are written.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
