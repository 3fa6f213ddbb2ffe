"""Token counts for imported workloads: a real tokenizer, or a documented estimate when none is given.

A workload counts tokens as the *served* model's tokenizer would, so `--tokenizer PATH` takes that
model's `tokenizer.json` (a file) or its HuggingFace model directory (which holds `tokenizer.json`, or
GPT-2-style `vocab.json` + `merges.txt`). Nothing is downloaded: the path must be local. Counts are of
the text alone, without special tokens and without the few tokens a chat template adds per message.

Without a tokenizer, `CharEstimate` counts ceil(characters / 4): the usual rule of thumb for English
text under BPE vocabularies of 32k-200k entries. Code and logs tokenize denser (about 3 characters a
token), so the estimate undercounts code-heavy text by up to about a quarter; give a tokenizer for exact
counts.

`train_bpe` trains a small byte-level BPE tokenizer on the spot (the `tokenizers` package, no download),
and `save_tokenizer_dir` writes it as a model directory's tokenizer files: tests use it to count with a
real tokenizer, and a tiny model directory made on the spot can reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from harness.errors import BadInput

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CHARS_PER_TOKEN = 4
EOS_TOKEN = "<|endoftext|>"
_INSTALL_HINT = "pip install tokenizers (or the extra: pip install -e '.[swebench]')"


class TokenCounter(Protocol):
    """Counts the tokens of a text; `name` says how (shown to the user and kept in messages)."""

    name: str

    def count(self, text: str) -> int: ...


class CharEstimate:
    """ceil(characters / 4): an estimate, used only when no tokenizer is given (see the module docstring)."""

    name = f"estimate ({CHARS_PER_TOKEN} characters per token)"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)


class HFTokenizer:
    """Exact counts with a HuggingFace `tokenizers` tokenizer, special tokens left out."""

    def __init__(self, tokenizer: Tokenizer, name: str) -> None:
        self.tokenizer, self.name = tokenizer, name
        self._cache: dict[str, int] = {}

    def count(self, text: str) -> int:
        if not text:
            return 0
        n = self._cache.get(text)
        if n is None:
            n = len(self.tokenizer.encode(text, add_special_tokens=False).ids)
            if len(self._cache) < 100_000:
                self._cache[text] = n
        return n


def _tokenizers_module():
    try:
        import tokenizers
    except ImportError:
        raise BadInput(f"--tokenizer needs the 'tokenizers' package: {_INSTALL_HINT}") from None
    return tokenizers


def load_tokenizer(path: str | Path | None) -> TokenCounter:
    """A counter for `--tokenizer PATH` (a tokenizer.json file or a model directory); the estimate if None."""
    if path is None:
        return CharEstimate()
    path = Path(path)
    if not path.exists():
        raise BadInput(f"--tokenizer {path}: no such file or directory (give a tokenizer.json or a model directory)")
    tokenizers = _tokenizers_module()
    source = path
    try:
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                source = path / "tokenizer.json"
                tok = tokenizers.Tokenizer.from_file(str(source))
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(path / "vocab.json"),
                                                                            str(path / "merges.txt")))
                tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
            else:
                raise BadInput(f"--tokenizer {path}: the directory has no tokenizer.json (nor vocab.json + merges.txt)")
        else:
            tok = tokenizers.Tokenizer.from_file(str(path))
    except BadInput:
        raise
    except Exception as e:  # the Rust side raises its own Exception type for unreadable files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"--tokenizer {source}: not a tokenizers file ({first})") from None
    return HFTokenizer(tok, name=str(path))


def train_bpe(texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style: any text encodes, no unknown tokens) trained on `texts`.

    Deterministic for the same texts in the same order; takes milliseconds on a few hundred kB."""
    tokenizers = _tokenizers_module()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[EOS_TOKEN])
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer_dir(tok: Tokenizer, directory: str | Path, model_max_length: int = 32768) -> Path:
    """Write `tokenizer.json` and a minimal `tokenizer_config.json` (what a HuggingFace model directory holds
    for a fast tokenizer) into `directory`; returns the directory."""
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN,
              "unk_token": EOS_TOKEN, "model_max_length": model_max_length}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory
