"""Recorded agent runs -> sessions: replay the LLM calls and tool calls of real trajectories.

One parser per format, each in one place (`parse_swe_agent`, `parse_openhands`, `parse_mini_swe_agent`),
each turning a file into `Recorded` runs: per LLM call, the texts that reached the model since the
previous call, the text the model produced, and the tools that ran after it (with their durations when
the format records them). `recorded_session` turns a run into a `Session` the same way for every format.

Formats (as the agents write them):

* **swe-agent** — `<instance>.traj`, a JSON object: `history` (the messages: `role`, `content`, and on
  assistant messages `thought`, `action`, `tool_calls`; `is_demo` marks demonstrations) and `trajectory`
  (one step per action: `action`, `observation`, `response`, `thought`, `state`, `execution_time` in
  seconds, `query`/`messages`), plus `info` (`model_stats`, `exit_status`, `submission`).
* **openhands** — an event stream: a JSON list of events, a JSON object whose `history` is that list, a
  `.jsonl` of such objects (an evaluation's `output.jsonl`, one instance per line), or a directory of one
  event per file (`sessions/<id>/events/<n>.json`, the server's file store). An event has `id`,
  `timestamp` (ISO 8601), `source` (`user`/`agent`/`environment`), `message`, and either `action` +
  `args` (+ `tool_call_metadata` with the LLM's `model_response`, and `llm_metrics`) or `observation` +
  `content` + `extras` + `cause` (the id of the action it answers).
* **mini-swe-agent** — `<instance>.traj.json`, a JSON object: `messages` (OpenAI chat format: `role`,
  `content`, optional `tool_calls`; since format `mini-swe-agent-1.1` an `extra` with `actions`, `timestamp`
  (Unix seconds), `returncode`; a final `exit` message), `info` (`model_stats`, `exit_status`,
  `submission`, `config`), `trajectory_format`.

How a run becomes a session (assumptions):

* **Shared prefix**: the system message (swe-agent also: its demonstrations; openhands: the `system`
  action's prompt and tool schemas as JSON); prefix id = format + hash of that text, so runs of one agent
  configuration share it, as they share a prefix cache in a real deployment.
* **New tokens** of a call = the tokens of every message added since the previous call (the task for the
  first call; tool output, error or user messages later), message by message, without chat-template
  tokens. The model's context is treated as append-only, as in `workloads.model`: history processors
  that elide old observations, and context condensation, are not replayed.
* **Output tokens** = the tokens of the assistant message: its content plus the name and arguments of each
  tool call (at least 1).
* **Tool**: what the action ran, classified into the `swe` preset's tool kinds by `classify_command`
  (test runners -> run_tests, installs/compiles -> build, file edits -> edit, file views -> read_file,
  python scripts -> python, searches and other quick shell commands -> grep); actions that run nothing
  (think, messages, finish/submit) give no tool call. Several tools after one call (parallel tool calls)
  become one tool call of the heaviest kind with their durations summed.
* **Tool duration**, as CPU seconds on one core: swe-agent's `execution_time`; openhands' observation
  timestamp minus its action's; mini-swe-agent's observation `extra.timestamp` minus the previous
  message's (the assistant message is stamped when the response arrives, each observation when its
  command ends). Where not recorded, drawn from the `swe` preset's model of that tool kind (CPU time and
  cores), seeded by (seed, run id).
* The last call's tool is dropped (its output never reaches the model: the session ends there), and
  recorded token usage and LLM latencies are not used: the served model's tokenizer decides the counts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from harness import inputs
from harness.errors import BadInput
from workloads.model import MAX_TOOL_CPU_S, Session, ToolCall, Turn, format_validation_error
from workloads.swebench import DEFAULT_RPS, agent_spec, stream_key
from workloads.synthetic import SessionSpec, _pick
from workloads.tokens import TokenCounter


# -------------------------------------------------------------------------------- recorded runs
@dataclass
class RecordedTool:
    kind: str
    seconds: float | None = None  # measured duration, None = not recorded


@dataclass
class RecordedCall:
    new_texts: list[str]  # messages that reached the model since the previous call
    output_text: str
    tools: list[RecordedTool] = field(default_factory=list)
    key: Any = None  # format-specific: groups several events of one LLM response (openhands)


@dataclass
class Recorded:
    id: str
    where: str  # the file (or directory) it came from, for messages
    system_text: str
    calls: list[RecordedCall]


# ------------------------------------------------------------------------------------ tool kinds
# Order = priority: a compound command (`cd x && python -m pytest`) is its heaviest part.
_KIND_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(p)) for kind, p in (
    ("run_tests", r"\b(pytest|py\.test|tox|nosetests|runtests\.py|bin/test|manage\.py\s+test|unittest"
                  r"|make\s+(test|check)|npm\s+(run\s+)?test|go\s+test|cargo\s+test|ctest)\b"),
    ("build", r"\b(pip3?\s+install|setup\.py\s+(build|build_ext|develop|install)|cmake|ninja|npm\s+(install|ci)"
              r"|cargo\s+build|go\s+build|gcc|g\+\+|clang)\b|(^|[;&|]\s*)make\b"),
    ("edit", r"^\s*(str_replace_editor|str_replace_based_edit_tool|file_editor|edit_file)\s+"
             r"(str_replace|create|insert|undo_edit)\b|^\s*(edit|create|insert|append|apply_patch)\b"
             r"|\bsed\s+-i|\bgit\s+apply\b|\bpatch\s+-p|\bcat\s*>|\bcat\s*<<|\btee\s"),
    ("read_file", r"^\s*(str_replace_editor|str_replace_based_edit_tool|file_editor)\s+view\b"
                  r"|^\s*(open|goto|scroll_up|scroll_down)\b|\b(cat|head|tail|less|more|nl)\s|\bsed\s+-n"),
    ("python", r"\b(python[0-9.]*|ipython)\b"),
    ("grep", r"."),  # searches and every other quick shell command
))
_COST_RANK = {kind: rank for rank, (kind, _) in enumerate(_KIND_PATTERNS)}
_NO_TOOL_COMMANDS = re.compile(r"^\s*(submit|exit|echo\s+(COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT|MINI_SWE_AGENT_FINAL_OUTPUT))\b")


def classify_command(command: str | None) -> str | None:
    """The `swe` preset's tool kind a shell or agent-tool command belongs to; None when it runs nothing."""
    if command is None or not command.strip() or _NO_TOOL_COMMANDS.match(command):
        return None
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(command):
            return kind
    return None


