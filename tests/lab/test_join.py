"""Joining for real: the worker runs the playbooks of infra/ansible/ with ansible-runner, over
SSH (the control plane's key, pinned host keys, a ProxyCommand bastion), against nodes that are
network namespaces running sshd, each with the kubeadm stand-in of infra/lab/standin/ that checks
its config files and records its calls in a state directory all nodes share.

Machines are driven as the outside world would (PXE update, facts, phone home with the node's
host key); everything after that is the product: admission, rendering, the join plan, token and
certificate-key minting, kubeadm init/join, DNS, ready.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from activities import ansible, sshkey
from activities.domain.machine import MachineStatus
from tests.conftest import NODES_CTL, eventually
from tests.api.test_cli import tempered
from tests.lifecycle import MachineDriver, cluster_status, create_cluster
from tests.nodelab import NodeLab, init_vars, netns_pids, nodelab_available, standin_image
from tests.workflow.test_replay import replay_and_record

pytestmark = pytest.mark.skipif(nodelab_available() is not None, reason=str(nodelab_available()))


@dataclass
class Site:
    """One cluster's worth of nodes and the stand-in's shared state."""

    lab: NodeLab
    state: Path
    client: object
    settings: object
    cluster: str

    def records(self, phase: str, *names: str) -> list[dict]:
        """The stand-in's call records of one phase ("start" or "end"), by name ("kubeadm init",
        "kubeadm upload-certs", "kubectl drain", ...), in order."""
        path = self.state / "calls.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [c for c in lines if c["phase"] == phase and (not names or _name(c["argv"]) in names)]

    def calls(self, *names: str) -> list[dict]:
        return self.records("end", *names)

    def started(self, name: str) -> list[dict]:
        return self.records("start", name)

    def cluster_state(self) -> dict:
        return json.loads((self.state / "cluster.json").read_text())

    def machine(self, suffix: str, index: int) -> MachineDriver:
        mac = f"52:54:00:7e:{index // 256:02x}:{index % 256:02x}"
        driver = MachineDriver(self.client, self.settings, f"{self.cluster}-{suffix}", self.cluster, mac=mac)
        node = self.lab.add(MachineStatus(machine_id=driver.machine_id, mac=mac).node_name)
        driver.ip, driver.host_key = node.ip, node.host_key
        driver.node = node  # type: ignore[attr-defined]
        return driver

    def inject(self, kind: str, machine, subcommand: str, content: str) -> Path:
        """Fault injection (see infra/lab/standin/README.md) on a machine driver's node, or a node."""
        path = self.state / kind / f"{getattr(machine, 'node', machine).name}-{subcommand}"
        path.parent.mkdir(exist_ok=True)
        path.write_text(content)
        return path


def _name(argv: list[str]) -> str:
    """`kubectl --kubeconfig F drain x` -> "kubectl drain"; `kubeadm init phase upload-certs` ->
    "kubeadm upload-certs"; `kubeadm upgrade apply v1.31.0 -y` -> "kubeadm upgrade-apply"."""
    words, skip = [], False
    for arg in argv[1:]:
        if skip or arg == "--kubeconfig":
            skip = not skip
            continue
        if not arg.startswith("-"):
            words.append(arg)
    sub = "upload-certs" if words[:2] == ["init", "phase"] else (words[0] if words else "")
    sub = f"upgrade-{words[1]}" if words[:1] == ["upgrade"] and len(words) > 1 else sub
    return f"{argv[0]} {sub}"


@pytest.fixture
async def site(tmp_path, client, settings, worker, unique):
    """A fresh node lab and stand-in state per test; the cluster's workflows end with it."""
    state = tmp_path / "cluster"
    state.mkdir()
    image = standin_image(tmp_path / "image", state)
    cluster = unique("j")
    with NodeLab(tmp_path / "nodes", sshkey.public_key(settings), image, NODES_CTL) as lab:
        yield Site(lab, state, client, settings, cluster)
        await _end_workflows(client, cluster)


