"""The import rules of the design (issue #13), read from the source with ``ast``:

* ``controllers`` and ``scenarios`` import nothing else of ours;
* ``sim.model`` (the clock-free model) imports only ``controllers`` and ``scenarios`` besides itself;
* ``live`` may import ``sim.model``, never the SimPy side of ``sim``;
* ``analysis`` imports neither ``sim`` nor ``live``;
* inside ``live``, the subsystems import each other one way only (``LIVE_ALLOWED``): ``kernel`` imports no
  other part of live; ``serve`` only ``kernel`` (the telemetry seam) and the recorder; the load generator
  only the SSE wire format (``live.serve.sse``) and the recorder, never the server's internals; the
  dashboard only the argument checks; the lab ``kernel``, ``serve``, the recorder and the argument checks.
  The top-level modules (``cli``, ``argcheck``, ``recorder``) are shared by all and may import any of them;
* no import cycle between modules (imports at module level; a function-level import is how a module
  defers one on purpose).

Every import is checked, function-level ones too (they still couple the packages). The imports that break a
rule today are listed in ``KNOWN``, each one by module, target and why it is still there; the test fails on
any other (and prints it), and on an entry of ``KNOWN`` that no longer happens, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sim", "live", "controllers", "scenarios", "analysis")
# live's subsystems: what each may import of live besides itself (a module or a package, with what is under it)
LIVE_ALLOWED: dict[str, tuple[str, ...]] = {
    "live.kernel": (),
    "live.serve": ("live.kernel", "live.recorder"),
    "live.loadgen": ("live.serve.sse", "live.recorder"),
    "live.dashboard": ("live.argcheck",),
    "live.lab": ("live.kernel", "live.serve", "live.recorder", "live.argcheck"),
}

# (importing module, imported module): what issue #13 still has to move. Each goes once its target moves
# where both halves may import it (sim/model/ or analysis/results/).
KNOWN: dict[tuple[str, str], str] = {
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """Our modules ``path`` imports, with line numbers (absolute imports; the project uses no relative ones)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.split(".")[0] in PACKAGES):
            out.append((node.module, node.lineno))
    return out


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def rule_broken(src: str, dst: str) -> str | None:
    """Which rule ``src`` importing ``dst`` breaks, if any."""
    top, dst_top = src.split(".")[0], dst.split(".")[0]
    subsystem = ".".join(src.split(".")[:2])
    if subsystem in LIVE_ALLOWED and dst_top == "live" and not within(dst, subsystem):
        allowed = LIVE_ALLOWED[subsystem]
        if not any(within(dst, p) for p in allowed):
            return f"{subsystem} imports of live only {', '.join(allowed) or 'nothing'}"
    if top in ("controllers", "scenarios") and dst_top != top:
        return f"{top} imports nothing else of ours"
    if (src == "sim.model" or src.startswith("sim.model.")) and dst_top not in ("controllers", "scenarios") \
            and not (dst == "sim.model" or dst.startswith("sim.model.")):
        return "sim.model imports only controllers and scenarios"
    if top == "live" and dst_top == "sim" and not (dst == "sim.model" or dst.startswith("sim.model.")):
        return "live imports only sim.model of sim (never the SimPy side)"
    if top == "analysis" and dst_top in ("sim", "live"):
        return "analysis imports neither sim nor live"
    return None


def violations() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sources():
        src = module_name(path)
        for dst, line in imports(path):
            rule = rule_broken(src, dst)
            if rule is not None:
                found[(src, dst)].append(f"{path.relative_to(ROOT)}:{line}: import {dst} ({rule})")
    return found


def cycles() -> list[list[str]]:
    """Strongly connected components (of more than one module) of the module-level import graph."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sources():
        src = module_name(path)
        graph[src] |= {dst for dst, _ in imports(path, top_level_only=True)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_breaks_the_rules_beyond_the_known_ones() -> None:
    found = violations()
    new = [line for key, lines in sorted(found.items()) if key not in KNOWN for line in lines]
    assert not new, "imports that break the design's rules:\n" + "\n".join(new)


def test_known_violations_still_happen() -> None:
    """An entry of KNOWN that no longer happens must leave the list (so it only shrinks)."""
    gone = sorted(set(KNOWN) - set(violations()))
    assert not gone, f"no longer imported, remove from KNOWN: {gone}"


def test_no_import_cycles() -> None:
    assert cycles() == [], f"module-level import cycles: {cycles()}"


def test_the_checks_catch_what_they_should() -> None:
    assert rule_broken("controllers.mpc", "sim.node") is not None
    assert rule_broken("scenarios.loader", "controllers") is not None
    assert rule_broken("sim.model.serving", "sim.node") is not None
    assert rule_broken("sim.model.serving", "controllers") is None
    assert rule_broken("live.serve.backends.engine", "sim.model.serving") is None
    assert rule_broken("live.serve.backends.engine", "sim.node") is not None
    assert rule_broken("analysis.metrics", "sim.model") is not None
    assert rule_broken("sim.world", "live.serve.backends.engine") is None  # sim's SimPy side is not restricted here
    assert rule_broken("live.kernel.faults", "live.lab.tunlink") is not None
    assert rule_broken("live.kernel.leftovers", "live.kernel.netns") is None
    assert rule_broken("live.serve.pacing", "live.kernel.source") is None
    assert rule_broken("live.serve.app", "live.lab.lab") is not None
    assert rule_broken("live.loadgen.client", "live.serve.sse") is None
    assert rule_broken("live.loadgen.client", "live.serve.app") is not None
    assert rule_broken("live.dashboard.app", "live.serve.pacing") is not None
    assert rule_broken("live.lab.lab", "live.serve.config") is None
    assert rule_broken("live.lab.lab", "live.loadgen.client") is not None
    assert rule_broken("live.cli", "live.loadgen.client") is None  # the top-level modules are shared
