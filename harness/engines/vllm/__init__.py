"""`--engine vllm`: the policy as vLLM's scheduler (scheduler.py), in this process (engine.py) or in vLLM's
OpenAI server launched for the run (server.py); its step and call logs (steplog.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.engines.base import BuildContext, Engine


def build(ctx: BuildContext) -> Engine:
    """The engine registry's builder for `--engine vllm` (in-process, or the launched server)."""
    from harness.engines.vllm.engine import VllmEngine, vllm_setup  # noqa: PLC0415 - only when a run asks

    setup = vllm_setup(ctx.config, ctx.sessions, cache_dir=ctx.cache_dir / "vllm", step_log=ctx.run_dir / "steps.jsonl")
    config_json = ctx.config.model_dump(mode="json")
    if ctx.config.vllm_mode == "server":
        from harness.engines.vllm.server import launch  # noqa: PLC0415

        return launch(setup, config_json, ctx.run_dir, ctx.config.request_timeout, ctx.config, ctx.sessions)
    return VllmEngine(setup, config_json)
