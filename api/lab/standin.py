"""The kubeadm stand-in as a cloud-init fragment: how the lab installs it in the runtime OS.

No package registry the lab can reach has kubeadm, so the lab's rules `include` this fragment
and the join playbooks run the stand-in (infra/lab/standin/, NOT kubeadm) over SSH in the booted
runtime OS. The fragment is built here from the shipped script, so what a VM runs is exactly
what the stand-in's own tests check. The script travels gzip + base64 encoded: it stays small
and no character of it can be read as template syntax when the control plane renders the
fragment.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "infra" / "lab"
SCRIPT = LAB / "standin" / "kubeadm"
SKELETON = LAB / "fragments" / "kubeadm-standin.yaml"
FRAGMENT_NAME = "kubeadm-standin"
# On the data disk: the fake cluster survives a reboot, as etcd's data would.
STATE_DIR = "/var/lib/tempered/kubeadm-standin"


def fragment(state_dir: str = STATE_DIR) -> str:
    """The fragment's text: the skeleton with the encoded script and its configuration."""
    script = base64.b64encode(gzip.compress(SCRIPT.read_bytes(), mtime=0)).decode()
    config = json.dumps({"state_dir": state_dir, "root": ""})
    text = SKELETON.read_text()
    for placeholder, value in (("STANDIN_SCRIPT", script), ("STANDIN_CONFIG", json.dumps(config))):
        if text.count(f"content: {placeholder}\n") != 1:
            raise ValueError(f"{SKELETON}: expected one 'content: {placeholder}' line")
        text = text.replace(f"content: {placeholder}\n", f"content: {value}\n")
    return text
