"""Rules: the cluster's JavaScript rules decide what a machine becomes.

The activity gathers what rules may read (`candidate`, `members`, `quorumCount`) from the
stored facts, runs every enabled rule in one sandboxed evaluation, applies the matched rules'
attributes with the semantics of the README's Rules section, and records them on the machine. A rule that
fails is reported by name and the machine is held: never guessed.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from sqlmodel import delete, select
from temporalio import activity

from activities.domain import attributes as semantics
from activities.domain import hardware
from activities.domain.cluster import ClusterSpec
from activities.domain.facts import Facts
from activities.domain.ids import node_name
from activities.domain.lifecycle import DISCOVER, READY
from activities.domain.cluster import Member
from activities.domain.rules import Attributes, Rule, RulesBatch, RulesRequest, RulesVerdict
from activities import metrics
from activities.heartbeat import heartbeating_thread
from activities.sandbox import Sandbox
from activities.storage import db
from activities.storage.models import Attribute, Cluster, MachineMac, UserData
from activities.storage.models import Facts as FactsRow
from activities.storage.models import Rule as RuleRow
from activities.storage.settings import Settings


def load_rules(session, cluster: str) -> list[Rule]:
    rows = session.exec(select(RuleRow).where(RuleRow.cluster == cluster).order_by(RuleRow.position)).all()
    return [Rule(name=r.name, expression=r.expression, attributes=r.attributes, enabled=r.enabled) for r in rows]


def hostname(machine_id: str, macs: list[str], rendered: str | None = None) -> str:
    """The `hostname` rules see for a machine: its one name (`ids.node_name`). The name its
    user-data was rendered with is the name its workflow derived; before that, it is derived
    here from what the database knows (its MAC when it has just one)."""
    return rendered or node_name(machine_id, macs[0] if len(macs) == 1 else None)


def _view(machine_id: str, role: str, state: str, data: dict | None, macs: list[str], name: str) -> bytes:
    """A machine as rules see it, encoded: `disks` and `gpus` are arrays the sandbox makes
    countable; the facts travel as JSON text the sandbox parses only if a rule reads them."""
    facts = dict(data or {})
    facts["lspci"] = hardware.lspci(Facts.model_validate(data)) if data else {}
    facts.pop("pci", None)  # rules read PCI devices as facts.lspci (by class name), not twice
    gpus = hardware.gpus(facts["lspci"])
    view = {
        "id": machine_id, "role": role, "state": state, "facts_json": json.dumps(facts),
        "disks": facts.get("disks", []), "gpus": gpus, "hostname": name, "macs": macs,
    }
    return json.dumps(view).encode()


class Contexts:
    """Builds the encoded `{candidate, members, quorumCount}` for one admission.

    Each machine's encoded view is cached by (id, facts digest, role, state, MACs, name): admitting
    into a cluster of 1,000 encodes only the machines whose facts or role changed since the
    last admission, and reads only their facts from the database."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._views: OrderedDict[tuple, bytes] = OrderedDict()

    def encode(self, session, request: RulesRequest, quorum: int) -> bytes:

        others = [m for m in request.members if m.machine_id != request.machine_id]
        ids = [request.machine_id] + [m.machine_id for m in others]
        digests: dict[str, tuple[int, str]] = {}
        for machine_id, boot, digest in session.exec(
            select(FactsRow.machine_id, FactsRow.boot, FactsRow.digest).where(FactsRow.machine_id.in_(ids))
        ):
            if machine_id not in digests or boot > digests[machine_id][0]:
                digests[machine_id] = (boot, digest)
        macs: dict[str, list[str]] = {}
        for row in session.exec(select(MachineMac).where(MachineMac.machine_id.in_(ids))):
            macs.setdefault(row.machine_id, []).append(row.mac)
        names = select(UserData.machine_id, UserData.hostname).where(UserData.machine_id.in_(ids))
        rendered: dict[str, str] = dict(session.exec(names).all())
        # The names the workflows derived, where the cluster knows them (members since they are kept)
        rendered |= {m.machine_id: m.node_name for m in request.members if m.node_name}
        if request.node_name:  # the candidate's name, from its workflow
            rendered[request.machine_id] = request.node_name
        wanted = [(request.machine_id, request.role, DISCOVER)]
        wanted += [(m.machine_id, m.role, READY if m.ready else "admitted") for m in others]

        def key(mid: str, role: str, state: str) -> tuple:
            found = tuple(sorted(macs.get(mid, [])))
            return (mid, digests.get(mid, (0, ""))[1], role, state, found, hostname(mid, list(found), rendered.get(mid)))

        keys = [key(*machine) for machine in wanted]
        missing = {key[0]: key for key in keys if key not in self._views}
        if missing:
            for row in session.exec(select(FactsRow).where(FactsRow.machine_id.in_(list(missing)))):
                if digests.get(row.machine_id, (None,))[0] == row.boot:
                    key = missing.pop(row.machine_id)
                    self._remember(key, _view(key[0], key[2], key[3], row.data, list(key[4]), key[5]))
            for key in missing.values():  # no facts stored yet
                self._remember(key, _view(key[0], key[2], key[3], None, list(key[4]), key[5]))
        candidate, *members = (self._views[key] for key in keys)
        return b'{"candidate":%s,"members":[%s],"quorumCount":%d}' % (candidate, b",".join(members), quorum)

    def _remember(self, key: tuple, encoded: bytes) -> None:
        self._views[key] = encoded
        self._views.move_to_end(key)
        while len(self._views) > self.capacity:
            self._views.popitem(last=False)


