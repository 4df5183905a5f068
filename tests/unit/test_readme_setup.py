"""The README's first section gives a newcomer exactly two set-up commands, `make demo` (the lab)
and `make test`, and the Makefile has both targets; `make up` is documented for real networks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _first_section() -> str:
    """From the first `## ` heading to the next one."""
    sections = re.split(r"^## ", README, flags=re.M)
    return sections[1]


def _commands(text: str) -> list[str]:
    """The commands of the section's sh blocks, comments dropped."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    lines = (line.split("#")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]


def test_the_first_section_has_exactly_make_demo_then_make_test():
    assert _first_section().startswith("Two commands\n")
    assert _commands(_first_section()) == ["make demo", "make test"]


def test_make_up_is_documented_for_real_networks_not_among_the_two():
    real = README.split("## On a real network: `make up`\n", 1)
    assert len(real) == 2 and "`make up`" in real[1].split("\n## ", 1)[0]
    assert "make up" not in _commands(_first_section())


def test_the_makefile_has_the_two_targets_and_demo_runs_a_three_machine_lab():
    for target in ("demo", "test", "up"):
        dry = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
    demo = subprocess.run(["make", "-n", "-C", str(ROOT), "demo"], capture_output=True, text=True).stdout
    assert "system-packages" in demo and "qemu-system-x86" in demo
    assert re.search(r"\.venv/bin/tempered lab up --machines 3\b", demo), demo
    header = (ROOT / "Makefile").read_text().split("\n\n", 1)[0]
    assert "make demo" in header and "make test" in header
