"""Do the baselines reproduce their own papers' direction? For Continuum, InferCept, Autellix and CONCUR: the
paper's baseline and the system it claims to beat (vLLM) on a preset modelled on that paper's evaluation
(workload shape, model, GPU, arrivals: `PAPERS` below and each preset's description), at the paper's load,
over several seeds. Prints one row per claim: the paper's quoted number and metric (from
shared/reference/peers.md), the same metric measured here as mean ± 95% CI over the seeds (paired per
seed: the claimed system's figure against vLLM's on the same workload), and whether the direction is
reproduced (the whole interval above 1x). Under the table, per paper and backend, the figures of the event
log that explain the result: engine queue wait per call, prefix-cache hits on resumed turns, recomputed
tokens, preemptions and pinned sessions.

The statistics are harness.compare's (`paired_ratio`, `mean_ci`), as in policy_quality.py.

    python benchmarks/reproduction.py -j 1                                  # 4 papers x 2 backends x 5 seeds
    python benchmarks/reproduction.py --papers concur --seeds 0,1 --quick   # a small look (also the test's)
    python benchmarks/reproduction.py --out repro/                          # keep the runs (events.jsonl) for evidence
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.commands.options import DEFAULT_SEEDS, parse_seeds
from harness.compare import Estimate, format_ci, format_ratio, mean_ci, paired_ratio, run_grid
from harness.config import make_config
from harness.errors import BadInput

REFERENCE = "vllm"


@dataclass(frozen=True)
class Claim:
    text: str  # quoted from shared/reference/peers.md
    metric: str  # "throughput": this / vllm sessions per second; "jct": vllm mean JCT / this one's
    low: float  # the claimed range of the ratio ("up to X": from 1x to X)
    high: float


@dataclass(frozen=True)
class Paper:
    """One paper's evaluation, as far as the simulated testbed can model it. What follows the paper and
    what is assumed is in the preset's description and in docs/baselines.md ("Reproducing the papers")."""

    name: str
    backend: str  # the paper's system here
    workload: str  # its preset (workloads/synthetic.py)
    gpu: str
    model: str
    tp: int
    tool_cores: int
    rps: float  # the load the claim is measured at
    sessions: int  # sessions per run in the table (fewer with --quick)
    claims: tuple[Claim, ...]
    sets: tuple[str, ...] = ()


PAPERS: dict[str, Paper] = {p.name: p for p in (
    # Llama-3.1-8B as in the paper; one H100 (assumed); each agent has its own sandbox, so tools do not queue.
    Paper("continuum", "continuum-dy", "continuum-swe", "h100", "llama-3.1-8b", 1, 1024, 0.5, 100, (
        Claim("JCT 1.12-3.66x (v1-v2)", "jct", 1.12, 3.66),
        Claim("throughput 1.10-3.22x (v1-v2)", "throughput", 1.10, 3.22),
    )),
    # GPT-J-6B on one A100 as in the paper; interceptions (APIs, humans, other models) use no tool cores.
    # Throughput claims are measured as capacity: every session at t=0, sessions/s over the span.
    Paper("infercept", "infercept", "infercept-mix", "a100-80g", "gpt-j-6b", 1, 1024, math.inf, 500, (
        Claim("1.6-2x serving throughput, 2x completed requests/s", "throughput", 1.6, 2.0),
    )),
    # Llama-3.1-8B on one A100 (one engine: no load balancer); tools are functions, users and evaluators.
    Paper("autellix", "autellix", "autellix-programs", "a100-80g", "llama-3.1-8b", 1, 1024, math.inf, 600, (
        Claim("4-15x program throughput at the same latency vs vLLM", "throughput", 4.0, 15.0),
    )),
    # Qwen3-32B as in the paper, on two H100s (assumed); a batch submitted at once.
    Paper("concur", "concur", "concur-batch", "h100", "qwen3-32b", 2, 256, math.inf, 128, (
        Claim("throughput up to 4.09x (Qwen3-32B)", "throughput", 1.0, 4.09),
    )),
)}
QUICK_SESSIONS = 16
NO_DIFFERENCE = 0.01  # a paired ratio within 1% of 1x is no difference


def evidence(run_dir: Path) -> dict[str, float]:
    """Figures of one run read from its event log (`call` events of events.jsonl) and timeline."""
    calls = [e for e in (json.loads(line) for line in (run_dir / "events.jsonl").open(encoding="utf-8"))
             if e.get("kind") == "call"]
    waits = [c["first_scheduled_s"] - c["arrival_s"] for c in calls
             if c.get("first_scheduled_s") is not None and c.get("arrival_s") is not None]
    resumed = [c for c in calls if c.get("turn", 0) > 0]
    prompt = sum(c.get("prompt_tokens") or 0 for c in resumed)
    out = {
        "queue_wait_s": sum(waits) / len(waits) if waits else math.nan,
        "resumed_hit": sum(c.get("cached_tokens") or 0 for c in resumed) / prompt if prompt else math.nan,
        "recomputed_ktok": sum(c.get("recomputed_tokens") or 0 for c in calls) / 1000,
        "preemptions": float(sum(c.get("preemptions") or 0 for c in calls)),
    }
    timeline = run_dir / "timeline.parquet"
    out["pinned"] = float(pd.read_parquet(timeline, columns=["pinned"])["pinned"].mean()) if timeline.exists() else math.nan
    return out


EVIDENCE = (("queue_wait_s", "queue wait/call s"), ("resumed_hit", "resumed-turn hit"),
            ("recomputed_ktok", "recomputed ktok"), ("preemptions", "preemptions"), ("pinned", "mean pinned"))


def measured(runs: pd.DataFrame, paper: Paper, claim: Claim) -> Estimate:
    """The claim's metric, paired per seed: the paper's system against vLLM."""
    by = {b: g.set_index("seed") for b, g in runs[runs["paper"] == paper.name].groupby("backend")}
    this, ref = by[paper.backend], by[REFERENCE]
    if claim.metric == "jct":
        return paired_ratio(ref["mean_jct_s"], this["mean_jct_s"])
    return paired_ratio(this["session_throughput"], ref["session_throughput"])


def verdict(estimate: Estimate) -> str:
    """Reproduced only when the whole 95% interval is above 1x and the mean more than 1% above it (with one
    seed: the value alone); a mean within 1% of 1x is no difference."""
    if not math.isfinite(estimate.mean):
        return "-"
    ci = estimate.ci95 if math.isfinite(estimate.ci95) else 0.0
    if estimate.mean - ci > 1 and estimate.mean > 1 + NO_DIFFERENCE:
        return "yes"
    if estimate.mean + ci < 1 and estimate.mean < 1 - NO_DIFFERENCE:
        return "no (reversed)"
    return "no (within noise)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", default=",".join(PAPERS), help=f"which (default: all of {', '.join(PAPERS)})")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"seeds: a list and/or ranges (default {DEFAULT_SEEDS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SESSIONS} sessions per run instead of each paper's")
    parser.add_argument("--sessions", type=int, default=None, help="sessions per run for every paper (overrides --quick)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("-j", "--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except BadInput as e:
        parser.error(str(e))
    names = [x.strip() for x in args.papers.split(",") if x.strip()]
    unknown = [n for n in names if n not in PAPERS]
    if unknown:
        parser.error(f"unknown paper(s) {', '.join(unknown)}; known: {', '.join(PAPERS)}")

    configs, labels = [], []
    for name in names:
        paper = PAPERS[name]
        sessions = args.sessions or (QUICK_SESSIONS if args.quick else paper.sessions)
        for backend in (REFERENCE, paper.backend):
            for seed in seeds:
                configs.append(make_config(paper.sets, backend=backend, workload=paper.workload, rps=paper.rps,
                                           seed=seed, sessions=sessions, gpu=paper.gpu, model=paper.model,
                                           tp=paper.tp, tool_cores=paper.tool_cores))
                labels.append((name, backend, seed))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = run_grid(configs, root, jobs=args.jobs)
        records: list[dict[str, Any]] = []
        for (name, backend, seed), row in zip(labels, rows, strict=True):
            records.append({"paper": name, "backend": backend, "seed": seed, "run_dir": row.run_dir,
                            "mean_jct_s": row.summary.get("mean_jct_s"),
                            "session_throughput": row.summary.get("session_throughput"),
                            **evidence(Path(row.run_dir))})
    elapsed = time.perf_counter() - started
    runs = pd.DataFrame(records)
    print(f"seeds {', '.join(map(str, seeds))}, {len(configs)} runs in {elapsed:.0f} s; measured = the paper's system "
          f"against {REFERENCE} on the same workload and seed, then mean ± 95% CI over the {len(seeds)} seeds")
    print()
    print("| paper | backend vs vllm | preset, testbed, load | claim (peers.md) | measured here | in claimed range "
          "| direction reproduced |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        paper = PAPERS[name]
        sessions = args.sessions or (QUICK_SESSIONS if args.quick else paper.sessions)
        rate = "all at t=0" if math.isinf(paper.rps) else f"{paper.rps:g}/s Poisson"
        setup = f"`{paper.workload}` x {sessions}, {paper.model} on {paper.gpu}" + (
            f" x{paper.tp}" if paper.tp > 1 else "") + f", {rate}" + (
            ", no prefix cache" if "engine_args.enable_prefix_caching=false" in paper.sets else "")
        for claim in paper.claims:
            estimate = measured(runs, paper, claim)
            metric = "sessions/s ratio" if claim.metric == "throughput" else "mean JCT speedup"
            inside = "-" if not math.isfinite(estimate.mean) else (
                "yes" if claim.low <= estimate.mean <= claim.high else "no")
            print(f"| {name} | {paper.backend} | {setup} | {claim.text} | {metric} "
                  f"{format_ratio(estimate.mean, estimate.ci95)} | {inside} | {verdict(estimate)} |")
    print()
    print("Per paper and backend, mean ± 95% CI over the seeds (event log: `call` events of events.jsonl; "
          "mean pinned: timeline.parquet):")
    print()
    shown = (("mean_jct_s", "mean JCT s"), ("session_throughput", "sessions/s"), *EVIDENCE)
    print("| paper | backend | " + " | ".join(label for _, label in shown) + " |")
    print("|---|---|" + "---|" * len(shown))
    for name in names:
        for backend in (REFERENCE, PAPERS[name].backend):
            group = runs[(runs["paper"] == name) & (runs["backend"] == backend)]
            cells = []
            for key, _ in shown:
                est = mean_ci(group[key])
                cells.append(format_ci(est.mean, est.ci95))
            print(f"| {name} | {backend} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
