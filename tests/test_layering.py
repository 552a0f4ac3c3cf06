"""The import arrows of the house point down (CONTRIBUTING.md, "How the parts fit"): a test
that reads every import of jepa_jax and data_pipelines (AST, imports inside functions
included) and fails on a cycle or a broken rule."""
import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jepa_jax", "data_pipelines")
# Entry modules: run as commands or loaded by name (HEAR); nothing else imports them.
ENTRY = {"jepa_jax.main", "jepa_jax.evaluate", "jepa_jax.embed", "jepa_jax.hear",
         "jepa_jax.masks.__main__", "data_pipelines.prepare.__main__",
         "data_pipelines.tfds_audio.__main__"}


@dataclasses.dataclass(frozen=True)
class Import:
  source: str   # importing module
  target: str   # imported module (of the two packages, or any other by its name)
  line: int
  nested: bool  # inside a function
  commented: bool  # a comment on its line


def module_name(root: Path, path: Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
  return {module_name(root, p): p for package in PACKAGES if (root / package).is_dir()
          for p in sorted((root / package).rglob("*.py"))}


def _resolve(name: str, known: dict) -> str | None:
  """The longest known module that `name` names or lies in."""
  while name and name not in known:
    name = name.rpartition(".")[0]
  return name or None


def imports(root: Path) -> list[Import]:
  known = modules(root)
  out = []
  for source, path in known.items():
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    nested = {id(n) for f in ast.walk(tree)
              if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the package, up level - 1
          up = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                 for a in node.names]
      else:
        continue
      for name in names:
        target = _resolve(name, known) or name  # outside the two packages: its own name
        if target != source:
          out.append(Import(source, target, node.lineno, id(node) in nested,
                            "#" in lines[node.lineno - 1]))
  return out


def part(module: str) -> str:
  """'jepa_jax.models.vit' -> 'jepa_jax.models'; top-level modules are their own part."""
  return ".".join(module.split(".")[:2])


def within(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + ".")


# (rule, importer prefix, forbidden target prefixes): the arrows that may not exist.
RULES = [
    ("data_pipelines never imports jepa_jax", "data_pipelines", ("jepa_jax",)),
    ("models read no data and know no other part", "jepa_jax.models",
     ("data_pipelines", "jepa_jax.config", "jepa_jax.masks", "jepa_jax.objectives",
      "jepa_jax.optim", "jepa_jax.parallel", "jepa_jax.training", "jepa_jax.evaluation",
      "jepa_jax.export")),
    ("the config's fields import nothing of the house", "jepa_jax.config.fields",
     ("jepa_jax", "data_pipelines")),
    ("masks are indices: they never import models", "jepa_jax.masks", ("jepa_jax.models",)),
    ("objectives never know the loop or the evaluation", "jepa_jax.objectives",
     ("jepa_jax.training", "jepa_jax.evaluation")),
    ("the optimizer knows no objective, loop or evaluation", "jepa_jax.optim",
     ("jepa_jax.objectives", "jepa_jax.training", "jepa_jax.evaluation")),
    ("evaluation never imports the training loop", "jepa_jax.evaluation", ("jepa_jax.training",)),
    ("devices and processes know no model or loop", "jepa_jax.parallel",
     ("jepa_jax.models", "jepa_jax.objectives", "jepa_jax.training", "jepa_jax.evaluation")),
]


def violations(root: Path) -> list[str]:
  found = []
  edges = imports(root)
  for rule, importer, forbidden in RULES:
    for i in edges:
      if within(i.source, importer) and any(within(i.target, f) for f in forbidden):
        found.append(f"{i.source}:{i.line} imports {i.target}: {rule}")
  for i in edges:
    if i.target in ENTRY:
      found.append(f"{i.source}:{i.line} imports the entry module {i.target}")
    if i.nested and not i.commented:
      found.append(f"{i.source}:{i.line} imports {i.target} inside a function without a "
                   f"comment saying why it must be lazy")
  return found + [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]


def cycles(edges: list[Import]) -> list[list[str]]:
  """One cycle per strongly connected group of the house's modules (Tarjan), as a closed
  path."""
  graph: dict[str, set[str]] = {}
  for i in edges:
    if i.target.split(".")[0] in PACKAGES:
      graph.setdefault(i.source, set()).add(i.target)
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        out.append(sorted(group) + [sorted(group)[0]])

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_house_keeps_its_layering():
  assert violations(ROOT) == []


def _package(root: Path, files: dict[str, str]) -> Path:
  for name, text in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return root


@pytest.mark.parametrize("files, expected", [
    ({"jepa_jax/models/vit.py": "from data_pipelines import frontends\n",
      "data_pipelines/frontends.py": ""}, "models read no data"),
    ({"jepa_jax/masks/__init__.py": "def f():\n  from jepa_jax.models import vit  # lazy\n",
      "jepa_jax/models/vit.py": ""}, "masks are indices"),
    ({"jepa_jax/evaluation/embed.py": "from jepa_jax.training import loop\n",
      "jepa_jax/training/loop.py": ""}, "evaluation never imports the training loop"),
    ({"data_pipelines/shards.py": "import jepa_jax.export\n", "jepa_jax/export.py": ""},
     "data_pipelines never imports jepa_jax"),
    ({"jepa_jax/config/fields.py": "from data_pipelines import frontends\n",
      "data_pipelines/frontends.py": ""}, "the config's fields import nothing"),
    ({"jepa_jax/objectives/a.py": "from jepa_jax.evaluation import probe\n",
      "jepa_jax/evaluation/probe.py": ""}, "objectives never know"),
    ({"jepa_jax/training/loop.py": "from jepa_jax import main\n", "jepa_jax/main.py": ""},
     "imports the entry module jepa_jax.main"),
    ({"jepa_jax/export.py": "def f():\n  import jepa_jax.models\n",
      "jepa_jax/models/__init__.py": ""}, "without a comment"),
    ({"jepa_jax/a.py": "from jepa_jax import b\n", "jepa_jax/b.py": "from . import c\n",
      "jepa_jax/c.py": "import jepa_jax.a\n"}, "import cycle: jepa_jax.a -> jepa_jax.b"),
])
def test_a_forbidden_import_is_caught(tmp_path, files, expected):
  found = violations(_package(tmp_path, {"jepa_jax/__init__.py": "",
                                         "data_pipelines/__init__.py": "", **files}))
  assert any(expected in v for v in found), found


def test_an_allowed_import_passes(tmp_path):
  root = _package(tmp_path, {
      "jepa_jax/__init__.py": "", "data_pipelines/__init__.py": "",
      "data_pipelines/frontends.py": "", "jepa_jax/models/vit.py": "",
      "jepa_jax/config/shapes.py": "from data_pipelines import frontends\n"
                                   "from jepa_jax.models import vit\n",
      "jepa_jax/hear.py": "def f():\n  import torch  # lazy: an optional extra\n"})
  assert violations(root) == []


def test_a_lazy_import_of_another_package_needs_its_comment_too(tmp_path):
  root = _package(tmp_path, {"jepa_jax/__init__.py": "", "data_pipelines/__init__.py": "",
                             "jepa_jax/a.py": "def f():\n  import matplotlib\n"})
  assert violations(root) == ["jepa_jax.a:2 imports matplotlib inside a function without a "
                              "comment saying why it must be lazy"]
