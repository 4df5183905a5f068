"""DNS (RFC 2136): a cluster's DNS settings (servers, TSIG keys, split-horizon views) and records."""

from __future__ import annotations

import base64
import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from activities.domain.ids import DnsName, HostOrAddress, IpNetwork


TsigAlgorithm = Literal["hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"]


class DnsServer(BaseModel):
    host: HostOrAddress
    port: int = Field(default=53, ge=1, le=65535)


class TsigKey(BaseModel):
    """A TSIG key. The secret never appears in logs, reprs or API answers."""

    name: DnsName
    secret: SecretStr = Field(max_length=1024)
    algorithm: TsigAlgorithm = "hmac-sha256"

    @field_validator("secret")
    @classmethod
    def _base64(cls, secret: SecretStr) -> SecretStr:
        try:
            base64.b64decode(secret.get_secret_value(), validate=True)
        except ValueError:
            raise ValueError("must be base64 (as dnssec-keygen / tsig-keygen print it)") from None
        return secret


class DnsView(BaseModel):
    """One horizon of a split-horizon zone: the server picks the view by the key that signs."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,63}$")
    key: TsigKey
    servers: list[DnsServer] = Field(default_factory=list, max_length=16)  # empty: the settings' servers
    mappings: list[tuple[IpNetwork, IpNetwork]] = Field(default_factory=list, max_length=256)  # (native, mapped)
    # Where this view's PTRs go: the reverse zone of its (mapped) addresses. Empty: the settings'.
    reverse_zone: DnsName | None = None

    @field_validator("mappings")
    @classmethod
    def _prefixes(cls, mappings: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for native, mapped in mappings:
            a, b = ipaddress.ip_network(native), ipaddress.ip_network(mapped)
            if a.prefixlen != b.prefixlen or a.version != b.version:
                raise ValueError(f"{native} and {mapped} must have the same length to map host by host")
        return mappings

    def address(self, ip: str) -> str:
        """The address this view publishes for a native `ip`."""
        native_ip = ipaddress.ip_address(ip)
        for native, mapped in self.mappings:
            net = ipaddress.ip_network(native)
            if native_ip in net:
                offset = int(native_ip) - int(net.network_address)
                return str(ipaddress.ip_network(mapped).network_address + offset)
        return ip


class DnsSettings(BaseModel):
    """Where and how Tempered writes DNS: per cluster, or the global default."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"zone": "lab.example.", "servers": [{"host": "10.0.0.2", "port": 53}],
         "key": {"name": "tempered-key.", "secret": "c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "algorithm": "hmac-sha256"},
         "reverse_zone": "0.0.10.in-addr.arpa.", "ttl": 300},
    ]})

    zone: DnsName
    servers: list[DnsServer] = Field(min_length=1, max_length=16)
    key: TsigKey | None = None  # the default view's key
    reverse_zone: DnsName | None = None  # e.g. 0.213.10.in-addr.arpa: PTR records too
    ttl: int = Field(default=300, ge=0, le=86400)
    views: list[DnsView] = Field(default_factory=list, max_length=16)
    update_default_view: bool = True
    max_in_flight: int = Field(default=32, ge=1, le=100)  # BIND drops updates past its quota of 100
    batch_size: int = Field(default=500, ge=1, le=3000)  # RRsets per UPDATE (also kept < 64 KB)
    verify: bool = True

    @model_validator(mode="after")
    def _somewhere_to_write(self) -> "DnsSettings":
        if self.update_default_view and self.key is None:
            raise ValueError("updating the default view needs its TSIG key (or set update_default_view false)")
        if not self.update_default_view and not self.views:
            raise ValueError("nothing to update: add views or set update_default_view")
        return self


class DnsRecord(BaseModel):
    """One name's addresses (an A RRset), given in native addresses; views map them."""

    name: str  # relative to the zone, e.g. node-1 or api.demo
    addresses: list[str] = Field(default_factory=list)  # empty: delete the name


class NodeDns(BaseModel):
    cluster: str | None
    name: str
    ip: str


class ApiNameDns(BaseModel):
    """The cluster's API name: one A record per ready control-plane machine."""

    cluster: str
    machine_ids: list[str]
