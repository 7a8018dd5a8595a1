"""The shape of the code: the longest functions and parameter lists, the largest files (and
the largest of the entry points, api and cli), the longest CLI command bodies, the import
cycles between efx's modules (imports inside functions included), and how many files name
each output format (ast and text only: efx is not imported). Run it on any checkout (--root)
to compare before and after.

    python scripts/code_shape.py [--top 5] [--root efx]
"""

from __future__ import annotations

import argparse
import ast
import os


def functions(root: str) -> list[tuple[int, int, str]]:
    """(lines, parameters, "file:line name") of every function and method below `root`."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as file:
                tree = ast.parse(file.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args
                    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                    params = [p for p in params if p.arg not in ("self", "cls")]
                    count = len(params) + bool(args.vararg) + bool(args.kwarg)
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    found.append((lines, count, f"{path}:{node.lineno} {node.name}"))
    return found


FORMATS = ("hdf5", "npy", "parquet", "jsonl", "arrow")


def command_bodies(root: str) -> list[tuple[int, str]]:
    """(lines, "file:line name") of every Click command's body, its docstring left out: the
    functions of efx's CLI (cli.py, or the cli/ package) decorated as a command."""
    found = []
    for module, path in modules(root).items():
        if module.split(".")[1:2] != ["cli"]:
            continue
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            if not any("command" in ast.unparse(d) for d in node.decorator_list):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring: --help's text
            if body:
                lines = (node.end_lineno or node.lineno) - body[0].lineno + 1
                found.append((lines, f"{path}:{node.lineno} {node.name}"))
    return found


def modules(root: str) -> dict[str, str]:
    """Dotted module name -> path, for every .py file below `root`."""
    found = {}
    for folder, _dirs, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def import_graph(root: str) -> dict[str, set[str]]:
    """Module -> the efx modules it imports, at the top or inside a function."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                stem = f"{base}.{node.module}" if node.module else base
                names = [f"{stem}.{alias.name}" for alias in node.names]
                targets.update(n for n in names if n in known)
                if stem in known and not any(n in known for n in names):
                    targets.add(stem)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in known)
        graph[module] = {t for t in targets if t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def format_mentions(root: str) -> dict[str, int]:
    """Format -> how many files of efx name it as a string literal ("parquet")."""
    counts = dict.fromkeys(FORMATS, 0)
    for path in modules(root).values():
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        named = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in FORMATS
        }
        for fmt in named:
            counts[fmt] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--root", default="efx")
    args = parser.parse_args()
    found = functions(args.root)
    print(f"{len(found)} functions in {args.root}/")
    print("longest functions (lines):")
    for lines, _count, where in sorted(found, reverse=True)[: args.top]:
        print(f"  {lines:4d}  {where}")
    print("longest parameter lists:")
    for _lines, count, where in sorted(found, key=lambda f: (f[1], f[0]), reverse=True)[: args.top]:
        print(f"  {count:4d}  {where}")
    print(f"functions over 60 lines: {sum(1 for f in found if f[0] > 60)}")
    print(f"functions over 10 parameters: {sum(1 for f in found if f[1] > 10)}")
    sizes = []
    for path in modules(args.root).values():
        with open(path, encoding="utf-8") as file:
            sizes.append((sum(1 for _ in file), path))
    print("largest files (lines):")
    for lines, path in sorted(sizes, reverse=True)[: args.top]:
        print(f"  {lines:4d}  {path}")
    entry = [(n, p) for n, p in sizes if os.path.basename(p) == "api.py" or "cli" in p]
    lines, path = max(entry)
    cli_total = sum(n for n, p in sizes if "cli" in p)
    print(f"largest of api/cli: {lines} lines, {path} (the CLI's files together: {cli_total})")
    bodies = sorted(command_bodies(args.root), reverse=True)
    print("longest CLI command bodies (lines, docstring left out):")
    for lines, where in bodies[: args.top]:
        print(f"  {lines:4d}  {where}")
    print(f"CLI command bodies over 25 lines: {sum(1 for b in bodies if b[0] > 25)}")
    found_cycles = cycles(import_graph(args.root))
    print(f"import cycles: {len(found_cycles)}")
    for cycle in found_cycles:
        print(f"  {' <-> '.join(cycle)}")
    mentions = format_mentions(args.root)
    print("files naming each output format: " + ", ".join(f"{k} {v}" for k, v in mentions.items()))


if __name__ == "__main__":
    main()
