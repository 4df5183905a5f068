"""Admission benchmark: the rules step of admitting one machine into clusters of 10, 100 and
1,000 members carrying realistic facts (~8 KB each), with the seeds' example rules.

It times the admission activity itself (read the members' facts, build `candidate` and
`members`, evaluate the rules in the sandbox, apply and record the attributes) and, beside it,
the sandbox's JS evaluation alone on the same context. Prints p50/p99; asserts nothing.

    .venv/bin/python -m tests.bench.bench_admission [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from activities.domain.cluster import ClusterSpec, Member
from activities.domain.rules import Rule, RulesRequest
from activities.rules import Contexts, RulesActivities
from activities.sandbox import Sandbox
from activities.storage import db
from activities.storage import settings as settings_mod
from activities.storage.models import Cluster, Facts, Machine, MachineMac, Rule as RuleRow
from api.lab.fleet import server_facts
from tests.api.test_rules import SEED_RULES


def member_facts(i: int) -> dict:
    """About 8 KB of facts, shaped as the discovery agent reports them (the fleet simulator's server)."""
    macs = [f"b8:ce:f6:{i >> 8 & 255:02x}:{i & 255:02x}:{n:02x}" for n in range(4)]
    return server_facts(i, macs, f"4c4c4544-0000-1000-8000-{i:012x}", f"SRV{i:06d}")


def setup(settings, size: int) -> RulesRequest:
    name = f"bench-{size}"
    with db.session(settings.database_url) as s:
        s.add(Cluster(name=name, spec=ClusterSpec(name=name, quorum_count=3).model_dump()))
        for position, rule in enumerate(SEED_RULES):
            s.add(RuleRow(cluster=name, position=position, **Rule.model_validate(rule).model_dump(mode="json")))
        for i in range(size + 1):
            s.add(Machine(id=f"{name}-m{i}", cluster=name))
        s.flush()  # the machines first: facts and MACs refer to them
        for i in range(size + 1):
            machine_id = f"{name}-m{i}"
            data = member_facts(i)
            s.add(MachineMac(mac=f"02:{size % 256:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:00", machine_id=machine_id))
            s.add(Facts(machine_id=machine_id, boot=1, digest=str(i), data=data))
        s.commit()
    roles = ["master-prime", "master", "master"] + ["worker"] * size
    members = [Member(machine_id=f"{name}-m{i}", role=roles[i], ready=True) for i in range(1, size + 1)]
    return RulesRequest(cluster=name, machine_id=f"{name}-m0", is_new=True, members=members)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"{statistics.median(ordered) * 1000:8.1f} / {p99 * 1000:7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tempered-bench-admission-"))
    settings = replace(settings_mod.load(), home=work, database_url=f"sqlite:///{work / 'bench.db'}")
    sizes = (10, 100, 1000)
    requests = {size: setup(settings, size) for size in sizes}
    per_member = len(json.dumps(member_facts(7)))
    print(f"admission with the seed rules; members carry {per_member / 1024:.1f} KB of facts each; {args.rounds} rounds")
    print(f"{'members':>8} {'admission p50 / p99 ms':>26} {'JS only p50 / p99 ms':>24} {'context MB':>11}")
    with Sandbox(workers=1) as sandbox:
        activity = RulesActivities(settings, sandbox)
        rules = [(r["name"], r["expression"]) for r in SEED_RULES if r.get("enabled", True)]
        for size in sizes:
            request = requests[size]
            activity.evaluate(request)  # warm
            whole = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                verdict = activity.evaluate(request)
                whole.append(time.perf_counter() - start)
            with db.session(settings.database_url) as s:
                encoded = Contexts().encode(s, request, 3)
            js = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                sandbox.evaluate(rules, encoded)
                js.append(time.perf_counter() - start)
            assert verdict.role in ("worker", "master", "master-prime"), verdict
            print(f"{size:>8} {percentiles(whole):>26} {percentiles(js):>24} {len(encoded) / 1e6:>11.1f}")
    print("target: admission p50 <= 100 ms at 1000 members")


if __name__ == "__main__":
    main()
