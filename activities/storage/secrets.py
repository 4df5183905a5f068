"""Secrets at rest: everything secret the control plane stores (TSIG keys now) is sealed with
Fernet (AES-128-CBC + HMAC-SHA256) under one key, kept outside the database: TEMPERED_SECRET_KEY,
or `$TEMPERED_HOME/secret.key` (mode 0600, created on first use). A copy of the database alone
reveals nothing."""

from __future__ import annotations

import os

from cryptography.fernet import Fernet, InvalidToken

from activities.storage.settings import Settings


def _fernet(settings: Settings) -> Fernet:
    key = os.environ.get("TEMPERED_SECRET_KEY")
    if not key:
        path = settings.home / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        key = path.read_text().strip()
    return Fernet(key.encode())


def seal(settings: Settings, plaintext: str) -> str:
    return _fernet(settings).encrypt(plaintext.encode()).decode()


def unseal(settings: Settings, sealed: str) -> str:
    try:
        return _fernet(settings).decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise RuntimeError(
            "a stored secret cannot be decrypted: TEMPERED_SECRET_KEY or $TEMPERED_HOME/secret.key "
            "is not the key it was sealed with"
        ) from None
