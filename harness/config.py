"""The validated configuration of one run: everything needed to reproduce it from run.json and a seed."""

from __future__ import annotations

from typing import Any, Literal, get_args

import math
import re

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_serializer, field_validator, model_serializer,
                      model_validator)

from harness.backends import settings_sections
from harness.engines.registry import ENGINES
from harness.errors import BadInput
from workloads.overrides import apply_overrides, parse_assignment
from harness.tools import ToolMode
from workloads.arrivals import ArrivalProcess
from workloads.model import Int, format_validation_error
from workloads.synthetic import MAX_SESSIONS_HARD


class EngineSettings(BaseModel):
    """Engine limits, named as vLLM's engine arguments."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_num_batched_tokens: Int = Field(default=8192, ge=1, description="token budget of one step")
    max_num_seqs: Int = Field(default=256, ge=1, description="most requests in one batch")
    long_prefill_token_threshold: Int = Field(default=0, ge=0, description="cap on a prefill chunk; 0 = off")
    scheduler_reserve_full_isl: bool = Field(
        default=True, description="admit a waiting request only if its whole context fits in free KV blocks "
                                  "(vLLM 0.32's default; false = only its first chunk, as older vLLM)")
    # None = the cost profile's value (16 tokens, 0.9, computed from memory).
    block_size: Int | None = Field(default=None, ge=1, description="tokens per KV block")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    num_gpu_blocks: Int | None = Field(default=None, ge=1, le=10**8, description="override the KV block count")
    enable_prefix_caching: bool = True
    fast_forward: bool = Field(default=True, description="sim: skip over repeated all-decode steps")
    kv_offload_gib: float = Field(default=0.0, ge=0, le=2**20, description="host-memory KV tier for offloading; 0 = none")
    host_link_gbps: float = Field(default=25.0, ge=1e-3, le=1e6, description="effective host<->GPU copy bandwidth, GB/s")
    prefix_cache: Literal["auto", "block", "radix"] = Field(
        default="auto", description="sim prefix cache: block (vLLM: hashed blocks, LRU), radix (SGLang: radix "
                                    "tree, LRU leaves); auto = the backend's (radix for sglang, else block)")


class ToolLimits(BaseModel):
    """Limits on one real tool call (`--tools real`): killed at its CPU-time or wall-time limit, both
    `factor x cpu_seconds + floor_s`; its processes may map at most `memory_gib` each."""

    model_config = ConfigDict(extra="forbid")

    factor: float = Field(default=4.0, ge=1, allow_inf_nan=False, description="limit = factor x declared CPU-s + floor")
    floor_s: float = Field(default=10.0, gt=0, le=86400, allow_inf_nan=False,
                           description="seconds every call is allowed on top of factor x its CPU seconds")
    memory_gib: float = Field(default=2.0, gt=0, le=4096, allow_inf_nan=False,
                              description="address-space limit of each tool process (RLIMIT_AS)")

    def seconds(self, cpu_seconds: float) -> float:
        """The CPU-time and wall-time limit of a call declaring `cpu_seconds` (per core)."""
        return self.factor * cpu_seconds + self.floor_s


LOAD_CONTROLS = ("burstiness", "max_concurrency", "warmup_sessions")
# what a run reports and exports, as vllm bench serve's flags of the same names (harness.exports)
EXPORT_SETTINGS = ("percentile_metrics", "metric_percentiles", "label", "metadata", "save_detailed", "result_format")
# written to run.json only when not at their default: a run that does not use them has the run.json (and the
# sweep id) it had before they existed
# how the server-backed engines talk to their servers (harness.engines.http)
HTTP_SETTINGS = ("endpoint", "headers", "more_base_urls", "routing", "prompt_format")
OMITTED_AT_DEFAULT = (*LOAD_CONTROLS, *EXPORT_SETTINGS, *HTTP_SETTINGS, "force", "request_timeout")
# a --header whose name says it carries a credential is written to run.json without its value
SECRET_HEADER = re.compile(r"authorization|api[-_]?key|token|secret|cookie|password", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the value of every credential-like one replaced, for files and output."""
    return {k: REDACTED if SECRET_HEADER.search(k) else v for k, v in headers.items()}


