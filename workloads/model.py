"""The workload model: a session (one agent task) is an ordered list of turns; a turn is one LLM call
followed by at most one tool call. Stored as JSONL, one session per line.

A session's context grows append-only: turn k's prompt is the shared prefix, every earlier turn's new
and output tokens, and turn k's own new tokens. So the prompt of one turn is a prefix of the next and a
prefix cache can hit across turns (and across sessions sharing `prefix_id`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from harness.errors import BadInput
from harness.inputs import iter_jsonl, parse_json, prepare_output_file

SCHEMA_VERSION = 1
# A tool call of this name is a conversation's user, not a tool: the gap between a reply and the user's next
# message. The runner waits its `cpu_seconds` on the run's clock (think time) and uses no tool core for it.
USER_TOOL = "user"

# Sane ranges of a workload's numbers: far beyond any real agent task, small enough that sums and
# differences of them stay exact in a float (a session arriving at 1e308 s would have a JCT of 0).
MAX_ARRIVAL_S = 1e7  # 116 days
MAX_TOKENS = 10_000_000  # per turn or prefix; beyond any model's context window
MAX_TURNS = 10_000
MAX_TOOL_CPU_S = 1e6
MAX_TOOL_CORES = 4096


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not true/false")
    return value


# An int field that refuses JSON's true/false (pydantic would take `true` as 1); use it wherever an int is meant.
Int = Annotated[int, BeforeValidator(_not_bool)]
# The settings every model reading user input shares: no unknown keys, no NaN or infinity.
INPUT_MODEL_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = ConfigDict(**INPUT_MODEL_CONFIG, frozen=True)


class ToolCall(_Strict):
    """A CPU-bound tool call the agent makes after an LLM call (run tests, grep, build...)."""

    name: str = Field(min_length=1)
    cpu_seconds: float = Field(ge=0, le=MAX_TOOL_CPU_S, description="CPU work, in seconds of one core, per core used")
    cores: Int = Field(default=1, ge=1, le=MAX_TOOL_CORES, description="cores the tool keeps busy at once")
    command: str | None = Field(default=None, description="real command, run only with --tools real")


class Turn(_Strict):
    """One LLM call: `new_tokens` appended to the session's context, then `output_tokens` generated.

    For every turn after the first, `new_tokens` holds what the previous tool returned (its output, as
    the agent framework formats it) plus any new instruction.
    """

    new_tokens: Int = Field(ge=0, le=MAX_TOKENS)
    output_tokens: Int = Field(ge=1, le=MAX_TOKENS)
    tool: ToolCall | None = None


class Session(_Strict):
    """One agent task."""

    schema_version: Int = SCHEMA_VERSION
    id: str = Field(min_length=1)
    arrival_s: float = Field(ge=0, le=MAX_ARRIVAL_S, description="arrival time in the backlog, seconds from run start")
    prefix_id: str | None = Field(default=None, description="sessions with the same id share a prefix")
    prefix_tokens: Int = Field(default=0, ge=0, le=MAX_TOKENS, description="shared prefix length (system prompt, tools)")
    turns: tuple[Turn, ...] = Field(min_length=1, max_length=MAX_TURNS)
    kind: str = Field(default="", description="component of the workload it came from (swe, chat...)")

    @model_validator(mode="after")
    def _check(self) -> Session:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {self.schema_version} (this is {SCHEMA_VERSION})")
        if self.turns[-1].tool is not None:
            raise ValueError("the last turn must not call a tool")
        if self.prefix_tokens and self.prefix_id is None:
            raise ValueError("prefix_tokens given without a prefix_id")
        return self

    def prompt_tokens(self, turn: int) -> int:
        """Prompt length of call `turn`: prefix + all earlier new and output tokens + its own new tokens."""
        context = self.prefix_tokens
        for t in self.turns[:turn]:
            context += t.new_tokens + t.output_tokens
        return context + self.turns[turn].new_tokens

    @property
    def first_prompt_tokens(self) -> int:
        return self.prefix_tokens + self.turns[0].new_tokens

    @property
    def total_output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.turns)

    @property
    def total_prompt_tokens(self) -> int:
        """Prompt tokens summed over all calls (what the engine is asked to read, cached or not)."""
        return sum(self.prompt_tokens(k) for k in range(len(self.turns)))

    @property
    def tool_cpu_seconds(self) -> float:
        """Wall seconds of tool work if every tool got its cores immediately."""
        return sum(t.tool.cpu_seconds for t in self.turns if t.tool is not None)

    def with_arrival(self, arrival_s: float) -> Session:
        """A copy arriving at `arrival_s` (checked against the field's range: model_copy does not validate)."""
        if not 0 <= arrival_s <= MAX_ARRIVAL_S:
            raise BadInput(f"session {self.id}: arrival at {arrival_s:g} s is outside [0, {MAX_ARRIVAL_S:g}] s "
                           "(an arrival rate too low?)")
        return self.model_copy(update={"arrival_s": arrival_s})


def format_loc(loc: Iterable[Any]) -> str:
    """Pydantic's error location as a path: ('turns', 3, 'tool', 'cpu_seconds') -> turns[3].tool.cpu_seconds."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "missing": "missing required field",
    "extra_forbidden": "unknown field",
    "too_short": "must not be empty",
    "too_long": "must have at most {max_length} items",
    "finite_number": "must be a finite number",
}


def format_validation_error(err: ValidationError) -> str:
    """The first problem of a pydantic error as `field: message`, in plain words."""
    first = err.errors()[0]
    template = _MESSAGES.get(first["type"])
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in first.get("ctx", {}).items()}  # 0, not 0.0
    msg = template.format(**ctx) if template else first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    loc = format_loc(first["loc"])
    return f"{loc}: {msg}" if loc else msg


def parse_session_line(text: str, where: str) -> Session:
    """One JSONL line -> Session; `where` is `file:line` for the error message."""
    return session_from_json(parse_json(text, where), where)


def session_from_json(data: Any, where: str) -> Session:
    """A parsed JSONL line -> Session."""
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a JSON object (one session per line)")
    try:
        return Session.model_validate(data)
    except ValidationError as e:
        raise BadInput(f"{where}: {format_validation_error(e)}") from None


def iter_sessions(path: str | Path) -> Iterator[Session]:
    """Sessions of a JSONL workload file, validated line by line."""
    for where, data in iter_jsonl(Path(path), str(path), "workload file"):
        yield session_from_json(data, where)


def require_unique(ids: Iterable[str], what: str, where: object) -> None:
    """BadInput `where: duplicate WHAT 'x'` at the first id seen twice."""
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise BadInput(f"{where}: duplicate {what} {item!r}")
        seen.add(item)


def load_sessions(path: str | Path) -> list[Session]:
    """All sessions of a workload file, sorted by arrival; ids must be unique."""
    sessions = list(iter_sessions(path))
    if not sessions:
        raise BadInput(f"{path}: workload file has no sessions")
    require_unique((s.id for s in sessions), "session id", path)
    return sorted(sessions, key=lambda s: (s.arrival_s, s.id))


def dump_session(session: Session) -> str:
    """One JSONL line; fields at their defaults are left out so files stay small and stable."""
    data = session.model_dump(mode="json", exclude_defaults=True)
    data = {"schema_version": SCHEMA_VERSION, **data}
    return json.dumps(data, separators=(",", ":"))


def save_sessions(sessions: Iterable[Session], path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written workload file. Missing folders are made."""
    path = Path(path)
    prepare_output_file(path, "-o")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for s in sessions:
                f.write(dump_session(s) + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"-o {path}: cannot write ({e.strerror or e})") from None
