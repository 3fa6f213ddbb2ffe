"""Fidelity of the sim to a real engine: the same workload, backend and seed on both, compared run-level
(errors of mean / p95 JCT, mean TTFT, throughput; rank correlation of per-session JCT) and event-level
(per-call timelines side by side, for finding which mechanism the sim gets wrong)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import make_config
from harness.results import RunRecord, load_run

# Run-level figures compared: (name, how it is computed from a run).
FIGURES = ("mean_jct_s", "p95_jct_s", "mean_ttft_s", "session_throughput")


def run_figures(run: RunRecord) -> dict[str, float]:
    """The compared figures of one run: its own summary's (the same code for both engines)."""
    summary = run.summary() or {}
    ttft_ms = summary.get("mean_ttft_ms")
    return {"mean_jct_s": _number(summary.get("mean_jct_s")), "p95_jct_s": _number(summary.get("p95_jct_s")),
            "mean_ttft_s": _number(ttft_ms) / 1000, "session_throughput": _number(summary.get("session_throughput"))}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def session_jcts(run: RunRecord) -> pd.Series:
    sessions = run.sessions().set_index("session_id")
    return (sessions["finish_s"] - sessions["arrival_s"])[sessions["completed"]]


def compare_runs(real_dir: Path, sim_dir: Path) -> dict[str, Any]:
    """Per figure: real, sim and the sim's relative error (sim / real - 1); the Spearman correlation of
    per-session JCT over the sessions both completed."""
    real, sim = load_run(real_dir), load_run(sim_dir)
    a, b = run_figures(real), run_figures(sim)
    out: dict[str, Any] = {}
    for name in FIGURES:
        out[name] = {"real": a[name], "sim": b[name], "error": b[name] / a[name] - 1 if a[name] else math.nan}
    both = pd.concat([session_jcts(real).rename("real"), session_jcts(sim).rename("sim")], axis=1).dropna()
    out["session_jct_spearman"] = float(both["real"].corr(both["sim"], method="spearman")) if len(both) > 2 else math.nan
    return out


def side_by_side(real_dir: Path, sim_dir: Path) -> pd.DataFrame:
    """One row per call (session, turn) with the real and simulated arrival, first schedule, first token and
    finish, and the sim's error of its queueing, TTFT and end-to-end latency (seconds; sim - real)."""
    keys = ["session_id", "turn"]
    columns = ["arrival_s", "first_scheduled_s", "first_token_s", "finish_s", "prompt_tokens", "cached_tokens",
               "preemptions"]
    real = load_run(real_dir).calls()[keys + columns].set_index(keys)
    sim = load_run(sim_dir).calls()[keys + columns].set_index(keys)
    both = pd.merge(real, sim, left_index=True, right_index=True, how="outer", suffixes=("_real", "_sim"))
    both = both.sort_values("arrival_s_real")
    for side in ("real", "sim"):
        both[f"queue_s_{side}"] = both[f"first_scheduled_s_{side}"] - both[f"arrival_s_{side}"]
        both[f"ttft_s_{side}"] = both[f"first_token_s_{side}"] - both[f"arrival_s_{side}"]
        both[f"e2e_s_{side}"] = both[f"finish_s_{side}"] - both[f"arrival_s_{side}"]
    for what in ("queue_s", "ttft_s", "e2e_s"):
        both[f"{what}_error"] = both[f"{what}_sim"] - both[f"{what}_real"]
    return both.reset_index()


def same_ranking(mean_jct: Mapping[str, Mapping[str, float]], tie: float = 0.02) -> bool | None:
    """Whether the engines order the backends alike by mean JCT ({engine: {backend: mean JCT}}); None when
    an engine cannot tell the backends apart (within `tie`, relative), so there is no order to compare."""
    orders = []
    for per_backend in mean_jct.values():
        values = sorted(per_backend.values())
        if any(b <= a * (1 + tie) for a, b in zip(values, values[1:])):
            return None
        orders.append(sorted(per_backend, key=per_backend.__getitem__))
    return all(order == orders[0] for order in orders)


def mean_abs(values: Sequence[float]) -> float:
    finite = [abs(v) for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def fidelity_runs(model: str, profile: Path, backends: Sequence[str], seeds: Sequence[int], sets: Sequence[str],
                  results_dir: Path, workload: str = "tiny", loads: Sequence[float | None] = (None,)) -> pd.DataFrame:
    """Each load x seed x backend on the real engine and on the sim with `profile`: one row per pair with
    every figure's real and simulated value and error, the per-session rank correlation, and both run dirs."""

    from harness.experiment import run_experiment  # noqa: PLC0415

    rows = []
    for rps, seed, backend in itertools.product(loads, seeds, backends):
        dirs = {}
        for engine in ("vllm", "sim"):
            config = make_config(tuple(sets), backend=backend, engine=engine, workload=workload, seed=seed, rps=rps,
                                 model=model, profile=str(profile) if engine == "sim" else None)
            dirs[engine] = run_experiment(config, results_dir).dir
        compared = compare_runs(dirs["vllm"], dirs["sim"])
        row: dict[str, Any] = {"rps": rps, "backend": backend, "seed": seed}
        for name in FIGURES:
            row.update({f"{name}_real": compared[name]["real"], f"{name}_sim": compared[name]["sim"],
                        f"{name}_error": compared[name]["error"]})
        row.update({"session_jct_spearman": compared["session_jct_spearman"], "real_dir": str(dirs["vllm"]),
                    "sim_dir": str(dirs["sim"]), "real_noisy": load_run(dirs["vllm"]).noisy})
        rows.append(row)
    return pd.DataFrame(rows)
