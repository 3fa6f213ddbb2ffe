"""The architecture's layers, held by an import check (AST: every import of every module, lazy imports inside
functions included; imports under `if TYPE_CHECKING:` are not run and do not count).

Bottom up: `harness.errors` and the input readers `harness.inputs` -> `workloads` -> the policy contract `harness.policy` -> the policies
(`baselines`, `mars_impl`) -> the rest of `harness`. Policies import only the contract and
`workloads.model`; `workloads` imports only `harness.errors` and `harness.inputs` of the harness; real engines never import the
simulated one; the runner knows engines only through their interface; no import cycle, between modules or
between those layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "workloads", "baselines", "mars_impl")
POLICY_PACKAGES = ("baselines", "mars_impl")
# what a policy may import from the project beside its own package (the contract; never the driver)
CONTRACT = ("harness.policy", "harness.policy.hooks", "harness.policy.signals", "harness.policy.admission",
            "harness.policy.helpers", "harness.policy.tools", "workloads.model")
# the bottom layer: what every package, workloads included, may import
BOTTOM = ("harness.errors", "harness.inputs")
REAL_ENGINES = ("harness.engines.chat", "harness.engines.http", "harness.engines.launch", "harness.engines.real",
                "harness.engines.sglang", "harness.engines.vllm")


def read_tree(root: Path = ROOT) -> dict[str, str]:
    """Module name -> source, for every module of the project's packages."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            sources[".".join(parts)] = path.read_text()
    return sources


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement that runs (at module level or inside functions), skipping TYPE_CHECKING blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def import_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from pkg import mod` counts as importing pkg.mod)."""
    graph: dict[str, set[str]] = {}
    for module, source in sources.items():
        targets: set[str] = set()
        package = module if _is_package(module, sources) else module.rpartition(".")[0]
        for node in _import_nodes(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in sources else base for alias in node.names]
            for name in names:
                target = _project_module(name, sources)
                if target is not None and target != module:
                    targets.add(target)
        graph[module] = targets
    return graph


def _is_package(module: str, sources: Mapping[str, str]) -> bool:
    return any(other.startswith(module + ".") for other in sources)


def _project_module(name: str, sources: Mapping[str, str]) -> str | None:
    """The project module an imported dotted name refers to (its longest known prefix), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in sources:
            return candidate
    return None


def layer(module: str) -> str:
    """The layer node of a module for the package-level cycle check."""
    if module in BOTTOM:
        return "harness.errors"
    if module == "harness.policy" or module.startswith("harness.policy."):
        return "harness.policy"
    return module.split(".")[0]


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _in(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(sources: Mapping[str, str]) -> list[str]:
    """Every broken layer rule, one line each."""
    graph = import_graph(sources)
    found = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            if top in POLICY_PACKAGES and not (target.split(".")[0] == top or target in CONTRACT):
                found.append(f"policy {module} imports {target} (policies import only {', '.join(CONTRACT)})")
            if top == "workloads" and not (target.startswith("workloads") or target in BOTTOM):
                found.append(f"{module} imports {target} (workloads imports only {' and '.join(BOTTOM)})")
            if _in(module, ("harness.policy",)) and not (
                    _in(target, ("harness.policy",)) or target in ("workloads.model", *BOTTOM)):
                found.append(f"the policy contract {module} imports {target}")
            if _in(module, REAL_ENGINES) and _in(target, ("harness.engines.sim",)):
                found.append(f"real engine {module} imports the simulated engine {target}")
            if module == "harness.runner" and _in(target, ("harness.engines",)) and target != "harness.engines.base":
                found.append(f"the runner imports engine {target} (it knows engines only by harness.engines.base)")
    for component in cycles(graph):
        found.append(f"import cycle between modules: {' <-> '.join(component)}")
    layers: dict[str, set[str]] = {}
    for module, targets in graph.items():
        layers.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    for component in cycles(layers):
        found.append(f"import cycle between layers: {' <-> '.join(component)}")
    return found


def test_the_tree_keeps_its_layers() -> None:
    assert violations(read_tree()) == []


def test_the_tree_is_read_whole() -> None:
    """The check reads the packages the layers speak of, and sees their imports."""
    sources = read_tree()
    graph = import_graph(sources)
    assert {"harness.policy.driver", "harness.engines.sim.core", "harness.engines.vllm.scheduler", "baselines.fcfs",
            "mars_impl.mars", "workloads.model"} <= set(sources)
    assert "harness.policy.driver" in graph["harness.engines.sim.core"]  # the sim adapter sits on the driver
    assert "harness.policy.driver" in graph["harness.engines.vllm.scheduler"]  # so does the vLLM plugin
    assert "harness.engines.vllm.server" in graph["harness.engines.vllm"]  # lazy imports count (inside build)


@pytest.mark.parametrize(("module", "bad_line", "expected"), [
    ("baselines.fcfs", "from harness.engines.sim.core import EngineCore", "policy baselines.fcfs imports"),
    ("mars_impl.scheduler", "from baselines.fcfs import FcfsPolicy", "policy mars_impl.scheduler imports baselines"),
    ("mars_impl.mars", "from harness.policy.driver import PolicyDriver", "imports harness.policy.driver"),
    ("workloads.synthetic", "from harness.config import RunConfig", "workloads imports only harness.errors"),
    ("harness.inputs", "from harness.config import RunConfig", "import cycle between layers"),
    ("harness.engines.http", "from harness.engines.sim.request import SimRequest", "real engine harness.engines.http"),
    ("harness.runner", "from harness.engines.sim.engine import SimEngine", "the runner imports engine"),
    ("harness.policy.hooks", "from harness.config import RunConfig", "the policy contract harness.policy.hooks"),
    # cycles through a lazy import inside a function: errors -> metrics -> errors, backends -> experiment -> backends
    ("harness.errors", "def f():\n    from harness.metrics import summarize", "import cycle between modules"),
    ("harness.backends", "def f():\n    from harness.experiment import run_experiment", "import cycle between modules"),
])
def test_a_bad_import_is_caught(module: str, bad_line: str, expected: str) -> None:
    sources = read_tree()
    sources[module] = sources[module] + "\n\n" + bad_line + "\n"
    found = violations(sources)
    assert any(expected in line for line in found), found


def test_type_checking_imports_do_not_count() -> None:
    sources = read_tree()
    sources["workloads.synthetic"] += "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from harness.config import RunConfig\n"
    assert violations(sources) == []
