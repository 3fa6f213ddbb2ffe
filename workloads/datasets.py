"""Public LLM-serving datasets and traces -> sessions: the formats `vllm bench serve`, AIPerf and the
trace papers use, so a workload people already have runs here unchanged.

Formats (as their publishers write them):

* **mooncake** — Mooncake's trace JSONL (`mooncake_trace.jsonl`, also AIPerf's `mooncake_trace`): one
  request per line, `timestamp` (ms from the trace's start), `input_length`, `output_length`, `hash_ids`
  (one id per 512-token block of the prompt; equal ids = equal blocks, so a shared leading run of ids is a
  shared prefix).
* **sharegpt** — `ShareGPT_V3_unfiltered_cleaned_split.json`: a JSON list of `{"id", "conversations":
  [{"from": "human"|"gpt"|"system", "value"}]}`; `user`/`chatgpt`/`bing`/`bard` are accepted as in vLLM's
  converter.
* **burstgpt** — BurstGPT's CSV: `Timestamp` (seconds from the trace's start), `Model`, `Request tokens`,
  `Response tokens`, `Total tokens`, `Log Type`. Rows with 0 response tokens are requests that failed in
  the trace and are left out (counted in the import's message).
* **vllm-multiturn** — vLLM's `benchmarks/multi_turn` conversation file (what `convert_sharegpt_to_openai.py`
  writes): a JSON list of `{"id", "messages": [{"role": "user"|"assistant"|"system", "content"}]}`.
* **aiperf** — AIPerf's custom-dataset JSONL, each line's type told by its fields: `single_turn`
  (`text` or `texts`, optional `output_length`, `timestamp`/`delay` in ms), `multi_turn` (`session_id`,
  `turns`: a list of single-turn objects; a leading `"role": "system"` turn is the conversation's system
  prompt) and `mooncake_trace` (as mooncake above, optional `session_id`).

How a record becomes a session (assumptions):

* **Turns**: a conversation's user message and the assistant's reply make one turn: new tokens = the user
  message, output tokens = the reply (at least 1). The context is append-only as in `workloads.model`,
  so turn k's prompt holds every earlier message, as a chat client resends the history. Leading assistant
  messages are dropped and consecutive messages of one role merged (as vLLM's converter does); a trailing
  user message without a reply is dropped. Where the format has no reply (AIPerf turns), `output_length`
  gives the output tokens, else `--output-tokens`.
* **Between turns** the user thinks: a `user` tool call (`workloads.model.USER_TOOL`) whose seconds the
  runner waits on the clock, on no tool core. Its length is the turn's AIPerf `delay` where given (ms
  before that turn), else `--think-s` (default 0: the next message follows the reply at once). This is
  the user-centric pacing of AIPerf's multi-turn mode: a user's next turn waits for the reply, then
  for the user.
* **Token counts** come from the served model's tokenizer when given (`--tokenizer`), else the estimate
  of 4 characters per token (`workloads.tokens.CharEstimate`); traces (mooncake, burstgpt) carry counts.
* **Shared prefix**: a conversation's system message (prefix id = format + hash of its text). For a
  mooncake trace, requests are grouped by their first block id; a request's prefix is the run of leading
  block ids it shares with the first request of its group (capped one token short of its prompt), so two
  requests of a group share exactly the blocks both share with that first request: never more than the
  trace says, less where their ids agree beyond the first request's.
* **Arrivals**: a trace's own timestamps (mooncake, burstgpt, AIPerf `timestamp`s or `delay`s), shifted
  to start at 0, so `--arrival trace` (a file's default) replays them; formats without times are spaced
  at `--rps` in file order. `--rps` on a trace import replaces its timestamps with that fixed rate.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import BadInput
from workloads.model import USER_TOOL, Session, ToolCall, Turn
from workloads.tokens import TokenCounter
from workloads.traces import read_json, read_jsonl

MOONCAKE_BLOCK_TOKENS = 512  # tokens per hash id in Mooncake traces


# ------------------------------------------------------------------------------------ records
@dataclass
class Exchange:
    """One turn: the user's new text (or token count) and the reply's text (or token count)."""

    user_tokens: int
    output_tokens: int
    delay_s: float | None = None  # the user's think time before this turn, where the record gives it


@dataclass
class Record:
    """One session before it becomes a `Session`: its turns, system prompt, and trace time (seconds)."""

    id: str
    where: str  # file:line or file[index], for messages
    exchanges: list[Exchange]
    system_text: str = ""
    prefix_id: str | None = None
    prefix_tokens: int = 0
    time_s: float | None = None
    blocks: list[int] = field(default_factory=list)  # mooncake hash ids


def _kind_of(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _count(value: Any, where: str, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < minimum:
        raise BadInput(f"{where}: field '{name}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BadInput(f"{where}: field '{name}' must be a number >= 0, got {value!r}")
    return float(value)


def _object(data: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected {what}, got a JSON {_kind_of(data)}")
    return data


def _field(data: dict[str, Any], name: str, where: str) -> Any:
    if name not in data:
        raise BadInput(f"{where}: missing field '{name}'")
    return data[name]


def _text(value: Any, where: str, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)  # AIPerf `texts`
    raise BadInput(f"{where}: field '{name}' must be a string, got {_kind_of(value)}")


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:line, object) for each non-blank line."""
    for _, where, data in read_jsonl(path, "a JSON object (one record per line)"):
        yield where, data


