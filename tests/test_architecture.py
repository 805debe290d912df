"""The package's import graph follows the method: data and backbones at the bottom, the method above them, training
and evaluation above that, the notebooks' helpers and the command line on top. The layer table is written once, in
the README ("## Architecture"); this test reads it and every `import` of the package (function-level ones too) and
fails on an import against the order, on an import cycle, or on a module the table does not place.

    python tests/test_architecture.py        # prints the module graph with each module's layer
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hpnb"


def layer_table(readme: Path = ROOT / "README.md") -> list[tuple[str, list[str]]]:
    """[(layer name, [module patterns])] from the README's architecture table, lowest layer first."""
    section = readme.read_text().split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.match(r"^\d+ ", cells[0]):
            rows.append((cells[0], re.findall(r"`([\w.*]+)`", cells[1])))
    return rows


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package ("hpnb" is its __init__)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules a file imports, at any depth (imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hpnb"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hpnb":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return {name for name in found if name in known}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package modules it imports}."""
    mods = modules(package)
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def layer_of(name: str, table: list[tuple[str, list[str]]]) -> int | None:
    """Index of the layer whose patterns name the module (`data` = hpnb.data, `data.*` = its submodules)."""
    short = name.removeprefix("hpnb.") if name != "hpnb" else "hpnb"
    hits = [
        i
        for i, (_, patterns) in enumerate(table)
        for p in patterns
        if short == p or (p.endswith(".*") and short.startswith(p[:-1]))
    ]
    return hits[0] if len(hits) == 1 else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (strongly connected components with more than one module, or a self-import)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def report(package: Path = PACKAGE, readme: Path = ROOT / "README.md") -> str:
    """The module graph as a text table: module, its layer, what it imports; violations marked with '!'."""
    table, edges = layer_table(readme), graph(package)
    lines = []
    for name in sorted(edges, key=lambda n: (layer_of(n, table) if layer_of(n, table) is not None else 99, n)):
        mine = layer_of(name, table)
        deps = []
        for d in sorted(edges[name]):
            up = mine is None or layer_of(d, table) is None or layer_of(d, table) > mine
            deps.append(("!" if up else "") + d.removeprefix("hpnb."))
        lines.append(f"{(mine + 1) if mine is not None else '?'}  {name:24s} -> {', '.join(deps)}")
    found = cycles(edges)
    lines.append("cycles: " + ("; ".join(" -> ".join(c) for c in found) if found else "none"))
    return "\n".join(lines)


def test_the_readme_table_places_every_module_exactly_once():
    table = layer_table()
    assert [name.split()[0] for name, _ in table] == [str(i + 1) for i in range(len(table))] and len(table) >= 4
    unplaced = [m for m in modules() if layer_of(m, table) is None]
    assert not unplaced, f"modules missing from (or placed twice in) the README's architecture table: {unplaced}"


def upward(edges: dict[str, set[str]], table: list[tuple[str, list[str]]]) -> list[str]:
    """The imports against the order: a module importing one of a higher layer."""
    return [
        f"{a} (layer {layer_of(a, table) + 1}) imports {b} (layer {layer_of(b, table) + 1})"
        for a, deps in sorted(edges.items())
        for b in sorted(deps)
        if layer_of(b, table) > layer_of(a, table)
    ]


def test_no_module_imports_one_above_it():
    found = upward(graph(), layer_table())
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_there_is_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks themselves fail on the two kinds of defect (what the old hpnb had: toyworld <-> baseline, train <->
    evaluate)."""
    table = [("1 low", ["a", "d.*"]), ("2 high", ["b", "c"])]
    assert layer_of("hpnb.b", table) == 1 and layer_of("hpnb.d.e", table) == 0 and layer_of("hpnb.x", table) is None
    assert upward({"hpnb.a": {"hpnb.b"}, "hpnb.b": {"hpnb.a"}}, table) == ["hpnb.a (layer 1) imports hpnb.b (layer 2)"]
    assert cycles({"hpnb.a": {"hpnb.b"}, "hpnb.b": {"hpnb.c"}, "hpnb.c": {"hpnb.a"}}) == [
        ["hpnb.a", "hpnb.b", "hpnb.c"]
    ]
    assert cycles({"hpnb.a": set(), "hpnb.b": {"hpnb.a"}}) == []


if __name__ == "__main__":
    print(report(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE))
