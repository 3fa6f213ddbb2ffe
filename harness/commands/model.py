"""`mars-bench model ...`: model directories for the real engine."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.options import json_option
from harness.console import console, print_json, table
from harness.engines.sim.cost_model import kv_bytes_per_token
from harness.engines.sim.hardware import ModelSpec
from harness.tiny_model import SIZES, make_tiny_model


@click.group()
def model() -> None:
    """Model directories for the real engine.

    \b
    Example:
      mars-bench model make-tiny models/tiny
    """


@model.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.Choice(list(SIZES)), default="tiny", show_default=True)
@json_option
def make_tiny(directory: Path, size: str, as_json: bool) -> None:
    """Write a tiny Llama model directory (config + tokenizer trained here) for vLLM's dummy weights.

    \b
    Examples:
      mars-bench model make-tiny models/tiny
      mars-bench model make-tiny models/small --size small
    """
    path = make_tiny_model(directory, size)
    spec = ModelSpec.from_hf_config(path / "config.json")
    info = {"directory": str(path), "size": size, "parameters": spec.total_params, "layers": spec.num_layers,
            "vocab_size": spec.vocab_size, "kv_bytes_per_token": kv_bytes_per_token(spec)}
    if as_json:
        print_json(info)
        return
    console.print(table(f"tiny model in {path}", ["", "value"], [(k, v) for k, v in info.items() if k != "directory"]))
    console.print('load it with vLLM: load_format="dummy" (no weights are downloaded or stored)')