async def _end_workflows(client, cluster: str) -> None:
    """Stop the test's cluster renewing tokens against nodes that are about to vanish."""
    from api import temporal

    try:
        await temporal.cluster(client, cluster).terminate("test finished")
    except Exception:
        pass


async def to_joining(m: MachineDriver) -> None:
    await m.pxe()
    await m.phone_home()


FACTS = {"processors": {"count": 4}, "memory": {"total_bytes": 8 << 30},
         "disks": [{"name": "vda", "size_bytes": 40 * 10**9}]}


async def discover(m: MachineDriver, *states: str) -> MachineStatus:
    await m.report_facts((await m.pxe()).boot, FACTS)
    return await m.wait_state(*states, timeout=60)


async def join(m: MachineDriver, timeout: float = 180) -> MachineStatus:
    """From post-discover: boot the runtime OS, phone home, and wait for ready (or a failure)."""
    await to_joining(m)
    return await m.wait_state("ready", "failed:join-cluster", timeout=timeout)


RULES = [
    {"name": "prime", "expression": 'candidate.id.endsWith("-m1")', "attributes": [
        {"type": "role", "value": "master-prime"}, {"type": "label", "value": "tier=control"}]},
    {"name": "masters", "expression": '/-m[23]$/.test(candidate.id)', "attributes": [
        {"type": "role", "value": "master"}, {"type": "label", "value": "tier=control"}]},
    {"name": "workers", "expression": '/-w[0-9]$/.test(candidate.id)', "attributes": [
        {"type": "role", "value": "worker"}, {"type": "label", "value": "tier=general"}]},
    {"name": "gpu", "expression": 'candidate.id.endsWith("-w2")', "attributes": [
        {"type": "label", "value": "example.com/gpu=a100"}, {"type": "taint", "value": "gpu=yes:NoSchedule"}]},
]


