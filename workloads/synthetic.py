"""Synthetic agent workloads: named presets built from seeded, documented distributions.

A preset is a `WorkloadSpec`: how many sessions, the arrival process, and a weighted mix of session
kinds (`SessionSpec`). Every number in it can be overridden (`--set mix.swe.turns.median=15`, or
`--set turns.median=15` for every kind at once).

Generation is deterministic and stable: session i draws from its own random stream
(seed, i), so the first 10 sessions of a 400-session workload equal a 10-session workload of the same
seed, and changing the arrival rate changes arrival times only, never session content.

Distribution shapes follow published agent-trace figures (SWE-bench-style sessions: ~11-18 LLM turns,
median ~7k input and tens of output tokens per turn, tool time often the larger share of task latency;
test runs heavy-tailed up to minutes, greps and file reads in milliseconds). The `paper` preset is the
MARS evaluation setup (400 sessions at 0.2/s, up to 8 rounds per task, a mix of SWE-bench,
repository-level and terminal tasks, some first turns above 50k tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import BadInput
from workloads.overrides import apply_overrides, parse_assignment
from workloads.arrivals import ArrivalProcess, arrival_times
from workloads.model import (INPUT_MODEL_CONFIG, MAX_TURNS, Int, Session, ToolCall, Turn,
                             format_validation_error)

K = TypeVar("K")
_PREFIX_STREAM = 1 << 30  # stream ids above any session index
_ARRIVAL_STREAM = (1 << 30) + 1


# The most sessions a workload may have at all (`--sessions` and `--set sessions=` beyond it are refused even
# with --force); the cap that --force lifts is workloads.source.MAX_SESSIONS.
MAX_SESSIONS_HARD = 1_000_000_000
# Largest median of a distribution (tokens, seconds, turns): far beyond any real one, and small enough that
# a sample stays a finite number.
MAX_MEDIAN = 1e9


class _Spec(BaseModel):
    model_config = ConfigDict(**INPUT_MODEL_CONFIG)


class LogNormal(_Spec):
    """Lognormal with the given median and shape `sigma`, clipped to [low, high]; sigma 0 = constant."""

    median: float = Field(gt=0, le=MAX_MEDIAN)
    sigma: float = Field(default=0.0, ge=0, le=10)
    low: float = Field(default=0.0, ge=0, le=MAX_MEDIAN)
    high: float = Field(default=math.inf, allow_inf_nan=True, description="inf = unbounded")

    @model_validator(mode="after")
    def _bounds(self) -> LogNormal:
        if math.isnan(self.high):
            raise ValueError("high must be a number (inf = unbounded)")
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        return self

    @property
    def max_value(self) -> float:
        return min(max(self.median, self.low), self.high) if self.sigma == 0 else self.high

    def sample(self, rng: np.random.Generator) -> float:
        value = self.median * math.exp(self.sigma * rng.standard_normal()) if self.sigma else self.median
        return min(max(value, self.low), self.high)

    def sample_int(self, rng: np.random.Generator, minimum: int = 0) -> int:
        return max(minimum, int(round(self.sample(rng))))


class ToolKind(_Spec):
    """A kind of tool call: how often the agent picks it, its CPU time, cores and output size."""

    weight: float = Field(ge=0)
    cpu_seconds: LogNormal
    cores: dict[int, float] = Field(default_factory=lambda: {1: 1.0}, description="cores -> weight")
    output_tokens: LogNormal

    @model_validator(mode="after")
    def _cores(self) -> ToolKind:
        if not self.cores or min(self.cores) < 1 or sum(self.cores.values()) <= 0:
            raise ValueError("cores must map core counts >= 1 to weights with a positive sum")
        return self


class SessionSpec(_Spec):
    """One kind of session in a workload mix."""

    weight: float = Field(default=1.0, ge=0, description="share of sessions of this kind")
    num_prefixes: Int = Field(default=1, ge=0, le=1_000_000, description="distinct shared prefixes (0 = none)")
    prefix_tokens: LogNormal = LogNormal(median=3000, sigma=0.15, low=2000, high=4000)
    task_tokens: LogNormal = Field(description="first turn's new tokens: problem statement, context")
    turns: LogNormal = Field(description="LLM calls per session (rounded)")
    output_tokens: LogNormal = Field(description="tokens generated per call")
    followup_tokens: LogNormal = Field(
        default=LogNormal(median=30, sigma=0.3, low=5, high=200),
        description="tokens added each later turn besides tool output (framing, observations)",
    )
    cpu_scale: float = Field(default=1.0, gt=0, description="multiplies every tool's CPU seconds")
    tools: dict[str, ToolKind] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tools(self) -> SessionSpec:
        if self.turns.max_value > MAX_TURNS:
            raise ValueError(f"turns can reach {self.turns.max_value:g}; a session has at most {MAX_TURNS} turns "
                             "(set turns.high)")
        if round(self.turns.max_value) > 1 and not any(k.weight > 0 for k in self.tools.values()):
            raise ValueError("a multi-turn session kind needs at least one tool with weight > 0")
        return self


class WorkloadSpec(_Spec):
    """A complete synthetic workload: count, arrivals and the mix of session kinds."""

    name: str
    description: str = ""
    sessions: Int = Field(ge=1, le=MAX_SESSIONS_HARD)
    rps: float = Field(gt=0, allow_inf_nan=True, description="mean session arrival rate, sessions per second")
    arrival: ArrivalProcess = "fixed"
    cv: float = Field(default=1.0, ge=0.01, le=100, description="coefficient of variation of gamma gaps")
    burstiness: float | None = Field(default=None, gt=0, allow_inf_nan=True, description="gamma arrivals on vllm bench's schedule with "
                                                                     "this --burstiness (see workloads.arrivals)")
    timestamps: list[float] | None = Field(default=None, description="arrival times for 'trace'")
    seed: Int = Field(default=0, ge=0)
    mix: dict[str, SessionSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _mix(self) -> WorkloadSpec:
        if sum(s.weight for s in self.mix.values()) <= 0:
            raise ValueError("mix weights must have a positive sum")
        return self


# --------------------------------------------------------------------------------------------- tools
def _swe_tools() -> dict[str, ToolKind]:
    """Tool kinds of a coding agent. Test runs and builds are heavy-tailed and may use several cores."""
    return {
        "run_tests": ToolKind(
            weight=0.20,
            cpu_seconds=LogNormal(median=5.0, sigma=1.2, low=0.3, high=300),
            cores={1: 0.6, 2: 0.25, 4: 0.15},
            output_tokens=LogNormal(median=900, sigma=0.8, low=50, high=6000),
        ),
        "build": ToolKind(
            weight=0.05,
            cpu_seconds=LogNormal(median=12.0, sigma=0.8, low=1, high=180),
            cores={2: 0.5, 4: 0.5},
            output_tokens=LogNormal(median=400, sigma=0.6, low=20, high=3000),
        ),
        "python": ToolKind(
            weight=0.10,
            cpu_seconds=LogNormal(median=0.8, sigma=1.0, low=0.05, high=60),
            output_tokens=LogNormal(median=300, sigma=0.8, low=10, high=3000),
        ),
        "grep": ToolKind(
            weight=0.22,
            cpu_seconds=LogNormal(median=0.08, sigma=0.8, low=0.005, high=3),
            output_tokens=LogNormal(median=250, sigma=0.9, low=5, high=4000),
        ),
        "read_file": ToolKind(
            weight=0.28,
            cpu_seconds=LogNormal(median=0.01, sigma=0.5, low=0.001, high=0.5),
            output_tokens=LogNormal(median=1100, sigma=0.7, low=50, high=8000),
        ),
        "edit": ToolKind(
            weight=0.15,
            cpu_seconds=LogNormal(median=0.02, sigma=0.5, low=0.002, high=0.5),
            output_tokens=LogNormal(median=120, sigma=0.5, low=10, high=1000),
        ),
    }


def _terminal_tools() -> dict[str, ToolKind]:
    """Terminal tasks: compiles, installs and scripts dominate; short outputs."""
    tools = _swe_tools()
    tools["run_tests"] = tools["run_tests"].model_copy(update={"weight": 0.30})
    tools["build"] = tools["build"].model_copy(update={"weight": 0.15})
    tools["python"] = tools["python"].model_copy(update={"weight": 0.20})
    tools["read_file"] = tools["read_file"].model_copy(update={"weight": 0.15})
    return tools


# ------------------------------------------------------------------------------------- session kinds
def _swe(max_turns: float = 40) -> SessionSpec:
    return SessionSpec(
        task_tokens=LogNormal(median=4000, sigma=0.6, low=500, high=30000),
        turns=LogNormal(median=11, sigma=0.45, low=5, high=max_turns),
        output_tokens=LogNormal(median=80, sigma=0.6, low=30, high=300),
        tools=_swe_tools(),
    )


def _long(max_turns: float = 12) -> SessionSpec:
    """Repository-level tasks whose first turn carries more than 50k tokens of code."""
    return _swe().model_copy(
        update={
            "task_tokens": LogNormal(median=60000, sigma=0.12, low=50000, high=75000),
            "turns": LogNormal(median=6, sigma=0.4, low=3, high=max_turns),
        }
    )


def _terminal(max_turns: float = 40) -> SessionSpec:
    return SessionSpec(
        task_tokens=LogNormal(median=1500, sigma=0.6, low=200, high=10000),
        turns=LogNormal(median=10, sigma=0.45, low=4, high=max_turns),
        output_tokens=LogNormal(median=60, sigma=0.6, low=20, high=300),
        tools=_terminal_tools(),
    )


def _chat() -> SessionSpec:
    return SessionSpec(
        num_prefixes=4,
        prefix_tokens=LogNormal(median=200, sigma=0.3, low=50, high=1000),
        task_tokens=LogNormal(median=800, sigma=0.8, low=50, high=8000),
        turns=LogNormal(median=1),
        output_tokens=LogNormal(median=200, sigma=0.7, low=10, high=1000),
    )


def _small_tools(cpu_seconds: LogNormal, output_tokens: LogNormal | None = None) -> dict[str, ToolKind]:
    """The coding agent's tools at a small scale, one core each (smoke and real-engine presets)."""
    update: dict[str, object] = {"cpu_seconds": cpu_seconds, "cores": {1: 1.0}}
    if output_tokens is not None:
        update["output_tokens"] = output_tokens
    return {name: kind.model_copy(update=update) for name, kind in _swe_tools().items()}


