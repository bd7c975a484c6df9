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
    bad.write_text("def f():\n    from lib.learning.policy.sft import train_sft\n")
    assert "lib.learning.policy.sft" in imported_modules(bad)


COMMAND_FOLDERS = ["scripts", "benchmarks"]


@pytest.mark.parametrize("folder", COMMAND_FOLDERS)
def test_no_script_imports_another(folder):
    """Scripts and benchmarks are thin command lines over lib/: shared logic lives in lib, never in a script or a
    benchmark that another imports (a benchmark runs a user CLI as a process, if at all)."""
    commands = {p.stem for d in COMMAND_FOLDERS for p in (ROOT / d).glob("*.py")}
    helpers = {"serverproc"}  # the server process helper shared by tests and benchmarks (no CLI logic)
    files = sorted((ROOT / folder).glob("*.py"))
    assert files, f"{folder} has no command lines"
    for f in files:
        text = f.read_text(encoding="utf-8")
        mods = {m.split(".")[0] for m in imported_modules(f)}
        assert not (mods & (commands - helpers)), f"{f.name} imports {sorted(mods & commands)}"
        assert not any(m in {"scripts", "benchmarks"} for m in mods), f"{f.name} imports a command folder"
        assert "spec_from_file_location" not in text, f"{f.name} loads another script by path"
