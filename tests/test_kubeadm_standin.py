"""The kubeadm stand-in (tests/standin/kubeadm) refuses what kubeadm refuses and records what it did.

Each test runs the script as a subprocess on one or more fake nodes: a temp root directory per node
and one state directory shared by the nodes of a cluster, as on the real test nodes.
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

STANDIN = Path(__file__).parent / "standin"
KUBEADM = STANDIN / "kubeadm"
KUBECTL = STANDIN / "kubectl"
HOST = socket.gethostname()
TRAILER = "To see the stack trace of this error execute with --v=5 or higher\n"

TOKEN = "abcdef.0123456789abcdef"
TOKEN2 = "zyxwvu.9876543210zyxwvu"
ENDPOINT = "10.0.0.10:6443"
CERT_KEY = "0f" * 32
OTHER_KEY = "a1" * 32
ABSENT = object()


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Node:
    """One fake machine: its own root, the cluster's shared state directory."""

    def __init__(self, cluster: Cluster, name: str):
        self.cluster = cluster
        self.name = name
        self.root = cluster.tmp / name
        self.root.mkdir()
        self.conf = cluster.tmp / f"{name}.standin.json"
        self.conf.write_text(json.dumps({"state_dir": str(cluster.state), "root": str(self.root)}))
        self.env = {**os.environ, "KUBEADM_STANDIN_CONFIG": str(self.conf)}

    def run(self, exe: Path, *args: str) -> Result:
        proc = subprocess.run([str(exe), *args], env=self.env, capture_output=True, text=True, timeout=60)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def kubeadm(self, *args: str) -> Result:
        return self.run(KUBEADM, *args)

    def kubectl(self, *args: str) -> Result:
        return self.run(KUBECTL, "--kubeconfig", "/etc/kubernetes/admin.conf", *args)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(KUBEADM), *args], env=self.env, stdout=subprocess.PIPE,
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

    def join(self, *flags: str, **kw) -> Result:
        return self.kubeadm("join", "--config", self.config(join_doc(self.name, **kw)), *flags)


class Cluster:
    def __init__(self, tmp: Path, ca: dict[str, bytes]):
        self.tmp = tmp
        self.state = tmp / "cluster-state"
        self.ca = ca

    def node(self, name: str) -> Node:
        return Node(self, name)

    def read(self) -> dict:
        path = self.state / "cluster.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write(self, state: dict) -> None:
        (self.state / "cluster.json").write_text(json.dumps(state))

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


def labels_arg(labels: str | None, version: str) -> dict:
    if labels is None:
        return {}
    if version == "v1beta3":
        return {"kubeletExtraArgs": {"node-labels": labels}}
    return {"kubeletExtraArgs": [{"name": "node-labels", "value": labels}]}


def init_docs(name: str, *, token=TOKEN, labels: str | None = "tempered.io/cluster=c1", taints=ABSENT,
              version="v1.31.0", endpoint=ENDPOINT, pod="10.244.0.0/16", svc="10.96.0.0/12",
              api="kubeadm.k8s.io/v1beta4", ttl="24h0m0s", init_extra=None, cluster_extra=None) -> list[dict]:
    nr = {"name": name, **labels_arg(labels, api.rsplit("/", 1)[1])}
    if taints is not ABSENT:
        nr["taints"] = taints
    init = {"apiVersion": api, "kind": "InitConfiguration", "nodeRegistration": nr,
            "localAPIEndpoint": {"advertiseAddress": "10.0.0.11"}}
    if token is not None:
        init["bootstrapTokens"] = [{"token": token, "ttl": ttl}]
    init.update(init_extra or {})
    cc = {"apiVersion": api, "kind": "ClusterConfiguration", "networking": {"podSubnet": pod, "serviceSubnet": svc}}
    if version is not None:
        cc["kubernetesVersion"] = version
    if endpoint is not None:
        cc["controlPlaneEndpoint"] = endpoint
    cc.update(cluster_extra or {})
    return [init, cc]


def join_doc(name: str, *, ca_hash: str | None, token=TOKEN, endpoint=ENDPOINT, labels: str | None = None,
             taints=ABSENT, control_plane: bool = False, cert_key: str | None = None,
             api="kubeadm.k8s.io/v1beta4") -> dict:
    nr = {"name": name, **labels_arg(labels, api.rsplit("/", 1)[1])}
    if taints is not ABSENT:
        nr["taints"] = taints
    bt = {"token": token, "apiServerEndpoint": endpoint}
    if ca_hash is None:
        bt["unsafeSkipCAVerification"] = True
    else:
        bt["caCertHashes"] = [ca_hash]
    doc = {"apiVersion": api, "kind": "JoinConfiguration", "nodeRegistration": nr, "discovery": {"bootstrapToken": bt}}
    if control_plane:
        doc["controlPlane"] = {"localAPIEndpoint": {"advertiseAddress": "10.0.0.12"}}
        if cert_key is not None:
            doc["controlPlane"]["certificateKey"] = cert_key
    return doc


def ok(r: Result) -> Result:
    assert r.rc == 0, f"rc={r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    return r


def failed(r: Result, message: str) -> None:
    """kubeadm's way to fail: exit 1, the message, then its stack-trace hint."""
    assert (r.rc, r.err) == (1, message + "\n" + TRAILER)


def openssl_hash(ca: Path) -> str:
    """The CA pin exactly as the kubeadm docs compute it."""
    out = subprocess.run(f"openssl x509 -pubkey -noout -in {ca} | openssl pkey -pubin -outform der | sha256sum",
                         shell=True, check=True, capture_output=True, text=True).stdout
    return "sha256:" + out.split()[0]