def _json_list(path: Path, what: str) -> list[Any]:
    data = read_json(path, "dataset file")
    if not isinstance(data, list):
        raise BadInput(f"{path}: expected a JSON list of {what}, got a JSON {_kind_of(data)}")
    return data


# -------------------------------------------------------------------------------- conversations
_USER, _ASSISTANT, _SYSTEM = "user", "assistant", "system"
_SHAREGPT_ROLES = {"human": _USER, "user": _USER, "gpt": _ASSISTANT, "chatgpt": _ASSISTANT, "bing": _ASSISTANT,
                   "bard": _ASSISTANT, "assistant": _ASSISTANT, "system": _SYSTEM}


def conversation(conv_id: str, where: str, messages: Sequence[tuple[str, str]], counter: TokenCounter) -> Record:
    """Role-tagged texts -> turns: (user, reply) pairs; see the module docstring for the rules."""
    system = "\n".join(text for role, text in messages if role == _SYSTEM)
    merged: list[list[str]] = []  # [role, text]
    for role, text in messages:
        if role == _SYSTEM or (not merged and role == _ASSISTANT):
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n" + text
        else:
            merged.append([role, text])
    if merged and merged[-1][0] == _USER:
        merged.pop()
    if not merged:
        raise BadInput(f"{where}: conversation {conv_id!r} has no user message with a reply")
    exchanges = [Exchange(counter.count(merged[i][1]), max(1, counter.count(merged[i + 1][1])))
                 for i in range(0, len(merged), 2)]
    return Record(conv_id, where, exchanges, system_text=system)


def _read_conversations(path: Path, counter: TokenCounter, what: str, messages_key: str, role_key: str,
                        text_key: str, roles: dict[str, str]) -> list[Record]:
    """A JSON list of `{"id", messages_key: [{role_key, text_key}]}` conversations, roles mapped by `roles`."""
    out = []
    for i, item in enumerate(_json_list(path, f"{what} conversations")):
        where = f"{path}[{i}]"
        item = _object(item, where, f"a {what} conversation object")
        conv_id = str(_field(item, "id", where))
        items = _field(item, messages_key, where)
        if not isinstance(items, list):
            raise BadInput(f"{where}: field '{messages_key}' must be a list, got {_kind_of(items)}")
        messages = []
        for k, msg in enumerate(items):
            loc = f"{where}.{messages_key}[{k}]"
            msg = _object(msg, loc, "a message object")
            role = roles.get(_field(msg, role_key, loc))
            if role is None:
                raise BadInput(f"{loc}: field '{role_key}' must be one of {', '.join(roles)}, got {msg[role_key]!r}")
            messages.append((role, _text(_field(msg, text_key, loc), loc, text_key)))
        out.append(conversation(conv_id, where, messages, counter))
    return out