def _tool(seconds: LogNormal, output: LogNormal, weight: float = 1.0) -> ToolKind:
    return ToolKind(weight=weight, cpu_seconds=seconds, output_tokens=output)


# ------------------------------------------------------------------ the peers' own evaluation setups
# Each models one paper's evaluation workload for benchmarks/reproduction.py, which also sets the paper's
# GPU, model, tool pool and loads (`PAPERS` there). Only the shapes are modelled: every number is ours
# unless the description says it follows the paper.
def _continuum_mix() -> dict[str, SessionSpec]:
    """Continuum (arXiv 2511.02230): SWE-bench agents (mini-swe-agent: one bash command per turn) and BFCL
    multi-turn function calling."""
    swe = SessionSpec(
        weight=0.6,
        prefix_tokens=LogNormal(median=1500, sigma=0.1, low=1200, high=2000),
        task_tokens=LogNormal(median=1500, sigma=0.6, low=300, high=8000),
        turns=LogNormal(median=20, sigma=0.5, low=5, high=60),
        output_tokens=LogNormal(median=150, sigma=0.6, low=30, high=800),
        tools=_swe_tools(),
    )
    bfcl = SessionSpec(
        weight=0.4,
        num_prefixes=8,
        prefix_tokens=LogNormal(median=2500, sigma=0.4, low=800, high=6000),
        task_tokens=LogNormal(median=150, sigma=0.5, low=30, high=800),
        turns=LogNormal(median=6, sigma=0.4, low=2, high=15),
        output_tokens=LogNormal(median=60, sigma=0.5, low=10, high=300),
        tools={"function": _tool(LogNormal(median=0.01, sigma=1.0, low=0.001, high=1.0),
                                 LogNormal(median=120, sigma=0.8, low=5, high=1500))},
    )
    return {"swe": swe, "bfcl": bfcl}


