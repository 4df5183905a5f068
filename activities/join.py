"""Join activities: kubeadm through Ansible (the `join-cluster` and `decommission` steps) and
the join credentials the cluster workflow owns.

Each activity resolves the machines it needs (address from the machine workflow, pinned SSH
host key from the phone home), runs one playbook of `infra/ansible/` in a thread, heartbeats
with the task Ansible is on, and turns a failed play into an error an operator can act on: the
host, the task and its stderr. An unreachable node is retried; a failed task is not (the
machine parks in `failed:<step>` until an operator retries).

`kubeadm init` runs at most once per cluster: the cluster workflow asks for it only until the
master-prime has joined, and on the node a lock plus the test for admin.conf make a retried run
(say, after the worker died mid-init) wait for the first one and then skip.
"""

from __future__ import annotations

import asyncio
import secrets as random
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import IntegrityError
from sqlmodel import delete, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import ansible, rules
from activities.domain.cluster import (
    CONTROL_PLANE_ROLES,
    ClusterSpec,
    ClusterStatus,
    CredentialsRequest,
    JoinCredentials,
)
from activities.domain.ids import cluster_workflow_id, machine_workflow_id
from activities.domain.machine import DecommissionRequest, JoinOutcome, JoinRequest, MachineStatus
from activities.domain.rules import TAINT
from activities.heartbeat import Progress, heartbeating_run
from activities.inventory import running
from activities.storage import db, secrets
from activities.storage.models import Cluster, HostKey, JoinSecret, MintStamp
from activities.storage.settings import Settings

HEARTBEAT_EVERY = 5.0  # seconds; the workflows allow 30 s between heartbeats
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
API_PORT = 6443
CERTIFICATE_KEY = "certificate-key"  # JoinSecret.kind, followed by the mint it belongs to


def taint(text: str) -> dict[str, str]:
    """`key[=value]:Effect` (already validated as an attribute) -> kubeadm's taint object."""
    m = TAINT.match(text)
    if m is None:
        raise ValueError(f"not a taint: {text!r}")
    out = {"key": m["key"], "effect": m["effect"]}
    if m["value"]:
        out["value"] = m["value"]
    return out


def node_taints(role: str, attributes: list[str]) -> list[dict[str, str]]:
    """A control-plane node keeps kubeadm's default taint next to the ones rules gave it."""
    given = [taint(t) for t in attributes]
    if role in CONTROL_PLANE_ROLES and not any(t["key"] == CONTROL_PLANE_TAINT["key"] for t in given):
        given.insert(0, dict(CONTROL_PLANE_TAINT))
    return given


def new_token() -> str:
    """A kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`."""
    return f"{random.token_hex(3)}.{random.token_hex(8)}"


def playbook_failure(what: str, outcome: ansible.Outcome) -> ApplicationError:
    """A playbook that failed: retried when only unreachable hosts failed, else final."""
    unreachable = bool(outcome.failures) and all(f.unreachable for f in outcome.failures)
    return ApplicationError(
        f"{what}: {outcome.summary()}",
        type="NodeUnreachable" if unreachable else "PlaybookFailed",
        non_retryable=not unreachable,  # a failed task needs an operator; a node may come back
    )


class JoinActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # ---- activities ----------------------------------------------------------------------

    @activity.defn(name="kubeadm_join")
    async def join(self, request: JoinRequest) -> JoinOutcome:
        """init, join or rejoin one machine, as its cluster planned."""
        plan = request.plan
        node = await self.host(request.machine_id, ["node"], ip=request.ip, name=request.node_name)
        spec = await asyncio.to_thread(self._spec, request.cluster)
        endpoint = plan.endpoint or await self._prime_endpoint(plan.prime, request)
        labels, taints = await asyncio.to_thread(self._labels_and_taints, request.machine_id, plan.role)
        extravars = {
            "tempered_action": plan.action,
            "tempered_role": plan.role,
            "cluster_name": request.cluster,
            "node_name": request.node_name,
            "advertise_address": node.address,
            "kubernetes_version": (request.plan.kubernetes_version or spec.kubernetes_version).lstrip("v"),
            "control_plane_endpoint": endpoint,
            "pod_subnet": spec.pod_cidr,
            "service_subnet": spec.service_cidr,
            "node_labels": labels,
            "node_taints": taints,
        }
        if plan.action == "join":
            extravars |= await asyncio.to_thread(self._unsealed, request.cluster, plan.credentials)
        outcome = await self.run_playbook("join.yml", [node], extravars, f"join-{request.machine_id}-{request.boot}")
        if not outcome.ok:
            raise playbook_failure(f"kubeadm {plan.action} of {request.node_name}", outcome)
        return JoinOutcome(summary=str(outcome.stats.get("kubeadm", "joined")), changed=bool(outcome.changed))

    @activity.defn(name="mint_join_credentials")
    async def credentials(self, request: CredentialsRequest) -> JoinCredentials:
        """Create a join token (and a certificate key) and register them with kubeadm on the
        first reachable ready control-plane machine; store them sealed.

        Safe under retries: an attempt that timed out may still be running when the next one
        starts. The certificate key belongs to the activity, not the attempt (sealed on the
        first attempt, reused by every retry), so whichever upload lands last carries the key
        the cluster hands out; the earlier attempts' processes are stopped before this one
        runs, and on the node uploads are serialised and an older mint's never follows a newer
        one's. Tokens need none of this: a stale attempt's token is merely one more valid token."""
        info = activity.info()
        token = new_token() if request.token else ""
        key_id, key = (
            await asyncio.to_thread(self._certificate_key, request.cluster, f"{info.workflow_run_id}/{info.activity_id}")
            if request.certificate_key else (None, "")
        )
        stamp = int(info.current_attempt_scheduled_time.timestamp() * 1e9)
        extravars = {
            "cluster": request.cluster, "join_token": token, "token_ttl": f"{request.token_ttl_s}s",
            "certificate_key": key, "upload_stamp": stamp,
        }
        run_id = f"credentials-{request.cluster}"
        # The cluster workflow mints one at a time: any other run of this cluster is stale.
        await asyncio.to_thread(ansible.stop_runs, lambda marker: marker.rsplit(".", 1)[0] == run_id)
        errors = []
        for machine_id in request.control_plane:
            if key and not await asyncio.to_thread(self.claim_upload, request.cluster, stamp):
                raise ApplicationError(
                    f"a newer credentials mint of cluster {request.cluster} began: this attempt stops",
                    type="MintSuperseded", non_retryable=True,
                )
            try:
                host = await self.host(machine_id, ["control_plane"])
            except ApplicationError as err:
                errors.append(str(err))
                continue
            outcome = await self.run_playbook("credentials.yml", [host], extravars, run_id)
            if outcome.ok:
                return await asyncio.to_thread(
                    self._store, request, token, key_id, str(outcome.stats.get("ca_cert_hash", "")), machine_id
                )
            errors.append(outcome.summary())
        raise ApplicationError(
            "no control-plane machine could register join credentials: " + ("; ".join(errors) or "none is ready"),
            type="CredentialsFailed",
        )

    @activity.defn(name="kubeadm_decommission")
    async def decommission(self, request: DecommissionRequest) -> str:
        """Drain the node and delete it (from another control-plane machine when there is one),
        and `kubeadm reset` it. A node that is off is still removed from the cluster."""
        hosts, notes = [], []
        try:
            hosts.append(await self.host(request.machine_id, ["node"], ip=request.ip, name=request.node_name))
        except ApplicationError as err:
            notes.append(f"not reset: {err}")
        control_plane = request.control_plane or await self._others(request.cluster, request.machine_id)
        for machine_id in control_plane:
            try:
                cp = await self.host(machine_id, ["control_plane"])
            except ApplicationError as err:
                notes.append(str(err))
                continue
            hosts.append(cp)
            break
        if not hosts:
            return "nothing reachable: " + "; ".join(notes)
        if not any("control_plane" in h.groups for h in hosts):
            hosts[0].groups.append("control_plane")  # the last control-plane machine drains itself
        outcome = await self.run_playbook(
            "decommission.yml", hosts, {"node_name": request.node_name}, f"decommission-{request.machine_id}"
        )
        node_down = [f for f in outcome.failures if f.unreachable and f.host == request.node_name]
        if node_down:
            notes.append(f"not reset: {node_down[0]}")
            outcome.failures = [f for f in outcome.failures if f not in node_down]
            if outcome.status == "failed" and not outcome.failures:
                outcome.status = "successful"
        if not outcome.ok:
            raise playbook_failure(f"decommission of {request.node_name}", outcome)
        return "; ".join(["drained, reset and deleted from the cluster", *notes])

    # ---- helpers -------------------------------------------------------------------------

    async def run_playbook(self, playbook: str, hosts: list[ansible.Host], extravars: dict, run_id: str) -> ansible.Outcome:
        """Run the playbook in the long-runs pool; heartbeat its progress; on cancellation stop it."""
        progress = Progress(last=f"starting ansible-playbook {playbook}")
        outcome = await heartbeating_run(
            lambda: ansible.run(playbook, hosts, extravars, self.settings, run_id, progress), progress,
            every=HEARTBEAT_EVERY,
        )
        activity.logger.info("%s on %s: %s", playbook, ", ".join(h.name for h in hosts), outcome.status)
        return outcome

    async def machine_status(self, machine_id: str) -> MachineStatus:
        handle = activity.client().get_workflow_handle(machine_workflow_id(machine_id))
        return await handle.query("status", result_type=MachineStatus)

    async def host(
        self, machine_id: str, groups: list[str], ip: str | None = None, name: str | None = None
    ) -> ansible.Host:
        """A machine as Ansible reaches it: its address (asked from its workflow unless given)
        and the host key its phone home posted."""
        if ip is None or name is None:
            status = await self.machine_status(machine_id)
            ip, name = status.ip, status.node_name
        if not ip:
            raise ApplicationError(f"machine {machine_id} has no known address", type="NoAddress", non_retryable=True)
        key = await asyncio.to_thread(self._host_key, machine_id)
        if key is None:
            raise ApplicationError(
                f"machine {machine_id} has no SSH host key on record: its runtime OS has not phoned home",
                type="NoHostKey",
                non_retryable=True,
            )
        return ansible.Host(name=name, address=ip, host_key=key, groups=list(groups))

    async def _prime_endpoint(self, prime: str | None, request: JoinRequest) -> str:
        """No controlPlaneEndpoint in the spec: the master-prime's address."""
        if prime is None or prime == request.machine_id:
            return f"{request.ip}:{API_PORT}"
        return f"{(await self.machine_status(prime)).ip}:{API_PORT}"

    async def ready_control_plane(self, cluster: str) -> list[str]:
        """The cluster's ready control-plane members, as its workflow says; a cluster that is not
        running is final (ClusterNotFound)."""
        handle = activity.client().get_workflow_handle(cluster_workflow_id(cluster))
        status = await running(handle.query("status", result_type=ClusterStatus),
                               f"cluster {cluster!r} is not running", "ClusterNotFound")
        return [m.machine_id for m in status.members if m.ready and m.role in CONTROL_PLANE_ROLES]

    async def _others(self, cluster: str, leaving: str) -> list[str]:
        """The ready control-plane members but the machine leaving."""
        try:
            members = await self.ready_control_plane(cluster)
        except Exception:  # the cluster is gone: only the node itself is left to reset
            return []
        return [machine_id for machine_id in members if machine_id != leaving]

    def _host_key(self, machine_id: str) -> str | None:
        with db.session(self.settings.database_url) as s:
            row = s.get(HostKey, machine_id)
            return row.key if row else None

    def _spec(self, cluster: str) -> ClusterSpec:
        with db.session(self.settings.database_url) as s:
            row = s.get(Cluster, cluster)
            if row is None:
                raise ApplicationError(f"cluster {cluster!r} does not exist", type="ClusterNotFound", non_retryable=True)
            return ClusterSpec.model_validate(row.spec)

    def _labels_and_taints(self, machine_id: str, role: str) -> tuple[list[str], list[dict[str, str]]]:
        with db.session(self.settings.database_url) as s:
            held = rules.current(s, machine_id)
        return held.labels, node_taints(role, held.taints)

    def _unsealed(self, cluster: str, credentials: JoinCredentials) -> dict[str, str]:
        """The token, CA hash and (for a master) certificate key a join needs."""
        out = {"ca_cert_hash": credentials.ca_cert_hash, "join_token": "", "certificate_key": ""}
        with db.session(self.settings.database_url) as s:
            for field, ref in (("join_token", credentials.token_id), ("certificate_key", credentials.certificate_key_id)):
                row = s.get(JoinSecret, ref) if ref is not None else None
                if ref is not None and (row is None or row.cluster != cluster):
                    raise ApplicationError(f"join secret {ref} of cluster {cluster} is gone", non_retryable=True)
                if row is not None:
                    out[field] = secrets.unseal(self.settings, row.sealed)
        if not out["join_token"]:
            raise ApplicationError("the cluster gave no join token", non_retryable=True)
        return out

    def claim_upload(self, cluster: str, stamp: int) -> bool:
        """Record `stamp` as the cluster's newest mint attempt; False if a newer one began since.
        Checked before each node: a stale attempt whose run on one node was stopped must not go
        on to upload its key on the next (that node's own stamp would not know of the newer)."""
        for _ in range(2):  # two first claims racing: the loser reads the winner's row
            try:
                with db.session(self.settings.database_url) as s:
                    row = s.get(MintStamp, cluster) or MintStamp(cluster=cluster, stamp=stamp)
                    if row.stamp > stamp:
                        return False
                    row.stamp = stamp
                    s.add(row)
                    s.commit()
                    return True
            except IntegrityError:
                continue
        return False

    def _certificate_key(self, cluster: str, mint: str) -> tuple[int, str]:
        """The certificate key of one mint (`mint` is stable across its attempts): created and
        sealed by the first attempt, the same key for every retry. If two attempts race to
        create it, the first row wins."""
        kind = f"{CERTIFICATE_KEY} {mint}"
        query = select(JoinSecret).where(JoinSecret.cluster == cluster, JoinSecret.kind == kind).order_by(JoinSecret.id)
        with db.session(self.settings.database_url) as s:
            row = s.exec(query).first()
            if row is None:  # kubeadm deletes uploaded certificates after two hours
                expires = datetime.now(timezone.utc) + timedelta(hours=2)
                sealed = secrets.seal(self.settings, random.token_hex(32))
                s.add(JoinSecret(cluster=cluster, kind=kind, sealed=sealed, expires_at=expires))
                s.commit()
                row = s.exec(query).first()
            return row.id, secrets.unseal(self.settings, row.sealed)

    def _store(self, request: CredentialsRequest, token: str, key_id: int | None, ca_hash: str, on: str) -> JoinCredentials:
        now = datetime.now(timezone.utc)
        out = JoinCredentials(ca_cert_hash=ca_hash, minted_on=on, certificate_key_id=key_id)
        with db.session(self.settings.database_url) as s:
            if key_id is not None:  # uploaded just now: valid for two hours from here
                key_row = s.get(JoinSecret, key_id)
                key_row.expires_at = now + timedelta(hours=2)
                s.add(key_row)
            token_row = None
            if token:
                expires = now + timedelta(seconds=request.token_ttl_s)
                sealed = secrets.seal(self.settings, token)
                token_row = JoinSecret(cluster=request.cluster, kind="token", sealed=sealed, expires_at=expires)
                out.token_expires_at = expires
                s.add(token_row)
            s.exec(delete(JoinSecret).where(JoinSecret.cluster == request.cluster, JoinSecret.expires_at < now))
            s.commit()
            out.token_id = token_row.id if token_row is not None else None
        return out