def _heaviest(kinds: Sequence[str]) -> str:
    return min(kinds, key=lambda k: _COST_RANK[k])


# ----------------------------------------------------------------------------------- json helpers
def _kind_of(value: Any) -> str:
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def read_json(path: Path, what: str = "trajectory file") -> Any:
    """A JSON document read whole, through the one input boundary (`what` is kept for the callers' wording)."""
    return inputs.read_json(path)


def _text(content: Any, loc: str) -> str:
    """Message content as text: a string, or OpenAI-style parts ([{"type": "text", "text": ...}])."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" if isinstance(part, dict) else str(part) for part in content)
    raise BadInput(f"{loc}: field 'content' must be a string or a list of text parts, got {_kind_of(content)}")


def _tool_calls_text(tool_calls: Any) -> str:
    """Name and arguments of each tool call of an assistant message: what the model generated for them."""
    out = ""
    for call in tool_calls or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            args = fn.get("arguments")
            out += (fn.get("name") or "") + (args if isinstance(args, str) else json.dumps(args or {}))
    return out


def _command_of_tool_call(call: Any) -> str | None:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return None
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = inputs.parse_json(args, "arguments")
        except BadInput:
            return f"{fn.get('name') or ''} {args}"
    if isinstance(args, dict):
        if isinstance(args.get("command"), str) and fn.get("name") in (None, "bash", "execute_bash", "terminal"):
            return args["command"]
        return " ".join([fn.get("name") or "", *(str(v) for v in args.values() if isinstance(v, str | int))])
    return fn.get("name")


def _object(data: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected {what}, got a JSON {_kind_of(data)}")
    return data


def _list_field(data: Mapping[str, Any], name: str, where: str, what: str) -> list[Any]:
    if name not in data:
        raise BadInput(f"{where}: missing field '{name}' (is this {what}?)")
    value = data[name]
    if not isinstance(value, list):
        raise BadInput(f"{where}: field '{name}' must be a list, got {_kind_of(value)}")
    return value


def _role(item: Any, loc: str) -> str:
    if not isinstance(item, dict):
        raise BadInput(f"{loc}: expected a message object, got {_kind_of(item)}")
    role = item.get("role")
    if not isinstance(role, str):
        raise BadInput(f"{loc}: missing field 'role'")
    return role


def _seconds(value: Any, loc: str, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{loc}: field '{name}' must be a number of seconds")
    if not 0 <= value <= MAX_TOOL_CPU_S:  # NaN fails this too
        raise BadInput(f"{loc}: field '{name}' is {value!r}, outside [0, {MAX_TOOL_CPU_S:g}] seconds")
    return float(value)


def _timestamp(value: Any, loc: str) -> float | None:
    """An ISO 8601 time (or Unix seconds) as Unix seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise BadInput(f"{loc}: field 'timestamp' is not an ISO 8601 time: {value!r}")