def _infercept_mix() -> dict[str, SessionSpec]:
    """InferCept (arXiv 2402.01869): six interception types, one session kind each. Interception times and
    counts follow the paper's characterisation in order of magnitude (calculator: microseconds, QA Wikipedia
    API: under a second, ALFWorld steps: ~0.1 s but many, chatbot: a human's tens of seconds, image and TTS
    generation: seconds); contexts stay within GPT-J's 2,048 tokens."""
    def kind(int_s: LogNormal, n: LogNormal, ret: LogNormal, task: float = 600, out: float = 60) -> SessionSpec:
        return SessionSpec(
            prefix_tokens=LogNormal(median=300, sigma=0.2, low=150, high=600),
            task_tokens=LogNormal(median=task, sigma=0.4, low=50, high=1200),
            turns=n,
            output_tokens=LogNormal(median=out, sigma=0.5, low=5, high=200),
            followup_tokens=LogNormal(median=10, sigma=0.3, low=2, high=40),
            tools={"interception": _tool(int_s, ret)},
        )
    return {
        "math": kind(LogNormal(median=1e-4, sigma=0.5, low=1e-5, high=0.01), LogNormal(median=4, sigma=0.3, low=2, high=8),
                     LogNormal(median=8, sigma=0.4, low=2, high=30)),
        "qa": kind(LogNormal(median=0.7, sigma=0.5, low=0.1, high=5), LogNormal(median=3, sigma=0.3, low=2, high=6),
                   LogNormal(median=150, sigma=0.5, low=20, high=400)),
        "ve": kind(LogNormal(median=0.09, sigma=0.4, low=0.01, high=1), LogNormal(median=14, sigma=0.3, low=6, high=24),
                   LogNormal(median=30, sigma=0.4, low=5, high=100), task=400, out=25),
        "chatbot": kind(LogNormal(median=28, sigma=0.6, low=3, high=180), LogNormal(median=5, sigma=0.3, low=2, high=10),
                        LogNormal(median=50, sigma=0.6, low=5, high=300), task=300, out=100),
        "image": kind(LogNormal(median=20, sigma=0.3, low=5, high=60), LogNormal(median=7, sigma=0.3, low=3, high=12),
                      LogNormal(median=10, sigma=0.3, low=2, high=30), task=300, out=50),
        "tts": kind(LogNormal(median=17, sigma=0.3, low=5, high=60), LogNormal(median=7, sigma=0.3, low=3, high=12),
                    LogNormal(median=10, sigma=0.3, low=2, high=30), task=300, out=50),
    }


