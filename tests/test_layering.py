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


SERVING = ["lib/infers", "lib/tools", "lib/agent"]


@pytest.mark.parametrize("ring", SERVING)
def test_serving_code_never_imports_the_training_code(ring):
    """What serves (infer tasks, tools, the agent) runs without lib/learning: training code may import it,
    never the other way round, so a trainer's dependency can never break inference."""
    offenders = {str(f.relative_to(ROOT)): sorted(m for m in imported_modules(f) if m.startswith("lib.learning"))
                 for f in sorted((ROOT / ring).rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_training_import_check_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lib.learning.sft import train_sft\n")
    assert "lib.learning.sft" in imported_modules(bad)


def test_no_script_imports_another():
    """Scripts are thin command lines over lib/: shared logic lives in lib, never in a script another imports."""
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    helpers = {"serverproc"}  # the server process helper shared by tests and benchmarks (no CLI logic)
    for f in sorted((ROOT / "scripts").glob("*.py")):
        text = f.read_text(encoding="utf-8")
        mods = {m.split(".")[0] for m in imported_modules(f)}
        assert not (mods & (scripts - helpers)), f"{f.name} imports {sorted(mods & scripts)}"
        assert "spec_from_file_location" not in text, f"{f.name} loads another script by path"
