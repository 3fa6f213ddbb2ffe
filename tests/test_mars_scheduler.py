"""MARS's engine-side rules, each pinned by a scenario that fails if the rule breaks."""

from __future__ import annotations

from tests.fakes import Engine, Req
from harness.config import EngineSettings, RunConfig
from harness.policy import Policy, ScheduledStep
from harness.engines.sim.run import SimRun, simulate
from harness.engines.sim.testbed import build_setup
from harness.policy.admission import AdmitAll
from mars_impl.scheduler import MlfqScheduler, SchedulerSettings
from workloads.model import Session, Turn


def mlfq(**settings: object) -> tuple[MlfqScheduler, Engine]:
    policy, engine = MlfqScheduler(SchedulerSettings(**settings)), Engine()
    policy.bind(engine)  # type: ignore[arg-type]
    return policy, engine


def step(policy: MlfqScheduler, t: float, *pairs: tuple[Req, int]) -> None:
    for req, n in pairs:
        req.num_computed_tokens += n
    policy.on_scheduled(ScheduledStep(t, 0.01, list(pairs), []))


def test_remaining_work_levels() -> None:
    policy, _ = mlfq()
    assert [policy.remaining_level(Req("a", num_prompt_tokens=n)) for n in (2048, 2049, 8192, 32768, 32769)] == [0, 1, 1, 2, 3]
    assert policy.remaining_level(Req("d", num_prompt_tokens=50_000, num_computed_tokens=50_000, num_output_tokens=1)) == 0


def test_quantum_caps_prefill_chunks_and_feedback_demotes() -> None:
    policy, engine = mlfq()
    long, short = Req("long", num_prompt_tokens=40_000), Req("short", num_prompt_tokens=500)
    engine.running = [long, short]
    for r in engine.running:
        policy.on_arrival(r, 0.0)
    assert policy.prefill_cap(long, 0.0) == 2048  # never run: level 0
    step(policy, 0.0, (long, 2048))
    # ran a whole quantum with 37,952 tokens left: feedback 1, remaining level 3 -> effective 3
    assert policy.level(long, 0.1) == 3
    assert policy.prefill_cap(long, 0.1) == 256
    assert policy.order_running([long, short], 0.1) == [short, long]


def test_a_request_alone_is_not_capped_unless_asked() -> None:
    policy, engine = mlfq()
    alone = Req("alone", num_prompt_tokens=40_000)
    engine.running = [alone]
    policy.on_arrival(alone, 0.0)
    step(policy, 0.0, (alone, 8192))
    assert policy.prefill_cap(alone, 0.1) is None
    strict, engine2 = mlfq(cap_when_alone=True)
    engine2.running = [alone]
    strict.on_arrival(alone, 0.0)
    assert strict.prefill_cap(alone, 0.0) == 2048


def test_aging_lifts_a_starved_request() -> None:
    policy, engine = mlfq()
    starved = Req("starved", num_prompt_tokens=40_000)
    engine.running = [starved, Req("other")]
    policy.on_arrival(starved, 0.0)
    policy.prefill_cap(starved, 0.0)
    step(policy, 0.0, (starved, 2048))
    assert policy.level(starved, 10.0) == 3
    assert policy.level(starved, 30.0) == 2  # floor(30 / 30) = 1 level lifted
    assert policy.level(starved, 95.0) == 0


def test_decode_resets_feedback_and_decodes_go_first() -> None:
    policy, engine = mlfq()
    dec = Req("dec", num_prompt_tokens=100, num_computed_tokens=0)
    big = Req("big", arrival_s=-1.0, num_prompt_tokens=20_000)
    engine.running = [big, dec]
    for r in engine.running:
        policy.on_arrival(r, 0.0)
    policy.prefill_cap(big, 0.0)
    step(policy, 0.0, (big, 2048), (dec, 100))
    dec.num_output_tokens = 1
    assert dec.is_decoding and policy.level(dec, 0.1) == 0 and policy.level(big, 0.1) == 2
    assert policy.order_running([big, dec], 0.1) == [dec, big]


def test_victim_is_lowest_priority_biggest_newest_and_decodes_last() -> None:
    policy, engine = mlfq()
    dec = Req("dec", arrival_s=9.0, num_prompt_tokens=100, num_computed_tokens=100, num_output_tokens=1, num_blocks=500)
    low_small = Req("low_small", arrival_s=1.0, num_prompt_tokens=40_000, num_blocks=10)
    low_big = Req("low_big", arrival_s=0.0, num_prompt_tokens=40_000, num_blocks=90)
    high = Req("high", arrival_s=5.0, num_prompt_tokens=500, num_blocks=300)
    running = [dec, low_small, low_big, high]
    engine.running = running
    for r in running:
        policy.on_arrival(r, 0.0)
        policy.prefill_cap(r, 0.0)
    step(policy, 0.0, (low_small, 2048), (low_big, 2048))
    assert policy.choose_victim(running, 0.1) is low_big
    assert policy.choose_victim([dec, high], 0.1) is high
    assert policy.choose_victim([dec], 0.1) is dec


