"""Who a call belongs to, and how long its prompt is, read from the request alone (the gateway sees no
tokenizer and no agent framework).

Session identity, first match wins:

1. the session header (`X-Session-ID` by default, `--session-header NAME`): exact, the recommended way;
2. the OpenAI `user` field of the body: what an agent framework that sets it per task already sends;
3. a hash of the conversation's start: for chat, the model and the first `HASHED_MESSAGES` messages (system
   prompt and first user message); for completions, the model and the first `HASHED_PROMPT_ITEMS` prompt
   tokens (or characters of a text prompt). An agent's context grows append-only, so every call of a task
   starts the same way and maps to the same session.

The fallback's limits: two tasks that start with the same system prompt and first user message (the same
issue solved twice, a benchmark replaying one prompt, sessions whose prompts share a long common prefix)
become one session; an agent that rewrites or compacts the start of its history starts a new session.
Send the header whenever the framework can.

Prompt length (the `first_prompt_tokens` MARS's admission orders and budgets by): a completions prompt of
token ids is counted exactly; text (a text prompt, chat messages and the tool specs) is estimated at
`CHARS_PER_TOKEN` characters a token (the usual figure for English and code with BPE tokenizers), plus
`TOKENS_PER_MESSAGE` per chat message for its template.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

DEFAULT_SESSION_HEADER = "X-Session-ID"
HASHED_MESSAGES = 2
HASHED_PROMPT_ITEMS = 256
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4


def session_identity(headers: Mapping[str, str], body: Mapping[str, Any], header: str = DEFAULT_SESSION_HEADER
                     ) -> tuple[str, str]:
    """(session id, where it came from: "header" | "user" | "hash")."""
    value = headers.get(header) or headers.get(header.lower())
    if value:
        return value.strip(), "header"
    user = body.get("user")
    if isinstance(user, str) and user:
        return user, "user"
    return "h-" + _start_hash(body), "hash"


def _start_hash(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        start: Any = messages[:HASHED_MESSAGES]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
            prompt = prompt[0]  # a batch: its first prompt
        start = prompt[:HASHED_PROMPT_ITEMS] if isinstance(prompt, (list, str)) else prompt
    text = json.dumps([body.get("model"), start], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The request's prompt length in tokens: exact for token ids, estimated for text (module docstring)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_content_chars(m.get("content")) if isinstance(m, dict) else 0 for m in messages)
        tools = body.get("tools")
        if tools:
            chars += len(json.dumps(tools))
        return _chars_to_tokens(chars) + TOKENS_PER_MESSAGE * len(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        return len(prompt)
    if isinstance(prompt, str):
        return _chars_to_tokens(len(prompt))
    return 0


def _content_chars(content: Any) -> int:
    """Characters of a chat message's content: a string, or the text of its parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


def _chars_to_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def requested_output_tokens(body: Mapping[str, Any]) -> int:
    """The output the call asks for at most (`max_completion_tokens`, else `max_tokens`), 1 when unsaid."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 1
