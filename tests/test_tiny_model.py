"""`mars-bench model make-tiny`: a loadable, deterministic Llama model directory with a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from harness.engines.sim.hardware import ModelSpec
from harness.tiny_model import SIZES
from workloads.tokens import EOS_TOKEN


def test_make_tiny_writes_a_consistent_model_directory(run_cli, tmp_path: Path) -> None:
    out = run_cli("model", "make-tiny", str(tmp_path / "m"), "--json")
    assert out.exit_code == 0, out.stderr
    info = json.loads(out.stdout)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    tok = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    assert config["architectures"] == ["LlamaForCausalLM"] and config["head_dim"] == 64
    assert config["vocab_size"] == tok.get_vocab_size() == SIZES["tiny"].vocab_size == info["vocab_size"]
    assert tok.decode(tok.encode("def schedule(self): return token").ids) == "def schedule(self): return token"
    assert config["eos_token_id"] == tok.token_to_id(EOS_TOKEN) is not None
    spec = ModelSpec.from_hf_config(tmp_path / "m" / "config.json")
    # embedding and LM head 2 x 2048 x 256, per layer q/o 2 x 256 x 256, k/v 2 x 256 x 128, MLP 3 x 256 x 512,
    # two norms of 256; a final norm of 256
    per_layer = 2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 512 + 2 * 256
    assert spec.total_params == info["parameters"] == 2 * 2048 * 256 + 2 * per_layer + 256
    assert info["kv_bytes_per_token"] == 2 * 2 * 2 * 64 * 2  # K and V, 2 layers, 2 KV heads, 64 dims, bf16


def test_make_tiny_is_deterministic_and_refuses_to_overwrite(run_cli, tmp_path: Path) -> None:
    assert run_cli("model", "make-tiny", str(tmp_path / "a"), "--size", "small").exit_code == 0
    assert run_cli("model", "make-tiny", str(tmp_path / "b"), "--size", "small").exit_code == 0
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    again = run_cli("model", "make-tiny", str(tmp_path / "a"))
    assert again.exit_code == 2 and "not empty" in again.stderr
    bad = run_cli("model", "make-tiny", str(tmp_path / "c"), "--size", "huge")
    assert bad.exit_code == 2 and "--size" in bad.stderr
