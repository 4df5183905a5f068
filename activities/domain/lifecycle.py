"""The machine lifecycle: its states and the rules of moving between them."""

from __future__ import annotations



# Machine states (DESIGN.md section 3). `failed:<step>` is built with `failed()`.
NEW = "new"
BOOT_1 = "boot-1"
DISCOVER = "discover"
POST_DISCOVER = "post-discover"
BOOT_2 = "boot-2"
POST_BOOT_2 = "post-boot-2"
JOIN_CLUSTER = "join-cluster"
READY = "ready"
HOLDING = "holding"
DECOMMISSIONING = "decommissioning"
DECOMMISSIONED = "decommissioned"
LIFECYCLE = (NEW, BOOT_1, DISCOVER, POST_DISCOVER, BOOT_2, POST_BOOT_2, JOIN_CLUSTER, READY)
TAKES_FACTS = (BOOT_1, DISCOVER, HOLDING)  # where a machine takes new facts (a repeat is taken anywhere)

def failed(step: str) -> str:
    return f"failed:{step}"
