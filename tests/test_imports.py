"""No two modules of procrop_jax import each other, directly or through others.

The graph is read from the source with `ast` (nothing is imported, so no JAX start-up): every
`import procrop_jax...` and `from procrop_jax... import ...`, at the top of a module or inside a
function alike, since an import moved into a function only hides a circle; so is a module named
to `lazy.module("procrop_jax...")`, imported at its first use. An import of a
submodule runs its packages' __init__ too; those implicit edges are left out, so a package that
re-exports its modules is no circle. Imports by a computed name (main.py's mode table) are not
seen: main is the entry point and nothing imports it.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

PACKAGE = "procrop_jax"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

Graph = dict[str, set[str]]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              modules: set[str]) -> set[str]:
  """The package's modules an import statement of `module` loads."""
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    base = node.module or ""
    if node.level:  # Relative: from the module's own package upwards.
      package = module.split(".")
      package = package[:len(package) - node.level + (1 if is_package else 0)]
      base = ".".join(package + ([base] if base else []))
    # `from a import b` loads the module a.b where there is one, else a (b is a name in it).
    names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
             for alias in node.names]
  found = set()
  for name in names:
    while name and name not in modules:  # `import a.b.c` of a name inside a.b: a.b.
      name = name.rpartition(".")[0]
    if name:
      found.add(name)
  return found


def _lazy_name(node: ast.AST) -> str | None:
  """The module of a `lazy.module("name")` call, else None."""
  if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
      and node.func.attr == "module" and isinstance(node.func.value, ast.Name)
      and node.func.value.id == "lazy" and node.args
      and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
    return node.args[0].value
  return None


def import_graph() -> Graph:
  """procrop_jax module -> the procrop_jax modules it imports anywhere in its source."""
  paths = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
  modules = set(paths)
  graph: Graph = {}
  for module, path in paths.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        edges |= _imported(node, module, path.name == "__init__.py", modules)
      elif _lazy_name(node) in modules:
        edges.add(_lazy_name(node))
    graph[module] = edges - {module}
  return graph


def find_cycle(graph: Graph) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None (depth-first, in name order)."""
  done: set[str] = set()
  path: list[str] = []
  on_path: set[str] = set()

  def visit(node: str) -> list[str] | None:
    path.append(node)
    on_path.add(node)
    for child in sorted(graph.get(node, ())):
      if child in on_path:
        return path[path.index(child):] + [child]
      if child not in done:
        cycle = visit(child)
        if cycle:
          return cycle
    path.pop()
    on_path.discard(node)
    done.add(node)
    return None

  for node in sorted(graph):
    if node not in done:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_names_the_circle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_top_level_and_in_function_imports():
  graph = import_graph()
  assert "procrop_jax.inference" in graph["procrop_jax.train"]  # At the top.
  # Inside Predictor.references (only a model with retrieval needs it).
  assert "procrop_jax.retrieval.references" in graph["procrop_jax.inference"]
  assert "procrop_jax.cropper" in graph["procrop_jax"]  # The package's lazy __getattr__.
  assert "procrop_jax.models.efficientnet_lite" in graph["procrop_jax.steps"]  # `from a.b import c`.
  assert "procrop_jax.models.procrop" in graph["procrop_jax.model_zoo"]  # `lazy.module(...)`.


def test_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, ("import circle: " + " -> ".join(cycle) + " (an import inside a "
                         "function does not break it: move the shared code below both)")


def test_the_modules_the_tests_import_load_together():
  """One pytest worker imports every module the tests name: none may define a flag that another
  already has (absl's DuplicateFlagError), so a command's flags are defined when it runs."""
  tests_dir = pathlib.Path(__file__).resolve().parent
  modules = set()
  for path in tests_dir.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
          node.module.split(".")[0] in (PACKAGE, "experiments")):
        for alias in node.names:
          # `from a.b import c`: c is a module when a file or package of that name exists.
          name = f"{node.module}.{alias.name}"
          root = PACKAGE_DIR.parent / pathlib.Path(*name.split("."))
          modules.add(name if root.with_suffix(".py").exists() or root.is_dir()
                      else node.module)
  assert "experiments.accelerator_check" in modules  # The set is read, not empty.
  code = "import importlib\nfor name in %r:\n  importlib.import_module(name)\n" % sorted(modules)
  result = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_DIR.parent,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
