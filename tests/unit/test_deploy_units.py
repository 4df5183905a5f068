"""infra/deploy/: the systemd units pass `systemd-analyze verify` in a scratch root that holds
what they name (the venv's `tempered`, the EnvironmentFile), keep a hardened exposure score,
and tempered.env documents every setting the code reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
DEPLOY = REPO / "infra" / "deploy"
UNITS = ("tempered-api.service", "tempered-worker.service", "tempered-bootedge.service", "tempered-site-worker@.service")
INSTALLED = "/opt/tempered/venv/bin/tempered"  # where the README installs the venv

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing: apt-get install systemd"
)


def parse_environment_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile syntax, as far as tempered.env uses it: KEY=VALUE lines,
    comments, blank lines, optional double quotes."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not KEY=VALUE: {line!r}"
        values[key] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return values


def _root(tmp_path: Path, units: dict[str, str]) -> Path:
    """A scratch root: systemd's own units (verify resolves the targets ours name), ours in
    /etc/systemd/system, the EnvironmentFile, and an executable where ExecStart points."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    (root / "etc/tempered").mkdir()
    shutil.copy(DEPLOY / "tempered.env", root / "etc/tempered/tempered.env")
    binary = root / INSTALLED.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return root


def instance(unit: str) -> str:
    """What systemd checks for a unit file: a template (`name@.service`) as one of its instances."""
    return unit.replace("@.", "@rack-a.")


def _verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", instance(unit)], capture_output=True, text=True
    )


def _units() -> dict[str, str]:
    return {name: (DEPLOY / name).read_text() for name in UNITS}


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_verifies_without_a_warning(tmp_path, unit):
    root = _root(tmp_path, _units())
    checked = _verify(root, unit)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_verify_catches_a_typo_and_a_missing_binary(tmp_path):
    """The check above can fail: a misspelt key is reported, a missing ExecStart fails."""
    units = _units()
    units["tempered-api.service"] = units["tempered-api.service"].replace("ProtectSystem=", "ProtectSystm=")
    root = _root(tmp_path, units)
    assert "Unknown key 'ProtectSystm'" in _verify(root, "tempered-api.service").stderr
    (root / INSTALLED.lstrip("/")).unlink()
    missing = _verify(root, "tempered-worker.service")
    assert missing.returncode != 0 and "is not executable" in missing.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_is_hardened(tmp_path, unit):
    """A dedicated user, no new privileges, a read-only system; `systemd-analyze security`
    rates it OK (exposure below 2 of 10)."""
    text = (DEPLOY / unit).read_text()
    required = ("User=tempered", "NoNewPrivileges=yes", "ProtectSystem=strict", "EnvironmentFile=/etc/tempered/tempered.env")
    for line in required:
        assert line in text.splitlines(), line
    root = _root(tmp_path, _units())
    rated = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", instance(unit)],
        capture_output=True, text=True,
    )
    score = re.search(rf"Overall exposure level for {re.escape(instance(unit))}: ([0-9.]+)", rated.stdout)
    assert score is not None, rated.stdout + rated.stderr
    assert float(score.group(1)) < 2.0, rated.stdout


def test_only_the_edge_holds_capabilities():
    caps = {name: re.findall(r"^AmbientCapabilities=(.*)$", text, re.M) for name, text in _units().items()}
    assert caps == {
        "tempered-api.service": [], "tempered-worker.service": [],
        "tempered-bootedge.service": ["CAP_NET_BIND_SERVICE CAP_NET_RAW"], "tempered-site-worker@.service": [],
    }
    assert "LoadCredential=edge-token:/etc/tempered/edge-token" in _units()["tempered-bootedge.service"]


def settings_the_code_reads() -> set[str]:
    """Every environment variable read in api/ (but the lab), activities/, bootedge/, workflows/."""
    pattern = re.compile(r'(?:environ\.get|getenv|_env|_path|_port|_off_or)\(\s*"([A-Z][A-Z0-9_]+)"|envvar="([A-Z][A-Z0-9_]+)"')
    found = set()
    for package in ("api", "activities", "bootedge", "workflows"):
        for path in (REPO / package).rglob("*.py"):
            if "lab" not in path.relative_to(REPO).parts:
                found |= {a or b for a, b in pattern.findall(path.read_text())}
    return found


def test_the_environment_file_documents_every_setting():
    documented = parse_environment_file(DEPLOY / "tempered.env")
    read = settings_the_code_reads()
    assert {"TEMPORAL_ADDRESS", "DATABASE_URL", "TEMPORAL_TLS_CA", "TEMPERED_CONTROL_PLANE"} <= read  # the scan works
    assert read - set(documented) == set(), "settings missing from infra/deploy/tempered.env"
    text = (DEPLOY / "tempered.env").read_text()
    for name in documented:  # each with a comment: the line above it, or above its group
        before = text[: text.index(f"\n{name}=")]
        assert "#" in before.rsplit("\n\n", 1)[-1], f"{name} has no comment"
    assert documented["TEMPERED_HOME"] == "/var/lib/tempered"  # the units' StateDirectory


def test_the_readme_settings_table_documents_every_setting():
    """README "### Settings": one table (its rows contiguous: a row after the paragraph below it
    renders as stray pipes) with a row for every setting the code reads."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Settings"):]
    section = section[: section.index("\n#")]
    table = re.search(r"^\|.*\n(?:\|.*\n)+", section, re.M).group(0)
    rows = {name for line in table.splitlines()[2:] for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])}
    assert settings_the_code_reads() - rows == set(), "settings missing from README's Settings table"
    assert section.count("\n|") == table.count("\n|") + 1, "a row outside the Settings table"


def test_the_readme_registers_every_search_attribute():
    """The README's `temporal operator search-attribute create` loop names exactly the
    attributes `tempered` registers itself (workflows/search.py)."""
    from workflows import search

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Deploying beyond one machine"):]
    loop = re.search(r"for name in ([\w ]+); do\n\s+temporal operator search-attribute create", section)
    assert loop is not None
    assert loop.group(1).split() == [key.name for key in search.ALL]
