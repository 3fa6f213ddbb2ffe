"""`--endpoint chat`: each agent session as the OpenAI chat conversation an agent framework would send to
`/v1/chat/completions`, grown append-only from the same token ids as the completions prompts (sans-IO: ids
and replies in, message lists out; the HTTP engine does the sending).

A session's conversation is: a `system` message holding its shared prefix (the system prompt and tool specs
of the workload; sessions sharing a prefix send the same text, so a prefix cache hits across them), a `user`
message with the first turn's new tokens, then per turn the model's reply as an `assistant` message and the
next turn's new tokens. The workloads store which tool each turn calls (name, CPU time, maybe a command) but
not the tool's arguments or its output text, so: a turn that calls a tool gets an assistant message with the
model's streamed text and one OpenAI `tool_calls` entry naming that tool (arguments `{}`), and the next turn's new tokens are its `tool` message (answering that call's id); a turn followed
by the user pseudo-tool (a conversation's user thinking) is followed by a `user` message. The request lists
the workload's tools as OpenAI `tools` with `tool_choice: "none"`: the tools are part of the prompt, as in
an agent's request, but the workload, not the model, decides which tool runs next (and servers without a
tool-call parser accept it: vLLM refuses `"auto"` without `--enable-auto-tool-choice`).

Message texts are decoded from the session's synthetic token ids with the served model's tokenizer, so each
message has about the workload's token count; the server's own count (chat template included) is what a
call records, from the usage it streams.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.calls import CallSpec
from workloads.model import USER_TOOL, Session

_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")
# A launched server's context limit for chat: text decoded from random ids re-tokenizes up to ~15% longer (the
# tiny model's tokenizer: 1,139 tokens for 1,000 ids), and the chat template and tool specs add their own.
CHAT_CONTEXT_FACTOR = 1.5
CHAT_CONTEXT_EXTRA = 512


def chat_context_limit(tokens: int) -> int:
    """The context limit a launched server needs for chat calls of at most `tokens` workload tokens."""
    return int(tokens * CHAT_CONTEXT_FACTOR) + CHAT_CONTEXT_EXTRA


def function_name(tool: str) -> str:
    """A tool's name as an OpenAI function name (letters, digits, `_` and `-`, at most 64)."""
    return _NOT_IN_NAME.sub("_", tool)[:64] or "tool"


def workload_tools(sessions: Iterable[Session]) -> tuple[str, ...]:
    """The tools the sessions call, sorted (the user pseudo-tool is not a tool): one list for every call of the
    run, as an agent framework sends the same tool specs on every call (and so they stay a shared prefix)."""
    names = {function_name(t.tool.name) for s in sessions for t in s.turns
             if t.tool is not None and t.tool.name != USER_TOOL}
    return tuple(sorted(names))


def tool_specs(names: Sequence[str]) -> list[dict[str, Any]]:
    """OpenAI `tools` for the workload's tool names; each takes an optional shell command."""
    return [{"type": "function", "function": {
        "name": name, "description": f"The agent's {name} tool.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}} for name in names]


@dataclass
class _Conversation:
    messages: list[dict[str, Any]] = field(default_factory=list)
    used_ids: int = 0  # the session's context ids already in `messages`
    pending_call: str | None = None  # the tool call id the next new tokens answer (None: the user speaks)


class Conversations:
    """The chat conversation of every session in flight; `decode` turns token ids into text."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self._sessions: dict[str, _Conversation] = {}

    def messages(self, spec: CallSpec, context_ids: Sequence[int]) -> list[dict[str, Any]]:
        """The messages of call `spec`, whose whole context (as completions token ids) is `context_ids`: the
        conversation so far plus a message with the ids not yet sent."""
        conv = self._sessions.setdefault(spec.session_id, _Conversation())
        ids = list(context_ids)
        if not conv.messages and spec.prefix_tokens:
            conv.messages.append({"role": "system", "content": self.decode(ids[:spec.prefix_tokens])})
            conv.used_ids = spec.prefix_tokens
        text = self.decode(ids[conv.used_ids:])
        if conv.pending_call is not None:
            conv.messages.append({"role": "tool", "tool_call_id": conv.pending_call, "content": text})
        else:
            conv.messages.append({"role": "user", "content": text})
        conv.pending_call = None
        conv.used_ids = len(ids)
        return list(conv.messages)

    def reply(self, spec: CallSpec, text: str, output_ids: int) -> None:
        """The model's reply to call `spec` (`output_ids` ids of it join the session's context), with the tool
        call the workload makes after it."""
        conv = self._sessions.get(spec.session_id)
        if conv is None:
            return
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if spec.tool_name is not None and spec.tool_name != USER_TOOL:
            conv.pending_call = f"call_{spec.turn}"
            message["tool_calls"] = [{"id": conv.pending_call, "type": "function", "function": {
                "name": function_name(spec.tool_name), "arguments": json.dumps({})}}]
        conv.messages.append(message)
        conv.used_ids += output_ids

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
