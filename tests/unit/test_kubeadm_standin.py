"""The kubeadm stand-in (infra/lab/standin/kubeadm) refuses what kubeadm refuses and records what it did.

Each test runs the script as a subprocess on fake nodes: a temp root directory per node and one state
directory shared by the nodes of a cluster, as on the real test nodes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

STANDIN = Path(__file__).parents[2] / "infra" / "lab" / "standin"
HOST = socket.gethostname()
TRAILER = "To see the stack trace of this error execute with --v=5 or higher\n"
TOKEN, TOKEN2 = "abcdef.0123456789abcdef", "zyxwvu.9876543210zyxwvu"
TOKEN_FORM = 'was not of the form "^([a-z0-9]{6})\\.([a-z0-9]{16})$"'
ENDPOINT = "10.0.0.10:6443"
CERT_KEY, OTHER_KEY = "0f" * 32, "a1" * 32
CP_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
IDENTITY = "error execution phase preflight: couldn't validate the identity of the API Server: "
DOWNLOAD = "error execution phase control-plane-prepare/download-certs: error downloading certs: "
ABSENT = object()


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Node:
    """One fake machine: its own root, the cluster's shared state directory."""

    def __init__(self, cluster: Cluster, name: str, **settings: object):
        self.cluster, self.name, self.root = cluster, name, cluster.tmp / name
        self.root.mkdir()
        conf = cluster.tmp / f"{name}.standin.json"
        conf.write_text(json.dumps({"state_dir": str(cluster.state), "root": str(self.root), **settings}))
        self.env = {**os.environ, "KUBEADM_STANDIN_CONFIG": str(conf)}

    def run(self, prog: str, *args: str) -> Result:
        proc = subprocess.run([str(STANDIN / prog), *args], env=self.env, capture_output=True, text=True, timeout=60)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def kubeadm(self, *args: str) -> Result:
        return self.run("kubeadm", *args)

    def kubectl(self, *args: str) -> Result:
        return self.run("kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", *args)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(STANDIN / "kubeadm"), *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def path(self, logical: str) -> Path:
        return self.root / logical.lstrip("/")

    def config(self, *docs: dict) -> str:
        path = self.cluster.tmp / f"{self.name}-{len(list(self.cluster.tmp.glob('*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return str(path)

    def init(self, *flags: str, fresh_ca: bool = False, **kw) -> Result:
        """kubeadm init; by default with a CA already in pki/ (kubeadm then uses it), which is faster."""
        pki = self.path("/etc/kubernetes/pki")
        if not fresh_ca and not (pki / "ca.crt").exists():
            pki.mkdir(parents=True, exist_ok=True)
            for name, data in self.cluster.ca.items():
                (pki / name).write_bytes(data)
        return self.kubeadm("init", "--config", self.config(*init_docs(self.name, **kw)), *flags)

    def join(self, **kw) -> Result:
        kw.setdefault("ca_hash", self.cluster.read().get("ca_cert_hash"))
        return self.kubeadm("join", "--config", self.config(join_doc(self.name, **kw)))


class Cluster:
    def __init__(self, tmp: Path, ca: dict[str, bytes]):
        self.tmp, self.state, self.ca = tmp, tmp / "cluster-state", ca

    def node(self, name: str, **settings: object) -> Node:
        return Node(self, name, **settings)

    def read(self) -> dict:
        path = self.state / "cluster.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def calls(self) -> list[dict]:
        path = self.state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def inject(self, kind: str, sub: str, content: str) -> Path:
        path = self.state / kind / f"{HOST}-{sub}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        return path


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """One CA for the module's clusters, made as the stand-in makes its own."""
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kubernetes", "-days",
                    "3650", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt")], check=True, capture_output=True)
    return {"ca.crt": (d / "ca.crt").read_bytes(), "ca.key": (d / "ca.key").read_bytes()}


@pytest.fixture
def cluster(tmp_path: Path, ca: dict[str, bytes]) -> Cluster:
    return Cluster(tmp_path, ca)


@pytest.fixture
def cp1(cluster: Cluster) -> Node:
    node = cluster.node("cp1")
    ok(node.init("--upload-certs"))
    return node


def registration(name: str, labels: str | None, taints, api: str) -> dict:
    nr: dict = {"name": name}
    if labels is not None:
        nr["kubeletExtraArgs"] = ({"node-labels": labels} if api.endswith("v1beta3") else
                                  [{"name": "node-labels", "value": labels}])
    if taints is not ABSENT:
        nr["taints"] = taints
    return nr


def init_docs(name: str, *, token=TOKEN, labels: str | None = "tempered.io/cluster=c1", taints=ABSENT,
              version="v1.31.0", endpoint=ENDPOINT, pod="10.244.0.0/16", svc="10.96.0.0/12",
              api="kubeadm.k8s.io/v1beta4", ttl="24h0m0s", init_extra=None, cluster_extra=None) -> list[dict]:
    init = {"apiVersion": api, "kind": "InitConfiguration", "nodeRegistration": registration(name, labels, taints, api),
            "localAPIEndpoint": {"advertiseAddress": "10.0.0.11"},
            "bootstrapTokens": [{"token": token, "ttl": ttl}] if token else None}
    cc = {"apiVersion": api, "kind": "ClusterConfiguration", "kubernetesVersion": version,
          "controlPlaneEndpoint": endpoint, "networking": {"podSubnet": pod, "serviceSubnet": svc}}
    return [{k: v for k, v in {**init, **(init_extra or {})}.items() if v is not None},
            {k: v for k, v in {**cc, **(cluster_extra or {})}.items() if v is not None}]


def join_doc(name: str, *, ca_hash: str | None, token=TOKEN, endpoint=ENDPOINT, labels: str | None = None,
             taints=ABSENT, control_plane: bool = False, cert_key: str | None = None, extra=None) -> dict:
    bt = {"token": token, "apiServerEndpoint": endpoint}
    bt.update({"caCertHashes": [ca_hash]} if ca_hash else {"unsafeSkipCAVerification": True})
    doc = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration",
           "nodeRegistration": registration(name, labels, taints, "v1beta4"), "discovery": {"bootstrapToken": bt}}
    if control_plane:
        doc["controlPlane"] = {"localAPIEndpoint": {"advertiseAddress": "10.0.0.12"}}
        if cert_key is not None:
            doc["controlPlane"]["certificateKey"] = cert_key
    return {**doc, **(extra or {})}


def ok(r: Result) -> Result:
    assert r.rc == 0, f"rc={r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    return r


def failed(r: Result, message: str) -> None:
    """kubeadm's way to fail: exit 1, the message, then its stack-trace hint."""
    assert (r.rc, r.err) == (1, message + "\n" + TRAILER)


def listed(node: Node) -> dict[str, dict]:
    """`kubectl get nodes -o json`, by node name."""
    out = json.loads(ok(node.kubectl("get", "nodes", "-o", "json")).out)
    assert out["kind"] == "List"
    return {item["metadata"]["name"]: item for item in out["items"]}


def openssl_pin(ca: Path) -> str:
    """The CA pin exactly as the kubeadm docs (and credentials.yml) compute it."""
    out = subprocess.run(f"openssl x509 -pubkey -noout -in {ca} | openssl pkey -pubin -outform der | sha256sum",
                         shell=True, check=True, capture_output=True, text=True).stdout
    return "sha256:" + out.split()[0]


# --- init -------------------------------------------------------------------------------------


