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
# The fake cluster's directory, where the fragment mounts the lab host's share (SHARE_TAG); on a
# machine without the share it is on the data disk, so the state survives a reboot, as etcd's would.
STATE_DIR = "/var/lib/tempered/kubeadm-standin"
SHARE_TAG = "kubeadm-standin"  # the 9p mount tag: api/lab/vm.py gives every lab VM this share


def fragment(state_dir: str = STATE_DIR) -> str:
    """The fragment's text: the skeleton with the encoded script and its configuration."""
    script = base64.b64encode(gzip.compress(SCRIPT.read_bytes(), mtime=0)).decode()
    config = json.dumps({"state_dir": state_dir, "root": ""})
    # Each placeholder with the YAML around it: the skeleton's comments name the placeholders too.
    values = {
        "content: STANDIN_SCRIPT\n": f"content: {script}\n",
        "content: STANDIN_CONFIG\n": f"content: {json.dumps(config)}\n",
        "- STANDIN_STATE_DIR\n": f"- {json.dumps(state_dir)}\n",
    }
    text = SKELETON.read_text()
    for placeholder, value in values.items():
        if text.count(placeholder) != 1:
            raise ValueError(f"{SKELETON}: expected {placeholder.strip()!r} once")
        text = text.replace(placeholder, value)
    return text
