"""JSON logs of a whole run, and no secret in them.

Every long-running process runs with TEMPERED_LOG_FORMAT=json on a stack of its own (Temporal
dev server, worker, API on TCP and on a unix socket, a boot edge in a namespace), and one machine
goes the whole way as the outside world drives it: proxyDHCP and iPXE through the edge (boot
tokens in kernel command lines and in the runtime's seed URL), the discovery agent's facts, the
runtime's seed and phone home through the edge, a real Ansible join over SSH to a node-lab
node (the control plane's private key, a kubeadm join token minted after), and TSIG-signed DNS
updates to a real BIND (the key set through the API with the admin token). Then every log line
must parse as JSON, lines about the machine must name it (and the step, in the worker), and no
secret of the run may appear anywhere in any log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from activities import sshkey
from activities.domain.ids import node_name
from activities.storage import secrets, settings as settings_mod
from tests.bind import REVERSE, ZONE, Bind, named_binary
from tests.nodelab import NodeLab, nodelab_available, standin_image
from tests.servers import VENV_BIN, DevServer, Process, free_port, wait_for, wait_http

pytestmark = [
    pytest.mark.skipif(nodelab_available() is not None, reason=str(nodelab_available())),
    pytest.mark.skipif(named_binary() is None, reason="BIND (named) is not installed"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq-base is not installed"),
]
REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:1f:00:01"
MACHINE = "5f0c1e2d-3b4a-4c5d-8e6f-00000000f001"
CTL = f"tpd-{os.getpid()}-logs-ctl"


@dataclass
class Stack:
    settings: settings_mod.Settings
    api: str
    token: str
    logs: dict[str, Path]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)




@pytest.fixture
def stack(tmp_path, tmp_path_factory):
    """Temporal, a worker and two APIs of this test's own, every one logging JSON."""
    home = tmp_path_factory.mktemp("logs")  # short: ssh's control sockets live under it
    temporal = DevServer(tmp_path).start()
    port = free_port()
    env = os.environ | {
        "TEMPERED_HOME": str(home), "DATABASE_URL": f"sqlite:///{home / 'tempered.db'}",
        "TEMPORAL_ADDRESS": temporal.address, "TEMPERED_LOG_FORMAT": "json",
        "TEMPERED_SSH_PROXY_COMMAND": f"nsenter --net=/run/netns/{CTL} nc %h %p",
        "TEMPERED_API_PORT": str(port), "TEMPERED_API": f"http://127.0.0.1:{port}",
    }
    logs = {name: home / f"{name}.log" for name in ("worker", "api", "api-uds")}
    processes = [
        Process(["worker"], env, logs["worker"]).start(),
        Process(["api"], env, logs["api"]).start(),
        Process(["api", "--uds", str(tmp_path / "api.sock")], env, logs["api-uds"]).start(),
    ]
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_for(lambda: (tmp_path / "api.sock").exists(), "the unix-socket API")
        settings = replace(settings_mod.load(), home=home, database_url=env["DATABASE_URL"],
                           temporal_address=temporal.address)
        yield Stack(settings, f"http://127.0.0.1:{port}", (home / "admin-token").read_text().strip(), logs)
    finally:
        for process in reversed(processes):
            process.stop()
        temporal.stop()


@pytest.fixture
def bind(tmp_path):
    (tmp_path / "bind").mkdir()
    server = Bind(tmp_path / "bind").start()
    yield server
    server.stop()


def _kernel_args(script: str) -> dict[str, str]:
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    return dict(arg.split("=", 1) for arg in kernel.split()[2:] if "=" in arg)


