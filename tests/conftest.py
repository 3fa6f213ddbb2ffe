"""Shared test helpers."""

from __future__ import annotations

import pytest

from harness.cli import main


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run `mars-bench ARGS` in-process through the real entry point; returns exit code and output."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> Result:
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


