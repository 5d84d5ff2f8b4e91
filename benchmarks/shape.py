"""The shape of the code (issue 23): how many distinct `retrieval` modules `bot/` imports, and the
largest class and file of `bot/` and `retrieval/`, in lines.

Usage: python -m benchmarks.shape [ROOT]   (ROOT: a tree holding bot/ and retrieval/; default
this checkout). To measure another revision:
    mkdir /tmp/rev && git archive REV bot retrieval | tar -x -C /tmp/rev
    python -m benchmarks.shape /tmp/rev

Every `import` and `from ... import` line of `bot/` counts, those under `if TYPE_CHECKING:` and
inside functions too; a name is resolved to the module that holds it (a package's `__init__.py`
counts as the package: `from retrieval.indexing import JobQueue` is `retrieval.indexing`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted([*root.glob("bot/**/*.py"), *root.glob("retrieval/**/*.py")]):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``path`` imports."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [n if n in known else base for n in names]
        else:
            continue
        for dotted in names:
            while dotted and dotted not in known:
                dotted = dotted.rpartition(".")[0]
            if dotted:
                out.add(dotted)
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    known = modules(root)
    used = set()
    for name, path in known.items():
        if name.split(".")[0] == "bot":
            used |= {m for m in imported(path, name, known) if m.split(".")[0] == "retrieval"}
    print(f"retrieval modules bot/ imports: {len(used)}")
    print("  " + " ".join(sorted(used)))
    lines = {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in known.items()
    }
    biggest = max(lines, key=lines.__getitem__)
    print(f"files: {len(known)}, lines: {sum(lines.values())}")
    print(f"largest file: {known[biggest].relative_to(root)} ({lines[biggest]} lines)")
    classes = []
    for path in known.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                classes.append((size, f"{path.relative_to(root)}:{node.name}"))
    for size, where in sorted(classes, reverse=True)[:3]:
        print(f"class {where}: {size} lines")


if __name__ == "__main__":
    main()
