"""Decision-level conformance of the two engine adapters over the one policy driver (harness/policy/driver.py).

The same scripted trace - five agent sessions of two or three calls, tool gaps between them, a KV cache small
enough that calls are preempted and pins released under pressure - drives the simulated engine's core
(harness/engines/sim/core.py, stepped by hand) and the vLLM scheduler plugin inside a real in-process vLLM
engine (the CPU build, the tiny model with dummy weights), on one scripted clock: step k plans at
`tick x DT_S` seconds and takes no time (the sim completes a plan at its start; vLLM's clock does not move
within a step), so the step time, which the two engines measure differently, plays no part. Every backend
that runs on engine "vllm" (and three settings that make more of their hooks bite on a trace this small), with
vLLM 0.32's admission rule (a waiting call needs room for its whole prompt) and the older one (its first
chunk), must then decide the same, step by step (`Decisions`):

* scheduled: the (call, tokens) pairs of the step in batch order - who runs and each chunk's size (prefix
  hits, prefill caps, chunk shrinking, the token budget);
* preempted: the victims, in order;
* pins made (session, blocks, tokens, deadline), used (by the session's next call), released early (blocks
  short) and expired; turn-end decisions (call, keep or free, seconds);
* the policy's order hooks (of a policy that has its own): asked in the same steps, with the same answer;
* and the free KV blocks after the step, so a difference in the books shows before it changes a decision.

Prompts are token ids built append-only per session (turn k's prompt = the previous prompt, that call's real
output ids from vLLM, new ids), each session's ids from a range of its own, so vLLM's content-hashed prefix
cache sees the hits the sim's per-session block keys give. Tool gaps advance the clock between a call's end
and its session's next call, which carries the tool as `prev_tool` (harness/calls.py, as the harness sends it).

One modelling difference is kept out of the trace: vLLM 0.32 frees a block without full content (a call's
partial last block) to the FRONT of its free queue, to be reused first, where the sim's KVCache puts every
freed block at the tail. The two engines then evict different cached blocks, and a later prefix hit differs
by whole blocks. It is allocator behaviour, not a policy's decision, and the sim cannot follow vLLM without
changing its results, so every call of TRACE ends with its context on a block boundary (no partial block is
freed at a turn end); `test_the_one_modelling_difference_is_the_free_order` shows the difference on the trace
one token off, and that it is the only one that trace meets: with vLLM freeing as the sim does, it conforms.

Two small traces (`SCENARIOS`) aim at rules the big one may not meet: calls that end in the same step, and a
pin used by the admission of its session's call while a later admission in that step needs the block it frees.

One vLLM engine serves every run (`PolicyScheduler.use_policy` on the idle engine, its prefix cache reset in
between), so it starts once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.backends import BACKENDS, get_backend
from harness.calls import CallMeta, PrevTool
from harness.config import RunConfig
from harness.engines.sim.core import EngineCore, SchedulerLimits
from harness.engines.sim.kv_cache import KVCache
from harness.engines.sim.request import SimRequest
from harness.policy import Policy
from harness.policy.driver import PolicyDriver

VLLM_BACKENDS = [name for name, backend in BACKENDS.items() if "vllm" in backend.engines]
# every backend that runs on vLLM with its defaults, and settings under which more of the hooks act on this trace
CASES = [pytest.param(name, {}, id=name) for name in VLLM_BACKENDS] + [
    # MLFQ quanta below the token budget, levels aging within the trace: prefill_cap caps competing prompt chunks
    pytest.param("mars", {"mars": {"quanta": (64, 48, 32, 16), "aging_s": 0.3}}, id="mars-small-quanta"),
    # PLAS quanta, thresholds and starvation this trace reaches: caps, demotions, promotions
    pytest.param("autellix", {"autellix": {"quanta": (96, 64, 48, 32), "service_thresholds": (150, 300, 450),
                                           "starvation_ratio": 0.25, "cap_prefill": True}},
                 id="autellix-small-quanta"),
    # past the cold start: TTLs from the tool-duration CDF, queueing delays and the engine's prefill estimate
    pytest.param("continuum-dy", {"continuum_dy": {"cold_start_samples": 2, "tool_min_samples": 2}},
                 id="continuum-dy-warm"),
]
SETTINGS = [pytest.param(True, id="reserve-full-prompt"), pytest.param(False, id="reserve-first-chunk")]

# ----------------------------------------------------------------------------------------- the setting
BLOCK = 32  # vLLM's CPU attention takes multiples of 32
NUM_GPU_BLOCKS = 37  # vLLM's count: block 0 is its null block, so 36 hold KV (the sim's KVCache gets 36)
BUDGET = 256  # max_num_batched_tokens: long prompts are chunked
MAX_SEQS = 16
MAX_MODEL_LEN = (NUM_GPU_BLOCKS - 1) * BLOCK
PREFILL_S_PER_TOKEN = 1e-4  # EngineView.prefill_seconds on both: the plugin's estimate, which zero-time steps keep
DT_S = 0.05  # scripted seconds per engine step
FIRST_ID, IDS_PER_SESSION = 16, 400  # session i draws its new prompt ids from [16 + 400 i, 16 + 400 (i + 1))


@dataclass(frozen=True)
class Turn:
    new_tokens: int  # prompt ids appended to the session's context
    output_tokens: int
    tool: str | None = None  # the tool that follows the call (None on the last turn)
    gap_ticks: int = 0  # the tool's duration in steps: the next call arrives this many ticks after the call ends


@dataclass(frozen=True)
class Script:
    session_id: str
    arrival_tick: int
    turns: tuple[Turn, ...]


# Every call's context (prompt + output) is 1 more than a multiple of BLOCK: what it computed fills whole blocks.
TRACE = (
    Script("a", 0, (Turn(217, 40, "grep", 4), Turn(26, 70, "pytest", 30), Turn(40, 24))),
    Script("b", 1, (Turn(165, 60, "grep", 2), Turn(92, 36, "grep", 3), Turn(14, 50))),
    Script("c", 3, (Turn(239, 50, "pytest", 50), Turn(16, 80))),
    Script("d", 6, (Turn(136, 25, "grep", 6), Turn(32, 64, "edit", 2), Turn(34, 30))),
    Script("e", 9, (Turn(91, 70, "grep", 3), Turn(36, 60))),
)


def shifted(trace: tuple[Script, ...], tokens: int) -> tuple[Script, ...]:
    """`trace` with `tokens` more new prompt tokens in every call."""
    return tuple(Script(s.session_id, s.arrival_tick, tuple(Turn(t.new_tokens + tokens, t.output_tokens, t.tool,
                                                                 t.gap_ticks) for t in s.turns)) for s in trace)


# Small traces aimed at one rule each that the two adapters must share (TRACE may not meet them).
SCENARIOS = {
    # p#0 and q#0 end in the same step while r#0 runs: each leaves `running` right before its own turn end, once
    # every call's token of the step is in (InferCept's TTL reads the other running calls' contexts)
    "same-step-turn-ends": (Script("r", 0, (Turn(300, 60),)),
                            Script("p", 1, (Turn(100, 20, "grep", 3), Turn(20, 10))),
                            Script("q", 1, (Turn(100, 20, "grep", 3), Turn(20, 10)))),
    # a's pin holds its call's partial last block; a#1 and b#0 are admitted in one step, b#0 into the last free
    # block - the one a's pin gives back when a#1 takes the pinned blocks it can hit: the pin is used at a#1's
    # admission (not released for b#0)
    "pin-used-at-admission": (Script("a", 0, (Turn(100, 20, "grep", 2), Turn(10, 8))),
                              Script("c", 1, (Turn(724, 40),)),
                              Script("b", 21, (Turn(193, 8),))),
}


# ------------------------------------------------------------------------------------- what is compared
@dataclass
class Decisions:
    """What one engine step decided (every field is compared)."""

    tick: int
    scheduled: list[tuple[str, int]] = field(default_factory=list)  # (call, tokens) in batch order
    preempted: list[str] = field(default_factory=list)
    pins_made: list[tuple[str, int, int, float]] = field(default_factory=list)  # session, blocks, tokens, deadline
    pins_used: list[str] = field(default_factory=list)
    pins_released: list[str] = field(default_factory=list)
    pins_expired: list[str] = field(default_factory=list)
    turn_ends: list[tuple[str, str, float]] = field(default_factory=list)  # call, action, seconds
    # the policy's own orders (of a policy that overrides them), when asked: which queue and the calls in order
    orders: list[tuple[str, list[str]]] = field(default_factory=list)
    free_blocks: int = -1  # after the step

    @staticmethod
    def compared() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Decisions))


class Recorder:
    """Logs each step's decisions by wrapping one engine's PolicyDriver - the instance its adapter calls for
    every scheduled chunk, preemption, turn end and pin operation - and the policy's order hooks."""

    def __init__(self, driver: PolicyDriver, call_id: Callable[[Any], str]) -> None:
        self.steps: list[Decisions] = []
        self.outside = Decisions(-1)  # decisions made between steps (there must be none)
        self._open = False
        pins = driver.pins
        scheduled, preempted, turn_end = driver.scheduled, driver.preempted, driver.turn_end
        make, consume, expire, release_one = pins.make, pins.consume, pins.expire, pins.release_one

        def step() -> Decisions:
            return self.steps[-1] if self._open else self.outside

        def on_scheduled(req: Any, start_s: float, before: int, n: int) -> None:
            step().scheduled.append((call_id(req), n))
            scheduled(req, start_s, before, n)

        def on_preempted(req: Any, computed: int, now: float) -> None:
            step().preempted.append(call_id(req))
            preempted(req, computed, now)

        def on_turn_end(req: Any, now: float) -> Any:
            decision = turn_end(req, now)
            step().turn_ends.append((call_id(req), decision.action, decision.seconds))
            return decision

        def on_make(session: str, blocks: list[Any], computed: int, now: float, seconds: float) -> None:
            step().pins_made.append((session, len(blocks), computed, now + seconds))
            make(session, blocks, computed, now, seconds)

        def on_consume(session: str) -> bool:
            used = consume(session)
            if used:
                step().pins_used.append(session)
            return used

        def on_expire(now: float) -> None:
            before = set(pins.pins)
            expire(now)
            step().pins_expired.extend(sorted(before - set(pins.pins)))

        def on_release_one(now: float) -> str | None:
            session = release_one(now)
            if session is not None:
                step().pins_released.append(session)
            return session

        def ordered(queue: str, order: Callable[[list[Any], float], list[Any]]) -> Callable[[list[Any], float], Any]:
            def record(reqs: list[Any], now: float) -> list[Any]:
                out = order(reqs, now)
                step().orders.append((queue, [call_id(r) for r in out]))
                return out
            return record

        policy = driver.policy
        for queue in ("running", "waiting"):  # hooks left at vLLM's behaviour: the plugin need not ask them
            name = f"order_{queue}"
            if getattr(type(policy), name) is not getattr(Policy, name):
                setattr(policy, name, ordered(queue, getattr(policy, name)))
        for obj, name, wrapper in ((driver, "scheduled", on_scheduled), (driver, "preempted", on_preempted),
                                   (driver, "turn_end", on_turn_end), (pins, "make", on_make),
                                   (pins, "consume", on_consume), (pins, "expire", on_expire),
                                   (pins, "release_one", on_release_one)):
            setattr(obj, name, wrapper)

    def begin(self, tick: int) -> None:
        self.steps.append(Decisions(tick))
        self._open = True

    def end(self, free_blocks: int) -> None:
        self.steps[-1].free_blocks = free_blocks
        self._open = False