def record(session, machine_id: str, attributes: Attributes) -> None:
    """Replace the machine's attributes with `attributes`, in order."""
    session.exec(delete(Attribute).where(Attribute.machine_id == machine_id))
    rows = [("role", attributes.role)] if attributes.role else []
    rows += [("label", v) for v in attributes.labels] + [("taint", v) for v in attributes.taints]
    rows += [("include", v) for v in attributes.includes] + [("karg", v) for v in attributes.kargs]
    rows += [("variable", f"{k}={v}") for k, v in attributes.variables.items()]
    for position, (kind, value) in enumerate(rows):
        session.add(Attribute(machine_id=machine_id, type=kind, value=value, position=position))


def current(session, machine_id: str) -> Attributes:
    held = Attributes()
    for row in session.exec(select(Attribute).where(Attribute.machine_id == machine_id).order_by(Attribute.position)):
        if row.type == "role":
            held.role = row.value
        elif row.type in ("label", "taint", "include", "karg"):
            getattr(held, row.type + "s").append(row.value)
        elif row.type == "variable":
            name, _, value = row.value.partition("=")
            held.variables[name] = value
    return held


def decide(sandbox: "Sandbox", rules: list[Rule], ctx: bytes, is_new: bool, held: Attributes) -> tuple[Attributes, list[str]]:
    """Run the enabled rules and apply the matched ones; errors name each failed rule."""
    enabled = [r for r in rules if r.enabled]
    outcomes = sandbox.evaluate([(r.name, r.expression) for r in enabled], ctx)
    errors = [o.error for o in outcomes if o.error]
    matched = [rule for rule, outcome in zip(enabled, outcomes) if outcome.matched]
    result = semantics.apply(matched, is_new, held)
    if not errors and not result.role:
        errors.append("no rule gave this machine a role")
    return result, errors


class RulesActivities:
    def __init__(self, settings: "Settings", sandbox: "Sandbox") -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.contexts = Contexts()

    @activity.defn(name="evaluate_rules")
    def evaluate(self, request: RulesRequest) -> RulesVerdict:

        activity.heartbeat()  # each step heartbeats: a worker that dies is noticed in seconds
        with db.session(self.settings.database_url) as s:
            rules = load_rules(s, request.cluster)
            if not any(r.enabled for r in rules):
                return RulesVerdict(has_rules=False)
            cluster = s.get(Cluster, request.cluster)
            quorum = ClusterSpec.model_validate(cluster.spec).quorum_count if cluster else 1
            held = current(s, request.machine_id)
            held.role = held.role or request.role
            ctx = self.contexts.encode(s, request, quorum)
            # the sandbox may first be busy with other machines' rules (heartbeats; counted in the time)
            with heartbeating_thread(), metrics.timed(metrics.RULE_SECONDS, result="ok") as measured:
                result, errors = decide(self.sandbox, rules, ctx, request.is_new, held)
                measured["result"] = "failed" if errors else "ok"
            if errors:
                return RulesVerdict(has_rules=True, errors=errors)
            record(s, request.machine_id, result)
            s.commit()
        return RulesVerdict(has_rules=True, role=result.role)

    @activity.defn(name="evaluate_rules_batch")
    def evaluate_batch(self, batch: RulesBatch) -> list[RulesVerdict]:
        """A cluster's queued admissions in one activity (one worker slot, one history event pair
        instead of one per machine). In order, each candidate seeing the members plus the
        candidates before it that its rules admitted, so `candidate` and `members` are what
        one-at-a-time admission showed; the cluster commits the verdicts in the same order.
        Each machine heartbeats (a retry evaluates the batch again: recording is idempotent)."""
        members = list(batch.members)
        verdicts: list[RulesVerdict] = []
        for candidate in batch.candidates:
            verdict = self.evaluate(candidate.model_copy(update={"members": members}))
            verdicts.append(verdict)
            if not verdict.has_rules:  # no rules in this cluster: the built-in policy decides, in the workflow
                return verdicts + [RulesVerdict(has_rules=False)] * (len(batch.candidates) - len(verdicts))
            members = admitted_members(members, candidate, verdict)
        return verdicts


def admitted_members(members: list[Member], candidate: RulesRequest, verdict: RulesVerdict) -> list[Member]:
    """The members once the cluster commits this verdict: a machine the rules admitted and that
    is not a member yet joins them with the role it keeps, else the rules' role."""
    if verdict.errors or any(m.machine_id == candidate.machine_id for m in members):
        return members
    role = candidate.role or verdict.role
    return [*members, Member(machine_id=candidate.machine_id, role=role, node_name=candidate.node_name)]
