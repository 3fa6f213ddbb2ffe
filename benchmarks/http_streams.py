"""How many concurrent streams the `--engine http` client holds on one core: the real client
(harness.engines.http.HttpEngine: one `httpx.AsyncClient` on its own event loop, the simpy side draining
what it sees) against a fast local fake server (tests.fake_openai.FastStreams, asyncio) in a process of its
own, on the other core.

    python benchmarks/http_streams.py                          # 2,000 streams of 20 chunks, 0.5 s apart
    python benchmarks/http_streams.py --streams 4000 --chunks 10 --interval 1

Every call is handed to the client at t=0 and streams `--chunks` one-token chunks, chunk i sent `i *
--interval` seconds after the server got the request, so every stream stays open `(chunks - 1) x interval`
seconds and all of them at once. Figures:
* streams held: the most the server had open at once (all of them, when the client keeps up), and the calls
  that ended well;
* event-loop lag: how late the client's event loop ran a task that asked to wake 5 ms later, p50/p99
  over the run: the longest a chunk that has arrived waits for the client to read it. The server's own lag
  (how late it sent its chunks against their schedule) is printed beside it;
* call overhead: each call's end-to-end latency less the stream's scheduled span, `(chunks - 1) x interval`:
  connecting, sending, the first chunk and the client's lag, p50/p99;
* client CPU: the client process's CPU time (event loop thread and simpy side) per chunk;
* wall time from the first call handed over to the last call's end, and `uptime` before and after.

The client is pinned to CPU 0 and the server to CPU 1 (with one CPU both share it, and the figures say so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import simpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.calls import CallSpec  # noqa: E402
from harness.engines.http import HttpEngine, HttpTarget, ServerLimits  # noqa: E402
from harness.engines.launch import free_port  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def start_server(port: int, chunks: int, interval_s: float, cpus: set[int]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "--port", str(port), "--chunks", str(chunks),
                             "--interval", str(interval_s)], cwd=ROOT, stdin=subprocess.DEVNULL)
    os.sched_setaffinity(proc.pid, cpus)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the fake server did not start")


def measure(url: str, streams: int, chunks: int, interval_s: float) -> dict[str, float]:
    target = HttpTarget(url, prompt_format="ids", retries=0, request_timeout_s=600.0)
    engine = HttpEngine(target, ServerLimits(max_model_len=10_000))
    late: list[float] = []
    running = [True]

    async def watch_loop() -> None:  # on the client's event loop, beside the calls
        while running[0]:
            due = time.monotonic() + 0.005
            await asyncio.sleep(0.005)
            late.append(time.monotonic() - due)

    try:
        assert engine._loop is not None
        engine._loop.spawn(watch_loop())
        engine.start()
        cpu = time.process_time()
        started = time.monotonic()
        events = [engine.submit(CallSpec(f"s{i}", 0, 16, chunks, True, None, None, 0, 0.0), True)
                  for i in range(streams)]
        engine.env.run(until=simpy.AllOf(engine.env, events))
        wall = time.monotonic() - started
        cpu = time.process_time() - cpu
        running[0] = False
        stats = httpx.get(url + "/stats", timeout=10.0).json()
    finally:
        engine.close()
    records = [e.value for e in events]
    ok = [r for r in records if r.error is None and r.num_output_tokens == chunks]
    overhead_ms = np.array([r.finish_s - r.arrival_s - (chunks - 1) * interval_s for r in ok]) * 1e3
    lag_ms = np.array(late or [0.0]) * 1e3
    return {"streams": streams, "ended_well": len(ok), "server_peak_open": stats["peak"], "wall_s": wall,
            "loop_lag_p50_ms": float(np.percentile(lag_ms, 50)), "loop_lag_p99_ms": float(np.percentile(lag_ms, 99)),
            "server_lag_p50_ms": stats["lag_p50_s"] * 1e3, "server_lag_p99_ms": stats["lag_p99_s"] * 1e3,
            "call_overhead_p50_ms": float(np.percentile(overhead_ms, 50)),
            "call_overhead_p99_ms": float(np.percentile(overhead_ms, 99)),
            "client_cpu_s": cpu, "client_cpu_us_per_chunk": cpu / max(1, len(ok) * chunks) * 1e6,
            "client_core_busy": cpu / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a stream's chunks")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    client_cpus, server_cpus = ({cpus[0]}, {cpus[1]}) if len(cpus) > 1 else ({cpus[0]}, {cpus[0]})
    before = uptime()
    port = free_port()
    server = start_server(port, args.chunks, args.interval, server_cpus)
    try:
        os.sched_setaffinity(0, client_cpus)  # the client's threads (event loop, simpy side) share one core
        figures = measure(f"http://127.0.0.1:{port}", args.streams, args.chunks, args.interval)
    finally:
        server.terminate()
        server.wait(10)
    figures |= {"client_cpus": sorted(client_cpus), "server_cpus": sorted(server_cpus),
                "uptime_before": before, "uptime_after": uptime()}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    f = figures
    print(f"{f['streams']} streams of {args.chunks} chunks, {args.interval:g} s apart; client on CPU "
          f"{f['client_cpus']}, server on CPU {f['server_cpus']}")
    print(f"streams held at once (server's peak open): {f['server_peak_open']}; ended well: {f['ended_well']}")
    print(f"client event-loop lag p50/p99: {f['loop_lag_p50_ms']:.1f}/{f['loop_lag_p99_ms']:.1f} ms "
          f"(the server's own lag: {f['server_lag_p50_ms']:.1f}/{f['server_lag_p99_ms']:.1f} ms)")
    print(f"call overhead p50/p99: {f['call_overhead_p50_ms']:.1f}/{f['call_overhead_p99_ms']:.1f} ms")
    print(f"client CPU: {f['client_cpu_s']:.1f} s ({f['client_core_busy']:.0%} of its core), "
          f"{f['client_cpu_us_per_chunk']:.0f} us per chunk, calls included; wall {f['wall_s']:.1f} s")
    print(f"uptime before: {f['uptime_before']}")
    print(f"uptime after:  {f['uptime_after']}")


if __name__ == "__main__":
    main()
