"""The backend registry: what a user can name with `--backend`. Each entry is a policy (and, for MARS, an
admission controller), the engines it runs on, and its settings section of the run config.

Adding a policy is one file (baselines/NAME.py, on the contract in harness.policy) and one entry here
(docs/extending.md). Factories receive the validated RunConfig; a backend's settings are `cfg.<section>`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from baselines.autellix import AutellixPolicy, AutellixSettings
from baselines.concur import ConcurAdmission, ConcurSettings
from baselines.continuum import ContinuumDynamicPolicy, ContinuumDynamicSettings, ContinuumPolicy, ContinuumSettings
from baselines.fcfs import FcfsPolicy
from baselines.infercept import InferCeptPolicy, InferCeptSettings
from baselines.lpm import LpmSettings, SglangPolicy
from harness.errors import BadInput
from harness.policy import AdmissionController, AdmitAll, Policy
from harness.policy.tools import FifoTools, ToolOrder
from mars_impl.mars import PREVIEW_OVERRIDES, MarsPolicy, MarsSettings, mars_admission, mars_tool_order

if TYPE_CHECKING:
    from harness.config import RunConfig

@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    engines: tuple[str, ...]
    make_policy: Callable[[RunConfig], Policy]
    make_admission: Callable[[RunConfig], AdmissionController] = lambda cfg: AdmitAll()
    # the CPU half (harness.policy.tools): which waiting tool call runs next; FIFO unless the backend says
    make_tool_order: Callable[[RunConfig], ToolOrder] = lambda cfg: FifoTools()
    # the run config's section holding this backend's settings (`--set KEY.field=...`) and its model
    settings: tuple[str, type[BaseModel]] | None = None
    # the sim engine's prefix cache when engine_args.prefix_cache is "auto": "block" (vLLM) or "radix" (SGLang);
    # the testbed is built from the config (harness.engines.sim.testbed.build_setup), so the backend names it here
    prefix_cache: str = "block"

    @staticmethod
    def of(target: str, engines: tuple[str, ...] = ("sim", "vllm")) -> Backend:
        """The backend of a policy class named "module:Class" - a new policy's one registry line. The class's
        `name` names the backend, its docstring's first line describes it, and its `Settings` (a pydantic
        model, optional) is the run config's section `name` (dashes as underscores); the policy is built with
        that section, or with no argument when it has none."""
        module, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module), class_name)
        model = getattr(cls, "Settings", None)
        key = str(cls.name).replace("-", "_")
        description = (cls.__doc__ or cls.name).strip().splitlines()[0]
        if model is None:
            return Backend(cls.name, description, engines, lambda cfg: cls())
        return Backend(cls.name, description, engines, lambda cfg: cls(getattr(cfg, key)), settings=(key, model))


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "vllm",
            "vanilla vLLM V1: FCFS, chunked prefill, prefix caching (LRU), recompute preemption, no admission control "
            "(on --engine http: the attached server as it is)",
            ("sim", "vllm", "http"),
            lambda cfg: FcfsPolicy(),
        ),
        Backend(
            "continuum",
            "Continuum: session-level FCFS, KV pinned for a 2 s TTL after short tool calls",
            ("sim", "vllm"),
            lambda cfg: ContinuumPolicy(cfg.continuum),
            settings=("continuum", ContinuumSettings),
        ),
        Backend(
            "continuum-dy",
            "Continuum with a TTL chosen per tool call from tool-duration CDFs, reload cost and queueing delay",
            ("sim", "vllm"),
            lambda cfg: ContinuumDynamicPolicy(cfg.continuum_dy),
            settings=("continuum_dy", ContinuumDynamicSettings),
        ),
        Backend(
            "autellix",
            "Autellix (PLAS): program-level attained-service MLFQ with starvation promotion",
            ("sim", "vllm"),
            lambda cfg: AutellixPolicy(cfg.autellix),
            settings=("autellix", AutellixSettings),
        ),
        Backend(
            "infercept",
            "InferCept: FCFS; KV kept across tool calls for TTL = discard cost / context",
            ("sim", "vllm"),
            lambda cfg: InferCeptPolicy(cfg.infercept),
            settings=("infercept", InferCeptSettings),
        ),
        Backend(
            "mars",
            "MARS: AIMD admission on KV and tool-pool pressure, agent-centric MLFQ with quantum-capped chunks, "
            "chunk shrinking, benefit-tested KV retention across tool calls, shortest-expected-first tool pool "
            "(ablations: --set mars.*)",
            ("sim", "vllm"),
            lambda cfg: MarsPolicy(cfg.mars),
            lambda cfg: mars_admission(cfg.mars, cfg.tool_cores, cfg.rps),
            settings=("mars", MarsSettings),
            make_tool_order=lambda cfg: mars_tool_order(cfg.mars),
        ),
        Backend(
            "mars-admission",
            "MARS's control plane alone in front of an unmodified engine: admission on KV and tool-pool pressure "
            "(KV from the server's /metrics), backlog order, tool-pool order; the engine schedules as it does (vLLM FCFS)",
            ("sim", "vllm", "http", "sglang"),
            lambda cfg: FcfsPolicy(),
            lambda cfg: mars_admission(cfg.mars, cfg.tool_cores, cfg.rps),
            settings=("mars", MarsSettings),
            make_tool_order=lambda cfg: mars_tool_order(cfg.mars),
        ),
        Backend(
            "concur",
            "CONCUR: agent-level admission with an AIMD window on KV-cache signals only (usage, preemptions, "
            "prefix-hit rate), whole sessions in arrival order, in front of an unmodified engine (vLLM FCFS)",
            ("sim", "vllm", "http", "sglang"),
            lambda cfg: FcfsPolicy(),
            lambda cfg: ConcurAdmission(cfg.concur),
            settings=("concur", ConcurSettings),
        ),
        Backend(
            "mars-preview",
            "MARS as in its public preview code: retention = LRU prefix cache only, CPU high mark 2.0, FIFO tools",
            ("sim", "vllm"),
            lambda cfg: MarsPolicy(_preview(cfg.mars)),
            lambda cfg: mars_admission(_preview(cfg.mars), cfg.tool_cores, cfg.rps),
            settings=("mars", MarsSettings),
        ),
        Backend(
            "sglang",
            "SGLang: radix-tree prefix cache (LRU leaves), longest-prefix-match-first waiting queue, admission by "
            "KV token budget (new_token_ratio), retraction of the least advanced decode, no admission control",
            ("sim", "sglang"),  # on --engine sglang: SGLang itself; on sim: this policy model
            lambda cfg: SglangPolicy(cfg.sglang),
            settings=("sglang", LpmSettings),
            prefix_cache="radix",
        ),
    )
}


def _preview(settings: Any) -> MarsSettings:
    return settings.model_copy(update=PREVIEW_OVERRIDES)


def register(backend: Backend) -> None:
    """Add (or replace) a backend; its settings section joins the run config."""
    if backend.settings is not None:
        key, model = backend.settings
        known = settings_sections().get(key)
        if known is not None and known is not model:
            raise ValueError(f"settings section {key!r} is already {known.__name__}'s")
    BACKENDS[backend.name] = backend


def settings_sections() -> dict[str, type[BaseModel]]:
    """The run config's policy sections, in registry order: section key -> settings model."""
    return {b.settings[0]: b.settings[1] for b in BACKENDS.values() if b.settings is not None}


def get_backend(name: str, engine: str) -> Backend:
    backend = BACKENDS.get(name)
    if backend is None:
        raise BadInput(f"unknown backend {name!r} (known: {', '.join(BACKENDS)}; see `mars-bench backends`)")
    if engine not in backend.engines:
        raise BadInput(f"backend {name!r} does not run on engine {engine!r} (it runs on: {', '.join(backend.engines)})")
    return backend