def _autellix_mix() -> dict[str, SessionSpec]:
    """Autellix (arXiv 2502.13965): programs of many LLM calls with a heavy-tailed number of calls: multi-turn
    chat (ShareGPT), ReAct function-calling agents (BFCL) and tree-search agents (LATS), the last run here
    one call at a time (the harness's sessions are single-threaded: PLAS, not ATLAS)."""
    fast_tool = _tool(LogNormal(median=0.02, sigma=1.0, low=0.001, high=2.0), LogNormal(median=100, sigma=0.8, low=5, high=1500))
    return {
        "chat": SessionSpec(
            weight=0.4, num_prefixes=4,
            prefix_tokens=LogNormal(median=200, sigma=0.3, low=50, high=1000),
            task_tokens=LogNormal(median=300, sigma=1.0, low=10, high=4000),
            turns=LogNormal(median=3, sigma=0.8, low=1, high=40),
            output_tokens=LogNormal(median=250, sigma=0.8, low=10, high=2000),
            tools={"user": _tool(LogNormal(median=5.0, sigma=0.8, low=0.5, high=60),
                                 LogNormal(median=80, sigma=1.0, low=5, high=2000))},
        ),
        "react": SessionSpec(
            weight=0.4, num_prefixes=8,
            prefix_tokens=LogNormal(median=1500, sigma=0.4, low=500, high=5000),
            task_tokens=LogNormal(median=150, sigma=0.5, low=30, high=800),
            turns=LogNormal(median=4, sigma=0.9, low=1, high=80),
            output_tokens=LogNormal(median=100, sigma=0.6, low=10, high=600),
            tools={"function": fast_tool},
        ),
        "tree-search": SessionSpec(
            weight=0.2,
            prefix_tokens=LogNormal(median=800, sigma=0.2, low=400, high=1500),
            task_tokens=LogNormal(median=300, sigma=0.5, low=50, high=1500),
            turns=LogNormal(median=20, sigma=0.9, low=5, high=200),
            output_tokens=LogNormal(median=150, sigma=0.6, low=20, high=800),
            followup_tokens=LogNormal(median=60, sigma=0.4, low=10, high=300),
            tools={"evaluate": fast_tool},
        ),
    }