async def test_prime_masters_and_workers_join_in_order(site: Site, api_server):
    await create_cluster(site.client, site.settings, site.cluster, quorum=3, join_method="ansible",
                         join_token_ttl_s=90, join_token_renew_before_s=60)
    with api_server.client() as http:
        http.put(f"/v1/clusters/{site.cluster}/rules", json=RULES).raise_for_status()
    prime = site.machine("m1", 1)
    others = [site.machine(s, i) for i, s in enumerate(["m2", "m3", "w1", "w2"], start=2)]

    assert (await discover(prime, "post-discover")).role == "master-prime"
    held = await asyncio.gather(*(discover(m, "holding") for m in others))
    assert all("waiting for the control plane" in h.reason for h in held)

    ready = await join(prime)
    assert ready.state == "ready" and ready.reason.startswith("kubeadm init ran"), ready.reason
    # The control plane is up: the cluster mints a token on the prime and releases the others.
    await asyncio.gather(*(m.wait_state("post-discover", timeout=120) for m in others))
    results = await asyncio.gather(*(join(m, timeout=300) for m in others))
    assert [r.state for r in results] == ["ready"] * 4, "\n".join(f"{r.machine_id}: {r.reason}" for r in results)
    assert [r.reason.split(";")[0] for r in results] == (
        ["kubeadm join --control-plane ran"] * 2 + ["kubeadm join ran"] * 2
    )

    inits, joins = site.calls("kubeadm init"), site.calls("kubeadm join")
    assert [(c["host"], c["rc"]) for c in inits] == [(prime.node.name, 0)]
    assert sorted(c["host"] for c in joins) == sorted(m.node.name for m in others)
    assert all(c["rc"] == 0 for c in joins)
    assert all(j["t"] > inits[0]["t"] for j in site.started("kubeadm join"))
    # Masters join one at a time, each with a certificate key uploaded just for it.
    master_hosts = {others[0].node.name, others[1].node.name}
    spans = sorted((s["t"], e["t"]) for s in site.started("kubeadm join") for e in joins
                   if s["host"] == e["host"] and s["host"] in master_hosts)
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans
    assert len(site.calls("kubeadm upload-certs")) >= 2  # upload-certs, once per master

    nodes = site.cluster_state()["nodes"]
    assert set(nodes) == {prime.node.name, *(m.node.name for m in others)}
    gpu = nodes[others[3].node.name]
    assert gpu["labels"].items() >= {"tier": "general", "example.com/gpu": "a100"}.items()
    assert gpu["taints"] == [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]
    assert nodes[others[2].node.name]["taints"] == []
    for master in (prime, *others[:2]):
        node = nodes[master.node.name]
        assert node["labels"]["tier"] == "control" and "node-role.kubernetes.io/control-plane" in node["labels"]
        assert node["taints"] == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    # No token or key ever appears in a recorded command line.
    assert "***" in json.dumps(site.calls("kubeadm token"))

    # The join token is renewed before it expires (ttl 90 s, renewed 60 s before).
    first = (await cluster_status(site.client, site.cluster)).credentials

    async def renewed() -> bool:
        now = (await cluster_status(site.client, site.cluster)).credentials
        return now.token_id != first.token_id

    await eventually(renewed, 90, what="the join token to be renewed")
    status = await cluster_status(site.client, site.cluster)
    assert status.credentials.token_expires_at > first.token_expires_at and status.credentials_error == ""
    assert len(site.calls("kubeadm token")) >= 2

    shown = tempered(api_server, "cluster", "show", site.cluster)
    assert shown.returncode == 0 and "join token: expires" in shown.stdout, shown.stdout + shown.stderr

    # Decommission a worker: drained and deleted from a control-plane machine, reset on itself.
    worker = others[2]
    await worker.handle.execute_update("decommission", result_type=MachineStatus)
    gone = await worker.wait_state("decommissioned", "failed:decommission", timeout=120)
    assert gone.state == "decommissioned", gone.reason
    assert gone.reason.startswith("retired: drained, reset and deleted from the cluster"), gone.reason
    assert worker.node.name not in site.cluster_state()["nodes"]
    drains = site.calls("kubectl drain", "kubectl delete")
    assert [_name(c["argv"]) for c in drains] == ["kubectl drain", "kubectl delete"] and drains[0]["host"] != worker.node.name
    assert [c["host"] for c in site.calls("kubeadm reset")] == [worker.node.name]
    assert worker.node.read("/etc/kubernetes/kubelet.conf") is None
    await replay_and_record([
        ("join-cluster", await site.client.get_workflow_handle(f"cluster:{site.cluster}").fetch_history()),
        ("join-prime", await prime.handle.fetch_history()),
        ("join-master", await others[0].handle.fetch_history()),
        ("join-worker-decommissioned", await worker.handle.fetch_history()),
    ])


async def _single_master(site: Site) -> MachineDriver:
    await create_cluster(site.client, site.settings, site.cluster, quorum=1, join_method="ansible")
    prime = site.machine("m1", 1)
    assert (await discover(prime, "post-discover")).role == "master-prime"
    return prime


async def test_worker_killed_during_init_gives_exactly_one_init(site: Site, worker):
    prime = await _single_master(site)
    slow = site.inject("slow", prime, "init", "12")
    await to_joining(prime)

    async def init_started() -> bool:
        return bool(site.started("kubeadm init"))

    await eventually(init_started, 120, what="kubeadm init to start on the prime")
    worker.stop(signal.SIGKILL)  # the worker dies with the activity mid-init
    worker.start()
    ready = await prime.wait_state("ready", "failed:join-cluster", timeout=240)
    slow.unlink()
    assert ready.state == "ready", ready.reason
    assert len(site.started("kubeadm init")) == 1
    assert [c["rc"] for c in site.calls("kubeadm init")] == [0]