class RunConfig(BaseModel):
    """One run. `--set key=value` reaches every field (e.g. `--set engine_args.max_num_seqs=128`).

    Beside the fields below, each policy's settings are a section named by its backend registry entry
    (`mars`, `continuum`, ...: harness.backends), so `--set mars.window_min=4` works and adding a policy
    does not touch this file. Sections are validated by their own models; an unknown key is an error.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    backend: str = "vllm"
    engine: str = Field(default="sim", description="an engine of the registry (harness.engines.base.ENGINES)")
    vllm_mode: Literal["in-process", "server"] = Field(
        default="in-process", description="--engine vllm: the engine in this process, or vLLM's OpenAI server")
    base_url: str | None = Field(default=None, description="--engine http: the OpenAI-compatible server's URL")
    api_key_env: str | None = Field(default=None, description="--engine http: environment variable with the API key")
    served_model: str | None = Field(default=None, description="--engine http: model name to request "
                                                               "(default: the first the server lists)")
    tokenizer: str | None = Field(default=None, description="--engine http: tokenizer directory, for servers "
                                                            "that take text prompts only")
    request_timeout: float | None = Field(
        default=600.0, gt=0, allow_inf_nan=False,
        description="server-backed engines: a call not ended within this many seconds is a failed call")
    endpoint: Literal["completions", "chat"] = Field(
        default="completions", description="server-backed engines: /v1/completions (token ids) or "
                                           "/v1/chat/completions (the session's messages and tools)")
    headers: dict[str, str] = Field(default_factory=dict, description="server-backed engines: headers sent "
                                                                      "with every request (--header KEY=VALUE)")
    more_base_urls: tuple[str, ...] = Field(default=(), description="--engine http: further replicas of the "
                                                                    "server at base_url (--base-url repeated)")
    prompt_format: Literal["auto", "ids", "text"] = Field(
        default="auto", description="--engine http, completions: prompts as token ids or as text of exactly their "
                                    "token count (needs --tokenizer); auto: ids where the server takes them")
    routing: Literal["session", "round-robin"] = Field(
        default="session", description="--engine http with several replicas: a session stays on one (session) "
                                       "or each call goes to the next (round-robin)")
    workload: str = "swe-smoke"
    sessions: Int | None = Field(default=None, ge=1, le=MAX_SESSIONS_HARD)
    force: bool = Field(default=False, description="lift the size cap (workloads.source.MAX_SESSIONS)")
    rps: float | None = Field(default=None, gt=0, allow_inf_nan=True,
                              description="session arrival rate; inf: all at t=0 (written \"inf\")")
    arrival: ArrivalProcess | None = None
    cv: float | None = Field(default=None, ge=0.01, le=100,
                             description="gamma arrivals: CV of the gaps (shape 1/cv^2), our schedule")
    burstiness: float | None = Field(default=None, gt=0, allow_inf_nan=True,
                                     description="gamma arrivals on vllm bench's schedule, its --burstiness "
                                                 "(inf: fixed gaps)")
    max_concurrency: Int | None = Field(
        default=None, ge=1, description="client side: most sessions in flight (handed to the system, not finished); "
                                        "a session arriving at the cap waits for one to end (vllm bench's --max-concurrency)")
    warmup_sessions: Int = Field(default=0, ge=0, le=MAX_SESSIONS_HARD,
                                 description="sessions run before the measured ones and not measured "
                                             "(vllm bench's --num-warmups)")
    seed: Int = Field(default=0, ge=0)
    workload_sets: tuple[str, ...] = ()
    gpu: str = "h100"
    model: str = Field(default="qwen3-coder-30b-a3b",
                       description="sim: a catalog name or HF config directory; vllm: a model directory or hub id")
    tp: Int = Field(default=1, ge=1)
    profile: str | None = None
    tool_cores: Int = Field(default=8, ge=1, le=4096)
    tool_mode: ToolMode = "queue"
    tools: Literal["timed", "real"] = Field(
        default="timed", description="timed: tool calls take their modelled time; real: pinned processes doing "
                                     "the CPU work (real engine only)")
    allow_commands: bool = Field(default=False, description="--tools real: run a workload's recorded commands")
    tool_limits: ToolLimits = ToolLimits()
    cpu_stress: Int = Field(default=0, ge=0, description="cores taken by background CPU stressors")
    gpu_share: float = Field(default=1.0, gt=0, le=1, description="share of the GPU left by a co-tenant")
    chat_rps: float = Field(default=0.0, ge=0, le=1000, description="background chat requests/s sharing the engine")
    alpha: float = Field(default=3.0, gt=1, description="goodput: slowdown bound")
    goodput: tuple[str, ...] = Field(default=(), description="vLLM-style SLOs, e.g. ttft:500 tpot:50")
    timeline_interval_s: float = Field(default=1.0, ge=1e-3)
    engine_args: EngineSettings = EngineSettings()
    # reporting and exports (vllm bench serve's flags of the same names)
    percentile_metrics: tuple[str, ...] = Field(
        default=("ttft", "tpot", "itl"), description="per-call metrics the summary gives percentiles of "
                                                     "(ttft, tpot, itl, e2el)")
    metric_percentiles: tuple[float, ...] = Field(default=(99.0,), description="those percentiles, 0-100")
    label: str | None = Field(default=None, description="the run's label (vllm bench's --label)")
    metadata: dict[str, str] = Field(default_factory=dict, description="KEY=VALUE notes kept with the run")
    save_detailed: bool = Field(default=False, description="write calls_detailed.jsonl, one line per call")
    result_format: Literal["mars", "vllm"] = Field(
        default="mars", description="vllm: also write vllm_result.json as `vllm bench serve --save-result` does")

    @field_validator("percentile_metrics", "metric_percentiles", mode="before")
    @classmethod
    def _vllm_lists(cls, value: Any, info: ValidationInfo) -> Any:
        """vLLM's comma-separated lists (or a sequence), parsed as its flags of the same names."""
        from harness.metrics import parse_metric_percentiles, parse_percentile_metrics  # noqa: PLC0415 - numpy

        parse = parse_percentile_metrics if info.field_name == "percentile_metrics" else parse_metric_percentiles
        try:
            return parse(value if isinstance(value, str) else list(value) if isinstance(value, (list, tuple))
                         else [value])
        except BadInput as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @model_validator(mode="before")
    @classmethod
    def _policy_sections(cls, data: Any) -> Any:
        """Every registered policy's settings section, defaults filled in, validated by its model (errors
        located as `section.field`); keys that are neither fields nor sections are refused."""
        if not isinstance(data, dict):
            return data
        sections = settings_sections()
        data = dict(data)
        errors: list[Any] = []
        for key in data:
            if key not in cls.model_fields and key not in sections:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": data[key]})
        for key, model in sections.items():
            value = data.get(key, {})
            errors += [{"type": "int_type" if model.model_fields[name].annotation is int else "float_type",
                        "loc": (key, name), "input": item} for name, item in _bools_for_numbers(model, value)]
            try:
                data[key] = value if isinstance(value, model) else model.model_validate(value)
            except ValidationError as e:
                errors += [{**err, "loc": (key, *err["loc"])} for err in e.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    @model_serializer(mode="wrap")
    def _leave_out_unused_controls(self, handler: Any, info: Any) -> Any:
        """The load controls, the HTTP settings, --force and the request timeout are written only when not at
        their default: the run.json of a run without them (and so a sweep's config hash and a report's
        settings) is what it was before they existed. A credential header's value is never written."""
        data = handler(self)
        if info.mode != "json":
            return data
        for key in OMITTED_AT_DEFAULT:
            default = type(self).model_fields[key].get_default(call_default_factory=True)
            if key in data and data[key] == (list(default) if isinstance(default, tuple) else default):
                del data[key]
        if data.get("headers"):  # run.json and --json output never show a credential
            data["headers"] = redact_headers(data["headers"])
        return data

    @field_serializer("rps", "burstiness", when_used="json")
    def _inf_json(self, value: float | None) -> float | str | None:
        """An infinite rate or burstiness is written "inf": run.json stays valid JSON (no Infinity)."""
        return "inf" if value is not None and math.isinf(value) else value

    @model_validator(mode="after")
    def _stress_leaves_tool_cores(self) -> RunConfig:
        if self.tool_mode == "queue" and self.cpu_stress >= self.tool_cores:
            raise ValueError(f"cpu_stress: {self.cpu_stress} stress cores leave none of the {self.tool_cores} tool "
                             "cores for tool calls in queue mode; use fewer or --tool-mode timeshare")
        return self

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, name: str) -> str:
        if name not in ENGINES:
            raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
        return name

    @classmethod
    def is_setting(cls, key: str) -> bool:
        """Whether `key` names a field or a policy's settings section (else it is a workload setting)."""
        return key in cls.model_fields or key in settings_sections()

    def section(self, key: str) -> Any:
        """A policy's settings section (`config.section("mars")` is `config.mars`)."""
        return getattr(self, key)


