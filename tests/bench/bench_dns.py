"""DNS publishing benchmark: 1,000 nodes' A and PTR records into a real BIND, by Tempered's
publisher and by `nsupdate` (the anchor), in the same run against the same server.

Both send the same batch: the A records in one zone and the PTRs in the reverse zone, signed
with the same hmac-sha256 key, over TCP. Each round writes fresh addresses so every round
really changes the zone; Tempered also reads every name back (its `verify`), reported apart.
Prints figures; asserts nothing about time. Everything runs on a loopback port.

    .venv/bin/python -m tests.bench.bench_dns [--nodes 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from activities.domain.dns import DnsRecord, DnsSettings
from activities.dns import Publisher
from tests.bind import REVERSE, ZONE, Bind


def records(nodes: int, round_: int) -> list[DnsRecord]:
    return [DnsRecord(name=f"bench-{i}", addresses=[f"10.213.{(i // 250 + round_ * 4) % 250}.{i % 250 + 1}"]) for i in range(nodes)]


def nsupdate_script(bind: Bind, batch: list[DnsRecord]) -> str:
    lines = [f"server 127.0.0.1 {bind.port}", f"zone {ZONE}"]
    lines += [f"update delete {r.name}.{ZONE}. A" for r in batch]
    lines += [f"update add {r.name}.{ZONE}. 300 A {r.addresses[0]}" for r in batch]
    lines += ["send", f"zone {REVERSE}"]
    for r in batch:
        reverse = ".".join(reversed(r.addresses[0].split("."))) + ".in-addr.arpa."
        lines += [f"update delete {reverse} PTR", f"update add {reverse} 300 PTR {r.name}.{ZONE}."]
    lines += ["send", ""]
    return "\n".join(lines)


def run_nsupdate(bind: Bind, batch: list[DnsRecord], workdir: Path) -> float:
    key = bind.default_keys["hmac-sha256"]
    script = workdir / "batch.nsupdate"
    script.write_text(nsupdate_script(bind, batch))
    start = time.perf_counter()
    subprocess.run(
        ["nsupdate", "-v", "-y", f"{key.algorithm}:{key.name}:{key.secret.get_secret_value()}", str(script)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return time.perf_counter() - start


async def run_tempered(bind: Bind, batch: list[DnsRecord], verify: bool) -> float:
    settings = DnsSettings(
        zone=ZONE, servers=[bind.server], key=bind.default_keys["hmac-sha256"], reverse_zone=REVERSE,
        batch_size=1000, verify=verify,
    )
    start = time.perf_counter()
    await Publisher(settings).publish(batch)
    return time.perf_counter() - start


def measure(n: int = 1000, rounds: int = 5) -> dict:
    """Publish `n` nodes' A + PTR records `rounds` times with each writer into a BIND of its own
    (started and stopped here, on a loopback port): the figures, for this module's table and for
    other benchmarks (bench_fleet) to print beside theirs.

    Returns {"nodes", "rounds", "port", "times": {writer: [seconds per round]},
    "median": {writer: s}, "ratio": tempered/nsupdate medians (same batch, no read-back)}."""
    workdir = Path(tempfile.mkdtemp(prefix="tempered-bench-dns-"))
    bind = Bind(workdir).start()
    times: dict[str, list[float]] = {"nsupdate": [], "tempered": [], "tempered+verify": []}
    try:
        round_ = 0
        for _ in range(rounds):
            for name in times:
                round_ += 1
                batch = records(n, round_)
                if name == "nsupdate":
                    times[name].append(run_nsupdate(bind, batch, workdir))
                else:
                    times[name].append(asyncio.run(run_tempered(bind, batch, verify=name.endswith("verify"))))
    finally:
        bind.stop()
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "nodes": n, "rounds": rounds, "port": bind.port, "times": times, "median": median,
        "ratio": median["tempered"] / median["nsupdate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = measure(args.nodes, args.rounds)
    print(f"DNS publish: {args.nodes} nodes (A + PTR, hmac-sha256, TCP), {args.rounds} rounds, BIND {figures['port']}")
    print(f"{'writer':<16} {'median s':>9} {'min s':>7} {'max s':>7} {'records/s':>10}")
    for name, values in figures["times"].items():
        median = figures["median"][name]
        print(f"{name:<16} {median:>9.3f} {min(values):>7.3f} {max(values):>7.3f} {2 * args.nodes / median:>10.0f}")
    print(f"tempered/nsupdate (same batch, no read-back): {figures['ratio']:.2f}x (target <= 2.0)")


if __name__ == "__main__":
    main()
