"""Structure checks for pyaeplus/ (CONTRIBUTING.md, "Upper layers"):

* functions longer than ``--max-lines`` code lines (the def line counts; docstrings, comments and
  blank lines do not), outside ``kernels/`` (Triton kernels are unrolled on purpose);
* modules of the package that import each other, directly or around a longer cycle (deferred,
  function-level imports count; ``from pkg import sub`` counts as an import of ``sub`` only, since
  the package's ``__init__`` is already loading when a submodule runs).

    python tools/check_structure.py            # exit 1 and a line per finding, else "structure ok"
    python tools/check_structure.py --graph    # also print every module's imports

tests/test_structure.py runs it.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "pyaeplus"


def _docstring_lines(fn: ast.AST) -> range:
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return range(first.lineno, first.end_lineno + 1)
    return range(0)


def code_lines(fn: ast.AST, lines: list[str]) -> int:
    doc = _docstring_lines(fn)
    return sum(1 for ln in range(fn.lineno, fn.end_lineno + 1)
               if ln not in doc and lines[ln - 1].strip() and not lines[ln - 1].strip().startswith("#"))


def long_functions(root: pathlib.Path, limit: int, skip: tuple[str, ...] = ("kernels",)) -> list[tuple[int, str]]:
    out = []
    for p in sorted(root.rglob("*.py")):
        if any(part in skip for part in p.relative_to(root).parts):
            continue
        src = p.read_text()
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(node, lines)
                if n > limit:
                    out.append((n, f"{p.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def _module_name(root: pathlib.Path, p: pathlib.Path) -> str:
    parts = list(p.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}."""
    mods = {_module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        base = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                subs = [f"{mod}.{a.name}" for a in node.names]
                targets = subs if all(t in mods for t in subs) else [mod] + subs
            else:
                continue
            graph[m].update(t for t in targets if t in mods and t != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def findings(root: pathlib.Path = ROOT, max_lines: int = 80) -> list[str]:
    found = [f"long function: {n} code lines > {max_lines}: {where}" for n, where in long_functions(root, max_lines)]
    found += [f"import cycle: {' <-> '.join(c)}" for c in cycles(import_graph(root))]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=pathlib.Path, default=ROOT)
    ap.add_argument("--max-lines", type=int, default=80)
    ap.add_argument("--graph", action="store_true")
    args = ap.parse_args(argv)
    if args.graph:
        for m, deps in sorted(import_graph(args.root).items()):
            print(f"{m}: {', '.join(sorted(deps))}")
    found = findings(args.root, args.max_lines)
    for f in found:
        print(f)
    if not found:
        print("structure ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