def _concur_mix() -> dict[str, SessionSpec]:
    """CONCUR (arXiv 2601.22705): agentic batch inference, long-lived agents whose contexts grow every step
    (its Figure 1: input length and KV memory grow over 10 generation steps)."""
    agent = _swe().model_copy(update={
        "task_tokens": LogNormal(median=3000, sigma=0.5, low=500, high=12000),
        "turns": LogNormal(median=12, sigma=0.4, low=6, high=30),
        "output_tokens": LogNormal(median=300, sigma=0.6, low=50, high=1500),
    })
    tools = {name: kind.model_copy(update={"cores": {1: 1.0}}) for name, kind in agent.tools.items()}
    return {"agent": agent.model_copy(update={"tools": tools, "cpu_scale": 0.2})}


def _preset_specs() -> dict[str, WorkloadSpec]:
    return {
        "swe": WorkloadSpec(
            name="swe",
            description="SWE-bench-style coding sessions: 5-40 turns, ~7k-token first turn, heavy-tailed tests",
            sessions=100,
            rps=0.1,
            mix={"swe": _swe()},
        ),
        "long-context": WorkloadSpec(
            name="long-context",
            description="like swe, but a quarter of the sessions start above 50k tokens",
            sessions=100,
            rps=0.05,
            mix={"swe": _swe().model_copy(update={"weight": 0.75}), "long": _long().model_copy(update={"weight": 0.25})},
        ),
        "cpu-heavy": WorkloadSpec(
            name="cpu-heavy",
            description="terminal tasks where tool time dominates: builds, installs, test suites",
            sessions=100,
            rps=0.025,
            mix={"terminal": _terminal().model_copy(update={"cpu_scale": 2.0})},
        ),
        "chat": WorkloadSpec(
            name="chat",
            description="single-turn chat requests, used as background GPU contention traffic",
            sessions=200,
            rps=1.0,
            arrival="poisson",
            mix={"chat": _chat()},
        ),
        "swe-smoke": WorkloadSpec(
            name="swe-smoke",
            description="tiny swe workload for demos and smoke tests: 8 short sessions",
            sessions=8,
            rps=1.0,
            mix={
                "swe": SessionSpec(
                    prefix_tokens=LogNormal(median=1000, sigma=0.1, low=800, high=1200),
                    task_tokens=LogNormal(median=1500, sigma=0.5, low=300, high=4000),
                    turns=LogNormal(median=3, sigma=0.3, low=2, high=5),
                    output_tokens=LogNormal(median=40, sigma=0.4, low=16, high=96),
                    tools=_small_tools(LogNormal(median=0.3, sigma=0.8, low=0.02, high=2.0)),
                )
            },
        ),
        "tiny": WorkloadSpec(
            name="tiny",
            description="real-engine run on a CPU machine (tiny model): 16 sessions of 3-5 short turns, tools for one core, ~15 s",
            sessions=16,
            rps=1.0,
            mix={
                "swe": SessionSpec(
                    prefix_tokens=LogNormal(median=128, sigma=0.1, low=100, high=160),
                    task_tokens=LogNormal(median=300, sigma=0.5, low=100, high=600),
                    turns=LogNormal(median=4, sigma=0.25, low=3, high=5),
                    output_tokens=LogNormal(median=24, sigma=0.4, low=8, high=64),
                    followup_tokens=LogNormal(median=20, sigma=0.3, low=5, high=60),
                    tools=_small_tools(LogNormal(median=0.2, sigma=0.7, low=0.05, high=0.8),
                                       LogNormal(median=60, sigma=0.6, low=20, high=200)),
                )
            },
        ),
        "paper": WorkloadSpec(
            name="paper",
            description="MARS evaluation setup: 400 sessions at 0.2/s, up to 8 rounds, SWE + repo-level + terminal",
            sessions=400,
            rps=0.2,
            mix={
                "swe": _swe(max_turns=8).model_copy(
                    update={"weight": 0.55, "turns": LogNormal(median=6, sigma=0.35, low=3, high=8), "cpu_scale": 0.85}
                ),
                "long": _long(max_turns=8).model_copy(update={"weight": 0.10, "cpu_scale": 0.85}),
                "terminal": _terminal(max_turns=8).model_copy(
                    update={"weight": 0.35, "turns": LogNormal(median=6, sigma=0.35, low=3, high=8), "cpu_scale": 0.7}
                ),
            },
        ),
        "continuum-swe": WorkloadSpec(
            name="continuum-swe",
            description="Continuum's evaluation (arXiv 2511.02230): SWE-bench agents (60%, ~20 turns, bash tools) and "
                        "BFCL multi-turn function calling (40%, ~6 turns, millisecond functions), Poisson arrivals; "
                        "with benchmarks/reproduction.py's Llama-3.1-8B on one H100 and a tool sandbox per agent",
            sessions=200,
            rps=0.5,
            arrival="poisson",
            mix=_continuum_mix(),
        ),
        "infercept-mix": WorkloadSpec(
            name="infercept-mix",
            description="InferCept's evaluation (arXiv 2402.01869): six interception types (math, QA, virtual env, "
                        "chatbot, image, TTS) in equal shares, contexts under 2k tokens, Poisson arrivals; with "
                        "benchmarks/reproduction.py's GPT-J-6B on one A100 80GB, interceptions not on the tool cores",
            sessions=400,
            rps=2.0,
            arrival="poisson",
            mix=_infercept_mix(),
        ),
        "autellix-programs": WorkloadSpec(
            name="autellix-programs",
            description="Autellix's evaluation (arXiv 2502.13965): programs with a heavy-tailed number of calls - "
                        "chat (ShareGPT-like), ReAct function calling (BFCL-like), tree search (LATS-like, one call "
                        "at a time), Poisson arrivals; with benchmarks/reproduction.py's Llama-3.1-8B on one A100",
            sessions=300,
            rps=1.0,
            arrival="poisson",
            mix=_autellix_mix(),
        ),
        "concur-batch": WorkloadSpec(
            name="concur-batch",
            description="CONCUR's evaluation (arXiv 2601.22705): agentic batch inference, 256 coding agents all "
                        "submitted at t=0, 6-30 steps with growing contexts; with benchmarks/reproduction.py's "
                        "Qwen3-32B on two H100s (tp=2)",
            sessions=256,
            rps=math.inf,
            mix=_concur_mix(),
        ),
    }