def read_sharegpt(path: Path, counter: TokenCounter) -> list[Record]:
    return _read_conversations(path, counter, "ShareGPT", "conversations", "from", "value", _SHAREGPT_ROLES)


def read_vllm_multiturn(path: Path, counter: TokenCounter) -> list[Record]:
    roles = {_USER: _USER, _ASSISTANT: _ASSISTANT, _SYSTEM: _SYSTEM}
    return _read_conversations(path, counter, "vLLM multi-turn", "messages", "role", "content", roles)


# --------------------------------------------------------------------------------------- traces
def _mooncake_record(data: dict[str, Any], where: str, rec_id: str) -> Record:
    input_length = _count(_field(data, "input_length", where), where, "input_length", 1)
    output_length = _count(_field(data, "output_length", where), where, "output_length", 1)
    blocks = _field(data, "hash_ids", where)
    if not isinstance(blocks, list) or any(isinstance(b, bool) or not isinstance(b, int) for b in blocks):
        raise BadInput(f"{where}: field 'hash_ids' must be a list of integers")
    if len(blocks) * MOONCAKE_BLOCK_TOKENS < input_length:
        raise BadInput(f"{where}: {len(blocks)} hash_ids cover {len(blocks) * MOONCAKE_BLOCK_TOKENS} tokens, "
                       f"fewer than input_length {input_length}")
    time_s = _number(_field(data, "timestamp", where), where, "timestamp") / 1000
    return Record(rec_id, where, [Exchange(input_length, output_length)], time_s=time_s, blocks=list(blocks))


def read_mooncake(path: Path, counter: TokenCounter) -> list[Record]:
    return [_mooncake_record(data, where, f"mooncake-{i:06d}") for i, (where, data) in enumerate(_jsonl(path))]


def share_mooncake_prefixes(records: list[Record]) -> None:
    """Each request's prefix: the leading block ids it shares with the first request of its group (its first
    block id), in tokens, one token short of its prompt at most; none when it shares nothing."""
    first: dict[int, Record] = {}
    depth: dict[str, int] = {}
    for rec in records:
        if not rec.blocks:
            continue
        head = first.setdefault(rec.blocks[0], rec)
        if head is rec:
            continue
        n = 0
        for a, b in zip(rec.blocks, head.blocks):
            if a != b:
                break
            n += 1
        depth[rec.id] = n
        depth[head.id] = max(depth.get(head.id, 0), n)
    for rec in records:
        n = depth.get(rec.id, 0)
        tokens = min(n * MOONCAKE_BLOCK_TOKENS, rec.exchanges[0].user_tokens - 1)
        if tokens > 0:
            rec.prefix_id = f"mooncake/{rec.blocks[0]}"
            rec.prefix_tokens = tokens
            rec.exchanges[0].user_tokens -= tokens


BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type")


