"""The shape of the code, for issue 13's measure: the longest functions and the longest
parameter lists in efx/ (ast, no imports of efx).

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


if __name__ == "__main__":
    main()
