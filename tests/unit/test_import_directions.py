"""Which way imports run (issue 33): the daemon's runtime (inspectd/) never imports the offline
tools (train/, calibrate/, deploy/ install as inspectd.train, inspectd.calibrate,
inspectd.deploy), so it runs without them and without torch. Read from the source with ast,
imports inside functions included: a lazy import is still an arrow.

The CLI commands that *are* the tools' front door (``inspectd train``, ``calibrate``,
``eval``, ...) may import them; they are listed, not exempted by folder."""

from __future__ import annotations

import ast
from pathlib import Path

from support.paths import REPO

TOOLS = ("inspectd.train", "inspectd.calibrate", "inspectd.deploy")
# inspectd/commands/<name>.py that run an offline tool
TOOL_COMMANDS = frozenset(
    {"train.py", "calibrate.py", "evaluate.py", "export.py", "verify_engine.py", "teach.py"}
)


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_runtime_imports_no_offline_tool() -> None:
    wrong = {}
    for path in sorted((REPO / "inspectd").rglob("*.py")):
        if path.parent.name == "commands" and path.name in TOOL_COMMANDS:
            continue
        bad = sorted(n for n in imports(path) if n.startswith(TOOLS))
        if bad:
            wrong[str(path.relative_to(REPO))] = bad
    assert wrong == {}


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from inspectd.train.loop import x\n")
    assert "inspectd.train.loop" in imports(source)


def test_what_sinks_receive_does_not_import_the_sinks() -> None:
    """inspection.py is below the outputs: it imported outputs/overlay.py to cache a picture
    only the overlay sinks draw (outputs.overlay.overlay_of keeps it on the inspection now)."""
    assert not [n for n in imports(REPO / "inspectd" / "inspection.py") if "outputs" in n]


def test_the_unit_folder_starts_no_process_or_station() -> None:
    """tests/unit/ is the quick in-process check (README, Tests): a test that starts a process, a
    broker, a daemon or a whole station belongs in component/ or daemon/."""
    heavy = ("subprocess", "inspectd.service.station", "support.daemon_process")
    found = {
        path.name: sorted(n for n in imports(path) if n.startswith(heavy))
        for path in sorted((REPO / "tests" / "unit").glob("*.py"))
    }
    assert {name: names for name, names in found.items() if names} == {}


def test_the_contract_imports_no_transport_page_or_outputs() -> None:
    """inspectd/contract/ is the v1 wire contract (topics, messages, the verdict): before, the
    message builders imported mqtt/topics.py, an arrow from the contract into the transport."""
    below = ("inspectd.mqtt", "inspectd.ui", "inspectd.outputs", "paho")
    found = {
        path.name: sorted(n for n in imports(path) if n.startswith(below))
        for path in sorted((REPO / "inspectd" / "contract").glob("*.py"))
    }
    assert found and {name: names for name, names in found.items() if names} == {}