def read_burstgpt(path: Path, counter: TokenCounter, skipped: list[str] | None = None) -> list[Record]:
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror})") from None
    out = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in BURSTGPT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInput(f"{path}: not a BurstGPT CSV: missing column(s) {', '.join(missing)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            values = {}
            for column, cast in (("Timestamp", float), ("Request tokens", int), ("Response tokens", int)):
                try:
                    values[column] = cast(row[column])
                except (TypeError, ValueError):
                    raise BadInput(f"{where}: column '{column}' must be a number, got {row[column]!r}") from None
                if not math.isfinite(values[column]) or values[column] < 0:
                    raise BadInput(f"{where}: column '{column}' must be >= 0, got {row[column]!r}")
            if values["Response tokens"] == 0:
                if skipped is not None:
                    skipped.append(where)
                continue
            if values["Request tokens"] < 1:
                raise BadInput(f"{where}: column 'Request tokens' must be >= 1, got {row['Request tokens']!r}")
            out.append(Record(f"burstgpt-{reader.line_num - 1:06d}", where,
                              [Exchange(values["Request tokens"], values["Response tokens"])],
                              time_s=values["Timestamp"]))
    return out


# ---------------------------------------------------------------------------------------- aiperf
def _aiperf_turn(turn: dict[str, Any], where: str, counter: TokenCounter, output_tokens: int) -> tuple[int, int]:
    if "text" in turn:
        text = _text(turn["text"], where, "text")
    elif "texts" in turn:
        text = _text(turn["texts"], where, "texts")
    else:
        raise BadInput(f"{where}: missing field 'text' (or 'texts')")
    out = turn.get("output_length")
    return counter.count(text), output_tokens if out is None else _count(out, where, "output_length", 1)


def _aiperf_time(data: dict[str, Any], where: str, previous: float | None) -> float | None:
    """AIPerf's `timestamp` (ms from the start) or `delay` (ms after the previous record)."""
    if data.get("timestamp") is not None:
        return _number(data["timestamp"], where, "timestamp") / 1000
    if data.get("delay") is not None:
        return (previous or 0.0) + _number(data["delay"], where, "delay") / 1000
    return None


def read_aiperf(path: Path, counter: TokenCounter, output_tokens: int) -> list[Record]:
    out: list[Record] = []
    previous: float | None = None
    for i, (where, data) in enumerate(_jsonl(path)):
        if "turns" in data:  # multi_turn
            turns = data["turns"]
            if not isinstance(turns, list) or not turns:
                raise BadInput(f"{where}: field 'turns' must be a non-empty list")
            system = ""
            objects = [_object(t, f"{where}: turns[{k}]", "a turn object") for k, t in enumerate(turns)]
            if objects[0].get("role") == _SYSTEM and len(objects) > 1:
                system = _text(objects[0].get("text", objects[0].get("texts")), f"{where}: turns[0]", "text")
                objects = objects[1:]
            exchanges = [Exchange(*_aiperf_turn(t, f"{where}: turns[{k}]", counter, output_tokens),
                                  delay_s=None if k == 0 or t.get("delay") is None
                                  else _number(t["delay"], f"{where}: turns[{k}]", "delay") / 1000)
                         for k, t in enumerate(objects)]
            time_s = _aiperf_time(objects[0], f"{where}: turns[0]", previous)
            rec = Record(str(data.get("session_id") or f"aiperf-{i:06d}"), where, exchanges, system_text=system,
                         time_s=time_s)
        elif "input_length" in data or "hash_ids" in data:  # mooncake_trace
            rec = _mooncake_record(data, where, str(data.get("session_id") or f"aiperf-{i:06d}"))
        elif "text" in data or "texts" in data:  # single_turn
            rec = Record(f"aiperf-{i:06d}", where, [Exchange(*_aiperf_turn(data, where, counter, output_tokens))],
                         time_s=_aiperf_time(data, where, previous))
        else:
            raise BadInput(f"{where}: not an AIPerf record: expected 'turns' (multi_turn), 'text' (single_turn) "
                           "or 'input_length' and 'hash_ids' (mooncake_trace)")
        previous = rec.time_s if rec.time_s is not None else previous
        out.append(rec)
    if any(r.blocks for r in out):
        share_mooncake_prefixes(out)
    return out


# -------------------------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class DatasetFormat:
    description: str
    read: Callable[..., list[Record]]


FORMATS: dict[str, DatasetFormat] = {
    "mooncake": DatasetFormat("Mooncake trace JSONL (timestamp, input_length, output_length, hash_ids)", read_mooncake),
    "sharegpt": DatasetFormat("ShareGPT JSON (id, conversations: from/value)", read_sharegpt),
    "burstgpt": DatasetFormat("BurstGPT CSV (Timestamp, Request tokens, Response tokens, ...)", read_burstgpt),
    "vllm-multiturn": DatasetFormat("vLLM benchmarks/multi_turn JSON (id, messages: role/content)",
                                    read_vllm_multiturn),
    "aiperf": DatasetFormat("AIPerf custom dataset JSONL (single_turn, multi_turn, mooncake_trace)", read_aiperf),
}


def _system_prefix(fmt: str, text: str) -> str:
    return f"{fmt}/{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def record_session(rec: Record, fmt: str, counter: TokenCounter, think_s: float = 0.0) -> Session:
    """A record as a session at arrival 0: turns separated by the user's think time (`user` gaps): the
    record's own delay before the next turn, else `think_s`."""
    prefix_id, prefix_tokens = rec.prefix_id, rec.prefix_tokens
    if rec.system_text:
        prefix_id, prefix_tokens = _system_prefix(fmt, rec.system_text), counter.count(rec.system_text)
    last = len(rec.exchanges) - 1
    turns = tuple(Turn(new_tokens=e.user_tokens, output_tokens=max(1, e.output_tokens),
                       tool=ToolCall(name=USER_TOOL, cpu_seconds=round(_think(rec.exchanges[k + 1], think_s), 6))
                       if k < last else None)
                  for k, e in enumerate(rec.exchanges))
    return Session(id=rec.id, arrival_s=0.0, prefix_id=prefix_id if prefix_tokens else None,
                   prefix_tokens=prefix_tokens, turns=turns, kind=fmt)


def _think(turn: Exchange, think_s: float) -> float:
    return think_s if turn.delay_s is None else turn.delay_s


def _unique(records: list[Record]) -> None:
    seen: dict[str, int] = {}
    for rec in records:
        n = seen.get(rec.id, 0) + 1
        seen[rec.id] = n
        if n > 1:
            rec.id = f"{rec.id}-{n}"


def import_dataset(path: str | Path, fmt: str, counter: TokenCounter, rps: float | None, default_rps: float,
                   output_tokens: int = 256, skipped: list[str] | None = None, think_s: float = 0.0) -> list[Session]:
    """Sessions of a dataset file, in file order: a trace's timestamps (from 0) as arrivals, else (or with
    `rps`) one every 1/rps seconds."""
    if fmt not in FORMATS:
        raise BadInput(f"unknown dataset format {fmt!r} (known: {', '.join(FORMATS)})")
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    reader = FORMATS[fmt].read
    if fmt == "aiperf":
        records = reader(path, counter, output_tokens)
    elif fmt == "burstgpt":
        records = reader(path, counter, skipped)
    else:
        records = reader(path, counter)
    if fmt == "mooncake":
        share_mooncake_prefixes(records)
    if not records:
        raise BadInput(f"{path}: no sessions to import")
    _unique(records)
    sessions = [record_session(rec, fmt, counter, think_s) for rec in records]
    timed = [r.time_s for r in records if r.time_s is not None]
    if rps is None and len(timed) == len(records):
        start = min(timed)
        times = [t - start for t in timed]
        if any(b < a for a, b in zip(times, times[1:])):
            first = next(r for r, a, b in zip(records[1:], times, times[1:]) if b < a)
            raise BadInput(f"{first.where}: timestamps must not decrease (the trace is replayed in file order)")
        return [s.with_arrival(round(t, 6)) for s, t in zip(sessions, times)]
    if rps is None and timed:
        missing = next(r for r in records if r.time_s is None)
        raise BadInput(f"{missing.where}: no timestamp, where other records have one (give all or none, or --rps)")
    rate = default_rps if rps is None else rps
    return [s.with_arrival(round(i / rate, 6)) for i, s in enumerate(sessions)]
