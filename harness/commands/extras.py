"""Optional dependencies (the pyproject extras): a command that needs one that is not installed says which,
in one line with the pip command, before it does anything (exit code 2, as for any bad input)."""

from __future__ import annotations

import importlib

from harness.errors import BadInput


def require_extra(extra: str, modules: tuple[str, ...], needed_by: str) -> None:
    """Import `modules` (the command imports them next anyway); a missing one is BadInput naming `extra`."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise BadInput(f"{needed_by} needs {name}, which is not installed: pip install -e '.[{extra}]'") \
                from None
