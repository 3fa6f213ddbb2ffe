"""Resolve `--workload PRESET|FILE` (synthetic presets, the SWE-bench data presets, JSONL workload files) plus
the shared workload flags into a list of sessions."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import BadInput
from workloads.overrides import parse_assignment
from workloads.arrivals import ArrivalProcess, arrival_times, burstiness_of
from workloads.model import Session, load_sessions
from workloads.swebench import DATA_PRESETS, DEFAULT_RPS, preset_sessions
from workloads.synthetic import PRESETS, WorkloadSpec, customize, generate, get_preset

# Sessions a workload may have without --force: ten times the largest preset, minutes of simulation and a
# file of about 100 MB. Beyond it a typo (one zero too many) would run for hours or fill the disk.
MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class WorkloadRequest:
    """What the user asked for; None means "the preset's or the file's own value"."""

    source: str
    sessions: int | None = None
    rps: float | None = None
    arrival: ArrivalProcess | None = None
    cv: float | None = None
    burstiness: float | None = None
    seed: int | None = None
    sets: tuple[str, ...] = ()
    force: bool = False  # lift the MAX_SESSIONS cap


def is_file_source(source: str) -> bool:
    return source not in PRESETS and source not in DATA_PRESETS and (
        Path(source).exists() or source.endswith((".jsonl", ".json")))


def arrival_of(req: WorkloadRequest) -> ArrivalProcess | None:
    """The arrival process asked for: `--burstiness` (or `--cv`) alone means gamma, as in vllm bench."""
    if req.burstiness is None and req.cv is None:
        return req.arrival
    burstiness_of(req.cv, req.burstiness)  # not both
    if req.arrival not in (None, "gamma"):
        flag = "--burstiness" if req.burstiness is not None else "--cv"
        raise BadInput(f"{flag} shapes gamma arrivals; it does not apply to --arrival {req.arrival}")
    return "gamma"


def _retime(sessions: list[Session], req: WorkloadRequest) -> list[Session]:
    """A file's sessions keep their own arrival times (`--arrival trace`) unless a rate or process is given."""
    arrival = arrival_of(req)
    if req.rps is None and arrival in (None, "trace"):
        return sessions
    if arrival == "trace":
        raise BadInput("--arrival trace replays the workload file's own arrival times; drop --rps")
    if req.rps is None:
        raise BadInput("--arrival for a workload file needs --rps")
    rng = np.random.default_rng([req.seed or 0, 1 << 31])
    times = arrival_times(arrival or "fixed", len(sessions), req.rps, rng, cv=req.cv or 1.0,
                          burstiness=req.burstiness)
    return [s.with_arrival(round(float(t), 6)) for s, t in zip(sessions, times)]


def preset_spec(req: WorkloadRequest) -> WorkloadSpec:
    """The preset named by `req.source` with the request's flags and `--set` overrides applied."""
    assignments = [
        f"{key}={value}"
        for key, value in (("sessions", req.sessions), ("rps", req.rps), ("arrival", arrival_of(req)),
                           ("cv", req.cv), ("burstiness", req.burstiness), ("seed", req.seed))
        if value is not None
    ]
    spec = customize(get_preset(req.source), [*assignments, *req.sets])
    check_size(spec.sessions, req.force)
    return spec


def check_size(sessions: int, force: bool) -> None:
    """Refuse more than MAX_SESSIONS sessions unless forced."""
    if sessions > MAX_SESSIONS and not force:
        raise BadInput(f"{sessions:,} sessions is more than the cap of {MAX_SESSIONS:,}; "
                       "add --force to go ahead anyway")


def _data_preset(req: WorkloadRequest) -> list[Session]:
    """`swebench-lite` / `swebench-verified`: SWE-bench data found on this machine; `--set dataset=FILE`
    (and tokenizer, split, instances, hints, prefix_tokens) say where and how, see `workloads.swebench`."""
    settings = {}
    for text in req.sets:
        path, value = parse_assignment(text)
        settings[".".join(path)] = value
    sessions = preset_sessions(req.source, settings, seed=req.seed or 0)
    if req.sessions is not None:
        sessions = sessions[: req.sessions]
    return _retime(sessions, replace(req, rps=req.rps or DEFAULT_RPS))


def resolve(req: WorkloadRequest) -> tuple[str, list[Session]]:
    """(workload name, sessions in arrival order)."""
    if req.source in DATA_PRESETS:
        return req.source, _data_preset(req)
    if is_file_source(req.source):
        if req.sets:
            raise BadInput("--set applies to presets; edit the workload file instead")
        sessions = load_sessions(req.source)
        if req.sessions is not None:
            if req.sessions < 1:
                raise BadInput(f"--sessions must be >= 1, got {req.sessions}")
            sessions = sessions[: req.sessions]
        return Path(req.source).stem, _retime(sessions, req)
    spec = preset_spec(req)
    return spec.name, list(generate(spec))


def offered_rps(config: dict[str, Any]) -> float:
    """The session arrival rate a run (its run.json config) asked for: --rps, else the preset's own rate; NaN
    for a file's or a trace's timestamps."""
    if config.get("rps") is not None:
        return float(config["rps"])
    source = str(config.get("workload", ""))
    if source in DATA_PRESETS:
        return float(DEFAULT_RPS)
    if source in PRESETS:
        try:
            return float(preset_spec(WorkloadRequest(source, sets=tuple(config.get("workload_sets") or ()))).rps)
        except (BadInput, ValueError):
            return math.nan
    return math.nan