def test_a_full_run_logs_json_lines_with_context_and_no_secret(stack: Stack, bind: Bind, tmp_path):
    from tests.api.test_discovery_api import facts

    cluster, edge_name = "logs", "edge-logs"
    key = bind.default_keys["hmac-sha512"]
    with stack.http() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1, "join_method": "ansible"}).raise_for_status()
        dns = {"zone": ZONE, "servers": [{"host": "127.0.0.1", "port": bind.port}], "reverse_zone": REVERSE,
               "key": {"name": key.name, "secret": key.secret.get_secret_value(), "algorithm": key.algorithm}}
        http.put(f"/v1/clusters/{cluster}/dns", json=dns).raise_for_status()
        policy = {"mode": "catch-all", "cluster": cluster, "mac_prefixes": [MAC[:11]], "segment": edge_name}
        created = http.post("/v1/edges", json={"name": edge_name, "policy": policy})
        created.raise_for_status()
    edge_token = created.json()["token"]
    (tmp_path / "edge-token").write_text(edge_token)
    state = tmp_path / "cluster"
    state.mkdir()
    image = standin_image(tmp_path / "image", state)
    with NodeLab(tmp_path / "nodes", sshkey.public_key(stack.settings), image, CTL) as lab:
        node = lab.add(node_name(MACHINE, MAC))
        edge_ns = lab.lab.netns("edge")
        lab.lab.attach(lab.lan_netns, edge_ns, "edge", 3)
        edge_ip = lab.lab.address(3)
        stack.logs["edge"] = tmp_path / "edge.log"
        lab.lab.run(
            edge_ns,
            [str(VENV_BIN / "tempered"), "bootedge", "--interface", "eth0", "--control-plane",
             f"unix:{tmp_path / 'api.sock'}", "--token-file", str(tmp_path / "edge-token"),
             "--state-dir", str(tmp_path / "edge"), "--policy-refresh", "0.5"],
            stack.logs["edge"], env=os.environ | {"TEMPERED_LOG_FORMAT": "json"},
        )

        def curl(*args: str) -> str:
            done = lab.lab.exec(node.netns, ["curl", "-sf", "--max-time", "30", *args])
            assert done.returncode == 0, (args, done.stderr)
            return done.stdout

        base = f"http://{edge_ip}:8080"
        wait_for(lambda: lab.lab.exec(node.netns, ["curl", "-sf", f"{base}/boot.ipxe"]).returncode == 0
                 and (tmp_path / "edge" / "config.json").exists(), "the edge", timeout=180)
        offers = lab.lab.exec(node.netns, [sys.executable, "-m", "tests.pxeclient", "discover", "--mac", MAC], cwd=REPO)
        assert offers.returncode == 0 and offers.stdout.strip(), offers.stderr  # proxyDHCP answered

        boot_ipxe = f"{base}/boot.ipxe?mac={MAC}&uuid={MACHINE}&platform=efi&buildarch=x86_64"
        discovery = _kernel_args(curl(boot_ipxe))
        assert discovery["tempered.machine"] == MACHINE
        bearer = ["-H", f"Authorization: Bearer {discovery['tempered.token']}"]
        body = tmp_path / "facts.json"
        body.write_text(json.dumps(facts(MAC)))
        curl(*bearer, "-H", "Content-Type: application/json", "--data-binary", f"@{body}", f"{base}/machines/{MACHINE}/facts")
        wait_for(lambda: json.loads(curl(*bearer, f"{base}/machines/{MACHINE}/instruction"))["action"] == "reboot",
                 "the discovery agent to be told to reboot", timeout=180)

        runtime = _kernel_args(curl(boot_ipxe))
        seed = runtime["ds"].removeprefix("nocloud-net;s=")
        assert runtime["tempered.token"] in seed
        curl(f"{seed}meta-data")
        curl(f"{seed}user-data")
        curl("-X", "POST", "--data", f"hostname={node.name}&pub_key_ed25519={quote(node.host_key)}", f"{seed}phone-home")

        def machine() -> dict:
            with stack.http() as http:
                return http.get(f"/v1/machines/{MACHINE}").json()

        ready = wait_for(lambda: (m := machine())["state"] in ("ready", "failed:join-cluster", "failed:dns") and m,
                         "the machine to join", timeout=300)
        assert ready["state"] == "ready", ready["reason"]
        assert f"published {node.name}.{ZONE}" in ready["reason"], ready["reason"]
        tokens = wait_for(lambda: _join_secrets(stack.settings, cluster), "the cluster's first join token", timeout=180)

        secrets_of_the_run = {
            "admin token": stack.token, "edge token": edge_token,
            "discovery boot token": discovery["tempered.token"], "runtime boot token": runtime["tempered.token"],
            "TSIG secret": key.secret.get_secret_value(),
            **{f"join secret {i}": value for i, value in enumerate(tokens)},
            **{f"SSH private key line {i}": line for i, line in enumerate(_key_lines(stack.settings))},
        }
        with stack.http() as http:  # one more admin call whose path names the cluster
            http.get(f"/v1/clusters/{cluster}").raise_for_status()
    # The edge and the node lab are gone with the lab; stop the stack so every line is written.
    _check_logs(stack, secrets_of_the_run, edge_name, node.name)


