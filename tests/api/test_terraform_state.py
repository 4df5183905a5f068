"""Terraform's http backend protocol against a real `tempered api` (issue 16, items 1 and 6).

Every request is what Terraform's own client (internal/backend/remote-state/http/client.go)
sends: GET, POST with Content-MD5 and `?ID=` while locked, DELETE, LOCK and UNLOCK with the lock
info JSON, UNLOCK with no body for `terraform force-unlock`. Then the operator side: versions
listed, shown (admin only) and rolled back, force-unlock, credentials shown and rotated; and
nothing of a state body or a password in the API's log or the audit trail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid

import httpx
import pytest
from sqlmodel import select

from activities.storage import db, tfcredentials, tfstate
from activities.storage.models import TfStateVersion

SECRET_MARK = "s3cr3t-" + secrets.token_hex(8)  # a resource attribute: must never be logged


def state(serial: int, lineage: str, marker: str = "one") -> bytes:
    return json.dumps({
        "version": 4, "terraform_version": "1.15.5", "serial": serial, "lineage": lineage,
        "outputs": {"marker": {"value": marker, "type": "string"}},
        "resources": [{"mode": "managed", "type": "terraform_data", "name": "x", "provider": "provider[\"terraform.io/builtin/terraform\"]",
                       "instances": [{"attributes": {"id": "1", "input": SECRET_MARK, "output": SECRET_MARK}}]}],
        "check_results": None,
    }, indent=2).encode()


def lock_info(lock_id: str | None = None, who: str = "alice@site-a") -> dict:
    return {"ID": lock_id or str(uuid.uuid4()), "Operation": "OperationTypeApply", "Info": "", "Who": who,
            "Version": "1.15.5", "Created": "2026-12-06T12:00:00.000000Z", "Path": ""}


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


class Backend:
    """Terraform's http backend client, request for request."""

    def __init__(self, api_server, cluster: str, name: str, auth: tuple[str, str] | None) -> None:
        self.path = f"/v1/terraform/state/{cluster}/{name}"
        self.http = httpx.Client(base_url=api_server.url, auth=auth, timeout=60)

    def get(self) -> httpx.Response:
        return self.http.get(self.path)

    def post(self, body: bytes, lock_id: str | None = None, md5: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json", "Content-MD5": md5 or md5_b64(body)}
        return self.http.post(self.path, content=body, headers=headers, params={"ID": lock_id} if lock_id else None)

    def delete(self) -> httpx.Response:
        return self.http.delete(self.path)

    def lock(self, info: dict | bytes) -> httpx.Response:
        body = info if isinstance(info, bytes) else json.dumps(info).encode()
        return self.http.request("LOCK", self.path, content=body, headers={"Content-MD5": md5_b64(body)})

    def unlock(self, info: dict | None) -> httpx.Response:
        body = b"" if info is None else json.dumps(info).encode()  # force-unlock: Terraform sends nothing
        return self.http.request("UNLOCK", self.path, content=body, headers={"Content-MD5": md5_b64(body)})


@pytest.fixture
def cluster(api_server, unique) -> str:
    name = unique("tf")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": name, "quorum_count": 1}).raise_for_status()
    return name


@pytest.fixture
def backend(api_server, settings, cluster, unique) -> Backend:
    return Backend(api_server, cluster, unique("task"), tfcredentials.cluster_credentials(settings, cluster))


def test_get_post_delete_round_trip_with_content_md5(backend):
    assert backend.get().status_code == 204  # no state yet
    body = state(1, str(uuid.uuid4()))
    assert backend.post(body).status_code == 200
    got = backend.get()
    assert got.status_code == 200 and got.content == body
    assert got.headers["Content-MD5"] == md5_b64(body) and got.headers["content-type"] == "application/json"
    assert backend.delete().status_code == 200
    assert backend.get().status_code == 204
    assert backend.delete().status_code == 200  # nothing left: still fine


def test_bad_bodies_are_refused_and_store_nothing(backend, settings):
    lineage = str(uuid.uuid4())
    backend.post(state(1, lineage)).raise_for_status()
    not_json = b'{"version": 4, "serial": ' + SECRET_MARK.encode()
    refused = backend.post(not_json)
    assert refused.status_code == 400 and "not JSON" in refused.json()["detail"]
    assert SECRET_MARK not in refused.text
    assert backend.post(b"[1, 2]").status_code == 400
    damaged = backend.post(state(2, lineage), md5=md5_b64(b"something else"))
    assert damaged.status_code == 400 and "Content-MD5" in damaged.json()["detail"]
    assert backend.post(state(2, lineage), md5="%%%").status_code == 400
    assert backend.get().content == state(1, lineage)
    with db.session(settings.database_url) as s:
        path = backend.path.split("/")
        rows = s.exec(select(TfStateVersion).where(TfStateVersion.cluster == path[-2], TfStateVersion.name == path[-1])).all()
    assert [row.version for row in rows] == [1]
    assert all(SECRET_MARK not in row.sealed for row in rows)  # sealed at rest


def test_a_huge_body_is_413(backend):
    huge = b'{"pad": "' + b"x" * (tfstate.MAX_STATE_BYTES + 1) + b'"}'
    refused = backend.post(huge)
    assert refused.status_code == 413 and len(refused.content) < 1000
    # Streamed (chunked, no Content-Length) it is counted as it arrives.
    chunks = (huge[i:i + (1 << 20)] for i in range(0, len(huge), 1 << 20))
    streamed = backend.http.post(backend.path, content=chunks, headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert backend.lock(b'{"ID": "' + b"x" * tfstate.MAX_LOCK_BYTES + b'"}').status_code == 413
    assert backend.get().status_code == 204


def test_lock_refuses_a_second_holder_with_the_first_holders_info(backend):
    lineage = str(uuid.uuid4())
    alice, bob = lock_info(who="alice@site-a"), lock_info(who="bob@site-b")
    assert backend.lock(alice).status_code == 200
    assert backend.lock(alice).status_code == 200  # a retried LOCK of the same ID
    refused = backend.lock(bob)
    assert refused.status_code == 423 and refused.json() == alice  # Terraform prints this as "Lock Info"
    # Writes: only under the holder's ID.
    assert backend.post(state(1, lineage), lock_id=alice["ID"]).status_code == 200
    for wrong in (bob["ID"], None):
        held = backend.post(state(2, lineage), lock_id=wrong)
        assert held.status_code == 423 and held.json()["ID"] == alice["ID"]
    deleting = backend.delete()
    assert deleting.status_code == 423 and deleting.json()["Who"] == "alice@site-a"
    # UNLOCK with another ID is refused with the holder's info; the holder's own releases it.
    wrong_unlock = backend.unlock(bob)
    assert wrong_unlock.status_code == 423 and wrong_unlock.json()["ID"] == alice["ID"]
    assert backend.unlock(alice).status_code == 200
    assert backend.lock(bob).status_code == 200
    # Alice's lock is gone: her late write is refused rather than written over Bob's lock.
    assert backend.post(state(3, lineage), lock_id=alice["ID"]).status_code == 423
    assert backend.unlock(bob).status_code == 200
    late = backend.post(state(3, lineage), lock_id=alice["ID"])
    assert late.status_code == 409 and "force-unlocked" in late.json()["detail"]
    assert json.loads(backend.get().content)["serial"] == 1
    assert backend.unlock(bob).status_code == 200  # not locked: nothing to release


def test_a_lock_body_without_an_id_is_400(backend):
    for body in (b"", b"not json", b"[]", json.dumps({"Who": "x"}).encode(), json.dumps({"ID": "  "}).encode()):
        refused = backend.lock(body)
        assert refused.status_code == 400, body
        assert "ID" in refused.json()["detail"] or "JSON" in refused.json()["detail"]
    assert backend.unlock({"Who": "x"}).status_code == 400


def test_force_unlock_releases_whoever_holds_the_lock_and_logs_the_holder(backend, api_server, settings):
    holder = lock_info(who="carol@crashed-runner")
    backend.lock(holder).raise_for_status()
    assert backend.unlock(None).status_code == 200  # `terraform force-unlock` sends no lock info
    assert backend.lock(lock_info()).status_code == 200
    log = (settings.home / "api.log").read_text()
    assert f"released lock {holder['ID']} held by carol@crashed-runner" in log


def test_credentials_are_scoped_to_one_cluster(api_server, settings, cluster, unique):
    other = unique("tf")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": other, "quorum_count": 1}).raise_for_status()
    mine, theirs = tfcredentials.cluster_credentials(settings, cluster), tfcredentials.cluster_credentials(settings, other)
    assert mine[0] != theirs[0] and mine[1] != theirs[1]
    assert tfcredentials.cluster_credentials(settings, cluster) == mine  # created once
    path = f"/v1/terraform/state/{cluster}/task"
    with httpx.Client(base_url=api_server.url, timeout=60) as http:
        for method in ("GET", "POST", "DELETE", "LOCK", "UNLOCK"):
            missing = http.request(method, path, content=b"{}")
            assert missing.status_code == 401, method
            assert missing.headers["WWW-Authenticate"].startswith("Basic")
            assert http.request(method, path, content=b"{}", auth=(mine[0], "wrong")).status_code == 401
            assert http.request(method, path, content=b"{}", auth=theirs).status_code == 403
            bearer = http.request(method, path, content=b"{}", headers={"Authorization": f"Bearer {api_server.token}"})
            assert bearer.status_code == 401, "the admin token never opens a state"
        assert http.get(path, auth=mine).status_code == 204
        unknown = http.get(f"/v1/terraform/state/{unique('nosuch')}/task", auth=mine)
        assert unknown.status_code == 404


def test_nothing_of_a_state_or_a_password_reaches_the_log_or_the_audit(backend, api_server, settings, cluster):
    lineage = str(uuid.uuid4())
    info = lock_info()
    backend.lock(info).raise_for_status()
    backend.post(state(1, lineage), lock_id=info["ID"]).raise_for_status()
    backend.post(b'{"broken": ' + SECRET_MARK.encode(), lock_id=info["ID"])
    backend.unlock(info).raise_for_status()
    _, password = tfcredentials.cluster_credentials(settings, cluster)
    with api_server.client() as http:
        trail = http.get("/v1/audit", params={"limit": 1000}).text
    for where in ((settings.home / "api.log").read_text(), trail):
        assert SECRET_MARK not in where and password not in where


# ---- the operator side ---------------------------------------------------------------------------


def _ops(api_server, token: str = "admin") -> httpx.Client:
    return api_server.client(token)


def test_versions_are_listed_shown_and_rolled_back_with_a_higher_serial(api_server, backend, cluster):
    name = backend.path.rsplit("/", 1)[1]
    lineage = str(uuid.uuid4())
    for serial, marker in ((1, "one"), (2, "two"), (3, "three")):
        backend.post(state(serial, lineage, marker)).raise_for_status()
    backend.post(state(3, lineage, "three")).raise_for_status()  # the same body again: no new version
    base = f"/v1/terraform/states/{cluster}/{name}"
    with _ops(api_server) as http:
        listed = http.get(f"{base}/versions").json()
        assert [(v["version"], v["serial"], v["lineage"]) for v in listed] == [(1, 1, lineage), (2, 2, lineage), (3, 3, lineage)]
        assert SECRET_MARK not in http.get(f"{base}/versions").text
        assert all(v["written_by"] == f"tfstate-{cluster}" for v in listed)
        shown = http.get(f"{base}/versions/2").json()
        assert shown["state"].encode() == state(2, lineage, "two") and shown["md5"] == hashlib.md5(shown["state"].encode()).hexdigest()
        assert http.get(f"{base}/versions/9").status_code == 404

        rolled = http.post(f"{base}/versions/1/rollback")
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["version"] == 4 and rolled.json()["serial"] == 4 and rolled.json()["note"] == "rollback to version 1"
        assert rolled.json()["written_by"] == "token:admin"
    current = json.loads(backend.get().content)
    assert current["serial"] == 4 and current["lineage"] == lineage and current["outputs"]["marker"]["value"] == "one"
    # Terraform's next write goes on top of the rollback.
    assert backend.post(state(5, lineage, "five")).status_code == 200

    info = lock_info(who="dave@site")
    backend.lock(info).raise_for_status()
    with _ops(api_server) as http:
        refused = http.post(f"{base}/versions/2/rollback")
        assert refused.status_code == 409 and "dave@site" in refused.json()["detail"]
    backend.unlock(info).raise_for_status()
    backend.delete().raise_for_status()
    with _ops(api_server) as http:
        states = {(s["cluster"], s["name"]): s for s in http.get("/v1/terraform/states").json()}
        assert states[(cluster, name)]["versions"] == 6 and states[(cluster, name)]["current"]["deleted"]
        assert http.post(f"{base}/versions/6/rollback").status_code == 400  # a deletion has no body
        assert http.post(f"{base}/versions/5/rollback").status_code == 200  # undoes the delete
    assert json.loads(backend.get().content)["outputs"]["marker"]["value"] == "five"


def test_an_operator_force_unlocks_and_the_audit_names_the_holder(api_server, backend, cluster, unique):
    name = backend.path.rsplit("/", 1)[1]
    holder = lock_info(who="erin@lost-runner")
    backend.lock(holder).raise_for_status()
    operator = unique("op")
    with _ops(api_server) as http:
        token = http.post("/v1/tokens", json={"name": operator, "role": "operator"}).json()["token"]
        listed = {(s["cluster"], s["name"]): s for s in http.get("/v1/terraform/states").json()}
    assert listed.get((cluster, name)) is None  # a lock without a version yet is no state to list
    backend.post(state(1, str(uuid.uuid4())), lock_id=holder["ID"]).raise_for_status()
    with _ops(api_server, token) as http:
        [mine] = [s for s in http.get("/v1/terraform/states").json() if (s["cluster"], s["name"]) == (cluster, name)]
        assert mine["lock"]["ID"] == holder["ID"] and mine["lock"]["Who"] == "erin@lost-runner"
        released = http.post(f"/v1/terraform/states/{cluster}/{name}/force-unlock")
        assert released.status_code == 200 and released.json()["ID"] == holder["ID"]
        assert http.post(f"/v1/terraform/states/{cluster}/{name}/force-unlock").status_code == 409  # not locked
        assert http.get(f"/v1/terraform/states/{cluster}/{name}/versions/1").status_code == 403  # bodies: admin only
    with _ops(api_server) as http:
        entries = http.get("/v1/audit", params={"actor": operator}).json()
    [entry] = [e for e in entries if e["route"].endswith("/force-unlock") and e["status"] == 200]
    assert entry["params"] == {"cluster": cluster, "name": name, "lock_id": holder["ID"], "holder": "erin@lost-runner"}
    assert backend.lock(lock_info()).status_code == 200


def test_an_admin_shows_and_rotates_a_clusters_credentials(api_server, settings, cluster, unique):
    with _ops(api_server) as http:
        shown = http.get(f"/v1/terraform/credentials/{cluster}").json()
        assert (shown["username"], shown["password"]) == tfcredentials.cluster_credentials(settings, cluster)
        assert shown["address"] == f"{api_server.url}/v1/terraform/state/{cluster}/"
        assert http.get(f"/v1/terraform/credentials/{unique('nosuch')}").status_code == 404
        rotated = http.post(f"/v1/terraform/credentials/{cluster}/rotate").json()
    assert rotated["username"] == shown["username"] and rotated["password"] != shown["password"]
    path = f"/v1/terraform/state/{cluster}/task"
    with httpx.Client(base_url=api_server.url, timeout=60) as http:
        assert http.get(path, auth=(shown["username"], shown["password"])).status_code == 401
        assert http.get(path, auth=(rotated["username"], rotated["password"])).status_code == 204
        info = lock_info()
        assert http.request("LOCK", path, content=json.dumps(info), auth=(rotated["username"], rotated["password"])).status_code == 200
    with _ops(api_server) as http:
        refused = http.post(f"/v1/terraform/credentials/{cluster}/rotate")
        assert refused.status_code == 409 and info["ID"] in refused.json()["detail"]
        http.post(f"/v1/terraform/states/{cluster}/task/force-unlock").raise_for_status()
        trail = http.get("/v1/audit", params={"limit": 1000}).text
    assert rotated["password"] not in trail and rotated["password"] not in (settings.home / "api.log").read_text()


# ---- the store under races, on SQLite and PostgreSQL -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_settings(request, settings, tmp_path):
    import os
    from dataclasses import replace

    from tests.servers import Postgres

    if request.param == "sqlite":
        yield replace(settings, database_url=f"sqlite:///{tmp_path / 'store.db'}")
        return
    if os.geteuid() != 0 or Postgres.bindir() is None:
        pytest.skip("PostgreSQL runs as its own user: needs root and postgresql installed")
    pg = Postgres(tmp_path).start()
    try:
        yield replace(settings, database_url=pg.url)
    finally:
        db.engine.cache_clear()
        pg.stop()


def test_racing_locks_have_one_winner_and_racing_writes_lose_nothing(store_settings):
    from concurrent.futures import ThreadPoolExecutor

    infos = [lock_info(who=f"runner-{i}") for i in range(8)]

    def take(info: dict) -> bool:
        try:
            tfstate.lock(store_settings, "race", "s", info)
            return True
        except tfstate.Locked as refused:
            assert refused.info["ID"] != info["ID"]
            return False

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(take, infos))
    assert won.count(True) == 1
    assert tfstate.lock_info(store_settings, "race", "s")["ID"] == infos[won.index(True)]["ID"]
    tfstate.unlock(store_settings, "race", "s", None)

    lineage = str(uuid.uuid4())
    bodies = [state(serial, lineage, f"m{serial}") for serial in range(1, 13)]
    with ThreadPoolExecutor(6) as pool:  # writers without a lock (terraform -lock=false) racing for numbers
        written = list(pool.map(lambda body: tfstate.write(store_settings, "race", "s", body, None, "w"), bodies))
    assert sorted(meta.version for meta in written) == list(range(1, 13))
    stored = {tfstate.version_body(store_settings, "race", "s", n)[1] for n in range(1, 13)}
    assert stored == set(bodies)  # every body whole, none lost, none twice


# ---- review fixes: typed lock info, audited reads of secrets, credentials forgotten with the cluster ----


def test_a_lock_info_with_a_field_that_is_not_a_string_is_400_and_states_still_list(api_server, backend, cluster):
    name = backend.path.rsplit("/", 1)[1]
    backend.post(state(1, str(uuid.uuid4()))).raise_for_status()
    for bad in ({"ID": "x", "Who": 123}, {"ID": 7}, {"ID": "x", "Created": None}, {"ID": "x", "Evil": "y"}):
        refused = backend.lock(bad)
        assert refused.status_code == 400, bad
        detail = refused.json()["detail"]
        assert "lock info" in detail and ("string" in detail or "ID" in detail), detail
    assert backend.unlock({"ID": "x", "Who": 123}).status_code == 400
    with _ops(api_server) as http:
        listed = http.get("/v1/terraform/states")
        assert listed.status_code == 200, listed.text
        [mine] = [s for s in listed.json() if (s["cluster"], s["name"]) == (cluster, name)]
        assert mine["lock"] is None
    assert backend.lock(lock_info()).status_code == 200  # Terraform's own lock info still goes


def test_reading_a_secret_is_audited_and_the_entry_holds_no_secret(api_server, backend, cluster, unique):
    name = backend.path.rsplit("/", 1)[1]
    backend.post(state(1, str(uuid.uuid4()))).raise_for_status()
    reader = unique("admin")
    with _ops(api_server) as http:
        token = http.post("/v1/tokens", json={"name": reader, "role": "admin"}).json()["token"]
    with _ops(api_server, token) as http:
        password = http.get(f"/v1/terraform/credentials/{cluster}").json()["password"]
        assert SECRET_MARK in http.get(f"/v1/terraform/states/{cluster}/{name}/versions/1").text
        http.get(f"/v1/terraform/states/{cluster}/{name}/versions").raise_for_status()  # no secret: not audited
    with _ops(api_server) as http:
        entries = http.get("/v1/audit", params={"actor": reader}).json()
    reads = sorted((e["method"], e["route"], e["status"]) for e in entries if e["method"] == "GET")
    assert reads == [("GET", "/v1/terraform/credentials/{cluster}", 200),
                     ("GET", "/v1/terraform/states/{cluster}/{name}/versions/{version}", 200)]
    trail = json.dumps(entries)
    assert password not in trail and SECRET_MARK not in trail


def test_forgetting_a_cluster_forgets_its_state_credentials(api_server, settings, unique):
    from activities.inventory import Inventory
    from activities.storage.models import Cluster

    name, inventory = unique("tf"), Inventory(settings.database_url)

    def add_row() -> None:  # a bare row (no workflow): removed again below, or /v1/clusters would miss its workflow
        with db.session(settings.database_url) as s:
            s.add(Cluster(name=name, spec={"name": name}))
            s.commit()

    try:
        add_row()
        old = tfcredentials.cluster_credentials(settings, name)
        inventory.forget_cluster(name)
        assert tfcredentials.credentials_cluster(settings, *old) is None  # the old password opens nothing
        add_row()
        new = tfcredentials.cluster_credentials(settings, name)
        assert new[1] != old[1] and tfcredentials.credentials_cluster(settings, *new) == name
    finally:
        inventory.forget_cluster(name)


def test_a_lock_waits_for_a_write_that_already_checked_the_lock(store_settings):
    """A writer that found the state unlocked holds it until its insert commits: a LOCK (and so
    Terraform's read after it) comes after that write, never between its check and its insert."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    if not store_settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one write transaction at a time: nothing can come between")
    body = state(1, str(uuid.uuid4()))
    with ThreadPoolExecutor(1) as pool, db.session(store_settings.database_url) as writer:
        assert tfstate._hold(writer, "race", "w") is None  # the writer's check: unlocked
        taking = pool.submit(tfstate.lock, store_settings, "race", "w", lock_info())
        deadline = time.monotonic() + 60
        with db.session(store_settings.database_url) as watcher:
            while not watcher.connection().execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar():
                assert not taking.done() and time.monotonic() < deadline, "the LOCK did not wait for the writer"
                watcher.rollback()
        tfstate._add_version(writer, "race", "w", tfstate._Body.of(store_settings, body), "stale-writer")
        writer.commit()
        taking.result(timeout=60)
    assert tfstate.current(store_settings, "race", "w")[0] == body
    assert tfstate.lock_info(store_settings, "race", "w") is not None
