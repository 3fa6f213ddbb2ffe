"""Policy quality on the `paper` preset: vllm, mars, mars-preview and each MARS ablation at several
arrival rates, on identical workloads and seeds. Prints mean/p95 JCT, throughput, goodput and the
ratios to vllm at each rate.

Targets (issue #5): at the highest-pressure rate MARS's mean JCT >= 3x lower than vllm's with throughput
>= 95% of vllm's; at light load never more than 5% worse than vllm.

    python benchmarks/policy_quality.py [--rps 0.05,0.1,0.2,0.3] [--seeds 1] [-j 2] [--workload paper]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.compare import run_grid, runs_frame
from harness.config import RunConfig
from mars_impl.mars import MarsSettings

VARIANTS: dict[str, tuple[str, dict]] = {
    "vllm": ("vllm", {}),
    "mars": ("mars", {}),
    "mars-preview": ("mars-preview", {}),
    "mars admission=off": ("mars", {"admission": False}),
    "mars scheduler=fcfs": ("mars", {"scheduler": "fcfs"}),
    "mars chunk_shrink=off": ("mars", {"chunk_shrink": False}),
    "mars retention=lru": ("mars", {"retention": "lru"}),
    "mars retention=off": ("mars", {"retention": "off"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="paper")
    parser.add_argument("--rps", default="0.05,0.1,0.2,0.3")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("-j", "--jobs", type=int, default=2)
    args = parser.parse_args()
    rates = [float(x) for x in args.rps.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    names = args.variants.split(",")

    configs, labels = [], []
    for rps in rates:
        for name in names:
            backend, mars = VARIANTS[name]
            for seed in seeds:
                configs.append(RunConfig(backend=backend, workload=args.workload, rps=rps, seed=seed,
                                         mars=MarsSettings(**mars)))
                labels.append((rps, name))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_grid(configs, Path(tmp), jobs=args.jobs)
    elapsed = time.perf_counter() - started
    runs = runs_frame(rows)
    runs["rps"] = [rps for rps, _ in labels]
    runs["variant"] = [name for _, name in labels]
    table = runs.groupby(["rps", "variant"], sort=False)[
        ["mean_jct_s", "p95_jct_s", "session_throughput", "goodput", "prefix_cache_hit_rate", "preemptions"]
    ].mean().reset_index()
    base = table[table["variant"] == "vllm"].set_index("rps")
    table["jct_speedup"] = [base.loc[r, "mean_jct_s"] / j for r, j in zip(table["rps"], table["mean_jct_s"])]
    table["throughput_ratio"] = [t / base.loc[r, "session_throughput"] for r, t in zip(table["rps"], table["session_throughput"])]
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    print(f"workload {args.workload}, seeds {seeds}, {len(configs)} runs in {elapsed:.0f} s")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"))
    top = max(rates)
    mars_top = table[(table["rps"] == top) & (table["variant"] == "mars")].iloc[0]
    light = table[(table["rps"] == min(rates)) & (table["variant"] == "mars")].iloc[0]
    print(f"\nat {top}/s: mars mean JCT {mars_top['jct_speedup']:.2f}x lower than vllm (target >= 3x), "
          f"throughput {100 * mars_top['throughput_ratio']:.1f}% of vllm's (target >= 95%)")
    print(f"at {min(rates)}/s: mars mean JCT {100 * (1 / light['jct_speedup'] - 1):+.1f}% vs vllm (target <= +5%)")


if __name__ == "__main__":
    main()