def _require_calls(rec: Recorded) -> Recorded:
    if not rec.calls:
        raise BadInput(f"{rec.where}: no LLM calls in the trajectory (no assistant messages)")
    return rec


# ------------------------------------------------------------------------------------- swe-agent
_SWE_AGENT = "a swe-agent .traj file"


def parse_swe_agent(data: Any, where: str, run_id: str) -> Recorded:
    """A SWE-agent `.traj` object: messages from `history`, tool durations from `trajectory[*].execution_time`."""
    data = _object(data, where, "a swe-agent trajectory (a JSON object with 'history' and 'trajectory')")
    history = _list_field(data, "history", where, _SWE_AGENT)
    steps = _list_field(data, "trajectory", where, _SWE_AGENT)
    system: list[str] = []
    calls: list[RecordedCall] = []
    actions: list[str | None] = []
    pending: list[str] = []
    for i, item in enumerate(history):
        loc = f"{where}: history[{i}]"
        role = _role(item, loc)
        text = _text(item.get("content"), loc)
        if role == "system" or item.get("is_demo"):
            system.append(text)
        elif role == "assistant":
            calls.append(RecordedCall(pending, text + _tool_calls_text(item.get("tool_calls"))))
            action = item.get("action")
            actions.append(action if isinstance(action, str) else None)
            pending = []
        else:  # user (task, observations) and tool (function-calling observations)
            pending.append(text)
    for j, step in enumerate(steps):
        if not isinstance(step, dict):
            raise BadInput(f"{where}: trajectory[{j}]: expected a step object, got {_kind_of(step)}")
    # Pair each call with its trajectory step: one step per call, or, when a call has no step (a requery),
    # the next step whose action is the call's action.
    paired: list[dict[str, Any] | None] = [None] * len(calls)
    if len(steps) == len(calls):
        paired = list(steps)
    else:
        j = 0
        for k, action in enumerate(actions):
            for jj in range(j, len(steps)):
                if action is not None and str(steps[jj].get("action", "")).strip() == action.strip():
                    paired[k], j = steps[jj], jj + 1
                    break
    for k, call in enumerate(calls):
        step = paired[k]
        command = actions[k] if actions[k] is not None else (step or {}).get("action")
        kind = classify_command(command if isinstance(command, str) else None)
        if kind is not None:
            seconds = _seconds(step.get("execution_time"), f"{where}: trajectory step of call {k}", "execution_time") \
                if step is not None else None
            call.tools.append(RecordedTool(kind, seconds))
    return _require_calls(Recorded(run_id, where, "".join(system), calls))


# ------------------------------------------------------------------------------------- openhands
_OPENHANDS = "an OpenHands event stream"
# Agent-side actions that are not LLM output (bookkeeping the controller or memory emits).
_NOT_LLM_ACTIONS = {"system", "recall", "change_agent_state", "null", "condensation", "condensation_request",
                    "agent_state_changed", "pause", "resume"}
_SKIP_OBSERVATIONS = {"agent_state_changed", "null", "change_agent_state"}
_NO_TOOL_ACTIONS = {"think", "message", "finish", "reject", "delegate"}
_ACTION_TEXT_KEYS = ("thought", "command", "code", "path", "old_str", "new_str", "file_text", "content",
                     "final_thought", "outputs", "url", "browser_actions")


def _openhands_kind(action: str, args: Mapping[str, Any]) -> str | None:
    if action in _NO_TOOL_ACTIONS:
        return None
    if action == "run":
        return classify_command(args.get("command") if isinstance(args.get("command"), str) else None) or "grep"
    if action == "run_ipython":
        return "python"
    if action == "read":
        return "read_file"
    if action in ("edit", "write"):
        return "read_file" if args.get("command") == "view" else "edit"
    return "python"  # browsing, MCP tools and other actions: a generic process


def _response_text(meta: Mapping[str, Any]) -> str | None:
    """What the model generated, from `tool_call_metadata.model_response` (a litellm ModelResponse)."""
    response = meta.get("model_response")
    choices = response.get("choices") if isinstance(response, dict) else None
    if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        return None
    message = choices[0]["message"]
    return _text(message.get("content"), "model_response") + _tool_calls_text(message.get("tool_calls"))


