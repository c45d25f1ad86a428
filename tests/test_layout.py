"""Imports follow the data flow: devices -> collector -> pipelines -> dashboards; deploy wires them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"devices", "collector", "pipelines", "dashboards", "deploy"}
# What each package may import of ours: only what lies upstream of it.
ALLOWED = {
    "devices": set(),
    "collector": {"devices"},
    "pipelines": {"devices", "collector"},
    "dashboards": {"devices", "collector", "pipelines"},
    # The composition root: starts the servers and wires every part together.
    "deploy": {"devices", "collector", "pipelines", "dashboards"},
}


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in OURS and top != package:
                    found.add((str(path.relative_to(ROOT)), top))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_data_flow(package: str) -> None:
    wrong = {(f, top) for f, top in _imports(package) if top not in ALLOWED[package]}
    assert not wrong, f"{package} imports downstream: {sorted(wrong)}"
