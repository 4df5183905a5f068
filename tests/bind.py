"""A real BIND 9 (`named`) for tests: a loopback port, its own config directory, and a zone
in three views, as a split-horizon site runs it:

- `native` and `corp`, each chosen by the TSIG key that signs (a key per view);
- `default` for everyone else, updatable with one key of every TSIG algorithm.

Every view holds the forward zone `tempered.test` and the reverse zone `213.10.in-addr.arpa`
plus `20.172.in-addr.arpa` (where the corp view's mapped addresses live). The server itself
(config, zone files, readiness) is the lab's `api.lab.site.Named`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from activities.domain.dns import DnsServer, TsigKey
from api.lab.site import Named, View, named_binary, new_key
from tests.servers import free_port, stop, wait_for_port

__all__ = ["ALGORITHMS", "Bind", "CORP_REVERSE", "REVERSE", "ZONE", "named_binary"]

ZONE = "tempered.test"
REVERSE = "213.10.in-addr.arpa"
CORP_REVERSE = "20.172.in-addr.arpa"
ALGORITHMS = ("hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")


@dataclass
class Bind:
    workdir: Path
    port: int = field(default_factory=free_port)
    default_keys: dict[str, TsigKey] = field(default_factory=lambda: {a: new_key(f"k-{a}", a) for a in ALGORITHMS})
    native: TsigKey = field(default_factory=lambda: new_key("native-view", "hmac-sha512"))
    corp: TsigKey = field(default_factory=lambda: new_key("corp-view", "hmac-sha512"))
    readonly: TsigKey = field(default_factory=lambda: new_key("read-only"))
    proc: subprocess.Popen | None = None

    @property
    def server(self) -> DnsServer:
        return DnsServer(host="127.0.0.1", port=self.port)

    @property
    def named(self) -> Named:
        zones = (ZONE, REVERSE, CORP_REVERSE)
        default = list(self.default_keys.values())
        return Named(
            self.workdir, self.port, keys=[*default, self.native, self.corp, self.readonly],
            views=[
                View("native", f'key "{self.native.name}";', [self.native], zones),
                View("corp", f'key "{self.corp.name}";', [self.corp], zones),
                View("default", f'!key "{self.native.name}"; !key "{self.corp.name}"; any;', default, zones),
            ],
        )

    def start(self) -> "Bind":
        named = self.named
        self.proc = subprocess.Popen(
            named.argv(), stdout=open(self.workdir / "named.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, timeout=30)
        named.wait_ready(ZONE, alive=lambda: self.proc.poll() is None)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
