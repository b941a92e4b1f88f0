"""The packages depend one way (BUILD.md): kernels <- core <- tokenizer, dynamics <- world <-
launch; agent on core, dynamics and world; data depends on none of the model packages; configs
only on the model configs."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = {"kernels", "core", "tokenizer", "dynamics", "world", "data", "configs", "launch",
           "agent"}
ALLOWED = {
    "kernels": set(),
    "core": {"kernels"},
    "tokenizer": {"core", "kernels"},
    "dynamics": {"core", "kernels"},
    "world": {"tokenizer", "dynamics", "core", "kernels"},
    "agent": {"core", "dynamics", "kernels", "world"},
    "data": set(),
    "configs": {"tokenizer", "dynamics", "core", "kernels"},
}


def imported_packages(path: str) -> set[str]:
    """The project packages a module imports (anywhere in it, lazily or not)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package):
    folder = os.path.join(REPO, package)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            wrong = imported_packages(os.path.join(folder, name)) - ALLOWED[package] - {package}
            assert not wrong, f"{package}/{name} imports {sorted(wrong)}"
