"""The `tempered` CLI against a running API: every command, its help, and its errors."""

from __future__ import annotations

import subprocess

import pytest

from tests.servers import VENV_BIN


def tempered(api_server, *args: str) -> subprocess.CompletedProcess:
    env = api_server.env | {"TEMPERED_TOKEN": api_server.token, "COLUMNS": "200"}
    return subprocess.run([str(VENV_BIN / "tempered"), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "command",
    [[], ["up"], ["api"], ["worker"], ["temporal"], ["cluster", "create"], ["cluster", "list"], ["cluster", "show"],
     ["cluster", "delete"], ["machine", "list"], ["machine", "show"], ["machine", "register"], ["machine", "retry"],
     ["machine", "reprovision"], ["machine", "decommission"], ["fragment", "set"], ["fragment", "list"],
     ["fragment", "show"], ["fragment", "delete"], ["image", "build"]],
)
def test_every_command_explains_itself(command):
    result = subprocess.run([str(VENV_BIN / "tempered"), *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and len(result.stdout) > 200


def test_operating_a_cluster_from_the_cli(api_server, unique):
    name = unique("cli")
    created = tempered(api_server, "cluster", "create", name, "--quorum", "1")
    assert created.returncode == 0, created.stderr
    assert f"/workflows/cluster:{name}" in created.stdout
    assert name in tempered(api_server, "cluster", "list").stdout
    assert "forming" in tempered(api_server, "cluster", "show", name).stdout

    registered = tempered(api_server, "machine", "register", "--cluster", name, "--mac", "52:54:00:cc:00:01")
    assert registered.returncode == 0, registered.stderr
    assert "52:54:00:cc:00:01  new" in registered.stdout
    listed = tempered(api_server, "machine", "list", "--cluster", name)
    assert listed.returncode == 0
    shown = tempered(api_server, "machine", "show", "52:54:00:cc:00:01")
    assert "/workflows/machine:52:54:00:cc:00:01" in shown.stdout and "first seen" in shown.stdout
    assert "name: node-525400cc0001" in shown.stdout  # its one name (hostname, node, DNS, rules)

    refused = tempered(api_server, "machine", "retry", "52:54:00:cc:00:01")
    assert refused.returncode == 1 and "409" in refused.stderr and "nothing to retry" in refused.stderr
    busy = tempered(api_server, "cluster", "delete", name)
    assert busy.returncode == 1 and "decommission them first" in busy.stderr
    assert tempered(api_server, "machine", "decommission", "52:54:00:cc:00:01").returncode == 0


def test_managing_fragments_from_the_cli(api_server, unique, tmp_path):
    name = unique("frag")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("write_files:\n  - {path: /etc/motd, content: 'hello {{ machine.hostname }}'}\n")
    bad.write_text("runcmd: not-a-list\n")
    saved = tempered(api_server, "fragment", "set", name, str(good))
    assert saved.returncode == 0 and f"fragment {name} saved" in saved.stdout, saved.stderr
    refused = tempered(api_server, "fragment", "set", name, str(bad))
    assert refused.returncode == 1 and "422" in refused.stderr and "runcmd" in refused.stderr
    assert tempered(api_server, "fragment", "show", name).stdout == good.read_text()
    assert name in tempered(api_server, "fragment", "list").stdout
    assert tempered(api_server, "fragment", "delete", name).returncode == 0
    missing = tempered(api_server, "fragment", "show", name)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_cli_without_a_reachable_api_says_what_to_do(api_server, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TEMPERED_HOME": str(tmp_path), "TEMPERED_API": "http://127.0.0.1:9", "TEMPERED_TOKEN": "x"}
    result = subprocess.run([str(VENV_BIN / "tempered"), "cluster", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "Is 'tempered up' running?" in result.stderr
    env.pop("TEMPERED_TOKEN")
    result = subprocess.run([str(VENV_BIN / "tempered"), "cluster", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "no token" in result.stderr
