"""A real BIND 9 (`named`) for tests: a loopback port, its own config directory, and a zone
in three views, as a split-horizon site runs it:

- `native` and `corp`, each chosen by the TSIG key that signs (a key per view);
- `default` for everyone else, updatable with one key of every TSIG algorithm.

Every view holds the forward zone `tempered.test` and the reverse zone `213.10.in-addr.arpa`
plus `20.172.in-addr.arpa` (where the corp view's mapped addresses live).
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from activities.domain.dns import DnsServer, TsigKey
from tests.servers import free_port, stop, wait_for_port

ZONE = "tempered.test"
REVERSE = "213.10.in-addr.arpa"
CORP_REVERSE = "20.172.in-addr.arpa"
ALGORITHMS = ("hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")


def _key(name: str, algorithm: str = "hmac-sha256") -> TsigKey:
    return TsigKey(name=name, secret=base64.b64encode(secrets.token_bytes(32)).decode(), algorithm=algorithm)


def named_binary() -> str | None:
    return shutil.which("named") or (("/usr/sbin/named") if Path("/usr/sbin/named").exists() else None)


@dataclass
class Bind:
    workdir: Path
    port: int = field(default_factory=free_port)
    default_keys: dict[str, TsigKey] = field(default_factory=lambda: {a: _key(f"k-{a}", a) for a in ALGORITHMS})
    native: TsigKey = field(default_factory=lambda: _key("native-view", "hmac-sha512"))
    corp: TsigKey = field(default_factory=lambda: _key("corp-view", "hmac-sha512"))
    readonly: TsigKey = field(default_factory=lambda: _key("read-only"))
    proc: subprocess.Popen | None = None

    @property
    def server(self) -> DnsServer:
        return DnsServer(host="127.0.0.1", port=self.port)

    def _zone_file(self, view: str, zone: str) -> str:
        path = self.workdir / f"{view}.{zone}.db"
        if not path.exists():  # keep the data (and the .jnl beside it) across restarts
            path.write_text(
                f"$TTL 300\n@ IN SOA ns.{ZONE}. admin.{ZONE}. 1 3600 600 86400 300\n@ IN NS ns.{ZONE}.\n"
                + (f"ns IN A 127.0.0.1\n" if zone == ZONE else "")
            )
        return str(path)

    def _view(self, view: str, match: str, updaters: list[TsigKey]) -> str:
        allow = " ".join(f'key "{k.name}";' for k in updaters)
        zones = "".join(
            f'  zone "{zone}" {{ type primary; file "{self._zone_file(view, zone)}"; allow-update {{ {allow} }}; }};\n'
            for zone in (ZONE, REVERSE, CORP_REVERSE)
        )
        return f'view "{view}" {{\n  match-clients {{ {match} }};\n{zones}}};\n'

    def write_config(self) -> Path:
        all_keys = [*self.default_keys.values(), self.native, self.corp, self.readonly]
        keys = "".join(
            f'key "{k.name}" {{ algorithm {k.algorithm}; secret "{k.secret.get_secret_value()}"; }};\n' for k in all_keys
        )
        conf = self.workdir / "named.conf"
        conf.write_text(
            keys
            + "controls { };\n"
            + f'options {{ directory "{self.workdir}"; pid-file "{self.workdir}/named.pid"; '
            f"listen-on port {self.port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; "
            "dnssec-validation no; notify no; allow-query { any; }; };\n"
            + self._view("native", f'key "{self.native.name}";', [self.native])
            + self._view("corp", f'key "{self.corp.name}";', [self.corp])
            + self._view(
                "default",
                f'!key "{self.native.name}"; !key "{self.corp.name}"; any;',
                list(self.default_keys.values()),
            )
        )
        return conf

    def start(self) -> "Bind":
        binary = named_binary()
        if binary is None:
            raise RuntimeError("BIND is not installed: apt-get install bind9")
        conf = self.write_config()
        check = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"named.conf is invalid: {check.stdout}{check.stderr}")
        self.proc = subprocess.Popen(
            [binary, "-g", "-c", str(conf)],
            stdout=open(self.workdir / "named.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port, timeout=30)
        self._wait_for_zones()
        return self

    def _wait_for_zones(self, timeout: float = 30.0) -> None:
        """The port opens before the zones are loaded (updates then get SERVFAIL): wait for SOA."""
        import time

        import dns.message
        import dns.query
        import dns.rcode

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                answer = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=self.port, timeout=1)
                if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                    return
            except Exception:  # not answering yet
                pass
            time.sleep(0.05)
        raise TimeoutError(f"named did not load {ZONE} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
