"""The boot edge's Prometheus metrics (issue 15, item 6): `tempered bootedge` in a namespace, scapy
PXE clients, TFTP and HTTP from another, and the counters scraped on the edge's loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.lab.test_bootedge_lab import PREFIX, EdgeLab, edge_lab  # noqa: F401 (the fixture)

METRICS = "http://127.0.0.1:8081/metrics"  # the default: loopback, the edge's HTTP port + 1
UNDIONLY = Path("/usr/lib/ipxe/undionly.kpxe")


def scrape(lab: EdgeLab) -> dict[tuple[str, frozenset], float]:
    got = lab.lab.exec(lab.edge_ns, ["curl", "-sf", "--max-time", "20", METRICS])
    assert got.returncode == 0, got.stderr
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(got.stdout)
        for s in family.samples
    }


def test_edge_metrics_count_dhcp_tftp_and_http_and_stay_off_the_machines_network(edge_lab):
    before = scrape(edge_lab)

    def moved(samples, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return samples.get(key, 0.0) - before.get(key, 0.0)

    assert len(edge_lab.client("discover", "--mac", f"{PREFIX}:00:21")) == 1
    assert len(edge_lab.client("discover", "--mac", f"{PREFIX}:00:22", "--firmware", "bios")) == 1
    assert edge_lab.client("discover", "--mac", "52:54:00:cd:00:21") == []  # outside the policy
    assert edge_lab.client("discover", "--mac", f"{PREFIX}:00:23", "--not-pxe") == []
    got = edge_lab.client("tftp", "--server", edge_lab.edge_ip, "--file", "undionly.kpxe", "--timeout", "5")[0]
    assert got["size"] == UNDIONLY.stat().st_size
    assert "error" in edge_lab.client("tftp", "--server", edge_lab.edge_ip, "--file", "../config.json", "--timeout", "5")[0]
    script = edge_lab.curl("/boot.ipxe")
    assert script.returncode == 0
    instruction = f"http://{edge_lab.edge_ip}:8080/machines/x/instruction"
    relayed = edge_lab.lab.exec(edge_lab.client_ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", instruction])
    assert relayed.stdout == "401"  # relayed to the control plane, which wants the boot's token

    after = scrape(edge_lab)
    assert moved(after, "tempered_edge_dhcp_answers_total", kind="ipxe") == 1
    assert moved(after, "tempered_edge_dhcp_answers_total", kind="bios") == 1
    assert moved(after, "tempered_edge_dhcp_refusals_total", reason="not-admitted") == 1
    assert moved(after, "tempered_edge_dhcp_drops_total", reason="not-pxe") == 1
    assert moved(after, "tempered_edge_http_transfers_total", kind="script", code="200") == 1
    assert moved(after, "tempered_edge_http_bytes_total", kind="script") == len(script.stdout.encode())
    assert moved(after, "tempered_edge_http_transfers_total", kind="relay", code="401") == 1

    # dnsmasq logs a transfer once the last block is acknowledged: the line may lag a moment
    deadline = time.monotonic() + 15
    while moved(after, "tempered_edge_tftp_transfers_total", file="undionly.kpxe", result="sent") < 1:
        assert time.monotonic() < deadline, json.dumps([str(k) for k in after if "tftp" in k[0]])
        time.sleep(0.2)
        after = scrape(edge_lab)
    assert moved(after, "tempered_edge_tftp_transfers_total", file="undionly.kpxe", result="sent") == 1
    assert moved(after, "tempered_edge_tftp_bytes_total", file="undionly.kpxe") == UNDIONLY.stat().st_size
    assert moved(after, "tempered_edge_tftp_transfers_total", file="other", result="refused") >= 1
    assert not any(PREFIX in str(labels) for _, labels in after)  # never a MAC

    # machines on the segment reach neither the metrics port nor a /metrics route
    assert edge_lab.curl("/metrics").returncode != 0
    metrics_port = f"http://{edge_lab.edge_ip}:8081/metrics"
    outside = edge_lab.lab.exec(edge_lab.client_ns, ["curl", "-sf", "--max-time", "5", metrics_port])
    assert outside.returncode != 0
