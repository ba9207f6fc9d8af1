"""The code's shape: lines per module of `orchestrator/` and its internal import graph, at a git
revision or in the working tree; exits 1 if the graph has a cycle.

    python -m benchmarks.module_map [--rev REV] [--json | --against BEFORE]

`--against BEFORE` prints markdown for benchmarks/RESULTS.md: lines per module at BEFORE and now
(`--rev`, default the working tree), and the import edges each has that the other has not.

Modules are read with `ast` (nothing is imported). An edge `a -> b` is an import in `a` of the
orchestrator module `b` (`from orchestrator import runs`, `from orchestrator.report.model import
X`, `import orchestrator.x`), the lazy ones (inside a function: `import archs  # torch ...`) marked
`*`. `archs` (the model registry) appears as one node. Edges to a package's own `__init__` that
Python implies (importing `orchestrator.report.model` runs `orchestrator/report/__init__.py`) are
not drawn: they are how a package works, not a dependency one module chose. The cycle check counts
every edge, lazy ones included.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("orchestrator", "archs")


def sources(rev: str | None) -> dict[str, str]:
    """{path: text} of every .py file under orchestrator/ (and archs/), at `rev` or on disk."""
    if rev is None:
        return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
                for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))}
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", rev, *ROOTS],
                           capture_output=True, text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{n}"], capture_output=True, text=True,
                              check=True).stdout for n in names if n.endswith(".py")}


def module_name(path: str) -> str:
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node(module: str) -> str:
    return "archs" if module.split(".")[0] == "archs" else module


def imports(tree: ast.Module, known: set[str]) -> dict[str, bool]:
    """{module imported: lazy}; an import at module level wins over a lazy one of the same module."""
    found: dict[str, bool] = {}

    def visit(n: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(n):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # `from orchestrator import runs` names a module; `from orchestrator.runs import Tag` a name
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in known else child.module
                           for a in child.names]
            for t in targets:
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in known and t != "orchestrator":
                    found[t] = found.get(t, True) and lazy
            visit(child, inner)

    visit(tree, False)
    return found


def module_map(rev: str | None) -> dict:
    files = sources(rev)
    known = {module_name(p) for p in files}
    lines, edges = {}, {}
    for path, text in files.items():
        name = module_name(path)
        if name.split(".")[0] == "orchestrator":
            lines[path] = text.count("\n")
        src = node(name)
        for target, lazy in imports(ast.parse(text), known).items():
            dst = node(target)
            if dst != src and not (src.startswith(dst + ".")):  # not a submodule's own package
                key = (src, dst)
                edges[key] = edges.get(key, True) and lazy
    return {"rev": rev or "working tree", "lines": lines, "total_lines": sum(lines.values()),
            "edges": [{"from": a, "to": b, "lazy": lazy} for (a, b), lazy in sorted(edges.items())
                      if a != "archs"],
            "cycles": cycles(edges)}


def cycles(edges: dict[tuple[str, str], bool]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def short(module: str) -> str:
    return module.removeprefix("orchestrator.")


def text(result: dict) -> str:
    out = [f"# {result['rev']}: {len(result['lines'])} modules, {result['total_lines']} lines", "", "lines  module"]
    out += [f"{n:5d}  {p}" for p, n in sorted(result["lines"].items(), key=lambda kv: (-kv[1], kv[0]))]
    out += ["", "imports (* lazy: inside a function)"]
    by_source: dict[str, list[str]] = {}
    for e in result["edges"]:
        by_source.setdefault(short(e["from"]), []).append(short(e["to"]) + ("*" if e["lazy"] else ""))
    out += [f"{a} -> {', '.join(bs)}" for a, bs in sorted(by_source.items())]
    out += ["", "cycles: " + ("; ".join(" <-> ".join(map(short, c)) for c in result["cycles"]) or "none")]
    return "\n".join(out)


def markdown(before: dict, after: dict) -> str:
    paths = sorted(set(before["lines"]) | set(after["lines"]),
                   key=lambda p: (-max(before["lines"].get(p, 0), after["lines"].get(p, 0)), p))
    out = [f"| module | lines at {before['rev']} | lines at {after['rev']} |", "|---|---:|---:|"]
    out += [f"| {p} | {before['lines'].get(p, '')} | {after['lines'].get(p, '')} |" for p in paths]
    out.append(f"| **total** ({len(before['lines'])} -> {len(after['lines'])} modules) | {before['total_lines']} | "
               f"{after['total_lines']} |")

    def edges(result: dict) -> set[str]:
        return {f"{short(e['from'])} -> {short(e['to'])}{'*' if e['lazy'] else ''}" for e in result["edges"]}

    gone, new = sorted(edges(before) - edges(after)), sorted(edges(after) - edges(before))
    out += ["", f"Import edges (`*` lazy): {len(edges(before))} at {before['rev']}, {len(edges(after))} at "
                f"{after['rev']}; cycles: {len(before['cycles'])} and {len(after['cycles'])}.", "",
            "Only before: " + (", ".join(f"`{e}`" for e in gone) or "none") + ".", "",
            "Only after: " + (", ".join(f"`{e}`" for e in new) or "none") + "."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a git revision (default: the working tree)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument("--against", metavar="BEFORE", help="markdown: BEFORE's lines and edges beside these")
    args = parser.parse_args(argv)
    result = module_map(args.rev)
    print(json.dumps(result) if args.json else markdown(module_map(args.against), result) if args.against
          else text(result))
    return 1 if result["cycles"] else 0


if __name__ == "__main__":
    sys.exit(main())
