"""The package's rooms: no module imports from a room above its own, and no import cycles.

Rooms, lowest first: the configuration (``config``, ``hosts``); ``runtime`` (what runs inside
a model); the public API and the import hook (the package itself, ``autoload``);
``fixtures``; ``tools``; the command-line entry (``__main__``). Imports are read from the
source (every ``import`` statement, at module level or inside functions).
"""

import ast
import os

import pytest

PACKAGE = "llava_freepruner"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)
ROOMS = [("config", "hosts"), ("runtime",), ("", "autoload"), ("fixtures",), ("tools",), ("__main__",)]


def modules():
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


MODULES = modules()


def imports_of(module):
    path = MODULES[module]
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else ".".join(
                package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            if base and (base == PACKAGE or base.startswith(PACKAGE + ".")):
                for alias in node.names:
                    name = f"{base}.{alias.name}"
                    found.add(name if name in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE))
    return {name for name in found if name != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def room(module):
    rest = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    first = rest.split(".")[0]
    for rank, names in enumerate(ROOMS):
        if first in names:
            return rank
    raise AssertionError(f"{module} is in no room: put it in runtime/, fixtures/ or tools/")


def test_the_package_root_holds_only_the_api_the_entry_points_and_the_hook():
    assert {m.split(".")[1] for m in MODULES if m != PACKAGE} == {
        "__main__", "autoload", "config", "hosts", "runtime", "fixtures", "tools"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_room_above(module):
    above = sorted(name for name in GRAPH[module] if room(name) > room(module))
    assert not above, f"{module} imports from a room above its own: {above}"


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):        # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other: {cycles}"
