"""Speed of the simulated testbed: the `paper` preset (400 sessions) with the vllm backend.

Prints simulated seconds per wall second (target >= 200x on a 2-core machine) and engine steps and
simpy events per second, for the main run and for the isolated-JCT reference (cold cache).

    python benchmarks/sim_speed.py [--workload paper] [--backend vllm] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from harness.backends import get_backend
from harness.config import RunConfig
from harness.engines.sim.run import SimRun, isolated_jcts
from harness.engines.sim.testbed import build_setup
from harness.hostload import HostLoad, describe
from workloads.source import WorkloadRequest, resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="paper")
    parser.add_argument("--backend", default="vllm")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    config = RunConfig(backend=args.backend, workload=args.workload, seed=args.seed)
    _, sessions = resolve(WorkloadRequest(source=config.workload, seed=config.seed))
    setup = build_setup(config)
    backend = get_backend(config.backend, config.engine)

    host = HostLoad().start()  # wall-clock figures: say whether the machine was shared while they were taken
    t0 = time.perf_counter()
    isolated_jcts(sessions, setup)
    isolated_wall = time.perf_counter() - t0

    best = None
    for _ in range(args.repeat):
        run = SimRun(sessions, backend.make_policy(config), backend.make_admission(config), setup)
        events = 0
        step = run.env.step

        def counted_step() -> None:
            nonlocal events
            events += 1
            step()

        run.env.step = counted_step  # type: ignore[method-assign]
        out = run.run()
        wall = out.stats["wall_s"]
        if best is None or wall < best[0]:
            best = (wall, out, events)
    wall, out, events = best  # type: ignore[misc]
    load = host.stop()
    sim_s = out.stats["sim_s"]
    print(f"workload {args.workload}: {len(sessions)} sessions, backend {args.backend}, seed {args.seed}")
    print(f"simulated time        {sim_s:10.1f} s")
    print(f"wall time (best of {args.repeat}) {wall:10.2f} s")
    print(f"speed                 {sim_s / wall:10.0f} x real time   (target >= 200x)")
    print(f"engine steps          {out.stats['engine_steps']:10d}   ({out.stats['engine_steps'] / wall:,.0f} per wall s)")
    print(f"simpy events          {events:10d}   ({events / wall:,.0f} per wall s)")
    print(f"isolated reference    {isolated_wall:10.2f} s wall for {len(sessions)} sessions (cold cache)")
    print(f"host                  {'NOISY, figures not comparable' if load.get('noisy') else 'quiet'} "
          f"({describe(load)})")


if __name__ == "__main__":
    main()
