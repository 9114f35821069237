"""The privilege split in the code's shape: only the node agent (vzpanel/agent/: ops, server, console) imports
the engine, and what the web process loads of the agent (protocol, client, errors) imports neither vzengine nor
Django. Fast: it reads the source, runs nothing."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT_DOORS = {"vzpanel/agent/ops.py", "vzpanel/agent/server.py", "vzpanel/agent/console.py",
               "vzpanel/agent/console_session.py"}  # the console daemon's sessions (split from console.py)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_only_the_node_agent_imports_the_engine():
    importers = {str(p.relative_to(REPO)) for p in (REPO / "vzpanel").rglob("*.py")
                 if any(m == "vzengine" or m.startswith("vzengine.") for m in imported_modules(p))}
    assert importers == AGENT_DOORS


def test_the_agents_client_side_loads_no_engine_and_no_django():
    code = ("import sys, vzpanel.agent.client, vzpanel.agent.protocol, vzpanel.agent.errors; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vzengine', 'django')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_engines_validation_and_errors_load_alone():
    """The panel may check input by the engine's own rules without loading the engine (or being root)."""
    code = ("import sys, vzengine.validate, vzengine.errors; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'vzengine'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['vzengine', 'vzengine.errors', 'vzengine.validate']"


def test_the_generic_apps_never_import_the_classroom():
    """VEs, tasks and consoles know no classroom: it plugs in through their hooks (action guards, visibility
    rules, console openings, parent closers), registered in its AppConfig.ready."""
    generic = ("vzpanel/ves", "vzpanel/tasks", "vzpanel/console")
    importers = {str(p.relative_to(REPO)) for g in generic for p in (REPO / g).rglob("*.py")
                 if any(m.startswith("vzpanel.classroom") for m in imported_modules(p))}
    assert importers == set()


def test_a_node_name_the_panel_accepts_is_one_the_agent_accepts():
    """The Node model's name rule and the agent protocol's must agree (a node named a_b had no agent)."""
    import re

    from vzpanel.agent.protocol import NODE_RE

    source = (REPO / "vzpanel/nodes/models.py").read_text()
    rule = re.compile(re.search(r'RegexValidator\(r"([^"]+)"', source).group(1))
    for name in ("local", "node-2", "a", "x" * 63, "n_1", "n.1", "Node", "-n", "templates", "x" * 64, ""):
        assert bool(rule.match(name)) == (bool(NODE_RE.match(name)) and name != "templates"), name


def _import_graph(top: Path, package: str = "vzengine") -> dict[str, set[str]]:
    """A package's modules -> what they import, read from the source under ``top``: imports inside
    functions count (a lazy import is still a dependency), those under ``if TYPE_CHECKING:`` do not."""
    pkg = top / package

    def name_of(path: Path) -> str:
        parts = list(path.relative_to(top).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in pkg.rglob("*.py")}

    def type_checking(node: ast.If) -> bool:
        t = node.test
        return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
            isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")

    def imports(name: str, path: Path) -> set[str]:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()

        def visit(node: ast.AST) -> None:
            if isinstance(node, ast.If) and type_checking(node):
                for child in node.orelse:
                    visit(child)
                return
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:  # ``from . import x``: the submodule x, not its package
                    sub = f"{module}.{alias.name}"
                    found.add(sub if sub in modules else module)
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text(), str(path)))
        found.discard(name)
        return found

    return {name: imports(name, path) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] & graph.keys():
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_engines_modules_import_each_other_in_no_circle_and_never_the_command_line():
    """Layers: tool wrappers <- VE core <- features and operations <- cli. A module that imports one that
    imports it back (even lazily, inside a function) is a cycle; the library never knows its command line."""
    graph = _import_graph(REPO)
    assert "vzengine.engine" in graph and graph["vzengine.cli.vzctl"]  # the graph was read at all
    assert _cycles(graph) == []
    library = {m: deps for m, deps in graph.items() if not m.startswith("vzengine.cli")}
    knows_cli = {m for m, deps in library.items()
                 if any(d == "argparse" or d == "vzengine.cli" or d.startswith("vzengine.cli.") for d in deps)}
    assert knows_cli == set()


def test_the_import_graph_sees_a_lazy_cycle_and_ignores_type_checking(tmp_path):
    """The check above can fail: a cycle through an import inside a function is found; one that only
    type annotations need (under TYPE_CHECKING) is not a cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n")
    assert _cycles(_import_graph(tmp_path, "pkg")) == []
    (pkg / "b.py").write_text("def f():\n    from .a import X\n    return X\n")
    assert _cycles(_import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b"]]