def test_version_short(cluster: Cluster):
    r = cluster.node("n").kubeadm("version", "-o", "short")
    assert (r.rc, r.out, r.err) == (0, "v1.31.0\n", "")


def test_init_makes_a_real_ca_kubeconfigs_and_the_cluster(cluster: Cluster):
    node = cluster.node("cp1")
    r = ok(node.init("--upload-certs", fresh_ca=True))
    assert '[certs] Generating "ca" certificate and key' in r.out
    ca = node.path("/etc/kubernetes/pki/ca.crt")
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(ca)], capture_output=True,
                             text=True, check=True).stdout
    assert subject.strip() == "subject=CN = kubernetes" and ca.read_bytes() != cluster.ca["ca.crt"]
    assert node.path("/etc/kubernetes/pki/ca.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    admin = yaml.safe_load(node.path("/etc/kubernetes/admin.conf").read_text())
    kubelet = yaml.safe_load(node.path("/etc/kubernetes/kubelet.conf").read_text())
    servers = {conf["clusters"][0]["cluster"]["server"] for conf in (admin, kubelet)}
    assert servers == {"https://" + ENDPOINT}
    assert (admin["users"][0]["name"], kubelet["users"][0]["name"]) == ("kubernetes-admin", "system:node:cp1")

    state = cluster.read()
    pin = openssl_pin(ca)
    assert (state["initialised_by"], state["endpoint"], state["kubernetes_version"], state["ca_cert_hash"]) == (
        "cp1", ENDPOINT, "v1.31.0", pin)
    assert state["tokens"]["abcdef"]["secret"] == "0123456789abcdef"
    assert 24 * 3600 - 60 < state["tokens"]["abcdef"]["expires"] - time.time() <= 24 * 3600
    assert 2 * 3600 - 60 < state["certificate_key"]["expires"] - time.time() <= 2 * 3600
    assert f"[upload-certs] Using certificate key:\n{state['certificate_key']['key']}\n" in r.out
    assert f"--discovery-token-ca-cert-hash {pin}" in r.out
    node_state = state["nodes"]["cp1"]
    assert node_state["labels"] == {
        "tempered.io/cluster": "c1", "node-role.kubernetes.io/control-plane": "",
        "node.kubernetes.io/exclude-from-external-load-balancers": "", "kubernetes.io/hostname": "cp1",
        "kubernetes.io/os": "linux", "kubernetes.io/arch": node_state["labels"]["kubernetes.io/arch"]}
    assert node_state["taints"] == [CP_TAINT]  # kubeadm's default: the config has no `taints`


def test_init_with_a_ca_explicit_taints_and_a_certificate_key(cluster: Cluster):
    r = ok(cluster.node("cp1").init("--upload-certs", taints=[], init_extra={"certificateKey": CERT_KEY}))
    assert f"[upload-certs] Using certificate key:\n{CERT_KEY}\n" in r.out
    assert "[certs] Using existing ca certificate authority" in r.out  # the one in pki/, as kubeadm does
    state = cluster.read()
    assert (state["ca_crt"], state["ca_key"]) == (cluster.ca["ca.crt"].decode(), cluster.ca["ca.key"].decode())
    assert state["certificate_key"]["key"] == CERT_KEY
    assert state["nodes"]["cp1"]["taints"] == []  # an explicit empty list: no default taint


def test_init_without_upload_certs_stores_no_certificate_key(cluster: Cluster):
    ok(cluster.node("cp1").init(init_extra={"certificateKey": CERT_KEY}))
    assert cluster.read()["certificate_key"] is None


def test_init_without_bootstrap_tokens_makes_one(cluster: Cluster):
    r = ok(cluster.node("cp1").init(token=None))
    [(token_id, token)] = cluster.read()["tokens"].items()
    assert f" --token {token_id}.{token['secret']} " in r.out
    assert 24 * 3600 - 60 < token["expires"] - time.time() <= 24 * 3600
    ok(cluster.node("w1").join(token=f"{token_id}.{token['secret']}"))


@pytest.mark.parametrize(("given", "endpoint"), [
    ("api.example", "api.example:6443"), ("[fd00::10]", "[fd00::10]:6443"), ("[fd00::10]:443", "[fd00::10]:443")])
def test_init_endpoint_gets_the_default_port(cluster: Cluster, given: str, endpoint: str):
    ok(cluster.node("cp1").init(endpoint=given))
    assert cluster.read()["endpoint"] == endpoint
    ok(cluster.node("w1").join(endpoint=endpoint))


def test_init_where_admin_conf_exists_fails_preflight(cluster: Cluster, cp1: Node):
    before = cluster.read()
    failed(cp1.init(), "error execution phase preflight: [preflight] Some fatal errors occurred:\n"
                       "\t[ERROR FileAvailable--etc-kubernetes-admin.conf]: /etc/kubernetes/admin.conf already exists\n"
                       "[preflight] If you know what you are doing, you can make a check non-fatal with "
                       "`--ignore-preflight-errors=...`")
    assert cluster.read() == before


def test_a_second_init_is_refused_naming_the_first_node(cluster: Cluster, cp1: Node):
    before = cluster.read()
    cp2 = cluster.node("cp2")
    failed(cp2.init(), 'error execution phase preflight: [stand-in] this cluster was already initialised by node "cp1"'
                       ': a second "kubeadm init" would make a second, separate cluster')
    assert cluster.read() == before
    assert not cp2.path("/etc/kubernetes/admin.conf").exists()


def test_two_concurrent_inits_make_one_cluster(cluster: Cluster):
    cluster.inject("slow", "init", "0.3")  # all pass their checks, then race to write the state
    nodes = [cluster.node(f"cp{i}") for i in range(1, 4)]
    results: dict[str, Result] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n.name, n.init())) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [winner] = [name for name, r in results.items() if r.rc == 0]
    assert all(f'already initialised by node "{winner}"' in r.err for name, r in results.items() if name != winner)
    assert (cluster.read()["initialised_by"], list(cluster.read()["nodes"])) == (winner, [winner])


def hold_lock(cluster: Cluster, pid: int, pidns: str) -> Path:
    """Take the cluster's lock (state_dir/lock.d) as the stand-in does, for process `pid` of `pidns`."""
    lock = cluster.state / "lock.d"
    lock.mkdir(parents=True)
    (lock / "holder").write_text(json.dumps({"host": "elsewhere", "pid": pid, "pidns": pidns, "t": time.time(),
                                             "nonce": "0"}))
    return lock


def this_pid_namespace() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip() + ":" + os.readlink("/proc/self/ns/pid")