def _bools_for_numbers(model: type[BaseModel], data: Any) -> list[tuple[str, Any]]:
    """(field, value) of every JSON true/false given for a numeric field of a settings section: pydantic
    would read `true` as 1, and `--set mars.window_min=true` is a mistake, not a window of 1."""
    if not isinstance(data, dict):
        return []
    out = []
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None or not isinstance(value, bool):
            continue
        kinds = get_args(field.annotation) or (field.annotation,)
        if bool not in kinds and any(k in (int, float) for k in kinds):
            out.append((name, value))
    return out


def split_sets(sets: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """`--set` assignments for the run config (its fields and policy sections) and for the workload preset."""
    run_sets = [s for s in sets if RunConfig.is_setting(parse_assignment(s)[0][0])]
    return run_sets, [s for s in sets if s not in run_sets]


def make_config(sets: tuple[str, ...], **values: Any) -> RunConfig:
    """The run config from CLI values, then `--set` overrides; one-line BadInput on any bad value."""
    run_sets, workload_sets = split_sets(sets)
    try:
        config = RunConfig(**{k: v for k, v in values.items() if v is not None}, workload_sets=tuple(workload_sets))
    except ValidationError as e:
        raise BadInput(format_validation_error(e)) from None
    return apply_overrides(config, run_sets)
