"""Every `module.name` and `from module import name` of the house's own modules names
something that exists, in every Python file of the repository (benchmarks and scripts
too, which no other test imports): a moved function breaks here, not in a user's hands."""
import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN = ("jepa_jax", "data_pipelines", "benchmarks", "tests")
FOLDERS = ("jepa_jax", "data_pipelines", "benchmarks", "tests", "configs", "notebooks")


def is_own(module: str) -> bool:
  return module.split(".")[0] in OWN


def _import_or_none(name: str):
  try:
    return importlib.import_module(name)
  except ImportError:  # an optional dependency (torch) is missing: nothing to check
    return None


def _submodule_exists(name: str) -> bool:
  """Without importing it: an optional module (torch_step) needs packages CI may lack."""
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:  # its parent is a module, not a package
    return False


def stale_references(path: Path, root: Path = ROOT) -> list[str]:
  """`file:line: what` for each reference to a missing name of an own module."""
  tree = ast.parse(path.read_text())
  bound = {}  # local name -> own module it names
  problems = []
  where = lambda node: f"{path.relative_to(root)}:{node.lineno}"  # noqa: E731
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if is_own(a.name) and a.asname:
          bound[a.asname] = a.name
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
        and is_own(node.module):
      module = importlib.import_module(node.module)
      for a in node.names:
        if a.name == "*":
          continue
        sub = not hasattr(module, a.name) and _submodule_exists(f"{node.module}.{a.name}")
        if not hasattr(module, a.name) and not sub:
          problems.append(f"{where(node)}: {node.module} has no {a.name}")
        elif sub or isinstance(getattr(module, a.name), type(module)):
          bound[a.asname or a.name] = f"{node.module}.{a.name}"
  # A name also bound otherwise (an argument, an assignment) is not the module everywhere.
  rebound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
             and isinstance(n.ctx, ast.Store)} | {
                 a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
                 for a in n.args + n.kwonlyargs + n.posonlyargs}
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
        and node.value.id in bound and node.value.id not in rebound:
      name = bound[node.value.id]
      module = _import_or_none(name)
      if module is not None and not hasattr(module, node.attr) \
          and not _submodule_exists(f"{name}.{node.attr}"):
        problems.append(f"{where(node)}: {name} has no {node.attr}")
  return problems


def python_files(root: Path) -> list[Path]:
  return sorted(p for folder in FOLDERS if (root / folder).is_dir()
                for p in (root / folder).rglob("*.py"))


def test_every_reference_to_an_own_module_exists():
  problems = [p for path in python_files(ROOT) for p in stale_references(path)]
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from jepa_jax.config import shapes\nshapes.no_such_thing(1)\n",
     "jepa_jax.config.shapes has no no_such_thing"),
    ("from jepa_jax import models\nmodels.grid(1)\n", "jepa_jax.models has no grid"),
    ("from jepa_jax.models import no_such_module\n", "jepa_jax.models has no no_such_module"),
    ("import jepa_jax.config.shapes as s\ns.gird\n", "jepa_jax.config.shapes has no gird"),
])
def test_a_stale_reference_is_caught(tmp_path, source, expected):
  path = tmp_path / "script.py"
  path.write_text(source)
  assert [p.split(": ", 1)[1] for p in stale_references(path, tmp_path)] == [expected]


def test_a_rebound_name_is_not_taken_for_the_module(tmp_path):
  path = tmp_path / "script.py"
  path.write_text("from jepa_jax.config import shapes\n"
                  "def f(shapes):\n  return shapes.anything\n")
  assert stale_references(path, tmp_path) == []