def test_chunk_halves_down_to_one_block_then_preempts() -> None:
    policy, _ = mlfq()
    req = Req("r", num_prompt_tokens=4000)
    assert policy.on_allocation_failure(req, 2048, 0.0) == 1024
    assert policy.on_allocation_failure(req, 20, 0.0) == 16
    assert policy.on_allocation_failure(req, 16, 0.0) == 0
    decoding = Req("d", num_prompt_tokens=10, num_computed_tokens=10, num_output_tokens=1)
    assert policy.on_allocation_failure(decoding, 1, 0.0) == 0
    off, _ = mlfq(chunk_shrink=False)
    assert off.on_allocation_failure(req, 2048, 0.0) == 0


def _one_turn(sid: str, arrival: float, prompt: int, output: int) -> Session:
    return Session(id=sid, arrival_s=arrival, turns=(Turn(new_tokens=prompt, output_tokens=output),))


class Recorder(MlfqScheduler):
    """MLFQ that records each step's (request, tokens) and every preemption and chunk shrink."""

    def __init__(self, settings: SchedulerSettings | None = None) -> None:
        super().__init__(settings)
        self.steps: list[list[tuple[str, int]]] = []
        self.events: list[str] = []
        self.shrunk_to: set[tuple[str, int]] = set()

    def on_scheduled(self, step: ScheduledStep) -> None:
        self.steps.append([(r.request_id, n) for r, n in step.scheduled])
        super().on_scheduled(step)

    def on_allocation_failure(self, req, tokens: int, now: float) -> int:
        smaller = super().on_allocation_failure(req, tokens, now)
        self.events.append("shrink" if smaller else "preempt")
        if smaller:
            self.shrunk_to.add((req.request_id, smaller))
        return smaller

    def on_preempted(self, req, now: float) -> None:
        self.events.append(f"preempted {req.request_id}")
        super().on_preempted(req, now)


def test_on_the_engine_a_long_prompt_cannot_take_a_step_from_short_work() -> None:
    setup = build_setup(RunConfig())
    policy = Recorder()
    sessions = [_one_turn("long", 0.0, 60_000, 4)] + [_one_turn(f"s{i}", 0.001, 800, 30) for i in range(4)]
    out = SimRun(sessions, policy, AdmitAll(), setup).run()
    assert out.sessions["completed"].all()
    long_chunks = [n for s in policy.steps for rid, n in s if rid == "long#0"]
    # Alone at t=0 the long prompt takes the whole budget; once short work competes it gets its level's
    # quantum (51,808 tokens left: level 3, 256 tokens).
    assert long_chunks[0] == 8192 and max(long_chunks[1:6]) <= 256
    vllm = simulate(sessions, Policy(), setup).calls.set_index("session_id")
    mars = out.calls.set_index("session_id")
    short = [f"s{i}" for i in range(4)]
    assert (mars.loc[short, "first_token_s"] < vllm.loc[short, "first_token_s"]).all()


def test_on_the_engine_chunks_shrink_before_anyone_is_preempted() -> None:
    # 300 blocks = 4,800 tokens for 2 x 2,500-token prompts chunked 512 at a time: b's chunks run out.
    setup = build_setup(RunConfig(engine_args=EngineSettings(num_gpu_blocks=300, max_num_batched_tokens=512,
                                                             scheduler_reserve_full_isl=False)))
    policy = Recorder()
    sessions = [_one_turn("a", 0.0, 2500, 800), _one_turn("b", 0.0, 2500, 50)]
    out = SimRun(sessions, policy, AdmitAll(), setup).run()
    assert out.sessions["completed"].all()
    first_preempt = policy.events.index("preempted b#0")
    # 512 -> 256 -> 128 -> 64 -> 32 -> 16 tokens before giving up on the chunk
    assert policy.events[:5] == ["shrink"] * 5 and policy.events[first_preempt - 1] == "preempt"
    assert any((rid, n) in policy.shrunk_to for s in policy.steps for rid, n in s)  # a shrunk chunk did run


class WaitingChecker(MlfqScheduler):
    """MLFQ that checks, at every step and preemption, why it may leave the waiting queue as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.preemptions = 0
        self.steps_with_waiting = 0

    def on_preempted(self, req, now: float) -> None:
        super().on_preempted(req, now)
        self.preemptions += 1
        assert self.engine.waiting[0] is req  # the engine put it at the very front
        assert self.level(req, now) == 0

    def on_scheduled(self, step: ScheduledStep) -> None:
        waiting = list(self.engine.waiting)
        self.steps_with_waiting += bool(waiting)
        assert all(self.level(r, step.start_s) == 0 for r in waiting)
        super().on_scheduled(step)


def test_waiting_requests_are_all_at_level_zero_so_the_queue_order_is_the_mlfq_order() -> None:
    setup = build_setup(RunConfig(engine_args=EngineSettings(num_gpu_blocks=400, max_num_batched_tokens=512,
                                                             scheduler_reserve_full_isl=False)))
    policy = WaitingChecker()
    sessions = [_one_turn(f"s{i}", 0.01 * i, 1500 + 300 * i, 300) for i in range(8)]
    out = SimRun(sessions, policy, AdmitAll(), setup).run()
    assert out.sessions["completed"].all()
    assert policy.preemptions >= 2 and policy.steps_with_waiting > 10
    queue = [Req("a"), Req("b"), Req("c")]
    assert policy.order_waiting(queue, 1.0) == queue  # the engine's order, untouched