def _join_secrets(settings, cluster: str) -> list[str]:
    from sqlmodel import select

    from activities.storage import db
    from activities.storage.models import JoinSecret

    with db.session(settings.database_url) as s:
        rows = s.exec(select(JoinSecret).where(JoinSecret.cluster == cluster)).all()
        return [secrets.unseal(settings, row.sealed) for row in rows]


def _key_lines(settings) -> list[str]:
    """The private key's base64 lines (the armour lines are no secret)."""
    return [line for line in sshkey.private_key(settings).splitlines() if line and not line.startswith("-----")]


def _check_logs(stack: Stack, secrets_of_the_run: dict[str, str], edge_name: str, node: str) -> None:
    lines: dict[str, list[dict]] = {}
    for name, path in stack.logs.items():
        text = path.read_text(errors="replace")
        assert all(len(secret) >= 8 for secret in secrets_of_the_run.values())
        leaked = [what for what, secret in secrets_of_the_run.items() if secret in text]
        assert leaked == [], f"in {name}.log"  # names only: the failure report must not print them
        lines[name] = []
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                raise AssertionError(f"{name}.log has a line that is not JSON: {raw!r}") from None
            assert {"time", "level", "logger", "message"} <= line.keys(), raw
            lines[name].append(line)

    def about(log: str, text: str) -> list[dict]:
        found = [line for line in lines[log] if text in line["message"]]
        assert found, f"no line of {log}.log says {text!r}"
        return found

    # The worker: every step of the machine names it and the step.
    for text, step in (("rendered user-data", "render_user_data"), ("join.yml on", "kubeadm_join"),
                       (f"published {node}.{ZONE}", "publish_node_dns")):
        for line in about("worker", text):
            assert (line.get("machine"), line.get("step")) == (MACHINE, step), line
            assert line["workflow_id"] == f"machine:{MACHINE}" and line.get("run"), line
    for line in about("worker", "credentials.yml on"):
        assert (line.get("cluster"), line.get("step")) == ("logs", "mint_join_credentials"), line
    # The edge: its name on every line once known; the machine and its MAC on the machine's.
    for line in about("edge", "boot script for"):
        assert (line.get("edge"), line.get("mac"), line.get("machine")) == (edge_name, MAC, MACHINE), line
        assert line.get("boot") in (1, 2), line
    for line in about("edge", "relayed"):
        assert (line.get("edge"), line.get("machine")) == (edge_name, MACHINE), line
    for line in about("edge", f"answered {MAC}"):
        assert line.get("mac") == MAC and line.get("edge") == edge_name, line
    # The APIs: the machine or the cluster the route names, uvicorn's own access lines included.
    for line in about("api-uds", "phoned home"):
        assert line.get("machine") == MACHINE, line
    for line in about("api-uds", "POST /v1/edge/boot HTTP"):  # an edge's question: its name, the MAC, the answer's machine
        assert (line.get("edge"), line.get("mac"), line.get("machine"), line.get("cluster")) == (
            edge_name, MAC, MACHINE, "logs"), line
    for line in about("api", "/v1/clusters/logs HTTP"):
        assert line.get("cluster") == "logs" and line["logger"] == "uvicorn.access", line
