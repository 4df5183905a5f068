"""Rendering a machine's user-data: the activity behind the workflow's `render` step.

It runs once the machine has its role, before it is told to reboot into the runtime OS, so a
broken fragment keeps the machine waiting in discovery (`failed:render`, with the reason)
instead of booting a node cloud-init cannot configure. The document is stored, sealed, for the
machine's next runtime boot; the workflow keeps only its digest and the machine's kernel
arguments.

The phone-home URL carries the per-boot token, which only exists once the machine PXE boots:
the document holds PHONE_HOME_URL, and the machine route puts the real URL in its place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import cloudconfig, sshkey
from activities import rules as rules_store
from activities.domain.cluster import ClusterSpec
from activities.domain.machine import RenderRequest, RenderResult
from activities.domain.lifecycle import POST_DISCOVER
from activities.storage import db, machinestate, secrets
from activities.storage.models import Cluster, Facts, Fragment, UserData, utcnow
from activities.storage.settings import Settings

PHONE_HOME_URL = "http://edge.tempered.invalid/phone-home"  # replaced when served
DATA_DIRS = ("/var/lib/containerd", "/var/lib/kubelet", "/var/lib/etcd", "/etc/kubernetes")
DATA_DISK_VARIABLE = "data_disk"


def data_disk(facts: dict[str, Any] | None, variables: dict[str, str]) -> str | None:
    """The disk the node keeps its state on: the `data_disk` variable if set, else the largest
    disk the facts list (ties: the first by name)."""
    if variables.get(DATA_DISK_VARIABLE):
        return variables[DATA_DISK_VARIABLE]
    disks = sorted((facts or {}).get("disks") or [], key=lambda d: (-int(d.get("size_bytes") or 0), d.get("name", "")))
    return f"/dev/{disks[0]['name']}" if disks else None


def compose(
    request: RenderRequest,
    spec: ClusterSpec,
    variables: dict[str, str],
    includes: list[tuple[str, str | None]],
    disk: str | None,
    ssh_public_key: str,
) -> dict[str, Any]:
    """The merged, validated cloud-config: base template, then each included fragment."""
    machine = {
        "id": request.machine_id, "hostname": request.hostname, "cluster": request.cluster,
        "role": request.role, "is_new": request.is_new,
    }
    context = {
        "machine": machine, "var": cloudconfig.Variables(variables), "ssh_public_key": ssh_public_key, "ntp_servers": spec.ntp_servers,
        "data_disk": disk, "data_dirs": DATA_DIRS, "phone_home_url": PHONE_HOME_URL,
        # the version the cluster runs (an upgrade sets it): what a kubernetes fragment installs
        "kubernetes_version": spec.kubernetes_version.lstrip("v"),
        "kubernetes_minor": ".".join(spec.kubernetes_version.lstrip("v").split(".")[:2]),  # pkgs.k8s.io's repo
    }
    base = cloudconfig.render_template(cloudconfig.BASE_TEMPLATE.read_text(), context, "the base template")
    parts = [cloudconfig.parse(base, "the base template")]
    for name, body in includes:
        if body is None:
            raise cloudconfig.CloudConfigError(
                f"include {name!r} names no fragment: create it with 'tempered fragment set {name} FILE' "
                f"(PUT /v1/cloud-init/fragments/{name}), then retry the machine"
            )
        source = f"fragment {name!r}"
        parts.append(cloudconfig.parse(cloudconfig.render_template(body, context, source), source))
    merged = cloudconfig.merge(parts)
    cloudconfig.validate(merged, "the merged user-data")
    return merged


class RenderActivities:
    """Activities bound to the control plane's settings (database, secret key)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="render_user_data")
    def render(self, request: RenderRequest) -> RenderResult:
        with db.session(self.settings.database_url) as s:
            held = rules_store.current(s, request.machine_id)
            cluster = s.get(Cluster, request.cluster)
            spec = ClusterSpec.model_validate(cluster.spec) if cluster else ClusterSpec(name=request.cluster)
            facts = s.exec(
                select(Facts).where(Facts.machine_id == request.machine_id).order_by(Facts.boot.desc())
            ).first()
            includes = [(name, _fragment_body(s, name)) for name in held.includes]
            disk = data_disk(facts.data if facts else None, held.variables)
            try:
                config = compose(request, spec, held.variables, includes, disk, sshkey.public_key(self.settings))
            except cloudconfig.CloudConfigError as err:
                raise ApplicationError(str(err), type="RenderFailed", non_retryable=True) from None
            document = json.dumps(config, sort_keys=True)
            digest = hashlib.sha256(document.encode()).hexdigest()
            row = s.get(UserData, request.machine_id) or UserData(
                machine_id=request.machine_id, digest=digest, sealed="", hostname=request.hostname
            )
            row.digest, row.hostname = digest, request.hostname
            row.sealed = secrets.seal(self.settings, document)
            row.rendered_at = utcnow()
            s.add(row)
            # rendered is the machine's move to post-discover: the state lists show (machinestate.py)
            machinestate.record(s, request.machine_id, state=POST_DISCOVER, role=request.role)
            s.commit()
        activity.logger.info(
            "rendered user-data for %s: %d bytes, includes %s", request.machine_id, len(document), held.includes or "none"
        )
        return RenderResult(digest=digest, size=len(document), includes=held.includes, kargs=held.kargs, data_disk=disk)


def _fragment_body(session, name: str) -> str | None:
    row = session.get(Fragment, name)
    return row.body if row else None


def served(settings: Settings, machine_id: str, phone_home_url: str) -> tuple[str, str] | None:
    """(the `#cloud-config` document with this boot's phone-home URL, hostname), or None if
    nothing was rendered for the machine."""
    with db.session(settings.database_url) as s:
        row = s.get(UserData, machine_id)
    if row is None:
        return None
    config = json.loads(secrets.unseal(settings, row.sealed))
    phone_home = config.get("phone_home")
    if isinstance(phone_home, dict) and phone_home.get("url") == PHONE_HOME_URL:
        phone_home["url"] = phone_home_url
    return cloudconfig.dump(config), row.hostname
