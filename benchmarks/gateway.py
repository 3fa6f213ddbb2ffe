"""What the MARS gateway (`mars-bench serve`, MARS admission on) costs a call, and how many concurrent streams it
relays on one core, against a fast local fake upstream (tests.fake_openai.FastStreams, asyncio).

    python benchmarks/gateway.py                          # 500 calls each way; 1,000 streams of 20 chunks
    python benchmarks/gateway.py --calls 1000 --streams 2000

Layout: the gateway process is pinned to CPU 0 (its one core); the fake upstreams and this client share CPU 1
(with one CPU all share it, and the figures say so). Figures:

* added latency per call: the same calls sent one at a time, alternately straight to the upstream and through
  the gateway (one session, admitted at its first call, as an agent's later calls are), a streamed completion
  of one chunk and a non-streamed one; the gateway's added p50 / p99 = its latency's p50 / p99 less the direct
  one's (goal: < 1 ms at p50);
* streams held on one core: `--streams` streamed calls, one session each, all sent at t=0 through the gateway;
  each streams `--chunks` chunks `--interval` s apart from the upstream, so all are open at once for
  `(chunks - 1) x interval` s. Streams held = the upstream's peak of open streams (all of them when the
  gateway keeps up; goal >= 1,000), calls ended well, each call's overhead (end-to-end less the scheduled
  span) p50 / p99, and the gateway's CPU time per relayed chunk and share of its core;
* `uptime` before and after.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.engines.http import ClientPool  # noqa: E402
from harness.engines.launch import free_port  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{url} did not come up")


def start_upstream(chunks: int, interval_s: float, cpus: set[int]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "--port", str(port), "--chunks", str(chunks),
                             "--interval", str(interval_s)], cwd=ROOT, stdin=subprocess.DEVNULL)
    os.sched_setaffinity(proc.pid, cpus)
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/v1/models", proc)
    return url, proc


def start_gateway(upstream: str, cpus: set[int], sets: list[str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    args = [sys.executable, "-m", "harness.cli", "serve", "--upstream", upstream, "--port", str(port), "--policy",
            "mars", "--log-level", "warning"]
    for item in sets:
        args += ["--set", item]
    if any(s.startswith("mars.pool_size") for s in sets):
        args += ["--tool-cores", "4096"]  # the CPU cap (cores x 2.5) must not hold the streams back
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.sched_setaffinity(proc.pid, cpus)
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/health", proc)
    return url, proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------- added latency
async def latencies(direct: str, gateway: str, calls: int, stream: bool) -> tuple[np.ndarray, np.ndarray]:
    body = {"model": "fake-model", "prompt": [1, 2, 3, 4], "max_tokens": 1, "stream": stream}
    headers = {"X-Session-ID": "latency"}
    times: dict[str, list[float]] = {direct: [], gateway: []}
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as http:
        for url in (direct, gateway):  # warm both connections (and admit the session)
            (await http.post(url + "/v1/completions", json=body)).raise_for_status()
        for _ in range(calls):
            for url in (direct, gateway):
                started = time.perf_counter()
                async with http.stream("POST", url + "/v1/completions", json=body) as response:
                    async for _chunk in response.aiter_raw():
                        pass
                times[url].append(time.perf_counter() - started)
                assert response.status_code == 200
    return np.array(times[direct]) * 1e3, np.array(times[gateway]) * 1e3


# ------------------------------------------------------------------------------------- streams held
async def streams_held(gateway: str, streams: int, chunks: int, interval_s: float) -> dict[str, float]:
    pool = ClientPool(None, None)
    span = (chunks - 1) * interval_s

    async def one(i: int) -> float | None:
        slot = pool.acquire()
        try:
            started = time.monotonic()
            got = 0
            async with pool.clients[slot].stream(
                    "POST", gateway + "/v1/completions", headers={"X-Session-ID": f"stream-{i}"},
                    json={"model": "fake-model", "prompt": [1, 2, 3], "max_tokens": chunks, "stream": True}) as r:
                async for line in r.aiter_lines():
                    got += line.startswith("data: {") and '"token_ids"' in line
            return time.monotonic() - started - span if r.status_code == 200 and got == chunks else None
        except httpx.HTTPError:
            return None
        finally:
            pool.release(slot)

    try:
        results = await asyncio.gather(*(one(i) for i in range(streams)))
    finally:
        await pool.aclose()
    ok = np.array([r for r in results if r is not None]) * 1e3
    return {"ended_well": len(ok), "overhead_p50_ms": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
            "overhead_p99_ms": float(np.percentile(ok, 99)) if len(ok) else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls each way for the added latency")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a stream's chunks")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpus, other_cpus = ({cpus[0]}, {cpus[1]}) if len(cpus) > 1 else ({cpus[0]}, {cpus[0]})
    os.sched_setaffinity(0, other_cpus)
    before = uptime()
    procs: list[subprocess.Popen[bytes]] = []
    f: dict[str, object] = {"gateway_cpus": sorted(gateway_cpus), "client_and_upstream_cpus": sorted(other_cpus)}
    try:
        quick, proc = start_upstream(1, 0.0, other_cpus)
        procs.append(proc)
        gateway, proc = start_gateway(quick, gateway_cpus, [])
        procs.append(proc)
        for stream in (True, False):
            direct_ms, via_ms = asyncio.run(latencies(quick, gateway, args.calls, stream))
            kind = "stream" if stream else "plain"
            for q in (50, 99):
                f[f"{kind}_direct_p{q}_ms"] = float(np.percentile(direct_ms, q))
                f[f"{kind}_gateway_p{q}_ms"] = float(np.percentile(via_ms, q))
                f[f"{kind}_added_p{q}_ms"] = float(np.percentile(via_ms, q) - np.percentile(direct_ms, q))
        slow, proc = start_upstream(args.chunks, args.interval, other_cpus)
        procs.append(proc)
        big = max(args.streams, 1)
        gateway, proc = start_gateway(slow, gateway_cpus, [f"mars.pool_size={big}", f"mars.window_init={big}"])
        procs.append(proc)
        cpu = cpu_seconds(proc.pid)
        started = time.monotonic()
        held = asyncio.run(streams_held(gateway, args.streams, args.chunks, args.interval))
        wall = time.monotonic() - started
        cpu = cpu_seconds(proc.pid) - cpu
        stats = httpx.get(slow + "/stats", timeout=10.0).json()
        f |= held | {"streams": args.streams, "upstream_peak_open": stats["peak"], "wall_s": wall, "gateway_cpu_s": cpu,
                     "gateway_core_busy": cpu / wall,
                     "gateway_cpu_us_per_chunk": cpu / max(1, held["ended_well"] * args.chunks) * 1e6}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(40)  # the gateway drains its connections first
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    f |= {"uptime_before": before, "uptime_after": uptime()}
    if args.json:
        print(json.dumps(f, indent=2))
        return
    print(f"gateway on CPU {f['gateway_cpus']}; fake upstreams and this client on CPU {f['client_and_upstream_cpus']}")
    for kind, what in (("stream", "streamed, 1 chunk"), ("plain", "not streamed")):
        print(f"added latency per call ({what}, {args.calls} calls each way): p50 {f[f'{kind}_added_p50_ms']:.3f} ms, "
              f"p99 {f[f'{kind}_added_p99_ms']:.3f} ms (direct p50/p99 {f[f'{kind}_direct_p50_ms']:.3f}/"
              f"{f[f'{kind}_direct_p99_ms']:.3f} ms, through the gateway {f[f'{kind}_gateway_p50_ms']:.3f}/"
              f"{f[f'{kind}_gateway_p99_ms']:.3f} ms)")
    print(f"{f['streams']} streams of {args.chunks} chunks, {args.interval:g} s apart, one session each: "
          f"held at once (upstream's peak open) {f['upstream_peak_open']}, ended well {f['ended_well']}")
    print(f"stream overhead (end-to-end less the {(args.chunks - 1) * args.interval:g} s span) p50/p99: "
          f"{f['overhead_p50_ms']:.1f}/{f['overhead_p99_ms']:.1f} ms")
    print(f"gateway CPU: {f['gateway_cpu_s']:.1f} s over {f['wall_s']:.1f} s ({f['gateway_core_busy']:.0%} of its "
          f"core), {f['gateway_cpu_us_per_chunk']:.0f} us per relayed chunk, calls included")
    print(f"uptime before: {f['uptime_before']}")
    print(f"uptime after:  {f['uptime_after']}")


if __name__ == "__main__":
    main()