PRESETS: dict[str, WorkloadSpec] = _preset_specs()


def get_preset(name: str) -> WorkloadSpec:
    try:
        return PRESETS[name].model_copy(deep=True)
    except KeyError:
        raise BadInput(f"unknown workload preset {name!r} (known: {', '.join(PRESETS)})") from None


# ---------------------------------------------------------------------------------------- generation
def _pick(rng: np.random.Generator, weights: dict[K, float]) -> K:
    """A key drawn with probability proportional to its weight."""
    keys = list(weights)
    w = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _prefix_lengths(spec: WorkloadSpec) -> dict[tuple[str, int], int]:
    """Each (kind, prefix index) gets one length, drawn from its own stream."""
    out = {}
    for k_index, (kind, s) in enumerate(spec.mix.items()):
        for p in range(s.num_prefixes):
            rng = np.random.default_rng([spec.seed, _PREFIX_STREAM, k_index, p])
            out[(kind, p)] = s.prefix_tokens.sample_int(rng, minimum=1)
    return out


def _session(spec: WorkloadSpec, index: int, prefixes: dict[tuple[str, int], int]) -> Session:
    rng = np.random.default_rng([spec.seed, index])
    kind = _pick(rng, {k: v.weight for k, v in spec.mix.items()})
    s = spec.mix[kind]
    n_turns = s.turns.sample_int(rng, minimum=1)
    tool_weights = {n: k.weight for n, k in s.tools.items() if k.weight > 0}
    turns: list[Turn] = []
    new_tokens = s.task_tokens.sample_int(rng, minimum=1)
    for k in range(n_turns):
        output = s.output_tokens.sample_int(rng, minimum=1)
        tool = None
        if k < n_turns - 1:
            name = _pick(rng, tool_weights)
            kind_spec = s.tools[name]
            tool = ToolCall(
                name=name,
                cpu_seconds=round(kind_spec.cpu_seconds.sample(rng) * s.cpu_scale, 4),
                cores=_pick(rng, kind_spec.cores),
            )
        turns.append(Turn(new_tokens=new_tokens, output_tokens=output, tool=tool))
        if tool is not None:
            new_tokens = s.tools[tool.name].output_tokens.sample_int(rng) + s.followup_tokens.sample_int(rng)
    prefix_id, prefix_tokens = None, 0
    if s.num_prefixes:
        p = int(rng.integers(s.num_prefixes))
        prefix_id, prefix_tokens = f"{spec.name}/{kind}/{p}", prefixes[(kind, p)]
    return Session(
        id=f"{spec.name}-{spec.seed}-{index:05d}",
        arrival_s=0.0,
        prefix_id=prefix_id,
        prefix_tokens=prefix_tokens,
        turns=tuple(turns),
        kind=kind,
    )


