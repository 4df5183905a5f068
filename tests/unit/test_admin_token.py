"""The admin token's bootstrap when several processes start on one fresh home at once (an API and
its unix-socket twin did, and one of them died on a duplicate digest)."""

from __future__ import annotations

import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from sqlmodel import select

from activities.storage import db, settings as settings_mod
from activities.storage.models import Token
from api.auth import digest, ensure_admin_token


def test_processes_starting_together_share_one_admin_token(tmp_path):
    settings = replace(settings_mod.load(), home=tmp_path, database_url=f"sqlite:///{tmp_path / 'tempered.db'}")
    db.engine(settings.database_url)  # the schema, as the API's startup makes it
    with ProcessPoolExecutor(6) as pool:
        tokens = set(pool.map(ensure_admin_token, [settings] * 12))
    [token] = tokens
    assert settings.admin_token_file.read_text().strip() == token
    assert stat.S_IMODE(settings.admin_token_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".admin-token")] == []  # no temporary left
    with db.session(settings.database_url) as s:
        rows = s.exec(select(Token).where(Token.kind == "admin")).all()
    assert [r.digest for r in rows] == [digest(token)]