@pytest.fixture
def cp1(cluster: Cluster) -> Node:
    node = cluster.node("cp1")
    ok(node.init("--upload-certs"))
    return node


def ca_hash_of(cluster: Cluster) -> str:
    return cluster.read()["ca_cert_hash"]


# --- init -------------------------------------------------------------------------------------


def test_version_short(cluster: Cluster):
    r = cluster.node("n").kubeadm("version", "-o", "short")
    assert (r.rc, r.out, r.err) == (0, "v1.31.0\n", "")


def test_init_writes_a_real_ca_kubeconfigs_and_the_cluster_state(cluster: Cluster):
    node = cluster.node("cp1")
    r = ok(node.init("--upload-certs", fresh_ca=True))
    assert '[certs] Generating "ca" certificate and key' in r.out
    ca = node.path("/etc/kubernetes/pki/ca.crt")
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(ca)], capture_output=True,
                             text=True, check=True).stdout
    assert subject.strip() == "subject=CN = kubernetes"
    assert node.path("/etc/kubernetes/pki/ca.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    admin = yaml.safe_load(node.path("/etc/kubernetes/admin.conf").read_text())
    kubelet = yaml.safe_load(node.path("/etc/kubernetes/kubelet.conf").read_text())
    assert admin["clusters"][0]["cluster"]["server"] == "https://10.0.0.10:6443"
    assert kubelet["clusters"][0]["cluster"]["server"] == "https://10.0.0.10:6443"
    assert kubelet["users"][0]["name"] == "system:node:cp1"
    assert node.path("/etc/kubernetes/manifests/kube-apiserver.yaml").exists()
    assert node.path("/etc/kubernetes/pki/ca.crt").read_bytes() != cluster.ca["ca.crt"]

    state = cluster.read()
    pin = openssl_hash(ca)
    key = state["certificate_key"]["key"]
    assert (state["initialised_by"], state["endpoint"], state["kubernetes_version"], state["ca_cert_hash"]) == (
        "cp1", ENDPOINT, "v1.31.0", pin)
    assert state["etcd_members"] == ["cp1"]
    token = state["tokens"]["abcdef"]
    assert token["secret"] == "0123456789abcdef"
    assert 24 * 3600 - 60 < token["expires"] - state["initialised_at"] <= 24 * 3600
    assert 2 * 3600 - 60 < state["certificate_key"]["expires"] - time.time() <= 2 * 3600
    assert f"[upload-certs] Using certificate key:\n{key}\n" in r.out
    assert f"--discovery-token-ca-cert-hash {pin}" in r.out
    node_state = state["nodes"]["cp1"]
    assert node_state["control_plane"] is True and node_state["cordoned"] is False
    assert {k: v for k, v in node_state["labels"].items() if not k.startswith(("kubernetes.io/", "beta."))} == {
        "tempered.io/cluster": "c1", "node-role.kubernetes.io/control-plane": "",
        "node.kubernetes.io/exclude-from-external-load-balancers": ""}
    assert node_state["labels"]["kubernetes.io/hostname"] == "cp1"
    assert node_state["taints"] == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]


def test_init_certificate_key_from_the_config_and_explicit_taints(cluster: Cluster):
    node = cluster.node("cp1")
    r = ok(node.init("--upload-certs", taints=[], init_extra={"certificateKey": CERT_KEY}))
    assert f"[upload-certs] Using certificate key:\n{CERT_KEY}\n" in r.out
    state = cluster.read()
    assert state["certificate_key"]["key"] == CERT_KEY
    assert state["nodes"]["cp1"]["taints"] == []  # an explicit empty list: no default taint


def test_init_without_upload_certs_stores_no_certificate_key(cluster: Cluster):
    ok(cluster.node("cp1").init())
    assert cluster.read()["certificate_key"] is None


def test_second_init_on_the_same_node_fails_preflight(cluster: Cluster, cp1: Node):
    before = cluster.read()
    r = cp1.init()
    assert r.rc == 1
    assert r.err.startswith("error execution phase preflight: [preflight] Some fatal errors occurred:\n"
                            "\t[ERROR FileAvailable--etc-kubernetes-admin.conf]: /etc/kubernetes/admin.conf "
                            "already exists\n")
    assert "\t[ERROR DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty\n" in r.err
    assert r.err.endswith(TRAILER)
    assert cluster.read() == before


def test_second_init_on_another_node_is_refused_by_the_cluster_state(cluster: Cluster, cp1: Node):
    before = cluster.read()
    cp2 = cluster.node("cp2")
    r = cp2.init()
    assert r.rc == 1
    assert r.err.startswith('error execution phase preflight: [stand-in] this cluster was already initialised by '
                            f'node "cp1" (host "{HOST}") at ')
    assert r.err.endswith('a second "kubeadm init" would create a second, separate cluster\n' + TRAILER)
    assert cluster.read() == before
    assert not cp2.path("/etc/kubernetes/admin.conf").exists()


def test_two_concurrent_inits_make_one_cluster(cluster: Cluster):
    cluster.inject("slow", "init", "0.3")  # all pass the first look at the state, then race to write it
    nodes = [cluster.node(f"cp{i}") for i in range(1, 4)]
    results: dict[str, Result] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n.name, n.init())) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, r in results.items() if r.rc == 0]
    assert len(winners) == 1
    for name, r in results.items():
        if name not in winners:
            assert f'already initialised by node "{winners[0]}"' in r.err
    assert cluster.read()["initialised_by"] == winners[0]
    assert list(cluster.read()["nodes"]) == winners


