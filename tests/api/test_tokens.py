"""Named tokens with roles, and the audit trail, over HTTP and the CLI against a real `tempered api`."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import sqlite3
import subprocess
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from activities.storage.models import AuditEntry
from api import audit as audit_mod
from api.auth import BOOTSTRAP, issue_token
from tests.servers import VENV_BIN, Postgres

# The decided role of every operator route. A route missing here fails the first test: each new
# operator route needs a decision (api/auth.py: Viewer, Operator, Admin).
ROLE_OF = {
    ("GET", "/v1/clusters"): "viewer",
    ("POST", "/v1/clusters"): "operator",
    ("GET", "/v1/clusters/{name}"): "viewer",
    ("DELETE", "/v1/clusters/{name}"): "operator",
    ("POST", "/v1/clusters/{name}/retry"): "operator",
    ("POST", "/v1/clusters/{name}/terraform/{task}/plan"): "operator",
    ("POST", "/v1/clusters/{name}/operations"): "operator",
    ("GET", "/v1/clusters/{name}/operations"): "viewer",
    ("POST", "/v1/clusters/{name}/operations/{action}"): "operator",
    ("GET", "/v1/machines"): "viewer",
    ("POST", "/v1/machines"): "operator",
    ("GET", "/v1/machines/{machine_id}"): "viewer",
    ("POST", "/v1/machines/{machine_id}/retry"): "operator",
    ("POST", "/v1/machines/{machine_id}/join-result"): "operator",
    ("POST", "/v1/machines/{machine_id}/reboot"): "operator",
    ("POST", "/v1/machines/{machine_id}/reprovision"): "operator",
    ("POST", "/v1/machines/{machine_id}/decommission"): "operator",
    ("GET", "/v1/machines/{machine_id}/power"): "operator",  # the BMC address and user: not for viewers
    ("PUT", "/v1/machines/{machine_id}/power"): "admin",  # a BMC password, like a TSIG secret
    ("DELETE", "/v1/machines/{machine_id}/power"): "admin",
    ("POST", "/v1/machines/{machine_id}/power/{action}"): "operator",
    ("GET", "/v1/clusters/{name}/rules"): "viewer",
    ("PUT", "/v1/clusters/{name}/rules"): "operator",
    ("POST", "/v1/clusters/{name}/rules/dry-run"): "operator",
    ("GET", "/v1/cloud-init/fragments"): "operator",  # fragment bodies may carry secrets
    ("GET", "/v1/cloud-init/fragments/{name}"): "operator",
    ("PUT", "/v1/cloud-init/fragments/{name}"): "operator",
    ("DELETE", "/v1/cloud-init/fragments/{name}"): "operator",
    ("GET", "/v1/audit"): "operator",
    ("GET", "/v1/edges"): "viewer",
    ("GET", "/v1/edges/{name}"): "viewer",
    ("POST", "/v1/edges"): "admin",
    ("PUT", "/v1/edges/{name}/policy"): "admin",
    ("DELETE", "/v1/edges/{name}"): "admin",
    ("GET", "/v1/dns"): "viewer",  # secrets redacted
    ("PUT", "/v1/dns"): "admin",
    ("DELETE", "/v1/dns"): "admin",
    ("GET", "/v1/clusters/{name}/dns"): "viewer",
    ("PUT", "/v1/clusters/{name}/dns"): "admin",
    ("DELETE", "/v1/clusters/{name}/dns"): "admin",
    ("GET", "/v1/tokens"): "admin",
    ("POST", "/v1/tokens"): "admin",
    ("DELETE", "/v1/tokens/{name}"): "admin",
    ("GET", "/v1/terraform/states"): "viewer",
    ("GET", "/v1/terraform/states/{cluster}/{name}/versions"): "viewer",
    ("GET", "/v1/terraform/states/{cluster}/{name}/versions/{version}"): "admin",  # a state holds secrets
    ("POST", "/v1/terraform/states/{cluster}/{name}/versions/{version}/rollback"): "operator",
    ("POST", "/v1/terraform/states/{cluster}/{name}/force-unlock"): "operator",
    ("GET", "/v1/terraform/credentials/{cluster}"): "admin",
    ("POST", "/v1/terraform/credentials/{cluster}/rotate"): "admin",
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}
# Machine- and edge-facing: their own tokens; Terraform's state store: the cluster's basic auth.
NOT_OPERATOR_ROUTES = ("/v1/boot/", "/v1/edge/", "/v1/terraform/state/")


def create_token(api_server, name: str, role: str, **extra) -> str:
    with api_server.client() as http:
        created = http.post("/v1/tokens", json={"name": name, "role": role, **extra})
    assert created.status_code == 201, created.text
    return created.json()["token"]


def audit(api_server, **params) -> list[dict]:
    with api_server.client() as http:
        response = http.get("/v1/audit", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_each_role_reaches_its_routes_and_is_refused_the_rest_naming_the_role(api_server, unique, role):
    spec = api_server_spec(api_server)
    routes = {
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        for method in methods
        if path.startswith("/v1/") and not path.startswith(NOT_OPERATOR_ROUTES)
    }
    assert routes == set(ROLE_OF), f"routes without a decided role: {routes - set(ROLE_OF)}"
    name = unique(role)
    token = create_token(api_server, name, role)
    with api_server.client(token) as http:
        for (method, path), needed in ROLE_OF.items():
            # Allowed calls are harmless: the parameters name nothing, the bodies are empty.
            response = http.request(method, re.sub(r"\{[^}]+\}", "no-such-thing", path), json={})
            if RANK[role] < RANK[needed]:
                assert response.status_code == 403, (method, path, response.text)
                assert response.json()["detail"] == f"this needs the {needed} role; token {name!r} has the {role} role"
            else:
                assert response.status_code not in (401, 403), (method, path, response.text)


def api_server_spec(api_server) -> dict:
    with api_server.client(None) as http:
        return http.get("/openapi.json").json()


def test_tokens_are_created_listed_and_revoked(api_server, unique):
    name = unique("ci")
    token = create_token(api_server, name, "viewer", expires_in_seconds=3600)
    with api_server.client() as http:
        listed = {t["name"]: t for t in http.get("/v1/tokens").json()}
        assert listed[name]["role"] == "viewer" and listed[name]["expires_at"] and not listed[name]["expired"]
        assert listed["admin"]["role"] == "admin" and listed["admin"]["expires_at"] is None
        assert token not in http.get("/v1/tokens").text

        again = http.post("/v1/tokens", json={"name": name, "role": "admin"})
        assert again.status_code == 409 and "already exists" in again.json()["detail"]
        assert http.post("/v1/tokens", json={"name": "admin", "role": "viewer"}).status_code == 409
        assert http.post("/v1/tokens", json={"name": "Not_A_Label", "role": "viewer"}).status_code == 422
        assert http.post("/v1/tokens", json={"name": unique("x"), "role": "root"}).status_code == 422

        with api_server.client(token) as as_ci:
            assert as_ci.get("/v1/clusters").status_code == 200
            assert http.delete(f"/v1/tokens/{name}").status_code == 204
            refused = as_ci.get("/v1/clusters")
            assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
        assert http.delete(f"/v1/tokens/{name}").status_code == 404
        assert name not in [t["name"] for t in http.get("/v1/tokens").json()]
        bootstrap = http.delete("/v1/tokens/admin")
        assert bootstrap.status_code == 409 and "admin-token" in bootstrap.json()["detail"]
        assert http.get("/v1/tokens").status_code == 200  # the admin token still works


def test_an_expired_token_is_refused(api_server, settings, unique):
    expired = issue_token(settings, "admin", ttl=timedelta(seconds=-1), name=unique("old"))
    with api_server.client(expired) as http:
        response = http.get("/v1/clusters")
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_the_database_holds_only_digests_of_tokens(api_server, settings, unique):
    name = unique("hashed")
    token = create_token(api_server, name, "operator")
    dump = "\n".join(sqlite3.connect(settings.database_url.removeprefix("sqlite:///")).iterdump())
    assert token not in dump and api_server.token not in dump
    assert hashlib.sha256(token.encode()).hexdigest() in dump


def test_the_audit_trail_records_calls_with_actor_and_answer_refusals_included(api_server, unique, tmp_path):
    from tests.conftest import catch_all_edge

    operator, viewer, cluster = unique("op"), unique("view"), unique("c")
    as_operator = create_token(api_server, operator, "operator")
    as_viewer = create_token(api_server, viewer, "viewer")
    mac = "52:54:00:" + ":".join(secrets.token_hex(3)[i:i + 2] for i in (0, 2, 4))
    with api_server.client(as_operator) as http:
        assert http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).status_code == 201
        assert http.get(f"/v1/clusters/{cluster}").status_code == 200  # a read: not recorded
        registered = http.post("/v1/machines", json={"cluster": cluster, "mac": mac})
        assert registered.status_code == 201, registered.text
        assert http.post("/v1/audit").status_code == 405  # no route takes it: no call, no entry
    with api_server.client(as_viewer) as http:
        assert http.delete(f"/v1/clusters/{cluster}").status_code == 403
    with api_server.client(None) as http:
        assert http.delete(f"/v1/clusters/{cluster}").status_code == 401

    created, placed = sorted(audit(api_server, actor=operator), key=lambda e: e["route"])
    assert created | {"at": None} == {  # a create names what it made, from the body's name
        "at": None, "actor": operator, "role": "operator", "method": "POST", "route": "/v1/clusters",
        "params": {"name": cluster}, "status": 201,
    }
    assert (placed["route"], placed["params"]) == (
        "/v1/machines", {"machine_id": registered.json()["id"], "cluster": cluster}
    )
    _, edge = catch_all_edge(api_server, unique, "52:54:00:a7", tmp_path / "edge-token")
    by_admin = [(e["route"], e["params"]) for e in audit(api_server, actor=BOOTSTRAP)]
    for made in (("/v1/tokens", {"name": operator}), ("/v1/tokens", {"name": viewer}), ("/v1/edges", {"name": edge})):
        assert made in by_admin
    assert all(e["route"] != "/v1/audit" for e in audit(api_server))
    [refused] = audit(api_server, actor=viewer)
    assert (refused["method"], refused["route"], refused["params"], refused["status"], refused["role"]) == (
        "DELETE", "/v1/clusters/{name}", {"name": cluster}, 403, "viewer"
    )
    anonymous = [e for e in audit(api_server) if e["params"] == {"name": cluster} and e["status"] == 401]
    assert anonymous == []  # anyone can send those: counted in the metrics, not stored

    newest = audit(api_server, since=refused["at"], limit=1)
    assert len(newest) == 1 and newest[0]["at"] >= refused["at"]
    assert created not in audit(api_server, since=refused["at"])
    with api_server.client(as_viewer) as http:
        assert http.get("/v1/audit").status_code == 403


def test_the_audit_trail_never_holds_a_token_or_a_body(api_server, settings, unique):
    secret = base64.b64encode(secrets.token_bytes(48)).decode()
    cluster, fragment = unique("c"), unique("frag")
    marker = f"motd-{secrets.token_hex(8)}"
    with api_server.client() as http:
        assert http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).status_code == 201
        dns = {"zone": "tempered.test", "servers": [{"host": "127.0.0.1", "port": 5353}],
               "key": {"name": "tempered", "secret": secret, "algorithm": "hmac-sha512"}}
        assert http.put(f"/v1/clusters/{cluster}/dns", json=dns).status_code == 200
        body = {"content": f"write_files:\n  - {{path: /etc/motd, content: {marker}}}\n"}
        assert http.put(f"/v1/cloud-init/fragments/{fragment}", json=body).status_code == 200
    token = create_token(api_server, unique("shown-once"), "viewer")
    with api_server.client(token + "-wrong") as http:
        assert http.post("/v1/clusters", json={"name": unique("c")}).status_code == 401

    trail = str(audit(api_server))
    assert f"'cluster': '{cluster}'" not in trail and f"'name': '{cluster}'" in trail  # names only, no body
    database = settings.database_url.removeprefix("sqlite:///")
    rows = str(sqlite3.connect(database).execute("SELECT * FROM auditentry").fetchall())
    for kept_out in (secret, marker, token, api_server.token):
        assert kept_out not in trail and kept_out not in rows


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    if os.geteuid() != 0 or Postgres.bindir() is None:
        pytest.skip("PostgreSQL runs as its own user: needs root and postgresql installed")
    pg = Postgres(tmp_path).start()
    yield pg.url
    pg.stop()


def test_an_older_database_gains_the_audit_table_and_unique_names(database_url, settings):
    """What the previous release left (no audit table, no unique index, two bootstrap rows named
    "admin") is brought up to date when a process opens it; names are unique from then on, and
    the audit trail is written and read there."""
    from activities.storage import db

    mine = replace(settings, database_url=database_url)
    with db.engine(database_url).begin() as conn:
        conn.execute(text("DROP TABLE auditentry"))
        conn.execute(text("DROP INDEX ux_token_operator_name"))
        for n in (1, 2):
            conn.execute(text(f"INSERT INTO token (kind, digest, name, created_at) VALUES ('admin', 'd{n}', 'admin', '2026-01-01')"))
    db.engine.cache_clear()
    try:
        inspector = inspect(db.engine(database_url))
        assert "auditentry" in inspector.get_table_names()
        assert "ux_token_operator_name" in {index["name"] for index in inspector.get_indexes("token")}
        issue_token(mine, "viewer", name="ci")
        with pytest.raises(IntegrityError):
            issue_token(mine, "admin", name="ci")
        issue_token(mine, "edge", name="ci")  # edge and boot tokens are not operator tokens: not unique
        audit_mod._write(mine, AuditEntry(actor="ci", role="viewer", method="PUT", route="/v1/x", status=403))
        with db.session(database_url) as s:
            assert [(e.actor, e.status) for e in s.exec(select(AuditEntry))] == [("ci", 403)]
    finally:
        db.engine.cache_clear()


# ---- the CLI ---------------------------------------------------------------------------------


def tempered(api_server, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = api_server.env | {"TEMPERED_TOKEN": token or api_server.token, "COLUMNS": "200"}
    return subprocess.run([str(VENV_BIN / "tempered"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_tokens_and_the_audit_trail_from_the_cli(api_server, unique):
    import json

    name = unique("cli")
    created = tempered(api_server, "token", "create", name, "--role", "viewer", "--expires-in", "30d", "-o", "json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    shown = tempered(api_server, "token", "create", unique("cli"), "--role", "operator")
    assert shown.returncode == 0 and "shown once" in shown.stdout and "expires never" in shown.stdout

    listed = tempered(api_server, "token", "list")
    assert re.search(rf"{name}\s+│\s+viewer", listed.stdout), listed.stdout
    assert token not in listed.stdout
    assert json.loads(tempered(api_server, "token", "list", "-o", "json").stdout)
    bad = tempered(api_server, "token", "create", unique("cli"), "--role", "viewer", "--expires-in", "soon")
    assert bad.returncode == 2 and "--expires-in" in bad.stderr

    refused = tempered(api_server, "cluster", "create", unique("c"), "--quorum", "1", token=token)
    assert refused.returncode == 4 and "needs the operator role" in refused.stderr
    assert tempered(api_server, "token", "revoke", name).returncode == 0
    revoked = tempered(api_server, "cluster", "list", token=token)
    assert revoked.returncode == 4 and "invalid, revoked or expired token" in revoked.stderr

    trail = json.loads(tempered(api_server, "audit", "--actor", name, "-o", "json").stdout)
    assert [(e["method"], e["route"], e["status"]) for e in trail] == [("POST", "/v1/clusters", 403)]
    table = tempered(api_server, "audit", "--limit", "5")
    assert table.returncode == 0 and "DELETE /v1/tokens/{name}" in table.stdout and f"name={name}" in table.stdout
