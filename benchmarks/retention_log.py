"""Where retention earns its keep: every pin's life and every resume's cache outcome, from one sim run.

    python benchmarks/retention_log.py -b mars -w paper --rps 0.2 --seeds 0-4 [--set mars.retention=lru]

The run's event log (events.jsonl, calls.parquet) records each call's cached and computed tokens but not the
pins; this script runs the experiment in-process with the policy driver's pin table observed (nothing in the
run changes) and prints, over the seeds:

* pins made / used (the session resumed onto its pin) / expired (its tool outlived the deadline) / released
  early (blocks ran short), the tool durations (queue wait included) of the pinned calls, the blocks they held;
* per resumed call: the context its session left behind, how much of it was found (pin or LRU prefix cache)
  and how much was prefilled again ("missed"), split by whether the call resumed onto a pin;
* mean JCT, mean KV usage, admission wait.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd

from harness.config import make_config
from harness.experiment import run_experiment
from harness.policy import driver


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


class PinLog:
    """Observes PinTable: one record per pin (made, deadline, blocks, how it ended and when)."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self._open: dict[str, dict] = {}

    def install(self) -> None:
        table = driver.PinTable
        make, consume, expire, release_one = table.make, table.consume, table.expire, table.release_one
        log = self

        def _make(self, session_id, blocks, computed_tokens, now, seconds):  # type: ignore[no-untyped-def]
            if session_id in self.pins:
                log._close(session_id, "replaced", now)
            make(self, session_id, blocks, computed_tokens, now, seconds)
            rec = {"session_id": session_id, "made_s": now, "ttl_s": seconds, "blocks": len(blocks),
                   "tokens": computed_tokens, "end": None, "end_s": None}
            log.records.append(rec)
            log._open[session_id] = rec

        def _consume(self, session_id):  # type: ignore[no-untyped-def]
            had = consume(self, session_id)
            if had:
                log._close(session_id, "used", None)
            return had

        def _expire(self, now):  # type: ignore[no-untyped-def]
            before = set(self.pins)
            expire(self, now)
            for s in before - set(self.pins):
                log._close(s, "expired", now)

        def _release_one(self, now):  # type: ignore[no-untyped-def]
            s = release_one(self, now)
            if s is not None:
                log._close(s, "released", now)
            return s

        table.make, table.consume, table.expire, table.release_one = _make, _consume, _expire, _release_one

    def _close(self, session_id: str, how: str, now: float | None) -> None:
        rec = self._open.pop(session_id, None)
        if rec is not None:
            rec["end"], rec["end_s"] = how, now


def analyse(run_dir: Path, pins: list[dict]) -> dict:
    calls = pd.read_parquet(run_dir / "calls.parquet").sort_values(["session_id", "turn"])
    sessions = pd.read_parquet(run_dir / "sessions.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    timeline = pd.read_parquet(run_dir / "timeline.parquet")
    prev = calls.groupby("session_id").shift(1)
    resumed = calls[calls["turn"] > 0].copy()
    resumed["context"] = (prev["prompt_tokens"] + prev["output_tokens"]).loc[resumed.index]
    resumed["tool_s"] = (resumed["arrival_s"] - prev["finish_s"].loc[resumed.index])
    resumed["found"] = resumed[["cached_tokens", "context"]].min(axis=1)
    resumed["missed"] = resumed["context"] - resumed["found"]
    # a pin made at the previous call's finish and consumed: key (session, made_s)
    used = {(p["session_id"], round(p["made_s"], 9)) for p in pins if p["end"] == "used"}
    resumed["on_pin"] = [(s, round(f, 9)) in used for s, f in
                         zip(resumed["session_id"], prev["finish_s"].loc[resumed.index])]
    made = pd.DataFrame(pins) if pins else pd.DataFrame(columns=["end", "blocks", "ttl_s", "made_s", "session_id"])
    tool_of_pin = dict(zip(zip(resumed["session_id"], prev["finish_s"].loc[resumed.index].round(9)), resumed["tool_s"]))
    made["tool_s"] = [tool_of_pin.get((s, round(t, 9))) for s, t in zip(made["session_id"], made["made_s"])]
    kv_col = next((c for c in timeline.columns if "kv" in c and "usage" in c), None)
    return {
        "jct": summary["mean_jct_s"], "thr": summary["session_throughput"],
        "admission_wait": summary.get("mean_admission_wait_s"), "hit_rate": summary["prefix_cache_hit_rate"],
        "preemptions": summary["preemptions"], "kv_usage": float(timeline[kv_col].mean()) if kv_col else None,
        "resumes": len(resumed), "context_tok": int(resumed["context"].sum()), "missed_tok": int(resumed["missed"].sum()),
        "missed_resumes": int((resumed["missed"] > resumed["context"] * 0.01).sum()),
        "resumes_on_pin": int(resumed["on_pin"].sum()),
        "missed_tok_off_pin": int(resumed.loc[~resumed["on_pin"], "missed"].sum()),
        "tool_s_median_all": float(resumed["tool_s"].median()),
        "pins": Counter(made["end"].fillna("open")), "pins_made": len(made),
        "pin_tool_s_median": float(made["tool_s"].median()) if len(made) else None,
        "pin_tool_s_used_median": float(made.loc[made["end"] == "used", "tool_s"].median()) if len(made) else None,
        "pin_tool_s_expired_median": float(made.loc[made["end"] == "expired", "tool_s"].median()) if len(made) else None,
        "pin_ttl_median": float(made["ttl_s"].median()) if len(made) else None,
        "pin_blocks_mean": float(made["blocks"].mean()) if len(made) else None,
        "pin_block_s": float(((made["end_s"].fillna(made["made_s"] + made["tool_s"].fillna(0)) - made["made_s"])
                              * made["blocks"]).sum()) if len(made) else 0.0,
        "mean_tool_wait": float(sessions["tool_wait_s"].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-b", "--backend", default="mars")
    ap.add_argument("-w", "--workload", default="paper")
    ap.add_argument("--rps", type=float, default=0.2)
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--gpu", default=None)
    ap.add_argument("--tool-cores", type=int, default=None)
    ap.add_argument("--tool-mode", default=None)
    ap.add_argument("--arrival", default=None)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = PinLog()
    log.install()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in parse_seeds(args.seeds):
            log.records.clear()
            config = make_config(tuple(args.sets), backend=args.backend, workload=args.workload, rps=args.rps,
                                 seed=seed, gpu=args.gpu, tool_cores=args.tool_cores, tool_mode=args.tool_mode,
                                 arrival=args.arrival)
            result = run_experiment(config, Path(tmp))
            rows.append(analyse(result.dir, list(log.records)))
    if args.json:
        print(json.dumps(rows, default=str))
        return
    label = f"{args.backend} {' '.join(args.sets)} @ {args.rps}/s seeds {args.seeds}"
    print(label)
    for key in rows[0]:
        vals = [r[key] for r in rows]
        if key == "pins":
            total = Counter()
            for v in vals:
                total.update(v)
            print(f"  {key:26s} {dict(total)} (sum over seeds)")
        elif all(isinstance(v, (int, float)) for v in vals):
            print(f"  {key:26s} mean {statistics.fmean(vals):12.3f}   per seed {[round(v, 2) for v in vals]}")
        else:
            print(f"  {key:26s} {vals}")


if __name__ == "__main__":
    main()
