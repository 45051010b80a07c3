"""The package's import structure (docs/ARCHITECTURE.md): every module imports on its own, imports go down
the layers, they form no cycle, and no module imports another module's `_private` name.

The rule for cycles: an edge A -> B is any `import`/`from ... import` in A's source that names a vitkit
module B (a `from P import x` names P.x when that is a module, else the module P), resolved from relative
imports; imports under `if TYPE_CHECKING:` run never and are left out. Module-level imports run when A is
imported: a cycle among them can leave a module half-initialised, so none is allowed. Imports inside a
function run later, and a cycle closed by one is the same tangle deferred (vit.py once imported the hybrid
lazily for that reason): none is allowed either, and each is reported with its file and line.
"""

from __future__ import annotations

import ast
import collections
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import vitkit

ROOT = Path(vitkit.__file__).parent
MODULE, FUNCTION = "module-level", "in a function"


def module_name(path: Path) -> str:
    parts = ("vitkit",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module imported from (vitkit or any other package)
    names: tuple[str, ...]  # the names a `from` import takes; () for `import x`
    where: str  # "path.py:line"
    kind: str  # MODULE or FUNCTION


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> list[Import]:
    """Every import statement of `module`, with relative imports resolved to absolute module names."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(child, 'lineno', 0)}"
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, FUNCTION)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for orelse in child.orelse:
                    visit(ast.Module(body=[orelse], type_ignores=[]), kind)
            elif isinstance(child, ast.Import):
                found.extend(Import(module, a.name, (), where, kind) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                target = ".".join(base + ([child.module] if child.module else []))
                found.append(Import(module, target, tuple(a.name for a in child.names), where, kind))
            else:
                visit(child, kind)

    visit(ast.parse(path.read_text()), MODULE)
    return found


def edges() -> dict[tuple[str, str], list[Import]]:
    """(A, B) -> the imports by which vitkit module A imports vitkit module B (B != A)."""
    graph: dict[tuple[str, str], list[Import]] = collections.defaultdict(list)
    for module in MODULES:
        for imp in imports_of(module):
            targets = [f"{imp.target}.{n}" if f"{imp.target}.{n}" in MODULES else imp.target for n in imp.names]
            for target in set(targets or [imp.target]):
                if target in MODULES and target != module:
                    graph[module, target].append(imp)
    return graph


def cycles(kinds: set[str]) -> list[str]:
    """One shortest cycle through each module that lies on one, over the edges of `kinds`, each edge
    given with its file:line: deduplicated, sorted."""
    graph = {pair: [i for i in imps if i.kind in kinds] for pair, imps in edges().items()}
    succ: dict[str, list[str]] = collections.defaultdict(list)
    for (a, b), imps in graph.items():
        if imps:
            succ[a].append(b)
    found = set()
    for start in MODULES:
        parents: dict[str, str | None] = {start: None}
        queue = collections.deque([start])
        while queue:  # breadth first: the first way back to `start` closes a shortest cycle
            node = queue.popleft()
            if start in succ[node]:
                loop = [node]
                while parents[loop[0]] is not None:
                    loop.insert(0, parents[loop[0]])
                first = loop.index(min(loop))  # the same cycle found from each of its modules reads alike
                loop = loop[first:] + loop[:first]
                found.add("; ".join(
                    f"{a} -> {b} ({', '.join(f'{x.where} {x.kind}' for x in graph[a, b])})"
                    for a, b in zip(loop, loop[1:] + loop[:1])
                ))  # fmt: skip
                break
            for nxt in succ[node]:
                if nxt not in parents:
                    parents[nxt] = node
                    queue.append(nxt)
    return sorted(found)


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module is imported with no vitkit module loaded before it (torch and the other libraries stay
    loaded, so that this takes seconds): an import that only works after some other import fails here."""
    names = [m for m in MODULES if not m.endswith("__main__")]  # __main__ runs the command line
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'vitkit' or m.startswith('vitkit.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""


# docs/ARCHITECTURE.md's layers, top to bottom: a room imports any room of a lower layer, and one of its own
# layer only along ARROWS. A room is a top-level module or subpackage of vitkit ("vitkit" is the package root,
# the public API, which re-exports from checkpoints, models and data).
LAYERS = [
    {"__main__"},
    {"cli", "commands"},
    {"study", "study_analysis", "study_plots", "study_plan", "study_ledger", "study_report", "serve", "bench",
     "bench_format"},
    {"train", "evaluate", "analysis", "export", "quantize", "inference", "flops", "peers", "measure"},
    {"vitkit", "checkpoints"},
    {"models"},
    {"data"},
    {"files", "precision", "precision_kinds", "hardware", "version", "options", "lazy"},
]
ARROWS = {("train", "evaluate"), ("analysis", "evaluate"), ("quantize", "evaluate"), ("export", "quantize"),
          ("peers", "flops"), ("vitkit", "checkpoints"), ("study", "study_analysis"), ("study", "study_plots"),
          ("study_plots", "study_analysis"), ("study", "study_plan"), ("study", "study_ledger"),
          ("study", "study_report"), ("study_ledger", "study_plan"), ("study_report", "study_analysis"),
          ("study_report", "study_ledger"), ("study_report", "study_plan"), ("study_report", "study_plots"),
          ("precision", "hardware"), ("inference", "quantize"),
          ("analysis", "inference"), ("cli", "commands"), ("precision", "precision_kinds"), ("bench", "bench_format")}  # fmt: skip


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vitkit"


def upward_imports() -> list[str]:
    """Imports of a room from a higher layer, or from its own layer against ARROWS; rooms in no layer."""
    layer = {r: i for i, rooms in enumerate(LAYERS) for r in rooms}
    found = sorted({f"{room(m)} is in no layer of LAYERS" for m in MODULES if room(m) not in layer})
    for (a, b), imps in sorted(edges().items()):
        ra, rb = room(a), room(b)
        if ra in layer and rb in layer and ra != rb:
            if layer[ra] > layer[rb] or (layer[ra] == layer[rb] and (ra, rb) not in ARROWS):
                found.append(f"{a} -> {b} ({', '.join(f'{x.where} {x.kind}' for x in imps)})")
    return found


def test_imports_go_down_the_layers():
    found = upward_imports()
    assert not found, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(found)


def test_no_import_cycle_among_module_level_imports():
    found = cycles({MODULE})
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_import_cycle_even_through_imports_inside_functions():
    found = cycles({MODULE, FUNCTION})
    assert not found, "import cycles:\n" + "\n".join(found)


def fake_package(tmp_path: Path, monkeypatch, files: dict[str, str]) -> str:
    """Point the checks at a package of `files` (name -> source) in tmp_path; returns the folder's name."""
    for name, source in {"__init__.py": "", **files}.items():
        (tmp_path / name).write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {module_name(p): p for p in sorted(tmp_path.glob("*.py"))})
    return tmp_path.name


def test_the_cycle_finder_finds_a_cycle_and_names_its_lines(tmp_path, monkeypatch):
    """The checks above can fail: two modules that import each other, one of them inside a function."""
    b = "def f():\n    from .a import x\n"
    name = fake_package(tmp_path, monkeypatch, {"a.py": "from . import b\n", "b.py": b})
    assert cycles({MODULE}) == []
    assert cycles({MODULE, FUNCTION}) == [
        f"vitkit.a -> vitkit.b ({name}/a.py:1 {MODULE}); vitkit.b -> vitkit.a ({name}/b.py:2 {FUNCTION})"
    ]


def private_imports() -> list[str]:
    """`from M import _x` or `import M._x` of another module M (vitkit's or any package's), and
    `m._x` where `m` is a vitkit module imported as a name: file:line and what is taken."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        imported_modules = {}  # local name -> vitkit module
        for imp in imports_of(module):
            if imp.names:
                private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
                found += [f"{imp.where}: {imp.target}.{n}" for n in private if imp.target != module]
                imported_modules.update({n: f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in MODULES})
            elif any(p.startswith("_") and not p.startswith("__") for p in imp.target.split(".")):
                found.append(f"{imp.where}: {imp.target}")
        for alias in (a for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names):
            if alias.asname and alias.name in MODULES:
                imported_modules[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported_modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):  # fmt: skip
                where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"
                found.append(f"{where}: {imported_modules[node.value.id]}.{node.attr}")
    return sorted(found)


def test_no_module_imports_another_modules_private_name():
    found = private_imports()
    assert not found, "private names taken from another module:\n" + "\n".join(found)


def test_the_private_name_check_finds_one(tmp_path, monkeypatch):
    b = "from .a import _x\nfrom . import a\ny = a._x\n"
    name = fake_package(tmp_path, monkeypatch, {"a.py": "_x = 1\n", "b.py": b})
    assert private_imports() == [f"{name}/b.py:1: vitkit.a._x", f"{name}/b.py:3: vitkit.a._x"]


def test_the_layer_check_finds_an_upward_import_and_an_unplaced_room(tmp_path, monkeypatch):
    name = fake_package(tmp_path, monkeypatch, {"data.py": "from . import models\n", "models.py": "", "new.py": ""})
    monkeypatch.setattr(sys.modules[__name__], "LAYERS", [{"vitkit", "models"}, {"data"}])
    upward = f"vitkit.data -> vitkit.models ({name}/data.py:1 {MODULE})"
    assert upward_imports() == ["new is in no layer of LAYERS", upward]
