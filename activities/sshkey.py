"""The control plane's SSH key: cloud-init authorizes its public half on every node, Ansible
logs in with the private half.

One ed25519 key per control plane, created on first use. The private key is stored sealed
(`$TEMPERED_HOME/ssh/ansible_ed25519.sealed`, Fernet under the secret key, mode 0600) and only
unsealed into a run's private directory; the public key is derived from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from activities.storage import secrets
from activities.storage.settings import Settings

COMMENT = "tempered-ansible"


def _path(settings: Settings) -> Path:
    return settings.home / "ssh" / "ansible_ed25519.sealed"


def _create(settings: Settings, path: Path) -> None:
    """Write a new sealed key, atomically: when the API and the worker race, one key wins."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.seal(settings, pem))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def private_key(settings: Settings) -> str:
    """The private key in OpenSSH PEM form (created on first use), for one Ansible run."""
    path = _path(settings)
    if not path.exists():
        _create(settings, path)
    return secrets.unseal(settings, path.read_text())


def public_key(settings: Settings) -> str:
    """The OpenSSH public key line that nodes authorize."""
    key = serialization.load_ssh_private_key(private_key(settings).encode(), password=None)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{line.decode()} {COMMENT}"
