"""The privilege split in the code's shape: only the node agent (vzpanel/agent/: ops, server, console) imports
the engine, and what the web process loads of the agent (protocol, client, errors) imports neither vzengine nor
Django. Fast: it reads the source, runs nothing."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT_DOORS = {"vzpanel/agent/ops.py", "vzpanel/agent/server.py", "vzpanel/agent/console.py"}


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
