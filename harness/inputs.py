"""The input boundary: every file mars-bench reads goes through these readers.

Whatever is wrong with a file — missing, unreadable, too large, not UTF-8 (binary), not JSON, JSON nested so
deep that the parser recurses out, an integer of thousands of digits, a parquet file that is not one — ends
as one `BadInput` line that names the file (and line), which the CLI prints with exit code 2. Callers never
catch decode or parse errors themselves.

Only `harness.errors` is imported, so `workloads` may use these readers too (tests/test_layers.py); pandas
is imported inside `read_parquet`, the one reader that needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

# Largest file read whole (a JSON document: profile, config.json, trajectory, run.json, summary.json): far
# above any real one (a long OpenHands trajectory is a few MB), low enough that a wrong path is not swallowed.
MAX_FILE_BYTES = 512 * 2**20
# Longest line of a JSONL file (one session of a workload, one event, one SWE-bench row).
MAX_LINE_BYTES = 64 * 2**20


def _oserror(label: str, e: OSError, kind: str = "file") -> BadInput:
    if isinstance(e, FileNotFoundError):
        return BadInput(f"{label}: cannot read {kind} (no such file)")
    if isinstance(e, IsADirectoryError):
        return BadInput(f"{label}: cannot read {kind} (a directory, not a file)")
    return BadInput(f"{label}: cannot read {kind} ({e.strerror or e})")


def decode(data: bytes, label: str) -> str:
    """UTF-8 text, or one line naming the file (and line) and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{label}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}; "
                       f"a binary file?)") from None


def read_bytes(path: Path, label: str, limit: int | None = None) -> bytes:
    """The bytes of a file of at most `limit` bytes (default MAX_FILE_BYTES)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    path = Path(path)
    too_big = BadInput(f"{label}: larger than the {limit / 2**20:.0f} MiB mars-bench reads from such a file")
    try:
        if path.stat().st_size > limit:
            raise too_big
        with path.open("rb") as f:
            data = f.read(limit + 1)  # bounded also for what stat cannot size (a pipe, a device)
    except OSError as e:
        raise _oserror(label, e) from None
    except MemoryError:
        raise BadInput(f"{label}: too large to read into memory") from None
    if len(data) > limit:
        raise too_big
    return data


def read_text(path: Path, label: str, limit: int | None = None) -> str:
    """A UTF-8 text file read whole."""
    return decode(read_bytes(path, label, limit), label)


def parse_json(text: str | bytes, where: str) -> Any:
    """A JSON value; `where` (file, file:line) starts the error line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise BadInput(f"{where}: JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise BadInput(f"{where}: not UTF-8 text (a binary file?)") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise BadInput(f"{where}: invalid JSON ({str(e).splitlines()[0]})") from None
    except MemoryError:
        raise BadInput(f"{where}: JSON too large to parse") from None


def read_json(path: Path, label: str | None = None) -> Any:
    """A JSON document read whole."""
    label = label or str(path)
    return parse_json(read_text(path, label), label)


def _kind_of(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


def read_json_object(path: Path, label: str | None = None) -> dict[str, Any]:
    """A JSON document that must be an object."""
    label = label or str(path)
    data = read_json(path, label)
    if not isinstance(data, dict):
        raise BadInput(f"{label}: expected a JSON object, got a JSON {_kind_of(data)}")
    return data


def iter_lines(path: Path, label: str | None = None, kind: str = "file") -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 text file, read one line at a time; `kind`
    names the file in an error ("workload file")."""
    path = Path(path)
    label = label or str(path)
    try:
        handle = path.open("rb")
    except OSError as e:
        raise _oserror(label, e, kind) from None
    with handle:
        lineno = 0
        while True:
            try:
                raw = handle.readline(MAX_LINE_BYTES + 1)
            except OSError as e:
                raise _oserror(label, e, kind) from None
            if not raw:
                return
            lineno += 1
            where = f"{label}:{lineno}"
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise BadInput(f"{where}: line longer than {MAX_LINE_BYTES / 2**20:.0f} MiB")
            text = decode(raw, where)
            if text.strip():
                yield lineno, text


def iter_jsonl(path: Path, label: str | None = None, kind: str = "file") -> Iterator[tuple[str, Any]]:
    """(`file:line`, value) of every non-blank line of a JSONL file."""
    label = label or str(path)
    for lineno, text in iter_lines(path, label, kind):
        where = f"{label}:{lineno}"
        yield where, parse_json(text, where)


def read_parquet(path: Path, label: str | None = None) -> pd.DataFrame:
    """A parquet table; a file that is not one (truncated, garbage) is one line."""
    import pandas as pd  # noqa: PLC0415 - only the readers of tables pay for pandas

    label = label or str(path)
    try:
        return pd.read_parquet(path)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise _oserror(label, e) from None
        raise BadInput(f"{label}: not a readable parquet file ({_first_line(e)})") from None
    except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError) and others for a non-parquet file
        raise BadInput(f"{label}: not a readable parquet file ({_first_line(e)})") from None


def read_parquet_rows(path: Path, label: str | None = None) -> list[dict[str, Any]]:
    """A parquet table as Python rows (lists as lists, nulls as None)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    label = label or str(path)
    try:
        return pq.read_table(path).to_pylist()
    except FileNotFoundError as e:
        raise _oserror(label, e) from None
    except Exception as e:  # ArrowInvalid, OSError for a non-parquet or truncated file
        raise BadInput(f"{label}: not a readable parquet file ({_first_line(e)})") from None


def read_parquet_schema(path: Path, label: str | None = None) -> None:
    """Check that a file is parquet by reading its footer only (a truncated or garbage file has none)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    label = label or str(path)
    try:
        pq.read_schema(path)
    except Exception as e:  # ArrowInvalid, OSError
        raise BadInput(f"{label}: not a readable parquet file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_writable_dir(path: Path, label: str, shown: Path | None = None) -> None:
    """Refuse, before any work, a directory that cannot be created or written: checks the nearest existing
    ancestor (a file there, or no write permission, is one line naming `label` and `shown`, default the
    directory). Creates nothing."""
    path = Path(path)
    shown = path if shown is None else shown
    here = path
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    if here.exists() and not here.is_dir():
        raise BadInput(f"{label} {shown}: {here} is a file, not a directory")
    if not os.access(here, os.W_OK | os.X_OK):
        what = "is not writable" if here == path else f"cannot be created ({here} is not writable)"
        raise BadInput(f"{label} {shown}: {what}")


def make_dirs(path: Path, label: str, shown: Path | None = None) -> None:
    """`mkdir -p`, one line when it fails (a file in the way, no permission, /proc)."""
    shown = Path(path) if shown is None else shown
    check_writable_dir(path, label, shown)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"{label} {shown}: cannot create {Path(path)} ({e.strerror or e})") from None


def prepare_output_file(path: Path, label: str) -> None:
    """Make a file's missing folders (`mkdir -p`, as `curl --create-dirs` or pandas' writers do not but most
    report writers do); a folder in the way, or one that cannot be made, is one line."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{label} {path}: is a directory, expected a file name")
    make_dirs(path.parent, label, shown=path)
