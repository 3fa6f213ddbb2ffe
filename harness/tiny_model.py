"""A tiny Llama-architecture model directory made on the spot, for running a real vLLM engine on these
CPU machines without downloading anything: config.json plus a byte-level BPE tokenizer trained here,
with weights left to vLLM's `load_format="dummy"` (random weights: the tokens are meaningless, the
engine's scheduling, batching, caching and timing are real).

Sizes keep head_dim at 64: vLLM's CPU attention kernels reject small head sizes (16 fails, 64 works).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import BadInput
from workloads.tokens import save_tokenizer_dir, train_bpe


@dataclass(frozen=True)
class TinySize:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int = 64


SIZES: dict[str, TinySize] = {
    "tiny": TinySize(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=2048),
    "small": TinySize(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=4096),
}
MAX_POSITIONS = 65536

_WORDS = ("def", "return", "class", "import", "from", "self", "value", "result", "test", "assert", "error",
          "request", "session", "token", "cache", "block", "tool", "agent", "model", "engine", "schedule",
          "the", "of", "and", "to", "in", "is", "for", "with", "not", "None", "True", "False", "if", "else")


_SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]

# A chat template in the shape of a real model's (roles, the request's tools, an assistant's tool calls), so the
# tiny model serves `/v1/chat/completions` too (`--endpoint chat`); vLLM needs one from the tokenizer.
CHAT_TEMPLATE = (
    "{%- if tools %}<|tools|>{{ tools | tojson }}\n{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] or '' }}"
    "{%- for call in message['tool_calls'] or [] %}<|call|>{{ call['function']['name'] }} "
    "{{ call['function']['arguments'] | tojson }}{%- endfor %}\n{% endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}")


def _pseudo_word(rng: np.random.Generator) -> str:
    return "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), int(rng.integers(1, 4))))


def training_corpus(seed: int = 0, lines: int = 20_000) -> list[str]:
    """Deterministic code-and-prose-like lines: keywords and made-up words, enough distinct pairs for a
    few thousand BPE merges."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(lines):
        n = int(rng.integers(3, 12))
        words = [_WORDS[int(rng.integers(0, len(_WORDS)))] if rng.random() < 0.5 else _pseudo_word(rng)
                 for _ in range(n)]
        out.append(" ".join(words) + str(rng.choice([":", "(x)", " = 1", ".", ","])) + "\n")
    return out


def make_tiny_model(directory: str | Path, size: str = "tiny") -> Path:
    """Write a model directory vLLM loads with `load_format="dummy"`; the same bytes every time."""
    if size not in SIZES:
        raise BadInput(f"unknown model size {size!r} (known: {', '.join(SIZES)})")
    spec = SIZES[size]
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise BadInput(f"{directory}: directory exists and is not empty")
    tok = train_bpe(training_corpus(), vocab_size=spec.vocab_size)
    save_tokenizer_dir(tok, directory, model_max_length=MAX_POSITIONS)
    tokenizer_config = directory / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()),
                                            "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id(json.loads((directory / "tokenizer_config.json").read_text())["eos_token"])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": False,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory
