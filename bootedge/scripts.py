"""iPXE scripts, rendered from Jinja2 templates beside this module.

Every reason shown to a person on the console is stripped of characters iPXE would interpret,
so text from the control plane can never become a command.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from activities.domain.boot import kernel_args
from activities.domain.edge import EdgeBootRequest
from activities.domain.machine import BootInstruction

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:_/()'+=@-]")
HOLD_BASE_S, HOLD_MAX_S = 5, 300


def _safe(text: str) -> str:
    return _UNSAFE.sub(" ", text)[:200]


def hold_delay(attempt: int) -> int:
    """Exponential backoff for machines told to wait: 5 s, 10 s, 20 s ... at most 5 minutes."""
    return min(HOLD_BASE_S * 2 ** min(attempt, 10), HOLD_MAX_S)


def chain(edge_url: str) -> str:
    return _env.get_template("chain.ipxe.j2").render(edge=edge_url)


def boot(edge_url: str, instruction: BootInstruction, token: str) -> str:
    """Boot the discovery image, or the runtime OS with its NoCloud seed and the machine's kargs."""
    image, initrd = ("discovery", "initrd.gz") if instruction.action == "discovery" else ("runtime", "initrd.img")
    return _env.get_template("boot.ipxe.j2").render(
        edge=edge_url, image=image, initrd=initrd, kargs=" ".join(kernel_args(edge_url, instruction, token)),
        machine_id=instruction.machine_id, boot=instruction.boot, state=instruction.state,
    )


def hold(edge_url: str, request: EdgeBootRequest, attempt: int, reason: str) -> str:
    query = urlencode(
        {"mac": request.mac, "uuid": request.uuid or "", "serial": request.serial or "", "platform": request.platform,
         "buildarch": request.buildarch, "attempt": attempt + 1}
    )
    return _env.get_template("hold.ipxe.j2").render(
        attempt=attempt, reason=_safe(reason), delay=hold_delay(attempt), retry_url=f"{edge_url}/boot.ipxe?{query}"
    )


def local(platform: str, reason: str = "") -> str:
    return _env.get_template("local.ipxe.j2").render(platform=platform, reason=_safe(reason))


def refuse(reason: str) -> str:
    return _env.get_template("refuse.ipxe.j2").render(reason=_safe(reason))
