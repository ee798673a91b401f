"""The library's import graph from the source (every import statement, those inside functions included), and its
tiers: what `tests/test_architecture.py` checks and `docs/ARCHITECTURE.md` describes."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the first tier with a prefix it starts with; one import from a module to a
# module of a higher tier "runs back up".
TIERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("compressor.lazy", "compressor.quiet", "compressor.progress", "compressor.widths",
                    "compressor.device", "compressor.fingerprint", "compressor.studio_cache", "compressor.methods",
                    "compressor.recipe", "compressor.result", "compressor.feasibility", "compressor.estimate",
                    "compressor.archive", "compressor.isolate", "compressor.testing_configs",
                    "compressor.demo.locations", "compressor.data", "compressor.families", "compressor.formats",
                    "compressor.inspect", "compressor.sources", "compressor.source_spec", "compressor.model_checks",
                    "compressor.stream.shards",
                    "compressor.stream.skeleton", "compressor.stream.spill", "compressor.stream.writer",
                    "compressor.describe", "compressor.engine.residency", "compressor.quantization.scheme",
                    "compressor.quantization.targets", "compressor.distill.schedule",
                    "compressor.slimming.structure")),
    ("measure", ("compressor.importance", "compressor.stream.sweep", "compressor.stream.synthetic",
                 "compressor.distill", "compressor.evaluate", "compressor.testing")),
    ("cut", ("compressor.slimming", "compressor.quantization", "compressor.quantize", "compressor.stream",
             "compressor.compare")),
    ("engine", ("compressor.engine", "compressor.pipeline", "compressor.scoring")),
    ("entry", ("compressor.commands", "compressor.cli", "compressor.__main__", "compressor.conformance",
               "compressor.demo", "compressor")),
]


def modules(package: str = "compressor") -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _targets(mods: dict[str, Path], current: str, node: ast.AST) -> list[str]:
    package = current if mods[current].name == "__init__.py" else current.rsplit(".", 1)[0]
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for name in names:
        while name and name not in mods:             # `import a.b.c` of a module: its closest known module
            name = name.rpartition(".")[0]
        if name and name != current:
            out.append(name)
    return out


def import_edges(package: str = "compressor") -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its source."""
    mods = modules(package)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name].update(_targets(mods, name, node))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def tier(module: str) -> int:
    for rank, (_, prefixes) in enumerate(TIERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise KeyError(f"{module} is in no tier: add it to tests/import_graph.py TIERS")


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher tier."""
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if b != "compressor" and not b.startswith(a + ".") and tier(b) > tier(a))
