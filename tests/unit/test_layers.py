"""The import rules of the README's Layout section hold, and `lint-imports` really catches a
back-edge (so a contract that silently matched nothing would fail here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("api", "bootedge", "workflows", "activities")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `tree` (first on the path, so a copy is checked)."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.js", "templates"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_layers_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


def test_a_back_edge_from_the_domain_fails(tmp_path):
    tree = copy_tree(tmp_path)
    ids = tree / "activities" / "domain" / "ids.py"
    ids.write_text(ids.read_text() + "\nfrom activities.storage import settings  # a back-edge\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "activities.domain.ids -> activities.storage.settings" in result.stdout


def test_a_workflow_importing_an_activity_implementation_fails(tmp_path):
    tree = copy_tree(tmp_path)
    search = tree / "workflows" / "search.py"
    search.write_text(search.read_text() + "\nfrom activities import join  # an implementation\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "workflows.search -> activities.join" in result.stdout


def test_a_workflow_module_loads_no_io_library():
    """What the contracts cannot see: a package `__init__` that imports an adapter would pull
    the database, Ansible or crypto into every workflow load."""
    code = (
        "import sys, workflows.machine, workflows.cluster; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
        "('sqlmodel', 'sqlalchemy', 'ansible_runner', 'cryptography', 'fastapi', 'dukpy', 'jinja2')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
