"""The `tempered` CLI against a running API: every command, its help, and its errors."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.servers import VENV_BIN


def tempered(api_server, *args: str) -> subprocess.CompletedProcess:
    env = api_server.env | {"TEMPERED_TOKEN": api_server.token, "COLUMNS": "200"}
    return subprocess.run([str(VENV_BIN / "tempered"), *args], env=env, capture_output=True, text=True, timeout=120)


def _until_listed(api_server, cluster: str, count: int) -> None:
    """Temporal's visibility lists a machine a moment after its workflow starts: wait for it."""
    deadline = time.monotonic() + 30
    with api_server.client() as api:
        while len(api.get("/v1/machines", params={"cluster": cluster}).json()) != count:
            assert time.monotonic() < deadline, f"cluster {cluster}'s machines never listed"
            time.sleep(0.1)


@pytest.mark.parametrize(
    "command",
    [[], ["up"], ["api"], ["worker"], ["temporal"], ["cluster", "create"], ["cluster", "list"], ["cluster", "show"],
     ["cluster", "delete"], ["cluster", "retry"], ["cluster", "plan"], ["machine", "list"], ["machine", "show"], ["machine", "register"], ["machine", "retry"],
     ["machine", "reboot"], ["machine", "reprovision"], ["machine", "decommission"], ["fragment", "set"], ["fragment", "list"],
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
    assert "new: yes" in shown.stdout and "True" not in shown.stdout
    assert tempered(api_server, "machine", "show", "52-54-00-CC-00-01").stdout == shown.stdout  # any spelling of its MAC

    refused = tempered(api_server, "machine", "retry", "52:54:00:cc:00:01")
    assert refused.returncode == 1 and "nothing to retry" in refused.stderr
    deleted = tempered(api_server, "cluster", "delete", name)  # its machine is decommissioned first
    assert deleted.returncode == 0 and f"cluster {name} deleted" in deleted.stdout, deleted.stderr
    assert f"{name}: decommissioning" in deleted.stdout  # the progress, step by step
    assert "decommissioned" in tempered(api_server, "machine", "show", "52:54:00:cc:00:01").stdout
    missing = tempered(api_server, "cluster", "delete", name)
    assert missing.returncode == 3 and "no cluster named" in missing.stderr


def test_managing_fragments_from_the_cli(api_server, unique, tmp_path):
    name = unique("frag")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("write_files:\n  - {path: /etc/motd, content: 'hello {{ machine.hostname }}'}\n")
    bad.write_text("runcmd: not-a-list\n")
    saved = tempered(api_server, "fragment", "set", name, str(good))
    assert saved.returncode == 0 and f"fragment {name} saved" in saved.stdout, saved.stderr
    refused = tempered(api_server, "fragment", "set", name, str(bad))
    assert refused.returncode == 2 and "runcmd" in refused.stderr
    assert tempered(api_server, "fragment", "show", name).stdout == good.read_text()
    assert name in tempered(api_server, "fragment", "list").stdout
    assert tempered(api_server, "fragment", "delete", name).returncode == 0
    missing = tempered(api_server, "fragment", "show", name)
    assert missing.returncode == 3
    assert missing.stderr.strip() == f"error: no fragment named {name!r}: list them with 'tempered fragment list'"


def test_cli_without_a_reachable_api_says_what_to_do(api_server, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TEMPERED_HOME": str(tmp_path), "TEMPERED_API": "http://127.0.0.1:9", "TEMPERED_TOKEN": "x"}
    result = subprocess.run([str(VENV_BIN / "tempered"), "cluster", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 5 and "Is 'tempered up' running?" in result.stderr
    env.pop("TEMPERED_TOKEN")
    result = subprocess.run([str(VENV_BIN / "tempered"), "cluster", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 4 and "no token" in result.stderr


def test_a_refusal_is_one_plain_line_per_problem_with_an_exit_code_by_kind(api_server, unique):
    name = unique("cli")
    invalid = tempered(api_server, "cluster", "create", name, "--quorum", "2", "--pod-cidr", "not-a-network")
    assert invalid.returncode == 2, invalid.stderr
    lines = invalid.stderr.splitlines()
    assert lines[0] == "error: --quorum: must be odd (1, 3, 5 or 7) so etcd keeps a majority", lines
    assert lines[1].startswith("error: --pod-cidr: ") and len(lines) == 2, lines
    assert "Value error" not in invalid.stderr and "{" not in invalid.stderr and "'loc'" not in invalid.stderr

    missing = tempered(api_server, "cluster", "show", name)
    assert missing.returncode == 3
    assert missing.stderr == f"error: no cluster named {name!r}: list them with 'tempered cluster list'\n"
    assert tempered(api_server, "cluster", "create", name, "--quorum", "1").returncode == 0
    again = tempered(api_server, "cluster", "create", name, "--quorum", "1")
    assert again.returncode == 1 and again.stderr == f"error: cluster {name!r} already exists\n"

    env = api_server.env | {"TEMPERED_TOKEN": "not-the-token"}
    denied = subprocess.run([str(VENV_BIN / "tempered"), "cluster", "list"], env=env, capture_output=True, text=True)
    assert denied.returncode == 4 and denied.stderr.startswith("error: invalid, revoked or expired token"), denied.stderr
    admin_token = api_server.env["TEMPERED_HOME"] + "/admin-token"
    assert f"export TEMPERED_TOKEN=$(cat {admin_token})" in denied.stderr and "(sent from TEMPERED_TOKEN)" in denied.stderr
    usage = tempered(api_server, "cluster", "list", "-o", "xml")
    assert usage.returncode == 2


def test_cluster_create_takes_every_field_of_the_spec(api_server, unique):
    name = unique("cli")
    created = tempered(
        api_server, "cluster", "create", name, "--quorum", "1", "--join-method", "external",
        "--ntp-server", "ntp.example", "--ntp-server", "10.0.0.123", "--architecture", "aarch64",
        "--join-token-ttl", "7200", "--join-token-renew-before", "600", "--min-cores", "4",
    )
    assert created.returncode == 0, created.stderr
    spec = api_server.client().get(f"/v1/clusters/{name}").json()["spec"]
    assert (spec["join_method"], spec["ntp_servers"], spec["join_token_ttl_s"], spec["join_token_renew_before_s"]) == (
        "external", ["ntp.example", "10.0.0.123"], 7200, 600
    )
    assert (spec["preflight"]["architectures"], spec["preflight"]["min_cores"]) == (["aarch64"], 4)
    wrong = tempered(api_server, "cluster", "create", unique("cli"), "--join-method", "telepathy")
    assert wrong.returncode == 2 and "telepathy" in wrong.stderr


def test_every_read_command_prints_the_apis_answer_as_json_or_yaml(api_server, unique, tmp_path):
    import json

    import yaml

    cluster, edge, fragment = unique("cli"), unique("edge"), unique("frag")
    assert tempered(api_server, "cluster", "create", cluster, "--quorum", "1").returncode == 0
    assert tempered(api_server, "machine", "register", "--cluster", cluster, "--mac", "52:54:00:cc:00:02").returncode == 0
    assert tempered(api_server, "edge", "create", edge, "--segment", edge, "--mac-prefix", "52:54:00:cc").returncode == 0
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {name: workers, expression: 'true', attributes: [{type: role, value: worker}]}\n")
    assert tempered(api_server, "rules", "set", str(rules), "--cluster", cluster).returncode == 0  # the older form
    assert tempered(api_server, "rules", "set", cluster, str(rules)).returncode == 0
    dry_run = tempered(api_server, "rules", "dry-run", cluster, str(rules))
    assert dry_run.returncode == 0 and f"dry-run on {cluster}" in dry_run.stdout, dry_run.stderr
    (tmp_path / "fragment.yaml").write_text("runcmd: [echo hi]\n")
    assert tempered(api_server, "fragment", "set", fragment, str(tmp_path / "fragment.yaml")).returncode == 0
    secret = tmp_path / "tsig.key"
    secret.write_text("c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n")
    dns = tempered(api_server, "dns", "set", "--cluster", cluster, "--zone", "lab.example", "--server", "127.0.0.1:5353",
                   "--key-name", "tempered", "--key-secret-file", str(secret), "--ttl", "60")
    assert dns.returncode == 0 and "c2VjcmV0" not in dns.stdout, dns.stderr

    _until_listed(api_server, cluster, 1)
    api = api_server.client()
    reads = [
        (["cluster", "list"], "/v1/clusters"),
        (["cluster", "show", cluster], f"/v1/clusters/{cluster}"),
        (["machine", "list", "--cluster", cluster], f"/v1/machines?cluster={cluster}"),
        (["machine", "show", "52:54:00:cc:00:02"], "/v1/machines/52:54:00:cc:00:02"),
        (["edge", "list"], "/v1/edges"),
        (["edge", "show", edge], f"/v1/edges/{edge}"),
        (["rules", "show", cluster], f"/v1/clusters/{cluster}/rules"),
        (["rules", "show", "--cluster", cluster], f"/v1/clusters/{cluster}/rules"),
        (["fragment", "list"], "/v1/cloud-init/fragments"),
        (["fragment", "show", fragment], f"/v1/cloud-init/fragments/{fragment}"),
        (["dns", "show", "--cluster", cluster], f"/v1/clusters/{cluster}/dns"),
    ]
    for command, path in reads:
        as_json = tempered(api_server, *command, "-o", "json")
        assert as_json.returncode == 0, (command, as_json.stderr)
        assert json.loads(as_json.stdout) == api.get(path).json(), command
        as_yaml = tempered(api_server, *command, "--output", "yaml")
        assert yaml.safe_load(as_yaml.stdout) == api.get(path).json(), command
        assert tempered(api_server, *command).returncode == 0, command  # the table
    shown = json.loads(tempered(api_server, "dns", "show", "--cluster", cluster, "-o", "json").stdout)
    assert shown["servers"] == [{"host": "127.0.0.1", "port": 5353}] and shown["key"]["secret"] == "**********"
    assert tempered(api_server, "edge", "delete", edge).returncode == 0


def test_machine_watch_prints_the_live_table(api_server, unique):
    cluster = unique("cli")
    assert tempered(api_server, "cluster", "create", cluster, "--quorum", "1").returncode == 0
    assert tempered(api_server, "machine", "register", "--cluster", cluster, "--mac", "52:54:00:cc:00:03").returncode == 0
    _until_listed(api_server, cluster, 1)
    once = tempered(api_server, "machine", "watch", "--cluster", cluster, "--once")
    assert once.returncode == 0, once.stderr
    assert "1 machine" in once.stdout and "1 machines" not in once.stdout
    for column in ("machine", "cluster", "MAC", "state", "role", "in state", "reason"):
        assert column in once.stdout
    row = next(line for line in once.stdout.splitlines() if "52:54:00:cc:00:03" in line)
    assert cluster in row and "new" in row, once.stdout


def test_an_empty_token_means_the_admin_token_file(api_server):
    """infra/deploy/tempered.env ships `TEMPERED_TOKEN=`: empty is unset, as for every setting."""
    env = api_server.env | {"TEMPERED_TOKEN": "", "COLUMNS": "200"}
    listed = subprocess.run([str(VENV_BIN / "tempered"), "cluster", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr


def test_a_404_says_which_cli_command_lists_what_exists(api_server, unique):
    unknown = str(uuid.uuid4())
    shown = tempered(api_server, "machine", "show", unknown)
    assert shown.returncode == 3 and shown.stderr.rstrip().endswith("; list them with 'tempered machine list'"), shown.stderr
    missing = unique("nope")
    registered = tempered(api_server, "machine", "register", "--cluster", missing, "--mac", "52:54:00:cc:00:0f")
    assert registered.returncode == 3
    assert registered.stderr == f"error: no cluster named {missing!r}: create it first; list them with 'tempered cluster list'\n"
    rules = tempered(api_server, "rules", "show", missing)
    assert rules.returncode == 3 and "'tempered cluster list'" in rules.stderr


def test_watch_leaves_out_a_machine_gone_between_the_list_and_its_fetch(api_server, monkeypatch):
    """`machine watch` fetches each listed machine with `missing_ok`: a 404 (a machine decommissioned
    and gone meanwhile) is None, left out of the table, instead of ending the watch with exit 3."""
    from api.cli.client import call

    for key, value in (api_server.env | {"TEMPERED_TOKEN": api_server.token}).items():
        monkeypatch.setenv(key, value)
    assert call("GET", f"/v1/machines/{uuid.uuid4()}", missing_ok=True) is None
    assert isinstance(call("GET", "/v1/machines", missing_ok=True), list)