def generate(spec: WorkloadSpec) -> Iterator[Session]:
    """The sessions of a synthetic workload, in arrival order."""
    prefixes = _prefix_lengths(spec)
    times = arrival_times(
        spec.arrival,
        spec.sessions,
        spec.rps,
        np.random.default_rng([spec.seed, _ARRIVAL_STREAM]),
        cv=spec.cv,
        timestamps=spec.timestamps,
        burstiness=spec.burstiness,
    )
    for i in range(spec.sessions):
        try:
            session = _session(spec, i, prefixes)
        except ValidationError as e:  # a distribution set so wide that a drawn session is out of range
            raise BadInput(f"workload {spec.name}: session {i}: {format_validation_error(e)}") from None
        yield session.with_arrival(round(float(times[i]), 6))


def background_chat(rps: float, until_s: float, seed: int) -> list[Session]:
    """Single-turn `chat` requests arriving as a Poisson process at `rps` over [0, until_s]: GPU contention
    traffic that shares the engine with the measured sessions."""
    if rps <= 0 or until_s <= 0:
        return []
    count = int(math.ceil(until_s * rps)) + 1
    spec = get_preset("chat").model_copy(update={"name": "bg-chat", "sessions": count, "rps": rps,
                                                 "arrival": "poisson", "seed": seed})
    return [s for s in generate(spec) if s.arrival_s <= until_s]


def customize(spec: WorkloadSpec, assignments: list[str]) -> WorkloadSpec:
    """Apply `--set` overrides. A key that is not a workload field (e.g. `turns.median`) is applied to
    every session kind of the mix, so single-kind presets read naturally."""
    expanded: list[str] = []
    for text in assignments:
        head = parse_assignment(text)[0][0]
        if head in WorkloadSpec.model_fields:
            expanded.append(text)
        else:
            expanded.extend(f"mix.{kind}.{text}" for kind in spec.mix)
    return apply_overrides(spec, expanded)
