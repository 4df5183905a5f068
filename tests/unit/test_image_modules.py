"""The image builders' modules: each builder loads the shared helpers, never the other builder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('bootedge.images')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(result.stdout.split())


@pytest.mark.parametrize("builder, other", [("discovery", "runtime"), ("runtime", "discovery")])
def test_a_builder_does_not_load_the_other(builder: str, other: str) -> None:
    loaded = _loaded_after(f"bootedge.images.{builder}")
    assert "bootedge.images.common" in loaded
    assert f"bootedge.images.{other}" not in loaded