@dataclass(frozen=True)
class Divergence:
    step: int  # index in both step lists
    field: str
    sim: Any
    vllm: Any
    context: str

    def __str__(self) -> str:
        return (f"first divergence at step {self.step}, {self.field}: sim {self.sim!r}, vllm {self.vllm!r}\n"
                f"{self.context}")


def first_divergence(sim: list[Decisions], real: list[Decisions]) -> Divergence | None:
    """The first step where the two engines decided differently: every field, exactly, in field order."""
    for i, (a, b) in enumerate(zip(sim, real, strict=False)):  # a missing step is reported below
        for name in Decisions.compared():
            if getattr(a, name) != getattr(b, name):
                return Divergence(i, name, getattr(a, name), getattr(b, name), _context(sim, real, i))
    if len(sim) != len(real):
        i = min(len(sim), len(real))
        return Divergence(i, "number of steps", len(sim), len(real), _context(sim, real, i))
    return None


def _context(sim: list[Decisions], real: list[Decisions], i: int) -> str:
    lines = []
    for j in range(max(0, i - 2), i + 1):
        for name, steps in (("sim ", sim), ("vllm", real)):
            if j < len(steps):
                shown = {k: v for k, v in vars(steps[j]).items() if v or k in ("tick", "free_blocks")}
                lines.append(f"  [{j}] {name} {shown}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the scripted run
def new_ids(index: int, turn: int, n: int) -> list[int]:
    """`n` new prompt ids for turn `turn` of the trace's session `index`, from that session's own range."""
    rng = np.random.default_rng(1000 * index + turn)
    return (FIRST_ID + IDS_PER_SESSION * index + rng.integers(0, IDS_PER_SESSION, size=n)).tolist()


def call_id(script: Script, turn: int) -> str:
    return f"{script.session_id}#{turn}"


class EngineRun:
    """One engine under a scripted trace: submit calls, step at a given time, report the calls that finished."""

    recorder: Recorder

    def submit(self, script: Script, turn: int, prompt: list[int], prev_tool: PrevTool | None, now: float) -> None:
        raise NotImplementedError

    def has_work(self) -> bool:
        raise NotImplementedError

    def step(self, now: float) -> list[tuple[str, list[int]]]:
        """One engine step at `now`: the calls that finished in it, with their output ids."""
        raise NotImplementedError

    def free_blocks(self) -> int:
        raise NotImplementedError


def drive(run: EngineRun, trace: tuple[Script, ...], max_steps: int = 3000) -> list[Decisions]:
    """Run `trace` to its end on `run`: calls arrive at their tick (a session's first at its arrival, the next
    one its tool gap after the previous call ended), the engine steps once per tick while it has work, and an
    idle engine skips to the next arrival. The decisions of every step."""
    index = {s.session_id: i for i, s in enumerate(trace)}
    scripts = {s.session_id: s for s in trace}
    due: dict[str, tuple[int, int, PrevTool | None]] = {s.session_id: (s.arrival_tick, 0, None) for s in trace}
    context: dict[str, list[int]] = {s.session_id: [] for s in trace}
    tick = 0
    while due or run.has_work():
        for sid, (at, turn, prev) in sorted(due.items(), key=lambda item: (item[1][0], item[0])):
            if at <= tick:
                context[sid] = context[sid] + new_ids(index[sid], turn, scripts[sid].turns[turn].new_tokens)
                run.submit(scripts[sid], turn, context[sid], prev, tick * DT_S)
                del due[sid]
        if not run.has_work():
            tick = min(at for at, _, _ in due.values())
            continue
        assert len(run.recorder.steps) < max_steps, "the trace did not finish"
        run.recorder.begin(tick)
        finished = run.step(tick * DT_S)
        run.recorder.end(run.free_blocks())
        for cid, output in finished:
            sid, turn = cid.split("#")[0], int(cid.split("#")[1])
            context[sid] = context[sid] + output
            t = scripts[sid].turns[turn]
            if t.tool is not None:
                due[sid] = (tick + t.gap_ticks, turn + 1, PrevTool(t.tool, t.gap_ticks * DT_S))
        tick += 1
    assert vars(run.recorder.outside) == vars(Decisions(-1)), f"decisions outside any step: {run.recorder.outside}"
    return run.recorder.steps


def make_policy(backend: str, engine: str, sets: dict[str, Any]) -> Policy:
    return get_backend(backend, engine).make_policy(RunConfig(backend=backend, engine=engine, **sets))


class SimRun(EngineRun):
    """The simulated engine's core, stepped by hand: `schedule(now)`, then `complete(plan, now)`."""

    def __init__(self, policy: Policy, reserve_full_prompt: bool) -> None:
        limits = SchedulerLimits(max_num_batched_tokens=BUDGET, max_num_seqs=MAX_SEQS, long_prefill_token_threshold=0,
                                 reserve_full_prompt=reserve_full_prompt)
        self.core = EngineCore(KVCache(NUM_GPU_BLOCKS - 1, BLOCK), limits, policy,
                               prefill_seconds=lambda tokens: tokens * PREFILL_S_PER_TOKEN)
        self.policy = policy
        self.recorder = Recorder(self.core.driver, lambda req: req.request_id)

    def submit(self, script: Script, turn: int, prompt: list[int], prev_tool: PrevTool | None, now: float) -> None:
        t = script.turns[turn]
        if prev_tool is not None:  # as the harness: the tool's end, then the session's next call
            self.policy.on_tool_end(script.session_id, prev_tool.name, prev_tool.duration_s, now)
        self.core.add(SimRequest(
            request_id=call_id(script, turn), session_id=script.session_id, turn=turn,
            is_last_turn=turn == len(script.turns) - 1, tool_name=t.tool, session_arrival_s=script.arrival_tick * DT_S,
            arrival_s=now, num_prompt_tokens=len(prompt), max_tokens=t.output_tokens), now)

    def has_work(self) -> bool:
        return self.core.has_work

    def step(self, now: float) -> list[tuple[str, list[int]]]:
        plan = self.core.schedule(now)
        return [(req.request_id, [0] * req.num_output_tokens) for req in self.core.complete(plan, now)]

    def free_blocks(self) -> int:
        return self.core.kv.num_free_blocks


def run_sim(backend: str, sets: dict[str, Any], reserve_full_prompt: bool,
            trace: tuple[Script, ...] = TRACE) -> list[Decisions]:
    return drive(SimRun(make_policy(backend, "sim", sets), reserve_full_prompt), trace)


RUN_IDS = itertools.count()  # vLLM request ids are unique per engine: each run prefixes its calls' ids


class VllmRun(EngineRun):
    """The plugin in the real vLLM engine, bound to `policy`, on the scripted clock (`PolicyScheduler.clock`)."""

    def __init__(self, llm: Any, policy: Policy, reserve_full_prompt: bool) -> None:
        self.llm = llm
        self.sched = llm.engine_core.engine_core.scheduler
        assert not self.sched.has_unfinished_requests() and not self.sched.pins
        assert self.sched.reset_prefix_cache(), "a previous run left blocks in use"
        self.sched.use_policy(policy)
        self.sched.scheduler_reserve_full_isl = reserve_full_prompt  # what schedule() reads of the setting
        self.now = 0.0
        self.sched.clock = lambda: self.now
        self.prefix = f"{next(RUN_IDS)}/"
        self.outputs: dict[str, list[int]] = {}
        self.recorder = Recorder(self.sched.driver, lambda view: view.meta.call_id)

    def submit(self, script: Script, turn: int, prompt: list[int], prev_tool: PrevTool | None, now: float) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        self.now = now
        t = script.turns[turn]
        cid = call_id(script, turn)
        meta = CallMeta(cid, script.session_id, turn, turn == len(script.turns) - 1, t.tool,
                        script.arrival_tick * DT_S, prev_tool)
        params = SamplingParams(max_tokens=t.output_tokens, ignore_eos=True, temperature=0.0,
                                output_kind=RequestOutputKind.DELTA, extra_args={"mars": meta.to_dict()})
        self.outputs[self.prefix + cid] = []
        self.llm.add_request(self.prefix + cid, TokensPrompt(prompt_token_ids=list(prompt)), params)

    def has_work(self) -> bool:
        return bool(self.sched.has_unfinished_requests())

    def step(self, now: float) -> list[tuple[str, list[int]]]:
        self.now = now
        finished = []
        for out in self.llm.step():
            ids = self.outputs[out.request_id]
            ids.extend(out.outputs[0].token_ids)
            if out.finished:
                finished.append((out.request_id[len(self.prefix):], ids))
        return finished

    def free_blocks(self) -> int:
        return int(self.sched.engine_view.num_free_blocks)


def run_vllm(llm: Any, backend: str, sets: dict[str, Any], reserve_full_prompt: bool,
             trace: tuple[Script, ...] = TRACE, policy: Policy | None = None) -> list[Decisions]:
    run = VllmRun(llm, policy or make_policy(backend, "vllm", sets), reserve_full_prompt)
    steps = drive(run, trace)
    assert not run.sched.has_unfinished_requests() and not run.sched.pins  # idle again: the next run may bind
    return steps


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One in-process vLLM engine (the CPU build, the tiny model with dummy weights) with the plugin; each run
    binds its own policy to it."""
    from harness.engines.vllm.engine import VllmSetup, engine_args, prepare_environment

    prepare_environment(str(tmp_path_factory.mktemp("vllm-cache")))
    import torch
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    setup = VllmSetup(model=str(tiny_model_dir), max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=BUDGET,
                      max_num_seqs=MAX_SEQS, num_gpu_blocks=NUM_GPU_BLOCKS, block_size=BLOCK, load_format="dummy",
                      enable_prefix_caching=True, long_prefill_token_threshold=0, scheduler_reserve_full_isl=True)
    config = RunConfig(backend="vllm", engine="vllm")
    llm = LLMEngine.from_engine_args(EngineArgs(**engine_args(setup, {"config": config.model_dump(mode="json")})))
    # One compute thread: decisions do not depend on it, and on two shared cores OpenMP threads that wait for
    # each other make steps 10-20 times slower. (vLLM's CPU worker replaces torch.set_num_threads by a stub.)
    threads = torch.get_num_threads()
    torch._C.set_num_threads(1)
    try:
        sched = llm.engine_core.engine_core.scheduler
        assert sched.block_size == BLOCK and sched.engine_view.num_total_blocks == NUM_GPU_BLOCKS - 1
        assert sched.scheduler_config.long_prefill_token_threshold == 0
        assert FIRST_ID + IDS_PER_SESSION * len(TRACE) <= llm.model_config.get_vocab_size()
        yield llm
    finally:
        torch._C.set_num_threads(threads)
        llm.engine_core.shutdown()


# ------------------------------------------------------------------------------------------ the tests
def test_the_comparison_reports_the_first_differing_step_and_field() -> None:
    base = [Decisions(t, scheduled=[("a#0", 256)], free_blocks=9) for t in range(4)]
    assert first_divergence(base, [Decisions(**vars(d)) for d in base]) is None
    for name, value in (("tick", 7), ("scheduled", [("a#0", 255)]), ("preempted", ["a#0"]),
                        ("pins_made", [("a", 3, 96, 1.0)]), ("pins_used", ["a"]), ("pins_released", ["a"]),
                        ("pins_expired", ["a"]), ("turn_ends", [("a#0", "free", 0.0)]), ("orders", [("waiting", ["a#1"])]),
                        ("free_blocks", 8)):
        other = [Decisions(**vars(d)) for d in base]
        setattr(other[2], name, value)
        divergence = first_divergence(base, other)
        assert divergence is not None and (divergence.step, divergence.field) == (2, name)
        assert "first divergence at step 2" in str(divergence)
    divergence = first_divergence(base, base[:3])
    assert divergence is not None and (divergence.step, divergence.field) == (3, "number of steps")


def test_the_trace_exercises_every_kind_of_decision() -> None:
    """On the sim alone: over the cases and settings compared below, the trace chunks prompts, caps and shrinks
    chunks, preempts, keeps and frees at turn ends, and makes, uses, releases early and lets expire pins; and
    every call's context ends on a block boundary (see the module docstring)."""
    for script in TRACE:
        context = 0
        for turn in script.turns:
            context += turn.new_tokens + turn.output_tokens
            assert context % BLOCK == 1, (script.session_id, context)
    totals: dict[str, int] = {}
    for case, reserve in itertools.product(CASES, (True, False)):
        backend, sets = case.values
        run = SimRun(make_policy(backend, "sim", sets), reserve)
        steps = drive(run, TRACE)
        for key, n in {**run.core.driver.counters,
                       "budget-bound steps": sum(sum(n for _, n in s.scheduled) == BUDGET for s in steps),
                       "keeps": sum(a == "keep" for s in steps for _, a, _ in s.turn_ends),
                       "frees": sum(a == "free" for s in steps for _, a, _ in s.turn_ends)}.items():
            totals[key] = totals.get(key, 0) + n
    kinds = ("preemptions", "pins_made", "pins_used", "pins_expired", "pins_released_early", "chunks_shrunk",
             "chunks_capped", "budget-bound steps", "keeps", "frees")
    assert all(totals[k] > 0 for k in kinds), totals


def test_the_scenarios_set_up_what_they_test() -> None:
    ends = run_sim("infercept", {}, True, SCENARIOS["same-step-turn-ends"])
    assert any([(c, a) for c, a, _ in s.turn_ends] == [("p#0", "keep"), ("q#0", "keep")] for s in ends)
    steps = run_sim("continuum", {}, True, SCENARIOS["pin-used-at-admission"])
    made = next(pin for s in steps for pin in s.pins_made if pin[0] == "a")
    assert made[1] * BLOCK > made[2]  # the pin holds a partial last block
    step = next(s for s in steps if any(c == "b#0" for c, _ in s.scheduled))
    assert [c for c, n in step.scheduled if n > 1] == ["a#1", "b#0"] and step.pins_used == ["a"]
    assert step.free_blocks == 0 and not step.pins_released


@pytest.mark.engine
@pytest.mark.parametrize("reserve_full_prompt", SETTINGS)
@pytest.mark.parametrize(("backend", "sets"), CASES)
def test_the_vllm_plugin_decides_as_the_simulated_engine(vllm_engine: Any, backend: str, sets: dict[str, Any],
                                                          reserve_full_prompt: bool) -> None:
    sim = run_sim(backend, sets, reserve_full_prompt)
    real = run_vllm(vllm_engine, backend, sets, reserve_full_prompt)
    divergence = first_divergence(sim, real)
    assert divergence is None, f"{backend} {sets}: {divergence}"


@pytest.mark.engine
@pytest.mark.parametrize("backend", VLLM_BACKENDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_vllm_plugin_decides_as_the_simulated_engine_in_the_scenarios(vllm_engine: Any, scenario: str,
                                                                          backend: str) -> None:
    trace = SCENARIOS[scenario]
    divergence = first_divergence(run_sim(backend, {}, True, trace), run_vllm(vllm_engine, backend, {}, True, trace))
    assert divergence is None, f"{backend}: {divergence}"


@pytest.mark.engine
def test_a_plugin_that_decides_differently_is_caught(vllm_engine: Any) -> None:
    """MARS whose victim, in the vLLM run only, is the running call next to the one MARS picks: the comparison
    fails at the first step that preempts, and at no earlier one."""
    sim = run_sim("mars", {}, True)
    first = next(i for i, step in enumerate(sim) if step.preempted)
    policy = make_policy("mars", "vllm", {})
    rule = policy.choose_victim

    def neighbour(running: Any, now: float) -> Any:
        running = list(running)
        i = running.index(rule(running, now))
        return running[i - 1] if i > 0 else running[min(1, len(running) - 1)]

    policy.choose_victim = neighbour  # type: ignore[method-assign]
    divergence = first_divergence(sim, run_vllm(vllm_engine, "mars", {}, True, policy=policy))
    assert divergence is not None and divergence.step == first, divergence
    assert divergence.field in ("scheduled", "preempted") and f"at step {first}," in str(divergence)


@pytest.mark.engine
def test_the_one_modelling_difference_is_the_free_order(vllm_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM 0.32's BlockPool.free_blocks puts a freed block that holds no full content (a call's partial last
    block) at the front of the free queue, to be reused first, and cached ones at the tail; the sim's KVCache
    puts every freed block at the tail. With contexts one token past a block boundary, partial blocks are freed
    at turn ends (and at preemptions): vLLM then keeps a cached block the sim evicts, and a later call's prefix
    hit is whole blocks longer on vLLM. On this trace it shows first for FCFS at step 98: e#1, preempted at step
    86, comes back with 4 of its context's blocks still cached on the sim and 5 on vLLM (its first chunk: 76
    tokens on the sim, 44 on vLLM). With vLLM freeing every block to the tail, as the sim does, every backend
    conforms again - on a trace whose pins also hold the calls' partial last blocks."""
    from vllm.v1.core.block_pool import BlockPool

    trace = shifted(TRACE, 1)
    sim = run_sim("vllm", {}, True, trace)
    divergence = first_divergence(sim, run_vllm(vllm_engine, "vllm", {}, True, trace))
    assert divergence is not None, "the free order made no difference on this trace"
    assert (divergence.step, divergence.field) == (98, "scheduled"), divergence
    assert (divergence.sim[-1], divergence.vllm[-1]) == (("e#1", 76), ("e#1", 44)), divergence
    assert divergence.sim[:-1] == divergence.vllm[:-1] and sim[86].preempted == ["e#1"]

    def free_to_tail(pool: Any, ordered_blocks: Any) -> None:
        freed = []
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0 and not block.is_null:
                freed.append(block)
        pool.free_block_queue.append_n(freed)

    monkeypatch.setattr(BlockPool, "free_blocks", free_to_tail)
    for backend in VLLM_BACKENDS:
        sim = run_sim(backend, {}, True, trace)
        divergence = first_divergence(sim, run_vllm(vllm_engine, backend, {}, True, trace))
        assert divergence is None, f"{backend}: {divergence}"
        if backend == "continuum":
            assert any(blocks * BLOCK > tokens for s in sim for _, blocks, tokens, _ in s.pins_made)
