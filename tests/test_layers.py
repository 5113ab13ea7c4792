"""The package's layering (docs/architecture.md): the library never imports the tools,
and nothing in it imports the training engine, which sits on top of everything else."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = sorted((REPO / "gali_tf").rglob("*.py"))


def imported_modules(path: pathlib.Path) -> set:
    """Every module a file imports, as dotted names (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_layer_check_sees_imports():
    assert "gali_tf.training" in imported_modules(REPO / "trainers" / "main.py")
    assert "gali_tf.run_dir" in imported_modules(REPO / "export" / "exporter.py")


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO)))
def test_library_module_imports_neither_tools_nor_the_engine(path):
    imports = imported_modules(path)
    assert not {m for m in imports if m.split(".")[0] in ("trainers", "export")}
    if path.name != "training.py":
        assert "gali_tf.training" not in imports
