"""The machine lifecycle in one table: its states, what a PXE contact boots in each, what each
state lets the machine and its token do, and where it may move next.

`STATES` is the only list of the lifecycle: the machine workflow, the machine-facing API and the
README's lifecycle table (`markdown()`, checked by tests/unit/test_lifecycle.py) all derive from
it, so a state set cannot drift from another copy. Pure Python: the workflow imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Machine states. `failed:<step>` is built with `failed()`.
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

# Steps: the only workflow code that calls activities, named as they appear in `failed:<step>`.
ADMIT = "admit"
RENDER = "render"
JOIN = "join-cluster"
DNS = "dns"
DECOMMISSION = "decommission"
POWER = "power"  # a power action through the machine's BMC (reboot, reprovision, decommission)
STEPS = (ADMIT, RENDER, JOIN, DNS, DECOMMISSION, POWER)


def failed(step: str) -> str:
    return f"failed:{step}"


@dataclass(frozen=True)
class Stage:
    """What a PXE contact does to a machine in a state of this stage."""

    name: str
    # the boot edge's answer; "as-before": `stage()` answers the stage of the state before the power step
    boots: Literal["discovery", "runtime", "refuse", "as-before"]
    then: str | None  # the state the contact moves the machine to (None: it stays)
    text: str  # for the README


DISCOVERY = Stage("discovery", "discovery", BOOT_1, "discovery → `boot-1`")
HELD = Stage("held", "discovery", None, "discovery, stays held")
RUNTIME = Stage("runtime", "runtime", BOOT_2, "runtime OS → `boot-2`")
REBOOT = Stage("reboot", "discovery", BOOT_1, "a reboot: discovery → `boot-1`")  # no longer new
REFUSE = Stage("refuse", "refuse", None, "refused")
# `failed:power`: the machine did not change because its power did not; a PXE contact (someone
# pressed the button) does what it would have done in the state the power step began in.
AS_BEFORE = Stage("as-before", "as-before", None, "as in the state the power step began in (`power_from`)")

AgentAction = Literal["reboot", "poweroff", "wait"]


@dataclass(frozen=True)
class State:
    """One row of the lifecycle. Besides `to` and the PXE contact of its stage, a machine may
    always stay where it is (with a new reason) and, unless it is `decommissioning`, be
    reprovisioned (→ `new`) or decommissioned (→ `decommissioning`) by an operator. A reboot
    (`REBOOTS`), a reprovision and a decommission run the `power` step in the state they leave
    the machine in (`POWER_FROM`), which may park it in `failed:power`."""

    name: str
    stage: Stage
    entered: str  # when a machine enters it (README)
    event: str  # the event or step that moves it here, and its caller (README)
    to: tuple[str, ...] = ()  # where its handlers and steps may move it
    step: str | None = None  # the step that runs in it; for `failed:<step>`, the step that failed
    path: bool = False  # on the path every machine takes from `new` to `ready`
    takes_facts: bool = False  # the discovery agent's new facts are taken (a repeat is answered anywhere)
    runtime_token: bool = False  # on its runtime boot, not yet ready: this boot's token reads the seed
    phoned_home: bool = False  # this runtime boot phoned home already: a repeat is answered
    agent: AgentAction = "wait"  # what the discovery agent still running is told to do
    operator_reset: bool = False  # an operator bumped the boot: the old boot's token still reads
    also: str = ""  # the moves `to` cannot name, in words (README)


_FAILED = "step `{}` failed after its retry policy, or was refused outright"
_RETRY = "step `{}`; Update `retry` runs it again"

STATES: tuple[State, ...] = (
    State(NEW, DISCOVERY, "pre-registered (`POST /v1/machines`), first seen or reprovisioned", "—",
          path=True, agent="reboot", operator_reset=True),
    State(BOOT_1, DISCOVERY, "it PXE boots and is told to boot discovery",
          "Update `pxe_boot` (boot edge, update-with-start)", to=(DISCOVER, HOLDING), path=True, takes_facts=True),
    State(DISCOVER, DISCOVERY, "the discovery agent stored this boot's facts; admission runs",
          "Update `facts_reported` (API facts intake)", step=ADMIT, path=True, takes_facts=True,
          to=(HOLDING, POST_DISCOVER, failed(ADMIT), failed(RENDER))),
    State(POST_DISCOVER, RUNTIME,
          "the cluster gave it a role and its user-data is rendered: the agent is told to reboot",
          "steps `admit`, `render`", path=True, agent="reboot"),
    State(HOLDING, HELD, "the cluster cannot take it yet (control plane not up, or no cluster)",
          "step `admit`; left by Signal `release`", to=(DISCOVER,), takes_facts=True),
    State(BOOT_2, RUNTIME, "it PXE boots again and is told to boot the runtime OS", "Update `pxe_boot`",
          to=(POST_BOOT_2,), path=True, runtime_token=True),
    State(POST_BOOT_2, RUNTIME, "cloud-init fetched its user-data and phoned home", "Update `phoned_home`",
          to=(JOIN_CLUSTER,), step=JOIN, path=True, runtime_token=True, phoned_home=True),
    State(JOIN_CLUSTER, RUNTIME,
          "kubeadm runs through Ansible (init, join or rejoin), then the `dns` step publishes its name",
          "steps `join-cluster` and `dns` (with `join_method: external`, Update `join_finished` ends the join)",
          to=(READY, failed(JOIN), failed(DNS)), step=JOIN, path=True, runtime_token=True, phoned_home=True),
    State(READY, REBOOT, "it is a node (and in DNS)", "step `dns`", path=True, phoned_home=True),
    State(failed(ADMIT), DISCOVERY, _FAILED.format(ADMIT), _RETRY.format(ADMIT), to=(DISCOVER,), step=ADMIT),
    State(failed(RENDER), DISCOVERY, _FAILED.format(RENDER), "step `render`; Update `retry` runs `admit`, then "
          "`render`", to=(DISCOVER, POST_DISCOVER), step=RENDER),
    State(failed(JOIN), RUNTIME, _FAILED.format(JOIN), _RETRY.format(JOIN), to=(JOIN_CLUSTER,), step=JOIN,
          runtime_token=True, phoned_home=True),
    State(failed(DNS), RUNTIME, _FAILED.format(DNS), _RETRY.format(DNS), to=(READY,), step=DNS,
          runtime_token=True, phoned_home=True),
    State(DECOMMISSIONING, REFUSE, "an operator retires it", "Update `decommission`",
          to=(DECOMMISSIONED, failed(DECOMMISSION)), step=DECOMMISSION, agent="poweroff", operator_reset=True),
    State(failed(DECOMMISSION), REFUSE, _FAILED.format(DECOMMISSION), _RETRY.format(DECOMMISSION),
          to=(DECOMMISSIONED,), step=DECOMMISSION),
    State(DECOMMISSIONED, DISCOVERY, "it is retired (and powered off); the workflow completes",
          "steps `decommission`, `power`", agent="poweroff", operator_reset=True),
    # Reached from every state in POWER_FROM. The discovery agent (of a held machine) waits and
    # the runtime token reads nothing: the machine is about to be cycled. A reprovision or a
    # decommission bumped the boot before its power step: the old boot's token still asks.
    State(failed(POWER), AS_BEFORE, "step `power` failed after its retry policy (BMC unreachable), or the BMC "
          "refused it: the reason is its answer",
          "step `power` (Updates `reboot`, `reprovision`, `decommission`); Update `retry` runs its power actions "
          "again", step=POWER, operator_reset=True,
          also="back to `power_from`, the state it began in (after a decommission's power-off: `decommissioned`)"),
)
BY_NAME = {s.name: s for s in STATES}
OPERATOR_MOVES = (NEW, DECOMMISSIONING)  # reprovision, decommission


def _where(**column: object) -> frozenset[str]:
    return frozenset(s.name for s in STATES if all(getattr(s, k) == v for k, v in column.items()))


LIFECYCLE = tuple(s.name for s in STATES if s.path)  # in order
TAKES_FACTS = _where(takes_facts=True)
RUNTIME_STAGE = _where(stage=RUNTIME)  # a PXE contact boots the runtime OS again
RETIRING = _where(stage=REFUSE)  # a PXE contact is refused
# POST_DISCOVER is in the runtime stage but still on its discovery boot: its token is the agent's.
RUNTIME_TOKEN = _where(runtime_token=True)
PHONED_HOME = _where(phoned_home=True)
AGENT_REBOOTS = _where(agent="reboot")
AGENT_POWERS_OFF = _where(agent="poweroff")
OPERATOR_RESETS = _where(operator_reset=True)
# Update `reboot` power-cycles a node, a held or a failed machine, or one on its runtime boot; not
# a new one (it is about to boot anyway) nor one being decommissioned.
FAILED = frozenset(s.name for s in STATES if s.step and s.name == failed(s.step))
REBOOTS = frozenset({READY, HOLDING}) | RUNTIME_STAGE | (FAILED - {failed(DECOMMISSION)})
# The states a power step runs in (and `power_from` names): a reboot leaves the state as it is.
POWER_FROM = (REBOOTS - {failed(POWER)}) | {NEW, DECOMMISSIONING}


def stage(state: str, power_from: str | None = None) -> Stage:
    """The stage of `state`; discovery for a state the table does not know. In `failed:power`,
    the stage of `power_from`, the state the power step began in."""
    row = BY_NAME.get(state)
    if row is not None and row.stage is AS_BEFORE:
        return stage(power_from) if power_from in POWER_FROM else DISCOVERY
    return row.stage if row else DISCOVERY


def allowed(source: str, target: str) -> bool:
    """Whether the machine workflow may move a machine from `source` to `target`."""
    if target == failed(POWER) and source in POWER_FROM:
        return True
    if source == failed(POWER):  # back where its power step began, on as a PXE contact there moves it, or retired
        onward = {stage(before).then for before in POWER_FROM} | POWER_FROM | {DECOMMISSIONED}
        return target == source or target in onward
    row = BY_NAME[source]
    operator = target in OPERATOR_MOVES and source not in (DECOMMISSIONING, DECOMMISSIONED)
    return target == source or target in row.to or target == row.stage.then or operator


def markdown() -> str:
    """The README's lifecycle table (regenerate with `python -m activities.domain.lifecycle`)."""
    lines = ["| state | entered when | event (caller) | a PXE contact | moves on to |", "|---|---|---|---|---|"]
    for s in STATES:
        onward = ", ".join([*(f"`{t}`" for t in s.to), *([s.also] if s.also else [])]) or "—"
        lines.append(f"| `{s.name}` | {s.entered} | {s.event} | {s.stage.text} | {onward} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
