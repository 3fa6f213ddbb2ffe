"""Policy quality on the `paper` preset: every baseline, MARS and its ablations at several arrival rates, on
identical workloads and seeds (5 by default). Prints, per load and backend, mean JCT, p95 JCT, throughput,
goodput and "x of bound" (mean JCT / the physical bound, harness.bound) as mean ± 95% confidence interval
over the seeds, the speedup against vllm, and per load "mars vs
best baseline": the baseline with the lowest mean JCT, its JCT / MARS's paired per seed (mean ± 95% CI), and
MARS's throughput against the highest baseline throughput, also paired per seed. The statistics are
harness.compare's (`comparison`, `paired_ratio`), the same as `mars-bench compare`.

Targets (issue #17): MARS the lowest mean JCT at every load with >= 95% of the best throughput; >= 1.5x
lower than the best baseline at 0.2 and 0.25/s; never more than 2% worse than vllm at light load.

    python benchmarks/policy_quality.py                       # 6 loads x 16 variants x 5 seeds = 480 runs
    python benchmarks/policy_quality.py --rps 0.2 --seeds 0-2 --variants vllm,continuum-dy,mars -j 1
    python benchmarks/policy_quality.py --rps 0.2 --seeds 0,1 --variants vllm,mars --sessions 40   # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.commands.options import DEFAULT_SEEDS, parse_seeds
from harness.compare import (
    comparison,
    format_ci,
    format_ratio,
    mean_ci,
    paired_ratio,
    run_grid,
    runs_frame,
)
from harness.config import make_config
from harness.errors import BadInput

# label -> (backend, --set overrides). Baselines first, then MARS, then its ablations.
BASELINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "vllm": ("vllm", ()),
    "sglang": ("sglang", ()),
    "continuum": ("continuum", ()),
    "continuum-dy": ("continuum-dy", ()),
    "autellix": ("autellix", ()),
    "infercept": ("infercept", ()),
    "concur": ("concur", ()),
}
MARS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mars": ("mars", ()),
    "mars-preview": ("mars-preview", ()),
    "mars admission=off": ("mars", ("mars.admission=false",)),
    "mars scheduler=fcfs": ("mars", ("mars.scheduler=fcfs",)),
    "mars chunk_shrink=off": ("mars", ("mars.chunk_shrink=false",)),
    "mars retention=lru": ("mars", ("mars.retention=lru",)),
    "mars retention=off": ("mars", ("mars.retention=off",)),
    "mars tool_order=fifo": ("mars", ("mars.tool_order=fifo",)),
    "mars long_lane=0": ("mars", ("mars.long_lane=0",)),
}
VARIANTS = {**BASELINES, **MARS}
LOADS = "0.05,0.1,0.15,0.2,0.25,0.3"
SHOWN = (("mean_jct_s", "mean JCT s"), ("p95_jct_s", "p95 JCT s"), ("session_throughput", "sessions/s"),
         ("goodput", "goodput/s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="paper")
    parser.add_argument("--rps", default=LOADS, help=f"arrival rates (default {LOADS})")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS,
                        help=f"seeds: a list and/or ranges (default {DEFAULT_SEEDS})")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="labels of VARIANTS (default: all)")
    parser.add_argument("--sessions", type=int, default=None, help="sessions per run (default: the preset's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    args = parser.parse_args()
    try:
        rates = [float(x) for x in args.rps.split(",")]
        seeds = parse_seeds(args.seeds)
    except (ValueError, BadInput) as e:
        parser.error(str(e))
    names = [x.strip() for x in args.variants.split(",") if x.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

    configs, labels = [], []
    for rps in rates:
        for name in names:
            backend, sets = VARIANTS[name]
            for seed in seeds:
                configs.append(make_config((*args.sets, *sets), backend=backend, workload=args.workload, rps=rps,
                                           seed=seed, sessions=args.sessions))
                labels.append((rps, name))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_grid(configs, Path(tmp), jobs=args.jobs)
    elapsed = time.perf_counter() - started
    runs = runs_frame(rows)
    runs["x_of_bound"] = [r.summary.get("x_of_bound") for r in rows]
    runs["rps"] = [rps for rps, _ in labels]
    runs["backend"] = [name for _, name in labels]  # the variant label: ablations are backends of their own here
    print(f"workload {args.workload}, seeds {', '.join(map(str, seeds))}, {len(configs)} runs in {elapsed:.0f} s; "
          f"values are mean ± 95% confidence interval over the {len(seeds)} seeds (Student t), "
          "speedups and ratios paired per seed")
    reference = "vllm" if "vllm" in names else None
    for rps in rates:
        at = runs[runs["rps"] == rps]
        table = comparison(at, reference)
        width = max(len(n) for n in names)
        print(f"\n{rps}/s")
        header = f"  {'backend':<{width}}  " + "  ".join(f"{label:>16}" for _, label in SHOWN)
        if reference:
            header += f"  {'speedup vs vllm':>16}"
        header += f"  {'x of bound':>14}"
        print(header)
        for _, row in table.iterrows():
            line = f"  {row['backend']:<{width}}  " + "  ".join(
                f"{format_ci(row[k], row[f'{k}_ci95']):>16}" for k, _ in SHOWN)
            if reference:
                line += f"  {format_ratio(row['speedup_vs_vllm'], row['speedup_vs_vllm_ci95']):>16}"
            bound = mean_ci(at.loc[at["backend"] == row["backend"], "x_of_bound"])
            line += f"  {format_ratio(bound.mean, bound.ci95):>14}"
            print(line)
        print("  " + mars_vs_best(at, table, names))


def mars_vs_best(runs: pd.DataFrame, table: pd.DataFrame, names: list[str]) -> str:
    """MARS against the baseline with the lowest mean JCT (JCT ratio) and the one with the highest throughput
    (throughput ratio), both paired per seed."""
    baselines = table[table["backend"].isin([n for n in names if n in BASELINES])]
    if "mars" not in names or baselines.empty:
        return "mars vs best baseline: needs mars and at least one baseline among --variants"
    by_seed = {b: g.set_index("seed") for b, g in runs.groupby("backend")}
    mars = by_seed["mars"]
    fastest = baselines.loc[baselines["mean_jct_s"].idxmin(), "backend"]
    busiest = baselines.loc[baselines["session_throughput"].idxmax(), "backend"]
    speedup = paired_ratio(by_seed[fastest]["mean_jct_s"], mars["mean_jct_s"])
    throughput = paired_ratio(mars["session_throughput"], by_seed[busiest]["session_throughput"])
    return (f"mars vs best baseline: speedup {format_ratio(speedup.mean, speedup.ci95)} over {fastest} (lowest "
            f"baseline mean JCT, {by_seed[fastest]['mean_jct_s'].mean():.1f} s); throughput "
            f"{format_ratio(throughput.mean, throughput.ci95)} of {busiest}'s (highest baseline throughput)")


if __name__ == "__main__":
    main()