def waiting(cluster: Cluster, proc: subprocess.Popen, within_s: float = 10) -> None:
    """Wait until `proc` waits for the lock: its own lock directory, made before its first try, exists."""
    deadline = time.monotonic() + within_s
    while not list(cluster.state.glob(f"lock.d.new.{proc.pid}.*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the call never waited for the lock"
        time.sleep(0.01)


@pytest.mark.parametrize("stopped", [False, True], ids=["waits", "signal-waits-too"])
def test_calls_wait_for_the_state_lock(cluster: Cluster, stopped: bool):
    """Even a call told to stop while it waits for the lock writes its start line first."""
    lock = hold_lock(cluster, os.getpid(), this_pid_namespace())
    proc = cluster.node("n1").popen("version", "-o", "short")
    waiting(cluster, proc)
    if stopped:
        proc.send_signal(signal.SIGTERM)  # blocked while it waits: pending until the lock is released
    waiting(cluster, proc)
    assert cluster.calls() == []  # not even its start line while the lock is held
    (lock / "holder").unlink()
    lock.rmdir()
    out, _ = proc.communicate(timeout=10)
    rc = 130 if stopped else 0
    assert (proc.returncode, out) == (rc, "" if stopped else "v1.31.0\n")
    assert [(c["phase"], c.get("rc")) for c in cluster.calls()] == [("start", None), ("end", rc)]


def test_concurrent_calls_from_two_hosts_never_interleave_their_changes(cluster: Cluster, cp1: Node):
    """Two control planes sharing the state directory (as the lab's VMs share it over 9p, where
    flock excludes nothing) create tokens all at once: no read-modify-write of cluster.json is
    lost, and calls.jsonl has every line whole."""
    cp2 = cluster.node("cp2")
    cp2.path("/etc/kubernetes").mkdir(parents=True)
    cp2.path("/etc/kubernetes/admin.conf").write_bytes(cp1.path("/etc/kubernetes/admin.conf").read_bytes())
    procs = [node.popen("token", "create") for _ in range(12) for node in (cp1, cp2)]
    tokens = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert {t.split(".")[0] for t in tokens} <= set(cluster.read()["tokens"])
    assert len(cluster.read()["tokens"]) == 1 + len(procs)  # init's token and every new one
    calls = [c for c in cluster.calls() if c["argv"][1:2] == ["token"]]
    assert sorted(c["phase"] for c in calls) == ["end"] * len(procs) + ["start"] * len(procs)
    assert not (cluster.state / "lock.d").exists()


def test_a_lock_left_by_a_dead_process_is_broken_at_once(cluster: Cluster):
    """A holder killed (SIGKILL) on a machine that shares this PID namespace: its PID is gone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    hold_lock(cluster, dead.pid, this_pid_namespace())
    started = time.monotonic()
    r = ok(cluster.node("n1").kubeadm("version", "-o", "short"))
    assert time.monotonic() - started < 10 and "broke a stale lock" in r.err
    assert r.out == "v1.31.0\n" and list(cluster.state.glob("lock.d*")) == []


def test_a_stale_lock_is_broken_only_by_the_holder_of_the_breaking_guard(cluster: Cluster):
    """Of waiters breaking a stale lock at once, only the one that made lock.d.breaking does;
    a guard left by a breaker that was killed is itself removed after lock_stale_s."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    hold_lock(cluster, dead.pid, this_pid_namespace())
    (cluster.state / "lock.d.breaking").mkdir()
    started = time.monotonic()
    r = ok(cluster.node("n1", lock_stale_s=1).kubeadm("version", "-o", "short"))
    assert time.monotonic() - started >= 1  # not at once, although the holder is dead
    assert "removed a stale" in r.err and "broke a stale lock" in r.err
    assert list(cluster.state.glob("lock.d*")) == []


def test_a_lock_held_too_long_on_another_machine_is_broken(cluster: Cluster):
    """A holder on another machine (a VM powered off while it held the lock) cannot be asked
    whether it lives: a waiter breaks the lock after seeing the same holder for lock_stale_s."""
    hold_lock(cluster, 1, "another-boot:pid:[4026531836]")
    started = time.monotonic()
    r = ok(cluster.node("n1", lock_stale_s=1).kubeadm("version", "-o", "short"))
    assert time.monotonic() - started >= 1 and "broke a stale lock" in r.err
    assert [(c["phase"], c.get("rc")) for c in cluster.calls()] == [("start", None), ("end", 0)]


def test_init_v1beta3_with_a_label_map(cluster: Cluster):
    r = ok(cluster.node("cp1").init(api="kubeadm.k8s.io/v1beta3", labels="a.example/b=c"))
    assert 'API version "kubeadm.k8s.io/v1beta3" is deprecated' in r.err
    assert cluster.read()["nodes"]["cp1"]["labels"]["a.example/b"] == "c"


LABEL_ERR = ("the kubelet would refuse to start: unknown 'kubernetes.io' or 'k8s.io' labels specified with "
             "--node-labels: [node-role.kubernetes.io/worker]\n--node-labels in the 'kubernetes.io' namespace must "
             "begin with an allowed prefix (kubelet.kubernetes.io, node.kubernetes.io) or be in the specifically "
             "allowed set (beta.kubernetes.io/arch, beta.kubernetes.io/instance-type, beta.kubernetes.io/os, "
             "failure-domain.beta.kubernetes.io/region, failure-domain.beta.kubernetes.io/zone, kubernetes.io/arch, "
             "kubernetes.io/hostname, kubernetes.io/os, node.kubernetes.io/instance-type, "
             "topology.kubernetes.io/region, topology.kubernetes.io/zone)")
QNAME_REGEX = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
               "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
               "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
LABEL_VALUE_REGEX = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                     "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                     "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
SUBDOMAIN_REGEX = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                   "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                   "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABELS = "nodeRegistration.kubeletExtraArgs[node-labels]: Invalid value: "
UNMARSHAL = "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "


@pytest.mark.parametrize(("kw", "message"), [
    ({"taints": [{"key": "dedicated", "value": "edge", "effect": "Sometimes"}]},
     'nodeRegistration.taints[0].effect: Unsupported value: "Sometimes": supported values: "NoSchedule", '
     '"PreferNoSchedule", "NoExecute"'),
    ({"taints": [{"key": "dedicated"}]}, "nodeRegistration.taints[0].effect: Required value"),
    ({"taints": [{"key": "bad key!", "effect": "NoSchedule"}]},
     f'nodeRegistration.taints[0].key: Invalid value: "bad key!": name part {QNAME_REGEX}'),
    ({"labels": "node-role.kubernetes.io/worker="}, f'{LABELS}"node-role.kubernetes.io/worker=": {LABEL_ERR}'),
    ({"labels": "x.k8s.io/y=z"},
     f'{LABELS}"x.k8s.io/y=z": {LABEL_ERR.replace("node-role.kubernetes.io/worker", "x.k8s.io/y")}'),
    ({"labels": "tempered.io/bad_key_=x"},
     f'{LABELS}"tempered.io/bad_key_=x": the kubelet would refuse to start: invalid node labels: '
     f"'tempered.io/bad_key_' - name part {QNAME_REGEX}"),
    ({"labels": "tempered.io/role"}, f'{LABELS}"tempered.io/role": malformed pair, expect string=string'),
    ({"labels": "Tempered_IO/role=x"},
     f'{LABELS}"Tempered_IO/role=x": the kubelet would refuse to start: invalid node labels: \'Tempered_IO/role\' - '
     f"prefix part {SUBDOMAIN_REGEX}"),
    ({"labels": "tempered.io/x=" + "v" * 64},
     f'{LABELS}"tempered.io/x={"v" * 64}": the kubelet would refuse to start: invalid node labels: \'tempered.io/x\' - '
     "must be no more than 63 characters"),
    ({"labels": "tempered.io/x=-bad-"},
     f'{LABELS}"tempered.io/x=-bad-": the kubelet would refuse to start: invalid node labels: \'tempered.io/x\' - '
     f"{LABEL_VALUE_REGEX}"),
    ({"taints": [{"key": "k", "value": "bad value", "effect": "NoSchedule"}]},
     f'nodeRegistration.taints[0].value: Invalid value: "bad value": {LABEL_VALUE_REGEX}'),
    ({"pod": "10.96.0.0/16"},
     'networking.podSubnet: Invalid value: "10.96.0.0/16": podSubnet overlaps with serviceSubnet "10.96.0.0/12"'),
    ({"pod": "10.244.0.0/16,fd00::/48,10.1.0.0/16"},
     'networking.podSubnet: Invalid value: "10.244.0.0/16,fd00::/48,10.1.0.0/16": expected one (IPv4 or IPv6) CIDR '
     "or two CIDRs from each family for dual-stack networking"),
    ({"svc": "10.96.0.0/33"}, 'networking.serviceSubnet: Invalid value: "10.96.0.0/33": couldn\'t parse subnet'),
    ({"version": None},
     'kubernetesVersion: Required value: kubeadm would look up "stable-1" on the internet; the stand-in needs an '
     "exact version such as v1.31.0"),
    ({"version": "stable"},
     'kubernetesVersion: Invalid value: "stable": not an exact Kubernetes version such as v1.31.0'),
    ({"version": "v1.29.4"},
     'kubernetesVersion: Invalid value: "v1.29.4": this version of kubeadm only supports deploying clusters with the '
     "control plane version >= 1.30.0. Current version: v1.29.4"),
    ({"version": "v1.32.0"},
     'kubernetesVersion: Invalid value: "v1.32.0": Kubernetes version is greater than kubeadm version. Please '
     "consider to upgrade kubeadm. Kubeadm version: 1.31.x"),
    ({"endpoint": None},
     "controlPlaneEndpoint: Required value: the stand-in needs a stable address, as kubeadm join --control-plane "
     "does"),
    ({"endpoint": "api.example:99999"},
     'controlPlaneEndpoint: Invalid value: "api.example:99999": port must be a valid number between 1 and 65535, '
     "inclusive"),
    ({"endpoint": "api_server:6443"},
     'controlPlaneEndpoint: Invalid value: "api_server:6443": host must be a valid IP address or a valid RFC-1123 '
     "DNS subdomain"),
    ({"token": "ABCDEF.0123456789abcdef"},
     f'bootstrapTokens[0].token: Invalid value: "ABCDEF.0123456789abcdef": the bootstrap token '
     f'"ABCDEF.0123456789abcdef" {TOKEN_FORM}'),
    ({"ttl": "1day"}, 'bootstrapTokens[0].ttl: Invalid value: "1day": time: invalid duration "1day"'),
    ({"init_extra": {"certificateKey": "xyz"}},
     'certificateKey: Invalid value: "xyz": the certificate key must be a hex encoded string of 32 bytes '
     "(64 characters)"),
    ({"init_extra": {"localAPIEndpoint": {"advertiseAddress": "cp1.example"}}},
     'localAPIEndpoint.advertiseAddress: Invalid value: "cp1.example": cannot parse IP address'),
    ({"init_extra": {"nodeRegistration": {"name": "CP_1"}}},
     f'nodeRegistration.name: Invalid value: "CP_1": {SUBDOMAIN_REGEX}'),
    ({"init_extra": {"nodeRegistration": {"kubeletExtraArgs": {"node-labels": "a=b"}}}},
     f"{UNMARSHAL}object into Go struct field InitConfiguration.nodeRegistration.kubeletExtraArgs of type "
     "[]v1beta4.Arg"),
    ({"cluster_extra": {"kubernetesVersion": 1.31}},
     f"{UNMARSHAL}number into Go struct field ClusterConfiguration.kubernetesVersion of type string"),
], ids=["taint-effect", "taint-no-effect", "taint-key", "node-role-label", "k8s-io-label", "label-key", "label-pair",
        "label-prefix", "label-too-long", "label-value", "taint-value", "cidr-overlap", "three-cidrs", "bad-cidr",
        "no-version", "version-label", "old-version", "new-version", "no-endpoint", "endpoint-port", "endpoint-host",
        "token-format", "ttl", "certificate-key", "advertise-address", "node-name", "v1beta4-arg-map",
        "version-number"])
def test_init_refuses_a_bad_config(cluster: Cluster, kw: dict, message: str):
    node = cluster.node("cp1")
    failed(node.init(**kw), message)
    assert cluster.read() == {}
    assert not node.path("/etc/kubernetes/admin.conf").exists()


def test_init_reports_all_field_errors_at_once(cluster: Cluster):
    r = cluster.node("cp1").init(version=None, pod="10.96.0.0/16", endpoint=None)
    assert r.rc == 1 and r.err.startswith("[kubernetesVersion: Required value")
    assert "controlPlaneEndpoint: Required value" in r.err and "podSubnet overlaps" in r.err


INIT = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "InitConfiguration"}
CLUSTER = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration"}
JOIN = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration"}


@pytest.mark.parametrize(("command", "docs", "message"), [
    ("init", [{**INIT, "kind": "Foo"}], 'no kind "Foo" is registered for version "kubeadm.k8s.io/v1beta4" in scheme '
                                        '"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31"'),
    ("init", [{"apiVersion": "kubeadm.k8s.io/v1beta4"}],
     "invalid configuration for GroupVersionKind kubeadm.k8s.io/v1beta4, Kind=: kind and apiVersion is mandatory "
     "information that must be specified"),
    ("init", [{**INIT, "apiVersion": "kubeadm.k8s.io/v1beta2"}],
     'your configuration file uses an old API spec: "kubeadm.k8s.io/v1beta2" (kind: "InitConfiguration"). Please use '
     "kubeadm v1.22 instead and run 'kubeadm config migrate --old-config old.yaml --new-config new.yaml', which will "
     "write the new, similar spec using a newer API version."),
    ("init", [INIT, INIT], "invalid configuration: GroupVersionKind kubeadm.k8s.io/v1beta4, Kind=InitConfiguration is "
                           "specified twice in YAML"),
    ("init", [INIT, JOIN], 'the configuration file "{path}" contains a JoinConfiguration document, which "kubeadm '
                           'init" does not accept: it takes only InitConfiguration and ClusterConfiguration documents'),
    ("join", [JOIN, CLUSTER], 'the configuration file "{path}" contains a ClusterConfiguration document, which '
                              '"kubeadm join" does not accept: it takes only JoinConfiguration documents'),
    ("join", [], "no JoinConfiguration found in the supplied config"),
], ids=["unknown-kind", "no-kind", "old-api", "twice", "init-takes-no-join", "join-takes-no-cluster", "no-join"])
def test_bad_documents(cluster: Cluster, command: str, docs: list, message: str):
    node = cluster.node("n1")
    path = node.config(*docs)
    failed(node.kubeadm(command, "--config", path), message.replace("{path}", path))


def test_a_config_that_is_not_yaml(cluster: Cluster):
    node = cluster.node("n1")
    (cluster.tmp / "bad.yaml").write_text("kind: [InitConfiguration\n")
    r = node.kubeadm("init", "--config", str(cluster.tmp / "bad.yaml"))
    assert r.rc == 1 and r.err.startswith("error converting YAML to JSON: yaml: ") and r.err.endswith(TRAILER)


@pytest.mark.parametrize(("args", "message"), [
    (["frobnicate"], 'unknown command "frobnicate" for "kubeadm"'),
    (["init", "--frobnicate"], "unknown flag: --frobnicate"),
    (["init", "--config"], "flag needs an argument: --config"),
    (["join"], 'the kubeadm stand-in needs "kubeadm join --config FILE"'),
    (["init", "--config", "/nonexistent.yaml"],
     'unable to read config from "/nonexistent.yaml" : open /nonexistent.yaml: no such file or directory'),
    (["reset"], "reset requires confirmation: run with --force"),
    (["reset", "--force=false"], "reset requires confirmation: run with --force"),
    (["reset", "-x"], "unknown shorthand flag: 'x' in -x"),
    (["token", "list"], 'the kubeadm stand-in knows only "kubeadm token create [TOKEN]"'),
    (["token", "create", "--ttl", "forever"], 'invalid argument "forever" for "--ttl" flag: time: invalid duration '
                                              '"forever"'),
    (["token", "create", "abc.def"], f'the bootstrap token "abc.def" {TOKEN_FORM}'),
    (["init", "phase", "upload-certs", "--upload-certs", "--certificate-key", "12ab"],
     'certificateKey: Invalid value: "12ab": the certificate key must be a hex encoded string of 32 bytes '
     "(64 characters)"),
], ids=["unknown-command", "unknown-flag", "flag-without-value", "no-config", "missing-config", "reset-without-force",
        "reset-force-false", "unknown-shorthand", "token-list", "ttl", "token", "certificate-key"])
def test_bad_command_lines(cluster: Cluster, args: list[str], message: str):
    failed(cluster.node("n1").kubeadm(*args), message)


# --- join ------------------------------------------------------------------------------------


def test_worker_join_registers_labels_and_taints(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    taint = {"key": "tempered.io/edge", "value": "true", "effect": "NoExecute"}
    ok(w.join(labels="tempered.io/role=worker,tempered.io/rack=r1,topology.kubernetes.io/zone=z1,"
                     "node.kubernetes.io/pool=p1", taints=[taint]))  # kubernetes.io labels the kubelet allows
    node = cluster.read()["nodes"]["w1"]
    assert (node["control_plane"], node["taints"]) == (False, [taint])
    assert node["labels"].items() >= {"tempered.io/role": "worker", "tempered.io/rack": "r1",
                                      "topology.kubernetes.io/zone": "z1", "node.kubernetes.io/pool": "p1"}.items()
    assert "node-role.kubernetes.io/control-plane" not in node["labels"]
    assert yaml.safe_load(w.path("/etc/kubernetes/kubelet.conf").read_text())["users"][0]["name"] == "system:node:w1"
    assert w.path("/etc/kubernetes/pki/ca.crt").read_text() == cp1.path("/etc/kubernetes/pki/ca.crt").read_text()
    assert not w.path("/etc/kubernetes/admin.conf").exists() and not w.path("/etc/kubernetes/pki/ca.key").exists()
    assert "--node-labels=tempered.io/role=worker,tempered.io/rack=r1," in w.path(
        "/var/lib/kubelet/kubeadm-flags.env").read_text()

    by_name = listed(cp1)
    assert sorted(by_name) == ["cp1", "w1"]
    assert by_name["w1"]["spec"] == {"taints": [taint]}
    assert by_name["w1"]["metadata"]["labels"]["tempered.io/rack"] == "r1"
    assert by_name["cp1"]["spec"] == {"taints": [CP_TAINT]}


def test_worker_join_has_no_taints_by_default(cluster: Cluster, cp1: Node):
    ok(cluster.node("w1").join())
    assert cluster.read()["nodes"]["w1"]["taints"] == []


@pytest.mark.parametrize(("kw", "message"), [
    ({"token": TOKEN2}, IDENTITY + 'token id "zyxwvu" is invalid for this cluster or it has expired. Use "kubeadm '
                                   'token create" on the control-plane node to create a new valid token'),
    ({"token": "abcdef.0000000000000000"},
     IDENTITY + "failed to verify JWS signature of received cluster info object, can't trust this API Server"),
    ({"ca_hash": "sha256:" + "0" * 64},
     IDENTITY + 'cluster CA found in cluster-info ConfigMap is invalid: none of the public keys "{pin}" are pinned'),
    ({"endpoint": "10.0.0.99:6443"},
     IDENTITY + 'Get "https://10.0.0.99:6443/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s": '
                "dial tcp 10.0.0.99:6443: connect: connection refused ([stand-in] the cluster's endpoint is "
                '"10.0.0.10:6443")'),
], ids=["unknown-token", "wrong-secret", "wrong-pin", "wrong-endpoint"])
def test_join_refused_by_the_cluster(cluster: Cluster, cp1: Node, kw: dict, message: str):
    w = cluster.node("w1")
    failed(w.join(**kw), message.replace("{pin}", cluster.read()["ca_cert_hash"]))
    assert "w1" not in cluster.read()["nodes"]
    assert not w.path("/etc/kubernetes/kubelet.conf").exists()


def test_join_with_an_expired_token(cluster: Cluster, cp1: Node):
    ok(cp1.kubeadm("token", "create", TOKEN2, "--ttl", "300ms"))
    ok(cluster.node("w0").join(token=TOKEN2))
    time.sleep(0.35)
    r = cluster.node("w1").join(token=TOKEN2)
    assert r.rc == 1 and 'token id "zyxwvu" is invalid for this cluster or it has expired' in r.err


def test_join_before_init(cluster: Cluster):
    failed(cluster.node("w1").join(ca_hash=None),
           IDENTITY + 'Get "https://10.0.0.10:6443/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s":'
                      " dial tcp 10.0.0.10:6443: connect: connection refused ([stand-in] no cluster has been "
                      f"initialised in {cluster.state})")


@pytest.mark.parametrize(("kw", "message"), [
    ({"token": "abcdef0123456789abcdef"}, 'discovery.bootstrapToken.token: Invalid value: "abcdef0123456789abcdef": '
                                          f'the bootstrap token "abcdef0123456789abcdef" {TOKEN_FORM}'),
    ({"endpoint": "10.0.0.10"},
     'discovery.bootstrapToken.apiServerEndpoint: Invalid value: "10.0.0.10": address 10.0.0.10: missing port in '
     "address"),
    ({"control_plane": True, "cert_key": "xyz"},
     'controlPlane.certificateKey: Invalid value: "xyz": the certificate key must be a hex encoded string of 32 '
     "bytes (64 characters)"),
    ({"extra": {"discovery": {"bootstrapToken": {"token": TOKEN, "apiServerEndpoint": ENDPOINT}}}},
     "discovery.bootstrapToken.caCertHashes: Invalid value: []: using token-based discovery without caCertHashes can "
     "be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass "
     "--discovery-token-unsafe-skip-ca-verification flag to continue"),
    ({"token": ""}, "discovery.bootstrapToken.token: Required value"),
    ({"endpoint": ""}, "discovery.bootstrapToken.apiServerEndpoint: Required value"),
    ({"extra": {"controlPlane": {"localAPIEndpoint": {"advertiseAddress": "cp2.example"}}}},
     'controlPlane.localAPIEndpoint.advertiseAddress: Invalid value: "cp2.example": cannot parse IP address'),
], ids=["token-format", "endpoint-without-port", "certificate-key", "no-pin", "no-token", "no-endpoint",
        "advertise-address"])
def test_join_refuses_a_bad_config(cluster: Cluster, cp1: Node, kw: dict, message: str):
    failed(cluster.node("w1").join(**kw), message)


def test_join_without_a_pin_when_told_to_skip_ca_verification(cluster: Cluster, cp1: Node):
    ok(cluster.node("w1").join(ca_hash=None))
    assert "w1" in cluster.read()["nodes"]


@pytest.mark.parametrize("left_over", ["/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.crt"])
def test_join_where_a_file_is_left_over_fails_preflight(cluster: Cluster, cp1: Node, left_over: str):
    w = cluster.node("w1")
    w.path(left_over).parent.mkdir(parents=True)
    w.path(left_over).write_text("left over\n")
    check = "FileAvailable-" + left_over.replace("/", "-")
    failed(w.join(), "error execution phase preflight: [preflight] Some fatal errors occurred:\n"
                     f"\t[ERROR {check}]: {left_over} already exists\n[preflight] If you know what you are doing, "
                     "you can make a check non-fatal with `--ignore-preflight-errors=...`")
    assert "w1" not in cluster.read()["nodes"]


# --- control-plane join -----------------------------------------------------------------------


def test_control_plane_join(cluster: Cluster, cp1: Node):
    cp2 = cluster.node("cp2")
    r = ok(cp2.join(control_plane=True, cert_key=cluster.read()["certificate_key"]["key"],
                    labels="tempered.io/role=cp"))
    assert "a new control plane instance was created" in r.out
    node = cluster.read()["nodes"]["cp2"]
    assert node["control_plane"] is True and node["taints"] == [CP_TAINT]
    assert node["labels"]["node-role.kubernetes.io/control-plane"] == "" and node["labels"]["tempered.io/role"] == "cp"
    for f in ("/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.key"):
        assert cp2.path(f).exists(), f
    assert cp2.path("/etc/kubernetes/pki/ca.crt").read_text() == cp1.path("/etc/kubernetes/pki/ca.crt").read_text()


def test_control_plane_join_without_a_certificate_key(cluster: Cluster, cp1: Node):
    r = cluster.node("cp2").join(control_plane=True)
    assert r.rc == 1 and r.err.startswith("error execution phase preflight: \nOne or more conditions for hosting a "
                                          "new control plane instance is not satisfied.\n")
    assert "cp2" not in cluster.read()["nodes"]


def test_control_plane_join_with_a_wrong_certificate_key(cluster: Cluster, cp1: Node):
    failed(cluster.node("cp2").join(control_plane=True, cert_key=OTHER_KEY),
           DOWNLOAD + "error decoding secret data with provided key: cipher: message authentication failed")


NOT_UPLOADED = (DOWNLOAD + 'error downloading the secret: Secret "kubeadm-certs" was not found in the "kube-system" '
                "Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs "
                "--upload-certs` on a control plane to generate a new one")


def test_control_plane_join_when_no_certificates_were_uploaded(cluster: Cluster):
    cp1 = cluster.node("cp1")
    ok(cp1.init())
    failed(cluster.node("cp2").join(control_plane=True, cert_key=CERT_KEY), NOT_UPLOADED)
    r = ok(cp1.kubeadm("init", "phase", "upload-certs", "--upload-certs", "--certificate-key", CERT_KEY))
    assert r.out.endswith(f"[upload-certs] Using certificate key:\n{CERT_KEY}\n")
    ok(cluster.node("cp3").join(control_plane=True, cert_key=CERT_KEY))


def test_control_plane_join_with_an_expired_certificate_key(cluster: Cluster, cp1: Node):
    state = cluster.read()
    state["certificate_key"]["expires"] = time.time() - 1
    (cluster.state / "cluster.json").write_text(json.dumps(state))
    failed(cluster.node("cp2").join(control_plane=True, cert_key=state["certificate_key"]["key"]), NOT_UPLOADED)


def test_a_new_upload_replaces_the_previous_certificate_key(cluster: Cluster, cp1: Node):
    old = cluster.read()["certificate_key"]["key"]
    skipped = ok(cp1.kubeadm("init", "phase", "upload-certs")).out  # without --upload-certs
    assert skipped == "[upload-certs] Skipping phase. Please see --upload-certs\n"
    assert cluster.read()["certificate_key"]["key"] == old
    new = ok(cp1.kubeadm("init", "phase", "upload-certs", "--upload-certs")).out.strip().splitlines()[-1]
    assert len(new) == 64 and new != old
    failed(cluster.node("cp2").join(control_plane=True, cert_key=old),
           DOWNLOAD + "error decoding secret data with provided key: cipher: message authentication failed")
    ok(cluster.node("cp3").join(control_plane=True, cert_key=new))


@pytest.mark.parametrize("args", [["token", "create"], ["init", "phase", "upload-certs", "--upload-certs"]],
                         ids=["token", "upload-certs"])
def test_credentials_need_admin_conf(cluster: Cluster, cp1: Node, args: list[str]):
    before = cluster.read()
    failed(cluster.node("w1").kubeadm(*args),
           "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory")
    assert cluster.read() == before


@pytest.mark.parametrize("args", [
    ["kubeadm", "token", "create"],
    ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "get", "nodes", "-o", "json"],
], ids=["kubeadm", "kubectl"])
def test_credentials_need_a_live_cluster(cluster: Cluster, args: list[str]):
    node = cluster.node("n1")
    node.path("/etc/kubernetes").mkdir(parents=True)
    node.path("/etc/kubernetes/admin.conf").write_text("left over\n")
    r = node.run(*args)
    assert (r.rc, r.err.splitlines()[0]) == (1, "The connection to the server was refused ([stand-in] no cluster has "
                                                "been initialised)")
    assert cluster.read() == {}


def test_token_create_stores_the_token(cluster: Cluster, cp1: Node):
    r = ok(cp1.kubeadm("token", "create", TOKEN2, "--ttl", "90m", "--description", "for w1"))
    assert r.out == TOKEN2 + "\n"
    token = cluster.read()["tokens"]["zyxwvu"]
    assert (token["secret"], token["description"]) == ("9876543210zyxwvu", "for w1")
    assert 90 * 60 - 60 < token["expires"] - time.time() <= 90 * 60
    generated = ok(cp1.kubeadm("token", "create", "--ttl", "0")).out.strip()
    assert cluster.read()["tokens"][generated.split(".")[0]]["expires"] is None
    ok(cluster.node("w1").join(token=generated))


# --- reset and kubectl ------------------------------------------------------------------------


def test_reset_deletes_the_nodes_files_and_keeps_its_node_object(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    ok(w.join())
    before = cluster.read()
    failed(w.kubeadm("reset"), "reset requires confirmation: run with --force")
    assert w.path("/etc/kubernetes/kubelet.conf").exists()
    ok(w.kubeadm("reset", "--force"))
    ok(cp1.kubeadm("reset", "-f"))
    for node in (w, cp1):
        for f in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/kubeadm-flags.env"):
            assert not node.path(f).exists(), f
    assert not cp1.path("/etc/kubernetes/admin.conf").exists() and not cp1.path("/etc/kubernetes/pki").exists()
    assert cluster.read() == before
    ok(w.join())  # its files are gone, so it may join again


def test_drain_and_delete_a_node(cluster: Cluster, cp1: Node):
    ok(cluster.node("w1").join())
    r = cp1.kubectl("drain", "w1")
    assert r.rc == 1 and r.err.startswith('error: unable to drain node "w1" due to error: cannot delete '
                                          "DaemonSet-managed Pods (use --ignore-daemonsets to ignore): "
                                          "kube-system/kube-proxy-")
    assert cluster.read()["nodes"]["w1"]["unschedulable"] is True  # kubectl cordons first
    r = ok(cp1.kubectl("drain", "w1", "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=300s"))
    assert r.out == "node/w1 already cordoned\nnode/w1 drained\n"
    assert listed(cp1)["w1"]["spec"] == {
        "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}], "unschedulable": True}
    assert ok(cp1.kubectl("delete", "node", "w1", "--ignore-not-found")).out == 'node "w1" deleted\n'
    assert "w1" not in cluster.read()["nodes"]


@pytest.mark.parametrize(("args", "rc"), [
    (["drain", "ghost", "--ignore-daemonsets"], 1), (["delete", "node", "ghost"], 1),
    (["delete", "node", "ghost", "--ignore-not-found"], 0)], ids=["drain", "delete", "delete-ignore-not-found"])
def test_drain_and_delete_an_unknown_node(cluster: Cluster, cp1: Node, args: list[str], rc: int):
    r = cp1.kubectl(*args)
    assert (r.rc, r.out, r.err) == (rc, "", 'Error from server (NotFound): nodes "ghost" not found\n' if rc else "")


def test_kubectl_needs_an_existing_kubeconfig(cluster: Cluster, cp1: Node):
    r = cluster.node("w1").kubectl("delete", "node", "cp1")
    assert (r.rc, r.err) == (1, "error: stat /etc/kubernetes/admin.conf: no such file or directory\n")
    assert "cp1" in cluster.read()["nodes"]


@pytest.mark.parametrize(("args", "message"), [
    (["exec", "pod"], 'error: unknown command "exec" for "kubectl"'),
    (["get", "pods", "-o", "json"], 'error: the kubectl stand-in knows only "get nodes [NAME] -o json" and "get '
                                     'configmap kubeadm-config -n kube-system -o json"'),
    (["drain", "cp1", "w1"], "error: USAGE: drain NODE [flags]"),
    (["delete", "pod", "x"], 'error: the kubectl stand-in deletes only nodes: "delete node NAME..."'),
    (["drain", "cp1", "--frobnicate"], "unknown flag: --frobnicate"),
], ids=["unknown-command", "get-pods", "drain-two", "delete-pod", "unknown-flag"])
def test_kubectl_bad_command_lines(cluster: Cluster, cp1: Node, args: list[str], message: str):
    before = cluster.read()
    r = cp1.kubectl(*args)
    assert (r.rc, r.out, r.err) == (1, "", message + "\n")
    assert cluster.read() == before


# --- configuration, call records and fault injection ------------------------------------------


def test_configuration_next_to_the_script(tmp_path: Path):
    """standin.json next to argv[0] (not the resolved script); a relative state_dir is taken from there."""
    image, real = tmp_path / "image", tmp_path / "real"
    image.mkdir()
    real.mkdir()
    (real / "kubeadm").write_bytes((STANDIN / "kubeadm").read_bytes())
    (real / "kubeadm").chmod(0o755)
    (image / "kubeadm").symlink_to(real / "kubeadm")
    (image / "kubectl").symlink_to("kubeadm")
    (image / "standin.json").write_text(json.dumps({"state_dir": "state", "root": str(tmp_path / "root")}))
    env = {k: v for k, v in os.environ.items() if k != "KUBEADM_STANDIN_CONFIG"}
    for prog in ("kubeadm", "kubectl"):  # kubectl has no `version`: it says so, and records the call
        r = subprocess.run([str(image / prog), "version", "-o", "short"], env=env, capture_output=True, text=True)
        assert r.returncode == (0 if prog == "kubeadm" else 1)
    calls = [json.loads(line) for line in (image / "state" / "calls.jsonl").read_text().splitlines()]
    assert [(c["argv"], c["phase"], c.get("rc")) for c in calls] == [
        (["kubeadm", "version", "-o", "short"], "start", None), (["kubeadm", "version", "-o", "short"], "end", 0),
        (["kubectl", "version", "-o", "short"], "start", None), (["kubectl", "version", "-o", "short"], "end", 1)]
    (image / "standin.json").unlink()
    r = subprocess.run([str(image / "kubeadm"), "version"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith(f"kubeadm stand-in: no configuration with a state_dir ({image}")


def test_calls_are_recorded_with_secrets_masked(cluster: Cluster, cp1: Node):
    key = cluster.read()["certificate_key"]["key"]
    ok(cluster.node("cp2").join(control_plane=True, cert_key=key, labels="tempered.io/role=cp"))
    ok(cp1.kubeadm("token", "create", TOKEN2, "--ttl", "1h"))
    ok(cp1.kubeadm("init", "phase", "upload-certs", "--upload-certs", "--certificate-key", CERT_KEY))
    ok(cp1.kubeadm("init", "phase", "upload-certs", "--upload-certs", "--certificate-key=" + OTHER_KEY))
    text = (cluster.state / "calls.jsonl").read_text()
    for secret in (TOKEN, TOKEN2, "0123456789abcdef", "9876543210zyxwvu", key, CERT_KEY, OTHER_KEY):
        assert secret not in text
    calls = cluster.calls()
    assert [(c["argv"][1], c["phase"]) for c in calls] == [
        (sub, phase) for sub in ("init", "join", "token", "init", "init") for phase in ("start", "end")]
    assert all(c["host"] == HOST and c["pid"] > 0 for c in calls)
    assert [c["rc"] for c in calls[1::2]] == [0] * 5 and all(c["error"] is None for c in calls[1::2])
    assert calls[5]["argv"] == ["kubeadm", "token", "create", "***", "--ttl", "1h"]
    assert calls[7]["argv"][-2:] == ["--certificate-key", "***"]
    assert calls[9]["argv"][-1] == "--certificate-key=***"
    assert calls[1]["config"][0]["bootstrapTokens"] == [{"token": "***", "ttl": "24h0m0s"}]
    join = calls[3]["config"][0]
    assert join["discovery"]["bootstrapToken"]["token"] == "***" and join["controlPlane"]["certificateKey"] == "***"
    assert join["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-labels", "value": "tempered.io/role=cp"}]
    assert "config" not in calls[5]


def test_failed_calls_record_the_masked_error(cluster: Cluster, cp1: Node):
    r = cluster.node("w1").join(token="ABCDEF.0123456789abcdef")
    assert r.rc == 1 and "ABCDEF.0123456789abcdef" in r.err
    end = cluster.calls()[-1]
    assert (end["phase"], end["rc"]) == ("end", 1)
    assert end["error"] == (f'discovery.bootstrapToken.token: Invalid value: "***": the bootstrap token "***" '
                            f"{TOKEN_FORM}")


def test_injected_failure(cluster: Cluster, cp1: Node):
    path = cluster.inject("fail", "join", "boom: the network ate the packet\n")
    w = cluster.node("w1")
    failed(w.join(), "boom: the network ate the packet")
    assert path.exists() and "w1" not in cluster.read()["nodes"]
    assert (cluster.calls()[-1]["rc"], cluster.calls()[-1]["error"]) == (1, "boom: the network ate the packet")
    path.unlink()
    ok(w.join())


@pytest.mark.parametrize(("sub", "args"), [
    ("upload-certs", ["kubeadm", "init", "phase", "upload-certs", "--upload-certs"]),
    ("token", ["kubeadm", "token", "create"]), ("reset", ["kubeadm", "reset", "-f"]),
    ("drain", ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "drain", "cp1", "--ignore-daemonsets"]),
    ("delete", ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "delete", "node", "cp1"]),
])
def test_injected_failure_changes_nothing(cluster: Cluster, cp1: Node, sub: str, args: list[str]):
    cluster.inject("fail", sub, "no")
    before = cluster.read()
    r = cp1.run(*args)
    assert (r.rc, r.err) == (1, "no\n" + ("" if args[0] == "kubectl" else TRAILER))
    assert cluster.read() == before and cp1.path("/etc/kubernetes/admin.conf").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_slow_call_killed_midway_writes_no_results(cluster: Cluster, sig: signal.Signals):
    cluster.inject("slow", "init", "30")
    node = cluster.node("cp1")
    proc = node.popen("init", "--config", node.config(*init_docs("cp1")))
    deadline = time.monotonic() + 10
    while not any(c["phase"] == "start" for c in cluster.calls()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.4)  # past the checks, into the sleep
    assert proc.poll() is None
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert err.endswith(f"kubeadm stand-in: interrupted by {sig.name}\n")
    assert "[init] Using Kubernetes version: v1.31.0" in out  # it got past the checks
    assert cluster.read() == {} and not node.path("/etc/kubernetes/admin.conf").exists()
    assert [(c["phase"], c.get("rc"), c.get("error")) for c in cluster.calls()] == [
        ("start", None, None), ("end", 130, f"interrupted by {sig.name}")]


def test_a_slow_call_finishes(cluster: Cluster):
    cluster.inject("slow", "init", "0.3")
    started = time.monotonic()
    ok(cluster.node("cp1").init())
    assert time.monotonic() - started >= 0.3
    assert cluster.read()["initialised_by"] == "cp1"


# --- the fragment that installs the stand-in in the lab's runtime OS ----------------------------


def test_a_skeleton_without_each_placeholder_exactly_once_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from api.lab import standin

    text = standin.SKELETON.read_text()
    skeleton = tmp_path / "kubeadm-standin.yaml"
    monkeypatch.setattr(standin, "SKELETON", skeleton)
    for broken, named in ((text.replace("content: STANDIN_CONFIG\n", ""), "content: STANDIN_CONFIG"),
                          (text + "  - STANDIN_STATE_DIR\n", "- STANDIN_STATE_DIR")):
        skeleton.write_text(broken)
        with pytest.raises(ValueError, match=f"expected '{named}' once"):
            standin.fragment()


def test_the_lab_fragment_installs_this_script_and_is_a_valid_fragment(tmp_path: Path):
    """What the lab's rules include: the shipped script byte for byte, its configuration in /etc,
    and a kubectl link; it passes the control plane's fragment checks and says it is a stand-in."""
    import base64
    import gzip

    from activities import cloudconfig
    from api.lab import standin

    text = standin.fragment(state_dir="/srv/cluster")
    assert "NOT kubeadm" in text.splitlines()[0] + text.splitlines()[1]
    files = {f["path"]: f for f in cloudconfig.check_fragment(standin.FRAGMENT_NAME, text)["write_files"]}
    script = files["/usr/local/bin/kubeadm"]
    assert gzip.decompress(base64.b64decode(script["content"])) == (STANDIN / "kubeadm").read_bytes()
    assert (script["encoding"], script["permissions"]) == ("gz+b64", "0755")
    config = json.loads(files["/etc/kubeadm-standin/standin.json"]["content"])
    assert config == {"state_dir": "/srv/cluster", "root": ""}
    runcmd = yaml.safe_load(text)["runcmd"]
    assert ["ln", "-sf", "kubeadm", "/usr/local/bin/kubectl"] in runcmd
    [share] = [cmd for cmd in runcmd if cmd[:2] == ["sh", "-c"]]
    assert share[3:] == ["kubeadm-standin-share", "/srv/cluster", "/sys/bus/virtio/devices"]  # $0, $1: the state dir, $2: where 9p tags show
    assert f"mount -t 9p -o trans=virtio,version=9p2000.L {standin.SHARE_TAG} \"$d\"" in share[2]


@pytest.mark.parametrize("shared", [True, False], ids=["share", "no-share"])
def test_the_lab_fragment_mounts_the_share_on_the_state_dir_or_says_it_keeps_it_local(tmp_path: Path, shared: bool):
    """The fragment's mount command, run with stand-ins for mountpoint and mount on PATH: with
    the share it mounts it on the state directory, without it (a real machine) it says so and
    succeeds, and run again (the next boot's runcmd) on a mounted directory it does nothing."""
    from api.lab import standin

    state = tmp_path / "var" / "lib" / "tempered" / "kubeadm-standin"
    [share] = [cmd for cmd in yaml.safe_load(standin.fragment(str(state)))["runcmd"] if cmd[:2] == ["sh", "-c"]]
    bin = tmp_path / "bin"
    bin.mkdir()
    (bin / "mountpoint").write_text(f'#!/bin/sh\ntest -e "{tmp_path}/mounted"\n')
    (bin / "mount").write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/mounted"\nexit {0 if shared else 32}\n')
    for tool in ("mountpoint", "mount"):
        (bin / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin}:{os.environ['PATH']}"}
    share[-1] = str(tmp_path / "sys")  # the virtio devices: none with a 9p tag here
    first = subprocess.run(share, env=env, capture_output=True, text=True, check=True)
    assert state.is_dir()
    if not shared:
        assert "no kubeadm-standin share, the cluster state stays on this node" in first.stdout
        return
    assert "shared with the lab host" in first.stdout
    mounted = f"-t 9p -o trans=virtio,version=9p2000.L {standin.SHARE_TAG} {state}\n"
    assert (tmp_path / "mounted").read_text() == mounted
    again = subprocess.run(share, env=env, capture_output=True, text=True, check=True)
    assert "already shared" in again.stdout


def test_a_lab_share_that_does_not_mount_fails_the_fragment_loudly(tmp_path: Path):
    """The VM has the lab's 9p device but the mount fails: the runcmd says so and fails, rather
    than leave the state on the node, where a worker's join would only say "no cluster"."""
    from api.lab import standin

    state = tmp_path / "state"
    [share] = [cmd for cmd in yaml.safe_load(standin.fragment(str(state)))["runcmd"] if cmd[:2] == ["sh", "-c"]]
    device = tmp_path / "sys" / "virtio3"
    device.mkdir(parents=True)
    (device / "mount_tag").write_bytes(standin.SHARE_TAG.encode() + b"\0")  # as sysfs shows it
    bin = tmp_path / "bin"
    bin.mkdir()
    for tool in ("mountpoint", "mount"):
        (bin / tool).write_text("#!/bin/sh\nexit 32\n")
        (bin / tool).chmod(0o755)
    share[-1] = str(tmp_path / "sys")
    done = subprocess.run(share, env={**os.environ, "PATH": f"{bin}:{os.environ['PATH']}"}, capture_output=True, text=True)
    assert done.returncode == 1 and "share is there but did not mount" in done.stderr



def test_the_readme_fragment_for_real_sites_passes_the_fragment_checks():
    """The fragment README shows instead (kubeadm from pkgs.k8s.io) is one the API would store."""
    import re

    from activities import cloudconfig

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### In the lab: the kubeadm stand-in"):]
    text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    data = cloudconfig.check_fragment("kubernetes", text)
    assert ["apt-mark", "hold", "kubelet", "kubeadm", "kubectl"] in data["runcmd"]
    assert any("pkgs.k8s.io/core:/stable:/v{{ kubernetes_minor }}/deb/" in f["content"] for f in
               yaml.safe_load(text)["write_files"])
    rendered = cloudconfig.render_template(text, {"kubernetes_version": "1.32.1", "kubernetes_minor": "1.32"}, "it")
    assert "pkgs.k8s.io/core:/stable:/v1.32/deb/" in rendered and "kubelet=1.32.1-*" in rendered
