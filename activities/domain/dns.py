"""DNS (RFC 2136): a cluster's DNS settings (servers, TSIG keys, split-horizon views) and records."""

from __future__ import annotations

import base64
import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from activities.domain.ids import DnsName, HostOrAddress, IpNetwork


TsigAlgorithm = Literal["hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"]


class DnsServer(BaseModel):
    host: HostOrAddress = Field(description="the primary server's name or address (RFC 2136 UPDATEs go there)")
    port: int = Field(default=53, ge=1, le=65535, description="its DNS port")


class TsigKey(BaseModel):
    """A TSIG key. The secret never appears in logs, reprs or API answers."""

    name: DnsName = Field(description="the key's name, as the server's config names it")
    secret: SecretStr = Field(max_length=1024, description="base64; write-only: answers show '**********'")
    algorithm: TsigAlgorithm = Field(default="hmac-sha256", description="the key's HMAC, as the server's config says")

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

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,63}$", description="the view's name, for messages")
    key: TsigKey = Field(description="the key the server picks this view by")
    servers: list[DnsServer] = Field(default_factory=list, max_length=16, description="empty: the settings' servers")
    mappings: list[tuple[IpNetwork, IpNetwork]] = Field(
        default_factory=list, max_length=256,
        description="[native, mapped] networks of equal length: the addresses this view publishes",
    )
    reverse_zone: DnsName | None = Field(
        default=None, description="where this view's PTRs go (of its mapped addresses); none: the settings'"
    )

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

    zone: DnsName = Field(description="the zone node and API names are written into")
    servers: list[DnsServer] = Field(min_length=1, max_length=16, description="where UPDATEs go, tried in order")
    key: TsigKey | None = Field(default=None, description="the default view's TSIG key")
    reverse_zone: DnsName | None = Field(default=None, description="e.g. 0.213.10.in-addr.arpa: PTR records too")
    ttl: int = Field(default=300, ge=0, le=86400, description="seconds, for every record written")
    views: list[DnsView] = Field(default_factory=list, max_length=16, description="split-horizon views")
    update_default_view: bool = Field(default=True, description="also write the view `key` signs for")
    max_in_flight: int = Field(default=32, ge=1, le=100, description="UPDATEs at once (BIND drops past 100)")
    batch_size: int = Field(default=500, ge=1, le=3000, description="RRsets per UPDATE (also kept under 64 KB)")
    verify: bool = Field(default=True, description="query the server after writing, to check the records")

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
