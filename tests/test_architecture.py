"""The package's structure: imports follow the layers docs/architecture.md describes (the
runtime core imports no tool), flow one way (no cycles, function-local imports included), and
no module reaches into another module's private names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
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


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def documented_layers(text: str) -> list[tuple[str, list[str]]]:
    """``(layer, module paths)`` from the layers table of docs/architecture.md, bottom up: the
    backticked ``*.py`` files and ``dir/`` packages of each row's second column."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("layer", "---") or not line.startswith("|"):
            continue
        paths = [t for t in re.findall(r"`([^`]+)`", cells[1]) if t.endswith((".py", "/"))]
        if paths:
            rows.append((cells[0], paths))
    return rows


def layer_of_modules(layers: list[tuple[str, list[str]]], modules: set[str]) -> dict[str, int]:
    """``module -> index of its layer``; a package path (``tools/``) takes every module under it.
    Raises AssertionError for a documented path that names no module."""
    out: dict[str, int] = {}
    for i, (layer, paths) in enumerate(layers):
        for path in paths:
            stem = "fastopt." + path.rstrip("/").removesuffix(".py").replace("/", ".")
            stem = "fastopt" if stem == "fastopt.__init__" else stem
            found = {m for m in modules if m == stem or (path.endswith("/") and m.startswith(stem + "."))}
            assert found, f"docs/architecture.md, layer {layer!r}: {path} is no module of the package"
            for m in found:
                out.setdefault(m, i)
    return out


def upward_imports(graph: dict[str, set[str]], layer: dict[str, int],
                   names: list[str]) -> list[str]:
    """Every import of a module from a layer above its own, as readable lines."""
    return [f"{m} ({names[layer[m]]}) imports {t} ({names[layer[t]]})"
            for m in sorted(graph) for t in sorted(graph[m]) if layer[t] > layer[m]]


def test_imports_follow_the_documented_layers() -> None:
    modules = _modules()
    layers = documented_layers(ARCHITECTURE.read_text())
    layer = layer_of_modules(layers, set(modules))
    missing = sorted(set(modules) - set(layer))
    assert not missing, f"modules docs/architecture.md's layers table does not list: {missing}"
    names = [name for name, _ in layers]
    bad = upward_imports(imports(modules), layer, names)
    assert not bad, "imports against the documented layers:\n" + "\n".join(bad)


def test_the_layer_check_finds_an_upward_import() -> None:
    """A runtime module importing a tool, planted in a copy of the graph, is reported."""
    modules = _modules()
    layers = documented_layers(ARCHITECTURE.read_text())
    layer = layer_of_modules(layers, set(modules))
    graph = imports(modules)
    graph["fastopt._kernels"] = graph["fastopt._kernels"] | {"fastopt.tools.zoo"}
    bad = upward_imports(graph, layer, [name for name, _ in layers])
    assert bad == ["fastopt._kernels (step tiers) imports fastopt.tools.zoo (tools)"]


def test_the_runtime_core_loads_no_tool() -> None:
    """Importing fastopt and building an optimizer and a wrapper loads no ``fastopt.tools`` module."""
    code = (
        "import sys, torch, fastopt\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))\n"
        "fastopt.build_optimizer(m, dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4,\n"
        "                                paramwise_cfg=dict(norm_decay_mult=0.0)))\n"
        "fastopt.build_optim_wrapper(m, dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),\n"
        "                                    paramwise_cfg=dict(norm_decay_mult=0.0))).optimizer.step()\n"
        "print(sorted(n for n in sys.modules if n.startswith('fastopt.tools')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_zoo_files_stay_small() -> None:
    """The model zoo is laid out like its users' libraries, no file over ~600 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "tools" / "zoo").glob("*.py")}
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