def _action_text(args: Mapping[str, Any]) -> str:
    return "\n".join(str(args[k]) for k in _ACTION_TEXT_KEYS if isinstance(args.get(k), str | list) and args[k])


def parse_openhands(events: Sequence[tuple[str, Any]], where: str, run_id: str) -> Recorded:
    """OpenHands events ((location, event) pairs in stream order) -> one recorded run."""
    system = ""
    calls: list[RecordedCall] = []
    pending: list[str] = []
    started: dict[Any, tuple[RecordedTool, float | None]] = {}
    for loc, ev in events:
        if not isinstance(ev, dict):
            raise BadInput(f"{loc}: expected an event object, got {_kind_of(ev)}")
        if "action" in ev:
            action, args = ev["action"], ev.get("args") or {}
            if not isinstance(action, str) or not isinstance(args, dict):
                raise BadInput(f"{loc}: field 'action' must be a string and 'args' an object")
            if action == "system":
                tools = args.get("tools")
                system = _text(args.get("content"), loc) + (json.dumps(tools) if tools else "")
                continue
            if action in _NOT_LLM_ACTIONS:
                continue
            if ev.get("source") != "agent":  # the user's (or environment's) messages reach the model as input
                pending.append(_text(args.get("content", ev.get("message")), loc))
                continue
            meta = ev.get("tool_call_metadata") if isinstance(ev.get("tool_call_metadata"), dict) else {}
            response = meta.get("model_response") if isinstance(meta.get("model_response"), dict) else {}
            key = response.get("id")
            if key is not None and calls and calls[-1].key == key:
                call = calls[-1]  # another tool call of the same LLM response
            else:
                call = RecordedCall(pending, _response_text(meta) or "", key=key)
                calls.append(call)
                pending = []
            if key is None or _response_text(meta) is None:
                call.output_text += _action_text(args)
            kind = _openhands_kind(action, args)
            if kind is not None:
                tool = RecordedTool(kind)
                call.tools.append(tool)
                if "id" in ev:
                    started[ev["id"]] = (tool, _timestamp(ev.get("timestamp"), loc))
        elif "observation" in ev:
            if ev["observation"] in _SKIP_OBSERVATIONS:
                continue
            pending.append(_text(ev.get("content"), loc))
            tool, t0 = started.pop(ev.get("cause"), (None, None))
            t1 = _timestamp(ev.get("timestamp"), loc)
            if tool is not None and t0 is not None and t1 is not None:
                tool.seconds = max(0.0, t1 - t0)
        elif "kind" in ev:
            raise BadInput(f"{loc}: an OpenHands SDK (V1) event of kind {ev['kind']!r}; only V0 event streams "
                           f"(events with 'action' or 'observation') are read")
        else:
            raise BadInput(f"{loc}: neither 'action' nor 'observation' (is this {_OPENHANDS}?)")
    return _require_calls(Recorded(run_id, where, system, calls))


def _openhands_history(data: Any, where: str) -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        data = _list_field(data, "history", where, _OPENHANDS)
        prefix = "history"
    elif isinstance(data, list):
        prefix = "events"
    else:
        raise BadInput(f"{where}: expected {_OPENHANDS} (a JSON list of events), got a JSON {_kind_of(data)}")
    return [(f"{where}: {prefix}[{i}]", ev) for i, ev in enumerate(data)]


def _event_files(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_file() and re.fullmatch(r"\d+\.json", p.name)),
                  key=lambda p: int(p.stem))


