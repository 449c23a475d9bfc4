"""The package's structure: imports flow one way (no cycles, function-local imports included)
and no module reaches into another module's private names."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "fastopt"


def _modules() -> dict[str, ast.Module]:
    """``dotted name -> parsed source`` for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _extension(name: str) -> bool:
    """True for a compiled module of the package (``fastopt._C``)."""
    path = PACKAGE.parent / name.replace(".", "/")
    return any(path.parent.glob(f"{path.name}.*.so")) or path.with_suffix(".pyi").is_file()


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def imports(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """``module -> the package modules it imports`` anywhere in its body (a name imported from a
    package counts as that submodule when one exists, else as the package)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        here = name if _is_package(name) else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        graph[name].add(sub)
                    elif not _extension(sub):  # the compiled core imports nothing of the package
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                target = node.args[0].value
                graph[name].add(f"{here}{target}" if target.startswith(".") else target)
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_definitions(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, methods, class attributes, module
    variables and attributes it sets (on ``self`` or on an object it was handed)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)  # on self, or an attribute this module sets on another object
    return {n for n in out if _private(n)}


def private_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, name)`` for every private name a module reaches for on something other than
    ``self``/``cls``: ``obj._name``, ``getattr(obj, "_name")`` and friends, ``from m import _name``."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            out.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            out.append((node.lineno, node.args[1].value))
        elif isinstance(node, ast.ImportFrom):
            out.extend((node.lineno, a.name) for a in node.names if _private(a.name))
    return out


def test_no_import_cycles() -> None:
    found = cycles(imports(_modules()))
    assert not found, "import cycles among fastopt's modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_reaches_into_another_modules_private_names() -> None:
    modules = _modules()
    defined = {name: private_definitions(tree) for name, tree in modules.items()}
    # private modules of the package (``_core``, ``_C``, ``_walk`` ...) are the package's own
    # layers: importing them is how the package is built, not reaching into a module
    private_modules = {n.rpartition(".")[2] for n in modules if _private(n.rpartition(".")[2])} | {"_C"}
    bad = []
    for name, tree in modules.items():
        for line, attr in private_uses(tree):
            if attr in private_modules or attr in defined[name]:
                continue
            owners = sorted(m for m, names in defined.items() if attr in names)
            if owners:
                bad.append(f"{name}:{line} uses {attr} of {', '.join(owners)}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_zoo_files_stay_small() -> None:
    """The model zoo is laid out like its users' libraries, no file over ~600 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "zoo").glob("*.py")}
    assert sizes and max(sizes.values()) <= 600, sizes


#: What the repository root holds: the project's own files and folders, nothing stray.
ROOT_ENTRIES = {".ci", ".gitignore", "CMakeLists.txt", "README.md", "benchmarks", "csrc", "docs", "fastopt",
                "fuzz", "pyproject.toml", "scripts", "tests"}


def test_root_holds_only_project_files() -> None:
    root = PACKAGE.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    entries = {line.split("/")[0] for line in tracked.splitlines() if line}
    stray = sorted(entries - ROOT_ENTRIES)
    assert not stray, f"unexpected files in the repository root: {stray}"
