"""The inner ring (lib/agent, lib/tools, lib/learning, lib/data) never imports monailabel."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INNER = ["lib/agent", "lib/tools", "lib/learning", "lib/data"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("ring", INNER)
def test_inner_ring_never_imports_monailabel(ring):
    files = sorted((ROOT / ring).rglob("*.py"))
    assert files, f"{ring} has no modules"
    offenders = {str(f.relative_to(ROOT)): sorted(m for m in imported_modules(f) if m.split(".")[0] == "monailabel")
                 for f in files}
    assert not {k: v for k, v in offenders.items() if v}


def test_layering_check_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from monailabel.interfaces.app import MONAILabelApp\n")
    assert "monailabel.interfaces.app" in imported_modules(bad)


def test_inner_ring_never_imports_scripts_or_outer_ring():
    outer = {"lib.configs", "lib.infers", "lib.trainers", "lib.activelearning"}
    for ring in INNER:
        for f in (ROOT / ring).rglob("*.py"):
            mods = imported_modules(f)
            assert not any(m.startswith("scripts") for m in mods), f
            assert not any(m.startswith(o) for m in mods for o in outer), f