def read_jsonl(path: Path, what: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, `file:line`, object) for each non-blank line of a JSONL file of `what` objects, read
    through the one input boundary (decode, size and nesting errors are one line)."""
    for lineno, text in inputs.iter_lines(path):
        where = f"{path}:{lineno}"
        yield lineno, where, _object(inputs.parse_json(text, where), where, what)


def _openhands_file(path: Path) -> list[Recorded]:
    if path.suffix == ".jsonl":
        runs = []
        for lineno, where, record in read_jsonl(path, "an evaluation record with 'history'"):
            run_id = str(record.get("instance_id") or f"{path.stem}-{lineno}")
            runs.append(parse_openhands(_openhands_history(record, where), where, run_id))
        return runs
    data = read_json(path)
    run_id = str(data.get("instance_id") or path.stem) if isinstance(data, dict) else path.stem
    return [parse_openhands(_openhands_history(data, str(path)), str(path), run_id)]


def _openhands_events_dir(directory: Path) -> Recorded:
    events = [(str(p), read_json(p)) for p in _event_files(directory)]
    run_id = directory.parent.name if directory.name == "events" else directory.name
    return parse_openhands(events, str(directory), run_id)


# -------------------------------------------------------------------------------- mini-swe-agent
_MINI = "a mini-swe-agent trajectory"
_FENCED = re.compile(r"```(?:bash|sh|mswea_bash_command)?[ \t]*\n(.*?)\n?```", re.DOTALL)


def _mini_commands(message: Mapping[str, Any], text: str) -> list[str]:
    """The commands an assistant message asked to run: `extra.actions` (format 1.1), its tool calls, or
    the fenced bash block of its content (format 1)."""
    extra = message.get("extra") if isinstance(message.get("extra"), dict) else {}
    actions = extra.get("actions")
    if isinstance(actions, list):
        return [a["command"] if isinstance(a, dict) and isinstance(a.get("command"), str) else str(a)
                for a in actions]
    if message.get("tool_calls"):
        return [c for c in map(_command_of_tool_call, message["tool_calls"]) if c]
    m = _FENCED.search(text)
    return [m.group(1)] if m else []


def parse_mini_swe_agent(data: Any, where: str, run_id: str) -> Recorded:
    """A mini-swe-agent `.traj.json` object: `messages`, durations from `extra.timestamp` when present."""
    data = _object(data, where, "a mini-swe-agent trajectory (a JSON object with 'messages')")
    fmt = data.get("trajectory_format")
    if fmt is not None and not str(fmt).startswith("mini-swe-agent"):
        raise BadInput(f"{where}: trajectory_format {fmt!r} is not a mini-swe-agent format")
    messages = _list_field(data, "messages", where, _MINI)
    system: list[str] = []
    calls: list[RecordedCall] = []
    pending: list[str] = []
    last_time: float | None = None
    next_tool = 0
    for i, msg in enumerate(messages):
        loc = f"{where}: messages[{i}]"
        role = _role(msg, loc)
        if role == "exit":
            break
        text = _text(msg.get("content"), loc)
        extra = msg.get("extra") if isinstance(msg.get("extra"), dict) else {}
        stamp = _timestamp(extra.get("timestamp"), loc)
        if role == "system":
            system.append(text)
        elif role == "assistant":
            call = RecordedCall(pending, text + _tool_calls_text(msg.get("tool_calls")))
            call.tools = [RecordedTool(kind) for kind in map(classify_command, _mini_commands(msg, text)) if kind]
            calls.append(call)
            pending, last_time, next_tool = [], stamp, 0
        else:  # the task, then observations (role user, or tool for tool-call models) and format errors
            pending.append(text)
            if calls and next_tool < len(calls[-1].tools):  # the output of the call's next command
                if stamp is not None and last_time is not None:
                    calls[-1].tools[next_tool].seconds = max(0.0, stamp - last_time)
                next_tool += 1
            if stamp is not None:
                last_time = stamp
    return _require_calls(Recorded(run_id, where, "".join(system), calls))


# ------------------------------------------------------------------------------------- the formats
@dataclass(frozen=True)
class TraceFormat:
    """How to find a format's runs in a file or directory."""

    name: str
    read_file: Callable[[Path], list[Recorded]]
    find: Callable[[Path], list[Path]]  # the files (or event directories) of a directory, in order


def _run_id(path: Path, suffixes: Sequence[str]) -> str:
    name = path.name
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _single(parse: Callable[[Any, str, str], Recorded], suffixes: Sequence[str]) -> Callable[[Path], list[Recorded]]:
    return lambda path: [parse(read_json(path), str(path), _run_id(path, suffixes))]


_OPENHANDS_SKIP_DIRS = {"llm_completions", "eval_outputs", "logs"}  # per-call LLM logs, test logs
_OPENHANDS_SKIP_FILES = {"metadata.json", "init.json", "report.json"}


def _find_openhands(directory: Path) -> list[Path]:
    """Event directories (files named <n>.json), and event-list or output files elsewhere."""
    out: list[Path] = []
    dirs = [directory, *(p for p in directory.rglob("*") if p.is_dir())]
    for d in sorted(d for d in dirs if not _OPENHANDS_SKIP_DIRS & set(d.relative_to(directory).parts)):
        if _event_files(d):
            out.append(d)
        else:
            out.extend(sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl")
                              and p.name not in _OPENHANDS_SKIP_FILES))
    return out


