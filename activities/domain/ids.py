"""Identifiers and addresses: MACs, SMBIOS UUIDs, DNS names, IP addresses, workflow ids.

Each is a validator plus an annotated type, so a bad value is refused where it enters."""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from typing import Annotated

from pydantic import AfterValidator, Field


_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-]?[0-9a-f]{2}){5}$")


def plural(count: int, noun: str, nouns: str = "") -> str:
    """`1 machine`, `3 machines`: counts in messages read as English (`nouns` when not noun + s)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def normalize_mac(mac: str) -> str:
    """`52-54-00-AB-CD-EF`, `525400abcdef` -> `52:54:00:ab:cd:ef`; ValueError otherwise."""
    text = mac.strip().lower()
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {mac[:40]!r}")
    digits = re.sub(r"[^0-9a-f]", "", text)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def node_name(machine_id: str, mac: str | None = None, hostname: str = "") -> str:
    """A machine's one name: its hostname in cloud-init, its Kubernetes node name, its DNS name
    and the `hostname` its rules see. The hostname when set, else `node-` and the last 12
    letters and digits of its MAC (the one it first booted from), else of its id."""
    if hostname:
        return hostname
    source = (mac or machine_id).replace(":", "").replace("-", "")
    return f"node-{re.sub(r'[^a-z0-9]', '', source.lower())[-12:]}"


def dns_label(name: str) -> str:
    """Names of clusters and edges end up in DNS and URLs: keep them to one DNS label."""
    if not _DNS_LABEL.match(name):
        raise ValueError("must be a DNS label: lower-case letters, digits and '-', at most 63")
    return name


_DNS_NAME_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def dns_name(name: str) -> str:
    """A zone or key name that dnspython can build names under: LDH labels (and '_'), each 1..63,
    at most 253 in all. Refused when saved, not six minutes later inside an activity."""
    text = name[:-1] if name.endswith(".") else name
    if not text or len(text) > 253 or not all(_DNS_NAME_LABEL.match(label) for label in text.split(".")):
        raise ValueError("must be a DNS name: dot-separated labels of letters, digits, '-' and '_', each at most 63, 253 in all")
    return name


def host_or_address(value: str) -> str:
    """A server given by IP address or DNS name."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return dns_name(value)


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def ip_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip()))
    except ValueError:
        raise ValueError("must be a network in CIDR notation, e.g. 10.244.0.0/16") from None


def smbios_uuid(value: str | None) -> str | None:
    """An SMBIOS UUID as the kernel prints it; empty means the firmware has none."""
    if value is None or not value.strip():
        return None
    try:
        return str(uuidlib.UUID(value.strip()))
    except ValueError:
        raise ValueError("must be a UUID like 4c4c4544-0042-3510-8052-b7c04f4e3232") from None


DnsLabel = Annotated[str, AfterValidator(dns_label)]
DnsName = Annotated[str, Field(max_length=254), AfterValidator(dns_name)]
HostOrAddress = Annotated[str, Field(max_length=254), AfterValidator(host_or_address)]
IpAddress = Annotated[str, Field(max_length=64), AfterValidator(ip_address)]
IpNetwork = Annotated[str, Field(max_length=64), AfterValidator(ip_network)]
Mac = Annotated[str, AfterValidator(normalize_mac)]




def machine_workflow_id(machine_id: str) -> str:
    return f"machine:{machine_id}"


def cluster_workflow_id(name: str) -> str:
    return f"cluster:{name}"
