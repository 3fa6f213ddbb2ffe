"""Fidelity of the sim to the real engine: the `tiny` agent workload on real vLLM (CPU build, in-process,
timed tools, forced KV pressure) and on the sim with a profile calibrated on the same engine, for several
backends and seeds. Prints per run the sim's error of mean JCT, p95 JCT, mean TTFT and session
throughput, the rank correlation of per-session JCT, and whether both engines rank the backends alike.

    python benchmarks/fidelity.py                              # calibrate, then vllm and mars x seeds 1,2,3
    python benchmarks/fidelity.py --profile tiny-cpu.json --seeds 1 --out fidelity/

Targets (calibration and fidelity issue): mean JCT error <= 10%, throughput error <= 10%, same ranking.
Real-engine timings need a quiet machine: another tenant's load lands on the real runs only.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness.calibrate import calibrate_engine
from harness.config import make_config
from harness.engines.vllm.engine import prepare_environment
from harness.fidelity import FIGURES, fidelity_runs, mean_abs, same_ranking, side_by_side
from harness.hostload import describe
from harness.tiny_model import make_tiny_model

ENGINE_SETS = ("engine_args.num_gpu_blocks=50", "engine_args.block_size=32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="vllm,mars")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rps", default="1,4", help="session rates: the preset's 1/s, and 4/s where backends differ")
    parser.add_argument("--profile", type=Path, help="a calibrated profile (default: calibrate first)")
    parser.add_argument("--repeats", type=int, default=3, help="calibration repeats")
    parser.add_argument("--out", type=Path, help="where runs, the profile and side-by-side timelines go")
    ns = parser.parse_args()
    out = ns.out or Path(tempfile.mkdtemp(prefix="fidelity-"))
    out.mkdir(parents=True, exist_ok=True)
    prepare_environment(str(out / ".cache"))
    model = str(make_tiny_model(out / "tiny"))
    profile = ns.profile
    if profile is None:
        result = calibrate_engine(make_config(ENGINE_SETS, engine="vllm", model=model), out / ".cache", ns.repeats)
        profile = out / "profile.json"
        result.profile.save(profile)
        print(f"calibrated on {len(result.samples)} steps: step-time error {result.errors['all']['mean_abs_pct']:.1f}% "
              f"mean, {result.errors['all']['p90_abs_pct']:.1f}% p90 -> {profile} (host: {describe(result.host_load)})")
    backends = ns.backends.split(",")
    loads = [float(r) for r in ns.rps.split(",")]
    runs = fidelity_runs(model, profile, backends, [int(s) for s in ns.seeds.split(",")], ENGINE_SETS, out / "runs",
                         loads=loads)
    for _, row in runs.iterrows():
        side_by_side(Path(row["real_dir"]), Path(row["sim_dir"])).to_csv(
            out / f"calls-{row['backend']}-rps{row['rps']}-s{row['seed']}.csv", index=False)
    print(f"\n{'rps':>5} {'backend':<10}{'seed':>5}" + "".join(f"{n.replace('_s', '').replace('session_', ''):>22}" for n in FIGURES)
          + f"{'JCT rank corr':>15}")
    for _, row in runs.iterrows():
        cells = "".join(f"{row[f'{n}_real']:>9.3f} {row[f'{n}_sim']:>6.3f}{100 * row[f'{n}_error']:>+6.0f}%"
                        for n in FIGURES)
        noisy = "  NOISY host (see results show)" if row["real_noisy"] else ""
        print(f"{row['rps']:>5} {row['backend']:<10}{row['seed']:>5}{cells}{row['session_jct_spearman']:>15.2f}{noisy}")
    print("(each figure: real, sim, sim error)")
    if runs["real_noisy"].any():
        print(f"{int(runs['real_noisy'].sum())} of {len(runs)} real runs ran on an oversubscribed host: their "
              f"errors measure the other tenants too")
    for n in FIGURES:
        print(f"mean |error| of {n}: {100 * mean_abs(list(runs[f'{n}_error'])):.1f}%")
    for rps, at_load in runs.groupby("rps"):
        by_engine = {engine: at_load.groupby("backend")[f"mean_jct_s_{engine}"].mean().round(3).to_dict()
                     for engine in ("real", "sim")}
        verdict = {True: "yes", False: "NO", None: "no order (backends within 2% on an engine)"}[same_ranking(by_engine)]
        print(f"rps {rps}: mean JCT by backend, real {by_engine['real']}, sim {by_engine['sim']}; same ranking: {verdict}")
    print(f"runs, profile and per-call timelines (calls-*.csv) in {out}/")


if __name__ == "__main__":
    main()