def _read_openhands(path: Path) -> list[Recorded]:
    return [_openhands_events_dir(path)] if path.is_dir() else _openhands_file(path)


def _find(patterns: Sequence[str]) -> Callable[[Path], list[Path]]:
    def find(directory: Path) -> list[Path]:
        for pattern in patterns:
            found = sorted(p for p in directory.rglob(pattern) if p.is_file())
            if found:
                return found
        return []

    return find


FORMATS: dict[str, TraceFormat] = {
    "swe-agent": TraceFormat("swe-agent", _single(parse_swe_agent, (".traj", ".json")), _find(("*.traj",))),
    "openhands": TraceFormat("openhands", _read_openhands, _find_openhands),
    "mini-swe-agent": TraceFormat("mini-swe-agent", _single(parse_mini_swe_agent, (".traj.json", ".json")),
                                  _find(("*.traj.json", "*.json"))),
}


def read_recorded(path: str | Path, fmt: str) -> list[Recorded]:
    """Every run in `path` (a file, or a directory searched recursively), in path order."""
    try:
        trace_format = FORMATS[fmt]
    except KeyError:
        raise BadInput(f"unknown trajectory format {fmt!r} (known: {', '.join(FORMATS)})") from None
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    sources = [path] if path.is_file() else trace_format.find(path)
    if not sources:
        raise BadInput(f"{path}: no {fmt} trajectories in the directory")
    return [rec for source in sources for rec in trace_format.read_file(source)]


# ---------------------------------------------------------------------------------------- sessions
def _tool_call(tools: Sequence[RecordedTool], spec: SessionSpec, rng: np.random.Generator) -> ToolCall | None:
    """One tool call for the tools after an LLM call: measured seconds where recorded, else the preset's model."""
    if not tools:
        return None
    name = _heaviest([t.kind for t in tools])
    seconds, cores = 0.0, 1
    for t in tools:
        if t.seconds is not None:
            seconds += t.seconds
        else:
            kind = spec.tools[t.kind]
            seconds += kind.cpu_seconds.sample(rng) * spec.cpu_scale
    if all(t.seconds is None for t in tools):
        cores = _pick(rng, spec.tools[name].cores)
    return ToolCall(name=name, cpu_seconds=round(seconds, 4), cores=cores)


def prefix_id(fmt: str, system_text: str) -> str:
    return f"{fmt}/{hashlib.sha256(system_text.encode('utf-8')).hexdigest()[:12]}"


def recorded_session(rec: Recorded, fmt: str, counter: TokenCounter, seed: int = 0,
                     spec: SessionSpec | None = None) -> Session:
    """One recorded run as a session (arrival 0; `import_trajectories` spaces them out)."""
    spec = spec or agent_spec()
    rng = np.random.default_rng([seed, stream_key(rec.id)])
    prefix_tokens = counter.count(rec.system_text)
    last = len(rec.calls) - 1
    try:
        turns = tuple(
            Turn(new_tokens=sum(counter.count(t) for t in call.new_texts),
                 output_tokens=max(1, counter.count(call.output_text)),
                 tool=_tool_call(call.tools, spec, rng) if k < last else None)
            for k, call in enumerate(rec.calls)
        )
        return Session(id=rec.id, arrival_s=0.0, prefix_id=prefix_id(fmt, rec.system_text) if prefix_tokens else None,
                       prefix_tokens=prefix_tokens, turns=turns, kind=fmt)
    except ValidationError as e:  # a recorded run beyond the workload model's ranges (workloads.model)
        raise BadInput(f"{rec.where}: {format_validation_error(e)}") from None


def _unique_ids(runs: list[Recorded]) -> Iterator[Recorded]:
    seen: dict[str, int] = {}
    for rec in runs:
        n = seen.get(rec.id, 0) + 1
        seen[rec.id] = n
        if n > 1:
            rec = Recorded(f"{rec.id}-{n}", rec.where, rec.system_text, rec.calls)
        yield rec


def import_trajectories(path: str | Path, fmt: str, counter: TokenCounter, seed: int = 0,
                        rps: float = DEFAULT_RPS) -> list[Session]:
    """Sessions of every run under `path`, arriving every 1/rps seconds in path order."""
    if rps <= 0:
        raise BadInput(f"--rps must be > 0, got {rps}")
    runs = list(_unique_ids(read_recorded(path, fmt)))
    spec = agent_spec()
    return [recorded_session(rec, fmt, counter, seed, spec).with_arrival(round(i / rps, 6))
            for i, rec in enumerate(runs)]