def test_calls_wait_for_the_state_lock(cluster: Cluster):
    import fcntl

    node = cluster.node("n1")
    cluster.state.mkdir()
    with open(cluster.state / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = node.popen("version", "-o", "short")
        time.sleep(0.5)
        assert proc.poll() is None  # blocked on the lock for its start record
        fcntl.flock(lock, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, out) == (0, "v1.31.0\n")
    assert [c["phase"] for c in cluster.calls()] == ["start", "end"]


def test_init_v1beta3_with_a_label_map(cluster: Cluster):
    node = cluster.node("cp1")
    r = ok(node.init(api="kubeadm.k8s.io/v1beta3", labels="a.example/b=c"))
    assert 'API version "kubeadm.k8s.io/v1beta3" is deprecated' in r.err
    assert cluster.read()["nodes"]["cp1"]["labels"]["a.example/b"] == "c"


def test_init_accepts_kubelet_and_kube_proxy_documents(cluster: Cluster):
    node = cluster.node("cp1")
    docs = [*init_docs("cp1"), {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                                "cgroupDriver": "systemd"},
            {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "ipvs"}]
    ok(node.kubeadm("init", "--config", node.config(*docs)))
    assert [d["kind"] for d in cluster.calls()[-1]["config"]] == [
        "InitConfiguration", "ClusterConfiguration", "KubeletConfiguration", "KubeProxyConfiguration"]
    failed(node.kubeadm("init", "--config", node.config(
        *docs[:2], {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "KubeletConfiguration"})),
        'no kind "KubeletConfiguration" is registered for version "kubelet.config.k8s.io/v1" in scheme '
        '"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31"')


def test_unknown_fields_are_warnings_as_in_kubeadm(cluster: Cluster):
    node = cluster.node("cp1")
    r = ok(node.init(init_extra={"nodeRegistraton": {"name": "typo"}}))
    assert 'strict decoding error: unknown field "nodeRegistraton"' in r.err


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


@pytest.mark.parametrize(("kw", "message"), [
    ({"taints": [{"key": "dedicated", "value": "edge", "effect": "Sometimes"}]},
     'nodeRegistration.taints[0].effect: Unsupported value: "Sometimes": supported values: "NoSchedule", '
     '"PreferNoSchedule", "NoExecute"'),
    ({"taints": [{"key": "dedicated"}]}, "nodeRegistration.taints[0].effect: Required value"),
    ({"taints": [{"key": "bad key!", "effect": "NoSchedule"}]},
     f'nodeRegistration.taints[0].key: Invalid value: "bad key!": name part {QNAME_REGEX}'),
    ({"labels": "node-role.kubernetes.io/worker="},
     f'nodeRegistration.kubeletExtraArgs[node-labels]: Invalid value: "node-role.kubernetes.io/worker=": {LABEL_ERR}'),
    ({"labels": "tempered.io/bad_key_=x"},
     'nodeRegistration.kubeletExtraArgs[node-labels]: Invalid value: "tempered.io/bad_key_=x": the kubelet would '
     f"refuse to start: invalid node labels: 'tempered.io/bad_key_' - name part {QNAME_REGEX}"),
    ({"labels": "tempered.io/role"},
     'nodeRegistration.kubeletExtraArgs[node-labels]: Invalid value: "tempered.io/role": malformed pair, expect '
     "string=string"),
    ({"pod": "10.96.0.0/16"},
     'networking.podSubnet: Invalid value: "10.96.0.0/16": podSubnet overlaps with serviceSubnet "10.96.0.0/12"'),
    ({"pod": "10.244.0.0/16,fd00::/48,10.1.0.0/16"},
     'networking.podSubnet: Invalid value: "10.244.0.0/16,fd00::/48,10.1.0.0/16": expected one (IPv4 or IPv6) CIDR '
     "or two CIDRs from each family for dual-stack networking"),
    ({"svc": "10.96.0.0/33"}, 'networking.serviceSubnet: Invalid value: "10.96.0.0/33": couldn\'t parse subnet'),
    ({"version": None},
     'kubernetesVersion: Required value: kubeadm would look up "stable-1" on the internet; the stand-in needs an '
     "exact version such as v1.31.0"),
    ({"version": "v1.29.4"},
     'kubernetesVersion: Invalid value: "v1.29.4": this version of kubeadm only supports deploying clusters with the '
     "control plane version >= 1.30.0. Current version: v1.29.4"),
    ({"endpoint": None},
     "controlPlaneEndpoint: Required value: unable to add a new control plane instance to a cluster that doesn't have "
     "a stable controlPlaneEndpoint address: kubeadm join --control-plane needs it, so the stand-in requires it for "
     "every cluster"),
    ({"endpoint": "api.example:99999"},
     'controlPlaneEndpoint: Invalid value: "api.example:99999": port must be a valid number between 1 and 65535, '
     "inclusive"),
    ({"token": "ABCDEF.0123456789abcdef"},
     'bootstrapTokens[0].token: Invalid value: "ABCDEF.0123456789abcdef": the bootstrap token '
     '"ABCDEF.0123456789abcdef" was not of the form "^([a-z0-9]{6})\\.([a-z0-9]{16})$"'),
    ({"ttl": "1day"}, 'bootstrapTokens[0].ttl: Invalid value: "1day": time: unknown unit "day" in duration "1day"'),
    ({"init_extra": {"certificateKey": "xyz"}},
     'certificateKey: Invalid value: "xyz": the certificate key must be a hex encoded string of 32 bytes '
     "(64 characters)"),
    ({"init_extra": {"localAPIEndpoint": {"advertiseAddress": "cp1.example"}}},
     'localAPIEndpoint.advertiseAddress: Invalid value: "cp1.example": cannot parse IP address'),
    ({"init_extra": {"nodeRegistration": {"name": "CP_1"}}},
     'nodeRegistration.name: Invalid value: "CP_1": a lowercase RFC 1123 subdomain must consist of lower case '
     "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
     "'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
    ({"init_extra": {"nodeRegistration": {"kubeletExtraArgs": {"node-labels": "a=b"}}}},
     "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal object into Go struct field "
     "InitConfiguration.nodeRegistration.kubeletExtraArgs of type []v1beta4.Arg"),
    ({"cluster_extra": {"kubernetesVersion": 1.31}},
     "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal number into Go struct field "
     "ClusterConfiguration.kubernetesVersion of type string"),
], ids=["taint-effect", "taint-no-effect", "taint-key", "node-role-label", "label-key", "label-pair",
        "cidr-overlap", "three-cidrs", "bad-cidr", "no-version", "old-version", "no-endpoint", "endpoint-port",
        "token-format", "ttl", "certificate-key", "advertise-address", "node-name", "v1beta4-arg-map",
        "version-number"])
def test_init_refuses_a_bad_config(cluster: Cluster, kw: dict, message: str):
    node = cluster.node("cp1")
    failed(node.init(**kw), message)
    assert cluster.read() == {}
    assert not node.path("/etc/kubernetes/admin.conf").exists()


def test_init_reports_all_field_errors_at_once(cluster: Cluster):
    r = cluster.node("cp1").init(version=None, pod="10.96.0.0/16", endpoint=None)
    assert r.rc == 1
    assert r.err.startswith("[kubernetesVersion: Required value")
    assert "controlPlaneEndpoint: Required value" in r.err and "podSubnet overlaps" in r.err


@pytest.mark.parametrize(("docs", "message"), [
    ([{"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "Foo"}],
     'no kind "Foo" is registered for version "kubeadm.k8s.io/v1beta4" in scheme '
     '"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31"'),
    ([{"apiVersion": "kubeadm.k8s.io/v1beta4"}],
     "invalid configuration for GroupVersionKind kubeadm.k8s.io/v1beta4, Kind=: kind and apiVersion is mandatory "
     "information that must be specified"),
    ([{"apiVersion": "kubeadm.k8s.io/v1beta2", "kind": "InitConfiguration"}],
     'your configuration file uses an old API spec: "kubeadm.k8s.io/v1beta2" (kind: "InitConfiguration"). Please use '
     "kubeadm v1.22 instead and run 'kubeadm config migrate --old-config old.yaml --new-config new.yaml', which will "
     "write the new, similar spec using a newer API version."),
    ([{"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "InitConfiguration"},
      {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "InitConfiguration"}],
     "invalid configuration: GroupVersionKind kubeadm.k8s.io/v1beta4, Kind=InitConfiguration is specified twice in "
     "YAML"),
], ids=["unknown-kind", "no-kind", "old-api", "twice"])
def test_init_refuses_bad_documents(cluster: Cluster, docs: list, message: str):
    node = cluster.node("cp1")
    failed(node.kubeadm("init", "--config", node.config(*docs)), message)


def test_init_refuses_a_join_configuration(cluster: Cluster):
    node = cluster.node("cp1")
    path = node.config(*init_docs("cp1"), join_doc("cp1", ca_hash=None))
    failed(node.kubeadm("init", "--config", path),
           f'the configuration file "{path}" contains a JoinConfiguration document, which "kubeadm init" does not '
           "accept: it takes only InitConfiguration, ClusterConfiguration, KubeletConfiguration and "
           "KubeProxyConfiguration documents")


def test_join_refuses_init_documents(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    path = w.config(join_doc("w1", ca_hash=None), init_docs("w1")[1])
    failed(w.kubeadm("join", "--config", path),
           f'the configuration file "{path}" contains a ClusterConfiguration document, which "kubeadm join" does '
           "not accept: it takes only JoinConfiguration documents")


def test_init_config_and_certificate_key_flag_do_not_mix(cluster: Cluster):
    failed(cluster.node("cp1").init("--upload-certs", "--certificate-key", CERT_KEY),
           "can not mix '--config' with arguments [certificate-key]")


@pytest.mark.parametrize(("args", "message"), [
    (["frobnicate"], 'unknown command "frobnicate" for "kubeadm"'),
    (["init", "--frobnicate"], "unknown flag: --frobnicate"),
    (["init", "--config"], "flag needs an argument: --config"),
    (["reset"], "reset requires confirmation: run with --force"),
    (["init", "--config", "/nonexistent.yaml"],
     'unable to read config from "/nonexistent.yaml" : open /nonexistent.yaml: no such file or directory'),
    (["token", "create", "--ttl", "forever"],
     'invalid argument "forever" for "--ttl" flag: time: invalid duration "forever"'),
], ids=["unknown-command", "unknown-flag", "flag-without-value", "reset-without-force", "missing-config", "ttl"])
def test_bad_command_lines(cluster: Cluster, args: list[str], message: str):
    failed(cluster.node("n1").kubeadm(*args), message)


def test_certificate_key_command(cluster: Cluster):
    r = ok(cluster.node("n1").kubeadm("certs", "certificate-key"))
    assert len(r.out.strip()) == 64 and int(r.out, 16) >= 0


# --- join ------------------------------------------------------------------------------------


def test_worker_join_registers_labels_and_taints(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    taint = {"key": "tempered.io/edge", "value": "true", "effect": "NoExecute"}
    r = ok(w.join(ca_hash=ca_hash_of(cluster), labels="tempered.io/role=worker,tempered.io/rack=r1", taints=[taint]))
    assert "This node has joined the cluster:" in r.out
    node = cluster.read()["nodes"]["w1"]
    assert (node["control_plane"], node["etcd_member"], node["cordoned"], node["taints"]) == (
        False, False, False, [taint])
    assert node["labels"]["tempered.io/role"] == "worker" and node["labels"]["tempered.io/rack"] == "r1"
    assert "node-role.kubernetes.io/control-plane" not in node["labels"]
    assert w.path("/etc/kubernetes/kubelet.conf").exists()
    assert w.path("/etc/kubernetes/pki/ca.crt").read_text() == cp1.path("/etc/kubernetes/pki/ca.crt").read_text()
    assert not w.path("/etc/kubernetes/admin.conf").exists()
    flags = w.path("/var/lib/kubelet/kubeadm-flags.env").read_text()
    assert "--node-labels=tempered.io/role=worker,tempered.io/rack=r1" in flags
    assert cluster.read()["etcd_members"] == ["cp1"]

    listed = json.loads(ok(cp1.kubectl("get", "nodes", "-o", "json")).out)
    assert listed["kind"] == "List"
    by_name = {i["metadata"]["name"]: i for i in listed["items"]}
    assert sorted(by_name) == ["cp1", "w1"]
    assert by_name["w1"]["spec"] == {"taints": [taint]}
    assert by_name["w1"]["metadata"]["labels"]["tempered.io/rack"] == "r1"
    assert by_name["cp1"]["spec"]["taints"] == [{"key": "node-role.kubernetes.io/control-plane",
                                                  "effect": "NoSchedule"}]


def test_worker_join_has_no_taints_by_default(cluster: Cluster, cp1: Node):
    ok(cluster.node("w1").join(ca_hash=ca_hash_of(cluster)))
    assert cluster.read()["nodes"]["w1"]["taints"] == []


def test_join_with_an_unknown_token(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    failed(w.join(ca_hash=ca_hash_of(cluster), token=TOKEN2),
           "error execution phase preflight: couldn't validate the identity of the API Server: token id \"zyxwvu\" is "
           'invalid for this cluster or it has expired. Use "kubeadm token create" on the control-plane node to create '
           "a new valid token")
    assert "w1" not in cluster.read()["nodes"]
    assert not w.path("/etc/kubernetes/kubelet.conf").exists()


def test_join_with_a_wrong_token_secret(cluster: Cluster, cp1: Node):
    failed(cluster.node("w1").join(ca_hash=ca_hash_of(cluster), token="abcdef.0000000000000000"),
           "error execution phase preflight: couldn't validate the identity of the API Server: failed to verify JWS "
           "signature of received cluster info object, can't trust this API Server")


def test_join_with_an_expired_token(cluster: Cluster, cp1: Node):
    ok(cp1.kubeadm("token", "create", TOKEN2, "--ttl", "300ms"))
    time.sleep(0.35)
    failed(cluster.node("w1").join(ca_hash=ca_hash_of(cluster), token=TOKEN2),
           "error execution phase preflight: couldn't validate the identity of the API Server: token id \"zyxwvu\" is "
           'invalid for this cluster or it has expired. Use "kubeadm token create" on the control-plane node to create '
           "a new valid token")


def test_join_with_a_badly_formed_token(cluster: Cluster, cp1: Node):
    failed(cluster.node("w1").join(ca_hash=ca_hash_of(cluster), token="abcdef0123456789abcdef"),
           'discovery.bootstrapToken.token: Invalid value: "abcdef0123456789abcdef": the bootstrap token '
           '"abcdef0123456789abcdef" was not of the form "^([a-z0-9]{6})\\.([a-z0-9]{16})$"')


def test_join_with_a_wrong_ca_hash(cluster: Cluster, cp1: Node):
    failed(cluster.node("w1").join(ca_hash="sha256:" + "0" * 64),
           "error execution phase preflight: couldn't validate the identity of the API Server: cluster CA found in "
           f'cluster-info ConfigMap is invalid: none of the public keys "{ca_hash_of(cluster)}" are pinned')


def test_join_without_ca_hashes_needs_unsafe_skip(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    doc = join_doc("w1", ca_hash=None)
    del doc["discovery"]["bootstrapToken"]["unsafeSkipCAVerification"]
    failed(w.kubeadm("join", "--config", w.config(doc)),
           'discovery.bootstrapToken.caCertHashes: Invalid value: []: using token-based discovery without caCertHashes '
           "can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass "
           "--discovery-token-unsafe-skip-ca-verification flag to continue")
    ok(w.join(ca_hash=None))


def test_join_to_another_endpoint(cluster: Cluster, cp1: Node):
    failed(cluster.node("w1").join(ca_hash=ca_hash_of(cluster), endpoint="10.0.0.99:6443"),
           "error execution phase preflight: couldn't validate the identity of the API Server: Get "
           '"https://10.0.0.99:6443/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s": dial tcp '
           '10.0.0.99:6443: connect: connection refused ([stand-in] the cluster\'s endpoint is "10.0.0.10:6443")')


def test_join_before_init(cluster: Cluster):
    failed(cluster.node("w1").join(ca_hash=None),
           "error execution phase preflight: couldn't validate the identity of the API Server: Get "
           '"https://10.0.0.10:6443/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s": dial tcp '
           "10.0.0.10:6443: connect: connection refused ([stand-in] no cluster has been initialised in "
           f"{cluster.state})")


def test_join_is_refused_when_kubelet_conf_exists(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    w.path("/etc/kubernetes").mkdir(parents=True)
    w.path("/etc/kubernetes/kubelet.conf").write_text("left over\n")
    failed(w.join(ca_hash=ca_hash_of(cluster)),
           "error execution phase preflight: [preflight] Some fatal errors occurred:\n"
           "\t[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists\n"
           "[preflight] If you know what you are doing, you can make a check non-fatal with "
           "`--ignore-preflight-errors=...`")
    assert "w1" not in cluster.read()["nodes"]


def test_join_with_a_name_already_registered(cluster: Cluster, cp1: Node):
    ok(cluster.node("w1").join(ca_hash=ca_hash_of(cluster)))
    other = cluster.node("another-machine")
    failed(other.kubeadm("join", "--config", other.config(join_doc("w1", ca_hash=ca_hash_of(cluster)))),
           'error execution phase kubelet-start: a Node with name "w1" and status "Ready" already exists in the '
           "cluster. You must delete the existing Node or change the name of this new joining Node")
    assert not other.path("/etc/kubernetes/kubelet.conf").exists()


def test_join_by_flags_from_print_join_command(cluster: Cluster, cp1: Node):
    line = ok(cp1.kubeadm("token", "create", "--print-join-command")).out
    assert line.startswith("kubeadm join 10.0.0.10:6443 --token ") and line.endswith(
        f" --discovery-token-ca-cert-hash {ca_hash_of(cluster)} \n")
    w = cluster.node("w1")
    ok(w.kubeadm(*line.split()[1:], "--node-name", "w1"))
    assert cluster.read()["nodes"]["w1"]["control_plane"] is False


# --- control-plane join -----------------------------------------------------------------------


def test_control_plane_join_without_a_certificate_key(cluster: Cluster, cp1: Node):
    r = cluster.node("cp2").join(ca_hash=ca_hash_of(cluster), control_plane=True)
    assert r.rc == 1
    assert r.err.startswith("error execution phase preflight: \nOne or more conditions for hosting a new control "
                            "plane instance is not satisfied.\n")
    assert cluster.read()["etcd_members"] == ["cp1"]


def test_control_plane_join_with_a_wrong_certificate_key(cluster: Cluster, cp1: Node):
    failed(cluster.node("cp2").join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=OTHER_KEY),
           "error execution phase control-plane-prepare/download-certs: error downloading certs: error decoding "
           "secret data with provided key: cipher: message authentication failed")


def test_control_plane_join_when_no_certificates_were_uploaded(cluster: Cluster):
    cp1 = cluster.node("cp1")
    ok(cp1.init())
    failed(cluster.node("cp2").join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=CERT_KEY),
           "error execution phase control-plane-prepare/download-certs: error downloading certs: error downloading "
           'the secret: Secret "kubeadm-certs" was not found in the "kube-system" Namespace. This Secret might have '
           "expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a "
           "new one")
    r = ok(cp1.kubeadm("init", "phase", "upload-certs", "--upload-certs", "--certificate-key", CERT_KEY))
    assert r.out.endswith(f"[upload-certs] Using certificate key:\n{CERT_KEY}\n")
    ok(cluster.node("cp3").join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=CERT_KEY))


def test_control_plane_join_with_an_expired_certificate_key(cluster: Cluster, cp1: Node):
    state = cluster.read()
    key = state["certificate_key"]["key"]
    state["certificate_key"]["expires"] = time.time() - 1
    cluster.write(state)
    r = cluster.node("cp2").join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=key)
    assert r.rc == 1 and 'Secret "kubeadm-certs" was not found' in r.err


def test_control_plane_join_with_the_right_key(cluster: Cluster, cp1: Node):
    key = cluster.read()["certificate_key"]["key"]
    cp2 = cluster.node("cp2")
    r = ok(cp2.join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=key, labels="tempered.io/role=cp"))
    assert "a new control plane instance was created" in r.out
    state = cluster.read()
    node = state["nodes"]["cp2"]
    assert state["etcd_members"] == ["cp1", "cp2"]
    assert (node["control_plane"], node["etcd_member"]) == (True, True)
    assert node["labels"]["node-role.kubernetes.io/control-plane"] == ""
    assert node["labels"]["tempered.io/role"] == "cp"
    assert node["taints"] == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    for f in ("/etc/kubernetes/admin.conf", "/etc/kubernetes/pki/ca.key", "/etc/kubernetes/manifests/etcd.yaml"):
        assert cp2.path(f).exists(), f
    assert cp2.path("/etc/kubernetes/pki/ca.crt").read_text() == cp1.path("/etc/kubernetes/pki/ca.crt").read_text()


def test_a_new_upload_replaces_the_previous_certificate_key(cluster: Cluster, cp1: Node):
    old = cluster.read()["certificate_key"]["key"]
    r = ok(cp1.kubeadm("init", "phase", "upload-certs", "--upload-certs"))
    new = r.out.strip().splitlines()[-1]
    assert len(new) == 64 and new != old
    failed(cluster.node("cp2").join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=old),
           "error execution phase control-plane-prepare/download-certs: error downloading certs: error decoding "
           "secret data with provided key: cipher: message authentication failed")
    ok(cluster.node("cp3").join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=new))


def test_upload_certs_needs_admin_conf(cluster: Cluster, cp1: Node):
    failed(cluster.node("w1").kubeadm("init", "phase", "upload-certs", "--upload-certs"),
           "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory")


# --- tokens -----------------------------------------------------------------------------------


def test_token_create_needs_admin_conf(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    failed(w.kubeadm("token", "create"),
           "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory")
    assert list(cluster.read()["tokens"]) == ["abcdef"]


def test_token_create_stores_the_token(cluster: Cluster, cp1: Node):
    r = ok(cp1.kubeadm("token", "create", TOKEN2, "--ttl", "90m", "--description", "for w1"))
    assert r.out == TOKEN2 + "\n"
    tok = cluster.read()["tokens"]["zyxwvu"]
    assert (tok["secret"], tok["description"]) == ("9876543210zyxwvu", "for w1")
    assert 90 * 60 - 60 < tok["expires"] - time.time() <= 90 * 60
    generated = ok(cp1.kubeadm("token", "create", "--ttl", "0")).out.strip()
    assert cluster.read()["tokens"][generated.split(".")[0]]["expires"] is None
    ok(cluster.node("w1").join(ca_hash=ca_hash_of(cluster), token=generated))


def test_token_create_refuses_a_bad_token(cluster: Cluster, cp1: Node):
    failed(cp1.kubeadm("token", "create", "abc.def"),
           'the bootstrap token "abc.def" was not of the form "^([a-z0-9]{6})\\.([a-z0-9]{16})$"')


def test_print_join_command_for_a_control_plane(cluster: Cluster, cp1: Node):
    r = ok(cp1.kubeadm("token", "create", TOKEN2, "--print-join-command", "--certificate-key", CERT_KEY))
    assert r.out == (f"kubeadm join {ENDPOINT} --token {TOKEN2} --discovery-token-ca-cert-hash "
                     f"{ca_hash_of(cluster)} --control-plane --certificate-key {CERT_KEY}\n")


# --- reset ------------------------------------------------------------------------------------


def test_reset_needs_force_and_changes_nothing_without_it(cluster: Cluster, cp1: Node):
    before = cluster.read()
    failed(cp1.kubeadm("reset"), "reset requires confirmation: run with --force")
    assert cp1.path("/etc/kubernetes/admin.conf").exists()
    assert cluster.read() == before


def test_reset_of_a_worker_keeps_its_node_object(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    ok(w.join(ca_hash=ca_hash_of(cluster)))
    ok(w.kubeadm("reset", "-f"))
    for f in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/config.yaml"):
        assert not w.path(f).exists(), f
    node = cluster.read()["nodes"]["w1"]
    assert node["ready"] is False
    assert "NotReady" in ok(cp1.kubectl("get", "nodes")).out
    ok(w.join(ca_hash=ca_hash_of(cluster)))  # a NotReady Node of the same name is taken over
    assert cluster.read()["nodes"]["w1"]["ready"] is True


def test_reset_of_a_control_plane_leaves_etcd(cluster: Cluster, cp1: Node):
    cp2 = cluster.node("cp2")
    ok(cp2.join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=cluster.read()["certificate_key"]["key"]))
    ok(cp2.kubeadm("reset", "--force"))
    state = cluster.read()
    assert state["etcd_members"] == ["cp1"]
    assert state["nodes"]["cp2"]["etcd_member"] is False
    assert "cp2" in state["nodes"]
    for f in ("/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/manifests/etcd.yaml",
              "/etc/kubernetes/pki/ca.key", "/var/lib/etcd/member"):
        assert not cp2.path(f).exists(), f


def test_reset_of_the_last_control_plane_ends_the_cluster(cluster: Cluster, cp1: Node):
    ok(cp1.kubeadm("reset", "-f"))
    state = cluster.read()
    assert "initialised_by" not in state
    assert [c["initialised_by"] for c in state["previous_clusters"]] == ["cp1"]
    ok(cluster.node("cp9").init())
    assert cluster.read()["initialised_by"] == "cp9"


# --- kubectl ----------------------------------------------------------------------------------


def test_drain_and_delete_a_node(cluster: Cluster, cp1: Node):
    ok(cluster.node("w1").join(ca_hash=ca_hash_of(cluster)))
    r = cp1.kubectl("drain", "w1")
    assert r.rc == 1 and r.err.startswith('error: unable to drain node "w1" due to error: cannot delete '
                                          "DaemonSet-managed Pods (use --ignore-daemonsets to ignore): "
                                          "kube-system/kube-proxy-")
    assert cluster.read()["nodes"]["w1"]["cordoned"] is True  # kubectl cordons first
    r = ok(cp1.kubectl("drain", "w1", "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout", "5m"))
    assert r.out == "node/w1 already cordoned\nnode/w1 drained\n"
    node = cluster.read()["nodes"]["w1"]
    assert (node["cordoned"], node["drained"]) == (True, True)
    spec = json.loads(ok(cp1.kubectl("get", "node", "w1", "-o", "json")).out)["spec"]
    assert spec["unschedulable"] is True
    assert [t["key"] for t in spec["taints"]] == ["node.kubernetes.io/unschedulable"]

    r = ok(cp1.kubectl("delete", "node", "w1"))
    assert r.out == 'node "w1" deleted\n'
    assert "w1" not in cluster.read()["nodes"]
    r = cp1.kubectl("delete", "node", "w1")
    assert (r.rc, r.err) == (1, 'Error from server (NotFound): nodes "w1" not found\n')
    assert ok(cp1.kubectl("delete", "node", "w1", "--ignore-not-found")).out == ""


def test_drain_an_unknown_node(cluster: Cluster, cp1: Node):
    r = cp1.kubectl("drain", "ghost", "--ignore-daemonsets")
    assert (r.rc, r.out, r.err) == (1, "", 'Error from server (NotFound): nodes "ghost" not found\n')


def test_kubectl_needs_an_existing_admin_kubeconfig(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    r = w.kubectl("delete", "node", "cp1")
    assert (r.rc, r.err) == (1, "error: stat /etc/kubernetes/admin.conf: no such file or directory\n")
    ok(w.join(ca_hash=ca_hash_of(cluster)))
    r = w.run(KUBECTL, "--kubeconfig", "/etc/kubernetes/kubelet.conf", "delete", "node", "cp1")
    assert r.rc == 1 and r.err.startswith('Error from server (Forbidden): nodes "cp1" is forbidden: User '
                                          '"system:node:w1" cannot delete resource "nodes"')
    assert "cp1" in cluster.read()["nodes"]


def test_kubectl_unknown_command(cluster: Cluster, cp1: Node):
    r = cp1.kubectl("exec", "pod")
    assert (r.rc, r.err) == (1, 'error: unknown command "exec" for "kubectl"\n')


# --- call records and fault injection ---------------------------------------------------------


def test_calls_are_recorded_with_secrets_masked(cluster: Cluster, cp1: Node):
    key = cluster.read()["certificate_key"]["key"]
    cp2 = cluster.node("cp2")
    ok(cp2.join(ca_hash=ca_hash_of(cluster), control_plane=True, cert_key=key, labels="tempered.io/role=cp"))
    ok(cp1.kubeadm("token", "create", TOKEN2, "--print-join-command", "--certificate-key", CERT_KEY))
    w = cluster.node("w1")
    ok(w.kubeadm("join", ENDPOINT, "--token=" + TOKEN2, "--discovery-token-ca-cert-hash", ca_hash_of(cluster),
                 "--node-name", "w1"))
    text = (cluster.state / "calls.jsonl").read_text()
    for secret in (TOKEN, TOKEN2, "0123456789abcdef", "9876543210zyxwvu", key, CERT_KEY):
        assert secret not in text
    calls = cluster.calls()
    assert [(c["argv"][1], c["phase"]) for c in calls] == [
        ("init", "start"), ("init", "end"), ("join", "start"), ("join", "end"),
        ("token", "start"), ("token", "end"), ("join", "start"), ("join", "end")]
    assert all(c["host"] == HOST for c in calls)
    assert calls[5]["argv"] == ["kubeadm", "token", "create", "***", "--print-join-command", "--certificate-key", "***"]
    assert calls[7]["argv"] == ["kubeadm", "join", ENDPOINT, "--token=***", "--discovery-token-ca-cert-hash",
                                ca_hash_of(cluster), "--node-name", "w1"]
    assert (calls[7]["rc"], calls[7]["error"], calls[7]["node"]) == (0, None, "w1")
    join_cfg = calls[3]["config"][0]
    assert join_cfg["discovery"]["bootstrapToken"]["token"] == "***"
    assert join_cfg["controlPlane"]["certificateKey"] == "***"
    assert join_cfg["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-labels", "value": "tempered.io/role=cp"}]
    assert calls[1]["config"][0]["bootstrapTokens"] == [{"token": "***", "ttl": "24h0m0s"}]


def test_failed_calls_record_the_masked_error(cluster: Cluster, cp1: Node):
    failed(cluster.node("w1").join(ca_hash=ca_hash_of(cluster), token="ABCDEF.0123456789abcdef"),
           'discovery.bootstrapToken.token: Invalid value: "ABCDEF.0123456789abcdef": the bootstrap token '
           '"ABCDEF.0123456789abcdef" was not of the form "^([a-z0-9]{6})\\.([a-z0-9]{16})$"')
    end = cluster.calls()[-1]
    assert (end["phase"], end["rc"]) == ("end", 1)
    assert end["error"] == ('discovery.bootstrapToken.token: Invalid value: "***": the bootstrap token "***" was not '
                            'of the form "^([a-z0-9]{6})\\.([a-z0-9]{16})$"')


def test_injected_failure(cluster: Cluster, cp1: Node):
    w = cluster.node("w1")
    path = cluster.inject("fail", "join", "boom: the network ate the packet\n")
    failed(w.join(ca_hash=ca_hash_of(cluster)), "boom: the network ate the packet")
    assert path.exists()
    assert "w1" not in cluster.read()["nodes"]
    end = cluster.calls()[-1]
    assert (end["rc"], end["error"]) == (1, "boom: the network ate the packet")
    path.unlink()
    ok(w.join(ca_hash=ca_hash_of(cluster)))


def test_injected_failure_of_kubectl_drain(cluster: Cluster, cp1: Node):
    cluster.inject("fail", "drain", "drain broke")
    r = cp1.kubectl("drain", "cp1", "--ignore-daemonsets")
    assert (r.rc, r.err) == (1, "drain broke\n")
    assert cluster.read()["nodes"]["cp1"]["cordoned"] is False


def test_injected_failure_of_upload_certs(cluster: Cluster, cp1: Node):
    cluster.inject("fail", "upload-certs", "no secret for you")
    failed(cp1.kubeadm("init", "phase", "upload-certs", "--upload-certs"), "no secret for you")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_slow_call_killed_midway_writes_no_results(cluster: Cluster, sig: signal.Signals):
    cluster.inject("slow", "init", "30")
    node = cluster.node("cp1")
    proc = node.popen("init", "--config", node.config(*init_docs("cp1")))
    deadline = time.monotonic() + 10
    while not any(c["phase"] == "start" for c in cluster.calls()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.4)  # past the validation, into the sleep
    assert proc.poll() is None
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert err.endswith(f"kubeadm stand-in: interrupted by {sig.name}\n")
    assert "[init] Using Kubernetes version: v1.31.0" in out  # it got past the validation
    assert cluster.read() == {}
    assert not node.path("/etc/kubernetes/admin.conf").exists()
    assert [(c["phase"], c.get("rc")) for c in cluster.calls()] == [("start", None), ("end", 130)]


def test_a_slow_call_finishes(cluster: Cluster):
    cluster.inject("slow", "init", "0.3")
    node = cluster.node("cp1")
    started = time.monotonic()
    ok(node.init())
    assert time.monotonic() - started >= 0.3
    assert cluster.read()["initialised_by"] == "cp1"