async def test_failed_task_parks_the_machine_and_a_retry_brings_it_to_ready(site: Site, api_server):
    prime = await _single_master(site)
    fail = site.inject("fail", prime, "init", "[ERROR Port-6443]: Port 6443 is in use")
    parked = await join(prime)
    assert parked.state == "failed:join-cluster", parked.reason
    assert prime.node.name in parked.reason and "kubeadm init" in parked.reason
    assert "Port 6443 is in use" in parked.reason and "tempered machine retry" in parked.reason
    fail.unlink()
    retried = tempered(api_server, "machine", "retry", prime.machine_id)  # CLI -> API -> Update retry
    assert retried.returncode == 0, retried.stderr
    ready = await prime.wait_state("ready", "failed:join-cluster", timeout=120)
    assert ready.state == "ready" and ready.reason.startswith("kubeadm init ran"), ready.reason
    assert [c["rc"] for c in site.calls("kubeadm init")] == [1, 0]

    # A reboot: the node keeps its disk (and gets a new host key); it rejoins without init.
    before_reboot = (await prime.handle.describe()).run_id
    prime.node.reboot()
    prime.host_key = prime.node.host_key
    await discover(prime, "post-discover")
    again = await join(prime)
    assert again.state == "ready" and again.reason.startswith("already a node: rejoined"), again.reason
    assert not again.is_new
    assert [c["rc"] for c in site.calls("kubeadm init")] == [1, 0]
    assert site.calls("kubeadm join") == []
    first_run = site.client.get_workflow_handle(prime.handle.id, run_id=before_reboot)
    await replay_and_record([
        ("join-failed-retried", await first_run.fetch_history()),
        ("join-rejoined", await prime.handle.fetch_history()),
    ])


def test_cancelling_a_run_stops_ansible_and_the_kubeadm_it_started(site: Site, settings):
    """What the activity does when Temporal cancels it: ansible-runner stops ansible-playbook,
    and the kubeadm task (run without pipelining) gets a hangup on the node."""
    node = site.lab.add("node-cancel")
    (site.state / "slow").mkdir()
    (site.state / "slow" / f"{node.name}-init").write_text("60")
    extravars = init_vars(node)
    progress = ansible.Progress()
    host = ansible.Host(node.name, node.ip, node.host_key, ["node"])
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(ansible.run, "join.yml", [host], extravars,
                          replace(settings, ssh_proxy_command=site.lab.proxy_command), "cancel-test", progress)
        deadline = time.monotonic() + 120
        while not site.started("kubeadm init") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert site.started("kubeadm init"), progress.last
        assert progress.last == f"{node.name}: kubeadm init"  # what the heartbeats carry
        progress.cancel.set()
        outcome = run.result(timeout=60)
    assert outcome.status == "canceled" and not outcome.ok

    def kubeadm_running() -> bool:  # the node shares the host's /proc (no PID namespace)
        def cmdline(pid: int) -> bytes:
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return b""
        return any(b"kubeadm" in cmdline(pid) for pid in netns_pids(node.netns))

    deadline = time.monotonic() + 30
    while kubeadm_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not kubeadm_running(), "kubeadm still runs on the node after the cancellation"
    assert [c["rc"] for c in site.calls("kubeadm init")] in ([], [130])  # hung up, never finished
    assert node.read("/etc/kubernetes/admin.conf") is None


# ---- secrets never outlive their run (the private run directories) --------------------------


def _run_dirs(settings) -> list[Path]:
    return sorted(settings.runs_dir.glob("*")) if settings.runs_dir.is_dir() else []


def _keys_in_tmp() -> list[Path]:
    """Where main used to leave the control plane's key: /tmp/tempered-run-*."""
    return sorted(Path(tempfile.gettempdir()).glob("tempered-run-*"))


def test_run_directories_are_private_and_removed_after_success_and_failure(site: Site, settings):
    ran = replace(settings, ssh_proxy_command=site.lab.proxy_command)
    before = _keys_in_tmp()
    ok = site.lab.add("node-ok")
    slow = site.inject("slow", ok, "init", "5")
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(ansible.run, "join.yml", [ansible.Host(ok.name, ok.ip, ok.host_key, ["node"])],
                          init_vars(ok), ran, "private-test", ansible.Progress())
        deadline = time.monotonic() + 120
        while not site.started("kubeadm init") and time.monotonic() < deadline:
            time.sleep(0.1)
        (run_dir,) = _run_dirs(settings)  # while it runs: under $TEMPERED_HOME, owner only
        assert stat.S_IMODE(settings.runs_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((run_dir / "id_ed25519").stat().st_mode) == 0o600
        assert run.result(timeout=120).ok
    slow.unlink()
    assert _run_dirs(settings) == [] and _keys_in_tmp() == before

    bad = site.lab.add("node-bad")
    site.inject("fail", bad, "init", "[ERROR Port-6443]: Port 6443 is in use")
    outcome = ansible.run("join.yml", [ansible.Host(bad.name, bad.ip, bad.host_key, ["node"])], init_vars(bad), ran,
                          "private-test", ansible.Progress())
    assert not outcome.ok and "Port 6443 is in use" in outcome.summary()
    assert _run_dirs(settings) == [] and _keys_in_tmp() == before


def test_a_leftover_run_directory_is_swept_when_a_worker_starts(settings, worker):
    from tests.conftest import stack_env
    from tests.servers import Process

    settings.runs_dir.mkdir(mode=0o700, exist_ok=True)
    leftover = settings.runs_dir / "leftover"
    leftover.mkdir(mode=0o700)
    (leftover / "id_ed25519").write_text("a private key a killed worker left behind\n")
    (leftover / ".lock").touch()
    live = settings.runs_dir / "live"  # a run of another worker on the same home: kept
    live.mkdir(mode=0o700)
    lock = os.open(live / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    second = Process(["worker"], stack_env(settings), settings.home / "worker-sweep.log").start()
    try:
        deadline = time.monotonic() + 60
        while leftover.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leftover.exists(), second.tail()
        assert live.exists()
    finally:
        second.stop()
        os.close(lock)
        shutil.rmtree(live)


async def test_a_worker_stopped_mid_run_leaves_no_key_and_the_run_completes_after(site: Site, worker):
    prime = await _single_master(site)
    slow = site.inject("slow", prime, "init", "60\n0\n")  # this init hangs; the retried one does not
    before = _keys_in_tmp()
    await to_joining(prime)

    async def init_started() -> bool:
        return bool(site.started("kubeadm init")) and bool(_run_dirs(site.settings))

    await eventually(init_started, 120, what="kubeadm init to start on the prime")
    worker.stop(signal.SIGTERM)  # as `tempered up` stops it: the worker cancels its runs first
    try:
        assert worker.proc.returncode == 0, worker.tail()
        assert _run_dirs(site.settings) == [] and _keys_in_tmp() == before
    finally:
        worker.start()  # the session's other tests need it
    ready = await prime.wait_state("ready", "failed:join-cluster", timeout=240)
    slow.unlink()
    assert ready.state == "ready", ready.reason
    assert [c["rc"] for c in site.calls("kubeadm init")] == [130, 0]  # hung up, then run again

    async def runs_over() -> bool:  # (the cluster mints its first token meanwhile)
        return _run_dirs(site.settings) == []

    await eventually(runs_over, 120, what="every run directory to be removed")


# ---- join credentials under load --------------------------------------------------------------


async def _mint_attempt(site: Site) -> int:
    """The attempt of the cluster's pending `mint_join_credentials` activity (0 if none)."""
    from api import temporal

    described = await temporal.cluster(site.client, site.cluster).describe()
    return max((a.attempt for a in described.raw_description.pending_activities
                if a.activity_type.name == "mint_join_credentials"), default=0)


def _certificate_keys(settings, cluster: str) -> list[str]:
    from sqlmodel import select

    from activities.storage import db, secrets
    from activities.storage.models import JoinSecret

    with db.session(settings.database_url) as s:
        rows = s.exec(select(JoinSecret).where(JoinSecret.cluster == cluster, JoinSecret.kind != "token")
                      .order_by(JoinSecret.id)).all()
        return [secrets.unseal(settings, r.sealed) for r in rows]


async def test_a_mint_retried_while_its_first_attempt_still_runs_keeps_the_masters_key(site: Site, worker):
    """The worker starves (SIGSTOP) while the prime uploads the certificates for a master: the
    attempt times out at Temporal (30 s heartbeat timeout) and is retried while its upload still
    runs. The certificates on the cluster must be those under the key the master was given."""
    await create_cluster(site.client, site.settings, site.cluster, quorum=3, join_method="ansible")
    prime, master = site.machine("m1", 1), site.machine("m2", 2)
    assert (await discover(prime, "post-discover")).role == "master-prime"
    assert (await join(prime)).state == "ready"

    async def token_minted() -> bool:
        return (await cluster_status(site.client, site.cluster)).credentials.token_id is not None

    await eventually(token_minted, 120, what="the first join token")
    assert (await discover(master, "post-discover")).role == "master"
    slow = site.inject("slow", prime, "upload-certs", "60\n0\n")  # the first upload hangs, a retry's does not
    joining = asyncio.ensure_future(join(master, timeout=300))

    async def upload_started() -> bool:
        return bool(site.started("kubeadm upload-certs"))

    await eventually(upload_started, 120, what="the first upload-certs on the prime")
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        async def retried() -> bool:
            return await _mint_attempt(site) >= 2

        await eventually(retried, 120, what="Temporal to time the stalled attempt out and retry it")
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    ready = await joining
    assert ready.state == "ready", ready.reason

    def kubeadm_running() -> bool:
        def cmdline(pid: int) -> bytes:
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return b""
        return any(b"kubeadm" in cmdline(pid) for pid in netns_pids(prime.node.netns))

    async def uploads_over() -> bool:
        return not kubeadm_running()

    await eventually(uploads_over, 90, what="every upload-certs on the prime to end")
    slow.unlink()
    assert len(site.started("kubeadm upload-certs")) >= 2
    # The key of the newest mint (the one the master got; the machine may have asked for its plan
    # again while the worker was stopped) is the one the cluster holds after the last upload.
    assert _certificate_keys(site.settings, site.cluster)[-1] == site.cluster_state()["certificate_key"]["key"]
    assert [c["rc"] for c in site.calls("kubeadm join")] == [0]


async def test_a_superseded_mint_stops_before_it_uploads_anywhere(settings, unique):
    """A stale attempt (its run on one node stopped by a newer mint) must not go on to upload
    its key on the next control-plane node: before each node it checks the cluster's newest
    mint in the database, and stops for good when a newer one began."""
    from datetime import datetime, timedelta, timezone

    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from activities.domain.cluster import CredentialsRequest
    from activities.join import JoinActivities

    cluster, acts = unique("mint"), JoinActivities(settings)
    older = datetime.now(timezone.utc)
    newer = older + timedelta(seconds=5)
    assert acts.claim_upload(cluster, int(newer.timestamp() * 1e9))  # the newer mint's attempt ran first
    stale = ActivityEnvironment()
    stale.info = replace(stale.info, current_attempt_scheduled_time=older, workflow_run_id=unique("run"))
    request = CredentialsRequest(cluster=cluster, control_plane=["node-a", "node-b"], certificate_key=True)
    with pytest.raises(ApplicationError) as refused:
        await stale.run(acts.credentials, request)
    assert refused.value.type == "MintSuperseded" and refused.value.non_retryable, refused.value
    assert not acts.claim_upload(cluster, int(older.timestamp() * 1e9))  # still the newer one's
    assert acts.claim_upload(cluster, int((newer + timedelta(seconds=1)).timestamp() * 1e9))
